"""Benchmark of the reference service: delivered msg/s (1:1, 50-member group), idle sessions.

Run: `.venv/bin/python bench/bench_service.py [--seconds 5] [--sessions 10000]`.
The service runs pinned to one core; this script (the load generator) runs in its own process on
another core when the machine has one. Both raise RLIMIT_NOFILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import procs  # noqa: E402
from harness.reference import tokens  # noqa: E402

NOFILE = 65536


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(NOFILE, hard) if hard != resource.RLIM_INFINITY else NOFILE
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Service:
    """The service as a child process pinned to CPU 0."""

    def __init__(self, db: str) -> None:
        self.admin = secrets.token_hex(16)
        env = {**os.environ, "IM_REF_ADMIN_TOKEN": self.admin}

        def child_setup() -> None:
            raise_nofile()
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {0})

        self.child = procs.spawn(
            [sys.executable, "-m", "harness.reference", "--db", db, "--log-level", "WARNING"],
            name="reference service (bench)", stdout=subprocess.PIPE, text=True, env=env,
            cwd=ROOT, preexec_fn=child_setup)
        self.proc = self.child.proc
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        self.ws = f"ws://127.0.0.1:{ready['ws_port']}"
        self.api = f"http://127.0.0.1:{ready['api_port']}"
        self.pid = ready["pid"]

    async def create_app(self) -> tuple[str, str]:
        body = {"tier": "pro", "limits": {"max_connections": 100000, "send_rate_per_user": 1e6,
                                          "send_burst": 1000000}}
        async with aiohttp.ClientSession() as http, http.post(
                f"{self.api}/admin/apps", json=body,
                headers={"Authorization": f"Bearer {self.admin}"}) as resp:
            data = await resp.json()
        return data["app_id"], data["app_key"]

    def stop(self) -> None:
        self.child.stop(timeout=30)


async def session(svc: Service, app: str, key: str, user: str) -> ClientConnection:
    ws = await connect(f"{svc.ws}/v2", compression=None, max_queue=None, open_timeout=60)
    await ws.send(json.dumps({"id": 0, "op": "login", "token": tokens.mint(app, key, user)}))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("ev") == "caught_up":
            return ws
        if frame.get("re") == 0 and not frame["ok"]:
            raise RuntimeError(frame["error"])


class Counter:
    """Message events received by every reader, and per-connection ack counts."""

    def __init__(self) -> None:
        self.delivered = 0
        self.acks: dict[ClientConnection, int] = {}
        self.acked = asyncio.Event()


async def receive(ws: ClientConnection, counter: Counter) -> None:
    counter.acks[ws] = 0
    try:
        async for raw in ws:
            if '"ev":"message"' in raw:
                counter.delivered += 1
            elif '"re":' in raw:
                counter.acks[ws] += 1
                counter.acked.set()
    except Exception:  # noqa: BLE001 - the phase ended
        pass


async def sender(ws: ClientConnection, to: dict[str, str], stop: float, window: int,
                 counter: Counter) -> int:
    """Send as fast as acks come back, keeping `window` sends in flight; the count sent."""
    n = 0
    while time.monotonic() < stop:
        while n - counter.acks[ws] < window:
            await ws.send(json.dumps({"id": n, "op": "send", "to": to, "body": "hello there",
                                      "client_id": f"c{n}"}))
            n += 1
        counter.acked.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(counter.acked.wait(), 0.05)
    return n


async def _answer(ws: ClientConnection, rid: int) -> dict[str, Any]:
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("re") == rid:
            return frame


async def throughput(svc: Service, *, group_size: int, senders: int, seconds: float,
                     window: int) -> dict[str, Any]:
    """Delivered message events per second, 1:1 (`group_size` 0) or to one group."""
    app, key = await svc.create_app()
    counter = Counter()
    if group_size:
        members = [f"m{i}" for i in range(group_size)]
        rx = [await session(svc, app, key, m) for m in members]
        await rx[0].send(json.dumps({"id": -1, "op": "group.create", "name": "bench",
                                     "members": members[1:]}))
        gid = (await _answer(rx[0], -1))["group"]["group_id"]
        tx = rx[:senders]
        targets = [{"group": gid}] * senders
    else:
        tx = [await session(svc, app, key, f"s{i}") for i in range(senders)]
        rx = [await session(svc, app, key, f"r{i}") for i in range(senders)]
        targets = [{"user": f"r{i}"} for i in range(senders)]
    everyone = list(dict.fromkeys([*tx, *rx]))
    readers = [asyncio.create_task(receive(ws, counter)) for ws in everyone]
    await asyncio.sleep(0.2)
    base_delivered = counter.delivered
    cpu0 = _cpu(svc.pid)
    start = time.monotonic()
    sent = await asyncio.gather(*(sender(ws, to, start + seconds, window, counter)
                                  for ws, to in zip(tx, targets, strict=True)))
    elapsed = time.monotonic() - start
    delivered = counter.delivered - base_delivered
    cpu = _cpu(svc.pid) - cpu0
    for ws in everyone:
        await ws.close()
    for r in readers:
        r.cancel()
    return {"sent": sum(sent), "delivered": delivered, "seconds": round(elapsed, 2),
            "delivered_per_s": round(delivered / elapsed), "service_cpu_s": round(cpu, 2),
            "service_rss_mib": round(rss_kib(svc.pid) / 1024, 1)}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_sessions(svc: Service, n: int) -> dict[str, Any]:
    app, key = await svc.create_app()
    base = rss_kib(svc.pid)
    conns: list[ClientConnection] = []
    sem = asyncio.Semaphore(100)
    start = time.monotonic()

    async def one(i: int) -> None:
        async with sem:
            conns.append(await session(svc, app, key, f"idle{i}"))

    await asyncio.gather(*(one(i) for i in range(n)))
    took = time.monotonic() - start
    await asyncio.sleep(1.0)
    after = rss_kib(svc.pid)
    async with aiohttp.ClientSession() as http, http.get(
            f"{svc.api}/admin/counters", headers={"Authorization": f"Bearer {svc.admin}"}) as r:
        counters = await r.json()
    result = {"sessions": n, "connected_per_service": counters["connections_by_app"].get(app),
              "connect_seconds": round(took, 1), "rss_before_mib": round(base / 1024, 1),
              "rss_after_mib": round(after / 1024, 1),
              "rss_per_session_kib": round((after - base) / n, 1)}
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    return result


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    db = f"/tmp/im-ref-bench-{os.getpid()}.sqlite"
    svc = Service(db)
    try:
        one = await throughput(svc, group_size=0, senders=args.pairs, seconds=args.seconds,
                               window=args.window)
        print(json.dumps({"phase": "1:1", **one}), flush=True)
        grp = await throughput(svc, group_size=50, senders=args.group_senders,
                               seconds=args.seconds, window=args.window)
        print(json.dumps({"phase": "group50", **grp}), flush=True)
        if args.sessions:
            idle = await idle_sessions(svc, args.sessions)
            print(json.dumps({"phase": "idle", **idle}), flush=True)
    finally:
        svc.stop()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db + suffix)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--group-senders", type=int, default=2)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=10000)
    asyncio.run(main(parser.parse_args()))
