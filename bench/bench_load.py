"""Benchmark the load generator (a script, not a test).

1. Throughput: the same chat load against one reference service, alternating the harness's
   locust user (loadtests/locustfile.py) and a minimal hand-written locust user speaking the
   reference protocol with `websockets.sync.client` (NaiveChatUser below). Reports delivered
   messages/s per generator CPU-second for each and their ratio.
2. Capacity: idle connected sessions held by one generator process, and RSS per session.

Usage: python bench/bench_load.py [--users 20] [--rate 20] [--run-time 10] [--rounds 2]
                                  [--sessions 10000]
Run by locust (`locust -f bench/bench_load.py NaiveChatUser`) this file is the naive locustfile.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if "locust" in sys.modules or os.environ.get("BENCH_NAIVE_OUT"):
    # -- the naive locust user (only when locust imports this file) ------------------------------
    import itertools

    from locust import User, constant, events, task
    from websockets.sync.client import connect

    DELIVERED = [0]
    SENT = itertools.count()

    class NaiveChatUser(User):
        """Two sync WebSocket clients; A sends to B on a fixed schedule, B reads the delivery."""

        wait_time = constant(0)

        def _login(self, token: str) -> object:
            ws = connect(f"{os.environ['BENCH_WS']}/v2", proxy=None)
            ws.send(json.dumps({"id": 1, "op": "login", "token": token, "cursor": 0}))
            while "re" not in json.loads(ws.recv()):
                pass
            return ws

        def on_start(self) -> None:
            tokens = json.loads(os.environ["BENCH_TOKENS"])
            index = next(SENT) % (len(tokens) // 2)
            self.a_id, a_token = tokens[2 * index]
            self.b_id, b_token = tokens[2 * index + 1]
            self.a, self.b = self._login(a_token), self._login(b_token)
            self.interval = 1.0 / float(os.environ["BENCH_RATE"])
            self.next_at = time.monotonic()
            self.n = 0

        @task
        def chat(self) -> None:
            import gevent

            delay = self.next_at - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            self.next_at += self.interval
            self.n += 1
            self.a.send(json.dumps({"id": self.n + 1, "op": "send", "to": {"user": self.b_id},
                                    "kind": "text", "body": str(self.n),
                                    "client_id": f"{self.a_id}:{self.n}"}))
            while "re" not in json.loads(self.a.recv()):
                pass
            while json.loads(self.b.recv()).get("ev") != "message":
                pass
            DELIVERED[0] += 1

    @events.quitting.add_listener
    def _write(environment: object, **_kw: object) -> None:
        Path(os.environ["BENCH_NAIVE_OUT"]).write_text(json.dumps({"deliveries": DELIVERED[0]}))


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Run a locust child; (wall seconds, CPU seconds of it and its children)."""
    cpu0, t0 = _child_cpu(), time.monotonic()
    subprocess.run(cmd, cwd=cwd, env=env, check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - t0, _child_cpu() - cpu0


def throughput(service: object, app: object, args: argparse.Namespace, work: Path) -> None:
    from harness.session import run_sync

    async def mint() -> list[tuple[str, str]]:
        admin = service.admin()  # type: ignore[attr-defined]
        try:
            out = []
            for i in range(2 * args.users):
                creds = await admin.mint_user(app, f"naive-{i}-{os.getpid()}")
                out.append((creds.user_id, creds.token))
            return out
        finally:
            await admin.aclose()

    tokens = run_sync(mint())
    env = {**os.environ, "BENCH_WS": service.ws_url, "BENCH_TOKENS": json.dumps(tokens),  # type: ignore[attr-defined]
           "BENCH_RATE": str(args.rate), "BENCH_NAIVE_OUT": str(work / "naive.json"),
           "BENCH_APP_KEY": app.app_key}  # type: ignore[attr-defined]
    common = ["--headless", "-u", str(args.users), "-r", str(args.users), "-t",
              f"{args.run_time}s", "--only-summary", "--stop-timeout", "2"]
    harness_cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"),
                   *common, "--scenario", "chat", "--rate", str(args.rate / 2),
                   "--summary-json", str(work / "harness.json"), "--drain-s", "1"]
    naive_cmd = [sys.executable, "-m", "locust", "-f", str(Path(__file__).resolve()), *common,
                 "NaiveChatUser"]
    results: dict[str, list[float]] = {"harness": [], "naive": []}
    for _ in range(args.rounds):
        for kind, cmd in (("harness", harness_cmd), ("naive", naive_cmd)):
            wall, cpu = _run(cmd, env, work)
            out = work / ("harness.json" if kind == "harness" else "naive.json")
            delivered = json.loads(out.read_text())["counts"]["deliveries"] if kind == \
                "harness" else json.loads(out.read_text())["deliveries"]
            per_cpu = delivered / cpu if cpu else 0.0
            results[kind].append(per_cpu)
            print(f"{kind:<8} delivered {delivered:>7} in {wall:5.1f}s wall, {cpu:5.2f} CPU-s: "
                  f"{delivered / wall:8.1f} msg/s, {per_cpu:8.1f} msg per CPU-s", flush=True)
    h = sum(results["harness"]) / len(results["harness"])
    n = sum(results["naive"]) / len(results["naive"])
    print(f"delivered msg per generator CPU-second: harness {h:.1f}, naive {n:.1f}, "
          f"ratio {h / n if n else float('nan'):.2f}x (target >= 1.0x)")


def capacity(service: object, app: object, args: argparse.Namespace, work: Path) -> None:
    import psutil

    from harness.session import run_sync

    per_user = 500
    users = max(1, args.sessions // per_user)
    (work / "scen.toml").write_text(f"[idle]\nsessions = {per_user}\n")
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"),
           "--headless", "-u", str(users), "-r", str(users), "-t", f"{args.hold}s",
           "--only-summary", "--scenario", "idle", "--scenarios-file", str(work / "scen.toml"),
           "--summary-json", str(work / "idle.json"), "--drain-s", "1"]
    proc = subprocess.Popen(cmd, cwd=work, env={**os.environ, "BENCH_APP_KEY": app.app_key},  # type: ignore[attr-defined]
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = psutil.Process(proc.pid)

    async def connections() -> int:
        admin = service.admin()  # type: ignore[attr-defined]
        try:
            return int((await admin.counters())["connections"])
        finally:
            await admin.aclose()

    base_rss, best = None, (0, 0)
    deadline = time.monotonic() + args.hold
    while proc.poll() is None and time.monotonic() < deadline:
        n = run_sync(connections())
        rss = child.memory_info().rss
        if base_rss is None and n > 0:
            base_rss = (n, rss)
        if n > best[0]:
            best = (n, rss)
        time.sleep(1.0)
    proc.wait()
    if base_rss is None or best[0] <= base_rss[0]:
        print("capacity: no sessions connected")
        return
    per_session = (best[1] - base_rss[1]) / (best[0] - base_rss[0]) / 1024
    print(f"idle sessions held by one generator process: {best[0]} (target >= 10000); "
          f"RSS {best[1] / 2**20:.1f} MiB, {per_session:.1f} KiB per session (target <= 40)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s per user")
    parser.add_argument("--run-time", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--hold", type=int, default=90, help="seconds the capacity run lasts")
    parser.add_argument("--skip", choices=("throughput", "capacity"), default=None)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    from harness.reference.launcher import ReferenceService

    with tempfile.TemporaryDirectory() as tmp, ReferenceService() as service:
        work = Path(tmp)
        app = service.create_app_sync(tier="pro", limits={"max_connections": 4 * args.sessions})
        (work / "im-harness.toml").write_text(
            f'[endpoints.new]\nurl = "{service.ws_url}"\napp_id = "{app.app_id}"\n'
            'app_key_env = "BENCH_APP_KEY"\nprotocol = "v2"\ntier = "pro"\n'
            f'options = {{ api_url = "{service.api_url}" }}\n')
        if args.skip != "throughput":
            throughput(service, app, args, work)
        if args.skip != "capacity":
            capacity(service, app, args, work)


if __name__ == "__main__":
    main()
