"""Latency truth (a script, not a test): the harness's delivery p50/p99 against a raw probe.

The same traffic against the same reference service, alternating: the harness's locust user
(loadtests/locustfile.py, scenario chat: `--pairs` pairs, both ends sending at rate/2 on their
pair's spread phase) and a raw asyncio `websockets` probe (ProbeRun below) that opens the same pairs
and sends on the same phases, timing each delivery from its intended send time exactly as the
harness does. For each round it prints both p50 and p99, then each one's mean and its spread
between identical runs, the harness/probe ratios (of the means, and each round's pair of runs
side by side, which cancels the machine's drift), and both generators' CPU per delivered message
over the same steady-state window (bench_load's `_measure`).

Noise control: the service runs pinned to CPU 0 and both generators to CPU 1 (`--pin`, as in
bench_load), the order alternates every round, and every run prints the load average.

Usage: python bench/bench_latency.py [--pairs 10] [--rate 20] [--seconds 30] [--rounds 6]
                                     [--pin | --no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class ProbeRun:
    """Pairs of raw websockets clients chatting both ways on a fixed, phased schedule."""

    def __init__(self, url: str, tokens: list[tuple[str, str]], rate: float) -> None:
        self.url, self.tokens, self.rate = url, tokens, rate
        self.intended: dict[str, float] = {}
        self.latencies: list[float] = []
        self.sending = True

    async def login(self, token: str) -> Any:
        from websockets.asyncio.client import connect

        ws = await connect(f"{self.url}/v2", proxy=None, compression=None)
        await ws.send(json.dumps({"id": 1, "op": "login", "token": token, "cursor": 0}))
        while "re" not in json.loads(await ws.recv()):
            pass
        return ws

    async def receive(self, ws: Any) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("ev") == "message":
                sent = self.intended.pop(frame["message"]["client_id"], None)
                if sent is not None:
                    self.latencies.append(time.monotonic() - sent)

    async def sender(self, ws: Any, me: str, to: str, phase: float) -> None:
        from harness.load.phases import first_at

        interval = 1.0 / self.rate
        start, n = first_at(time.monotonic(), interval, phase), 0
        while self.sending:
            intended = start + n * interval
            delay = intended - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            client_id = f"{me}:{n}"
            self.intended[client_id] = intended
            await ws.send(json.dumps({"id": n + 1, "op": "send", "to": {"user": to},
                                      "kind": "text", "body": str(n), "client_id": client_id}))

    async def main(self) -> list[float]:
        from harness.load.phases import van_der_corput

        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        clients = [await self.login(token) for _, token in self.tokens]
        tasks = [asyncio.ensure_future(self.receive(ws)) for ws in clients]
        for k in range(0, len(clients), 2):
            (a, _), (b, _) = self.tokens[k], self.tokens[k + 1]
            phase = van_der_corput(k // 2)  # as the harness: a pair's ends share its phase
            tasks.append(asyncio.ensure_future(self.sender(clients[k], a, b, phase)))
            tasks.append(asyncio.ensure_future(self.sender(clients[k + 1], b, a, phase)))
        await stop.wait()
        self.sending = False
        await asyncio.sleep(1.0)  # in-flight deliveries
        for task in tasks:
            task.cancel()
        return self.latencies


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000.0


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:7.2f} ms (+-{50 * (max(values) - min(values)) / mean:4.1f} % run to run)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="msg/s per pair (both ends)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="service on CPU 0, generators on CPU 1 (when there are two)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: run the probe, write here
    args = parser.parse_args()
    if args.probe:
        tokens = [tuple(t) for t in json.loads(os.environ["BENCH_TOKENS"])]
        probe = ProbeRun(os.environ["BENCH_WS"], tokens, args.rate / 2)
        Path(args.probe).write_text(json.dumps({"latencies_s": asyncio.run(probe.main())}))
        return
    import bench_load

    from harness.reference.launcher import ReferenceService

    pinned = bench_load.pinning(args.pin)
    with tempfile.TemporaryDirectory() as tmp, ReferenceService() as service:
        work = Path(tmp)
        if pinned and service.pid is not None:
            bench_load.pin(service.pid, bench_load.SERVICE_CPU)
        app = service.create_app_sync(tier="pro")
        (work / "im-harness.toml").write_text(
            f'[endpoints.new]\nurl = "{service.ws_url}"\napp_id = "{app.app_id}"\n'
            'app_key_env = "BENCH_APP_KEY"\nprotocol = "v2"\ntier = "pro"\n'
            f'options = {{ api_url = "{service.api_url}" }}\n')
        env = {**os.environ, "BENCH_WS": service.ws_url, "BENCH_APP_KEY": app.app_key}
        timing = argparse.Namespace(warmup=args.warmup, window=args.seconds, pin=pinned)
        run_time = f"{int(args.warmup + args.seconds + 30)}s"  # ended by SIGTERM
        harness_cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"),
                       "--headless", "-u", str(args.pairs), "-r", str(args.pairs), "-t", run_time,
                       "--only-summary", "--stop-timeout", "2", "--scenario", "chat",
                       "--rate", str(args.rate / 2), "--summary-json", str(work / "h.json"),
                       "--drain-s", "1", "--budgets", str(ROOT / "loadtests/budgets/chat.toml")]
        probe_cmd = [sys.executable, str(Path(__file__).resolve()), "--probe",
                     str(work / "p.json"), "--rate", str(args.rate)]
        got: dict[str, dict[str, list[float]]] = {
            k: {"p50": [], "p99": [], "cpu_us": []} for k in ("harness", "probe")}
        print(f"latency truth: {args.pairs} pairs x {args.rate:g} msg/s, {args.rounds} "
              f"alternating rounds, window {args.seconds:g}s, "
              f"{'service on CPU 0, generators on CPU 1' if pinned else 'not pinned'}; "
              f"{bench_load.load_average()}", flush=True)
        for r in range(args.rounds):
            order = (("harness", harness_cmd), ("probe", probe_cmd))
            for kind, cmd in order if r % 2 == 0 else order[::-1]:
                run_env = env
                if kind == "probe":
                    tokens = bench_load._mint(service, app, 2 * args.pairs, f"probe{r}")
                    run_env = {**env, "BENCH_TOKENS": json.dumps(tokens)}
                delivered, cpu, _ = bench_load._measure(cmd, run_env, work, service, timing)
                if kind == "harness":
                    pct = json.loads((work / "h.json").read_text())["latency_ms"]["delivery"]
                    p50, p99 = pct["p50"], pct["p99"]
                else:
                    deadline = time.monotonic() + 30
                    while not (work / "p.json").exists() and time.monotonic() < deadline:
                        time.sleep(0.1)
                    values = json.loads((work / "p.json").read_text())["latencies_s"]
                    (work / "p.json").unlink()
                    p50, p99 = _percentile(values, 50), _percentile(values, 99)
                got[kind]["p50"].append(p50)
                got[kind]["p99"].append(p99)
                got[kind]["cpu_us"].append(1e6 * cpu / delivered if delivered else float("nan"))
                print(f"  {kind:<8} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                      f"{got[kind]['cpu_us'][-1]:6.1f} us CPU per delivered message; "
                      f"{bench_load.load_average()}", flush=True)
        for kind, res in got.items():
            print(f"{kind:<8} p50 {_spread(res['p50'])}, p99 {_spread(res['p99'])}")
        h, p = got["harness"], got["probe"]
        for q in ("p50", "p99"):  # each round's two runs, next to each other in time
            pairs = [a / b for a, b in zip(h[q], p[q], strict=True)]
            print(f"harness/probe {q} per round: " + " ".join(f"{x:.3f}" for x in pairs)
                  + f" (median {statistics.median(pairs):.3f})")
        print(f"harness/probe: p50 {statistics.fmean(h['p50']) / statistics.fmean(p['p50']):.3f}"
              f", p99 {statistics.fmean(h['p99']) / statistics.fmean(p['p99']):.3f}, CPU per "
              f"message {statistics.fmean(h['cpu_us']) / statistics.fmean(p['cpu_us']):.2f}x "
              f"(target: p50 and p99 within 5 %); {bench_load.load_average()}")


if __name__ == "__main__":
    main()
