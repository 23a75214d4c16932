"""Benchmark the load generator (a script, not a test).

1. Throughput: the same chat load against one reference service, alternating the harness's
   locust user (loadtests/locustfile.py) and a minimal hand-written locust user speaking the
   reference protocol with `websockets.sync.client` (NaiveChatUser below). Reports delivered
   messages/s per generator CPU-second for each and their ratio, over a steady-state window
   (start-up excluded) measured the same way for both.
2. Capacity: idle connected sessions held by one generator process, and RSS per session.

Both users send on the same traffic shape (`--shape`): each sender's phase spread evenly over
its interval (as the harness does by default), or all in lock-step; the shape alone moves the
generator's CPU (lock-step senders share the loop's wake-ups).

With two or more cores the service runs pinned to CPU 0 and every generator to CPU 1 (`--pin`,
on by default): the two do not take each other's core, and both users get the same one. A
round in which the service delivered less than `SERVICE_BOUND` of the offered load measured the
service, not the generators: it is left out of the ratio, and with no round left there is no
figure (the 2-core machines here cannot serve 40 users x 100 msg/s: the service tops out at a
few hundred msg/s on its core).
Every run prints the load average, as other work on the machine moves CPU per message.

Usage: python bench/bench_load.py [--users 10] [--rate 20] [--warmup 3] [--window 15]
                                  [--rounds 4] [--sessions 10000] [--skip capacity]
                                  [--shape spread|lockstep] [--pin | --no-pin]
Run by locust (`locust -f bench/bench_load.py NaiveChatUser`) this file is the naive locustfile.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SERVICE_BOUND = 0.95  # delivered / offered below this: the service, not the generator, set the pace
SERVICE_CPU, GENERATOR_CPU = 0, 1  # the cores of --pin

if "locust" in sys.modules or os.environ.get("BENCH_NAIVE_OUT"):
    # -- the naive locust user (only when locust imports this file) ------------------------------
    import itertools

    from locust import User, constant, events, task
    from websockets.sync.client import ClientConnection, connect

    DELIVERED = [0]
    SENT = itertools.count()

    class NaiveChatUser(User):
        """Two sync WebSocket clients; A sends to B on a fixed schedule, B reads the delivery."""

        wait_time = constant(0)

        def _login(self, token: str) -> ClientConnection:
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
            # the same traffic shape as the harness: spread phases, or all in lock-step
            from harness.load.phases import first_at, van_der_corput

            phase = 0.0 if os.environ.get("BENCH_SHAPE") == "lockstep" else van_der_corput(index)
            self.next_at = first_at(time.monotonic(), self.interval, phase)
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


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of process `pid` to `cpu` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def pinning(wanted: bool) -> bool:
    """Whether --pin can apply here: two cores or more, and sched_setaffinity."""
    return wanted and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _tree_cpu(proc: Any) -> float:
    """User + system CPU seconds of a process and its children (the generator processes)."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            times = p.cpu_times()
        except Exception:  # a child that just ended: psutil.NoSuchProcess
            continue
        total += times.user + times.system
    return total


def _counter(service: Any, name: str, attempts: int = 5) -> int:
    """The service's counter `name`; retried, as a saturated service answers admin calls late."""
    from harness.errors import HarnessError
    from harness.session import run_sync

    async def read() -> int:
        admin = service.admin()
        try:
            return int((await admin.counters())[name])
        finally:
            await admin.aclose()

    for attempt in range(attempts):
        try:
            return run_sync(read())
        except HarnessError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a locust child gracefully (SIGTERM: it writes its summary), then for sure."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start(cmd: list[str], env: dict[str, str], cwd: Path,
           args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """A locust child, on the generators' core when pinned."""
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {GENERATOR_CPU}))
                            if getattr(args, "pin", False) else None)


def _first_delivery(proc: subprocess.Popen[bytes], service: Any, name: str) -> None:
    """Wait until the service counts a delivery more (the child is up and sending)."""
    base = _counter(service, "deliveries")
    give_up = time.monotonic() + 60
    while _counter(service, "deliveries") == base:
        if proc.poll() is not None or time.monotonic() > give_up:
            raise SystemExit(f"bench: {name} delivered nothing; run it by hand to see why")
        time.sleep(0.1)


def _measure(cmd: list[str], env: dict[str, str], cwd: Path, service: Any,
             args: argparse.Namespace) -> tuple[int, float, float]:
    """Run a locust child; (deliveries, generator CPU-s, wall s) over its steady-state window.

    The window opens `--warmup` seconds after the service saw the first delivery (start-up,
    imports and logins excluded) and lasts `--window` seconds; deliveries are the service's own
    counter, CPU the child's (and its children's) psutil times, both read at the window's edges.
    """
    return _measure_together([(cmd, env, service)], cwd, args)[0]


def _measure_together(runs: list[tuple[list[str], dict[str, str], Any]], cwd: Path,
                      args: argparse.Namespace) -> list[tuple[int, float, float]]:
    """`_measure` for several children at once, each on its own service, over one window."""
    import psutil

    procs = [_start(cmd, env, cwd, args) for cmd, env, _ in runs]
    try:
        trees = [psutil.Process(proc.pid) for proc in procs]
        for proc, (cmd, _, service) in zip(procs, runs, strict=True):
            _first_delivery(proc, service, cmd[4])
        time.sleep(args.warmup)
        start = [(_counter(service, "deliveries"), _tree_cpu(tree), time.monotonic())
                 for tree, (_, _, service) in zip(trees, runs, strict=True)]
        time.sleep(args.window)
        end = [(_counter(service, "deliveries"), _tree_cpu(tree), time.monotonic())
               for tree, (_, _, service) in zip(trees, runs, strict=True)]
        if any(proc.poll() is not None for proc in procs):
            raise SystemExit("bench: a locust run ended inside the window; raise its -t")
    finally:
        for proc in procs:
            _stop(proc)
    return [(d1 - d0, c1 - c0, t1 - t0) for (d0, c0, t0), (d1, c1, t1) in zip(start, end,
                                                                               strict=True)]


def _mint(service: Any, app: Any, count: int, prefix: str) -> list[tuple[str, str]]:
    from harness.session import run_sync

    async def mint() -> list[tuple[str, str]]:
        admin = service.admin()
        try:
            out = []
            for i in range(count):
                creds = await admin.mint_user(app, f"{prefix}-{i}-{os.getpid()}")
                out.append((creds.user_id, creds.token))
            return out
        finally:
            await admin.aclose()

    return run_sync(mint())


def throughput(service: Any, app: Any, args: argparse.Namespace, work: Path,
               twin: tuple[Any, Any] | None = None) -> None:
    """Alternate the two users on the same load (or, given a `twin` service and app for the
    naive user, run both at once); print delivered msg per generator CPU-second."""
    env = {**os.environ, "BENCH_WS": service.ws_url, "BENCH_RATE": str(args.rate),
           "BENCH_NAIVE_OUT": str(work / "naive.json"), "BENCH_APP_KEY": app.app_key,
           "BENCH_SHAPE": args.shape}
    (work / "shape.toml").write_text(f"[chat]\nlockstep = {int(args.shape == 'lockstep')}\n")
    run_time = f"{int(args.warmup + args.window + 30)}s"  # ended by SIGTERM after the window
    common = ["--headless", "-u", str(args.users), "-r", str(args.users), "-t", run_time,
              "--only-summary", "--stop-timeout", "2"]
    # Same offered load: the harness chat unit is a pair sending both ways at rate/2 each.
    harness_cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"),
                   *common, "--scenario", "chat", "--rate", str(args.rate / 2),
                   "--scenarios-file", str(work / "shape.toml"),
                   # this checkout's budgets (an editable install may point at another one)
                   "--budgets", str(ROOT / "loadtests/budgets/chat.toml"),
                   "--summary-json", str(work / "harness.json"), "--drain-s", "1"]
    naive_cmd = [sys.executable, "-m", "locust", "-f", str(Path(__file__).resolve()), *common,
                 "NaiveChatUser"]
    results: dict[str, list[float]] = {"harness": [], "naive": []}
    offered = args.users * args.rate
    bound: set[int] = set()  # rounds in which the service, not a generator, set the pace
    print(f"throughput: {args.users} users x {args.rate:g} msg/s ({offered:g} msg/s offered), "
          f"phases {args.shape}, warm-up {args.warmup:g}s, window {args.window:g}s, "
          f"{args.rounds} {'rounds, both users at once' if twin else 'alternating rounds'}, "
          f"{'service(s) on CPU 0, generators on CPU 1' if args.pin else 'not pinned'}; "
          f"{load_average()}", flush=True)
    naive_service, naive_app = twin or (service, app)
    for r in range(args.rounds):
        # fresh naive users every round: no inbox replayed from an earlier round
        tokens = _mint(naive_service, naive_app, 2 * args.users, f"naive{r}")
        naive_env = {**env, "BENCH_TOKENS": json.dumps(tokens), "BENCH_WS": naive_service.ws_url}
        measured: Iterable[tuple[str, tuple[int, float, float]]]
        if twin:  # the same moment of the machine for both: its load drifts between runs
            measured = zip(("harness", "naive"), _measure_together(
                [(harness_cmd, env, service), (naive_cmd, naive_env, naive_service)], work, args),
                strict=True)
        else:
            order = (("harness", harness_cmd, env, service),
                     ("naive", naive_cmd, naive_env, naive_service))
            measured = ((kind, _measure(cmd, run_env, work, svc, args)) for kind, cmd, run_env, svc
                        in (order if r % 2 == 0 else order[::-1]))
        for kind, (delivered, cpu, wall) in measured:
            per_cpu = delivered / cpu if cpu else 0.0
            results[kind].append(per_cpu)
            served = delivered / wall / offered
            if served < SERVICE_BOUND:
                bound.add(r)
            print(f"  {kind:<8} {delivered:>7} delivered in {wall:5.1f}s: {delivered / wall:7.1f}"
                  f" msg/s ({served:4.0%} of offered), {cpu:5.2f} CPU-s "
                  f"({100 * cpu / wall:4.1f}% of a core), {per_cpu:7.1f} msg per CPU-s; "
                  f"{load_average()}", flush=True)
    valid = [r for r in range(args.rounds) if r not in bound]
    if bound:
        print(f"  rounds {', '.join(str(r + 1) for r in sorted(bound))} left out: the service "
              f"delivered under {SERVICE_BOUND:.0%} of the offered load (it, not the generator, "
              "set the pace)")
    if not valid:
        print("NOT A VALID FIGURE: in every round the service set the pace, not the generators")
        return
    h = statistics.fmean(results["harness"][r] for r in valid)
    n = statistics.fmean(results["naive"][r] for r in valid)
    # each round's ratio against the naive run next to it: the spread on a shared machine
    rounds = [results["harness"][r] / results["naive"][r] for r in valid if results["naive"][r]]
    spread = (f", per round {min(rounds):.2f}x..{max(rounds):.2f}x, median "
              f"{statistics.median(rounds):.2f}x") if rounds else ""
    print(f"delivered msg per generator CPU-second over {len(valid)} valid rounds: harness "
          f"{h:.1f}, naive {n:.1f}, ratio {h / n if n else float('nan'):.2f}x{spread} "
          "(target >= 2.0x)")


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
          f"RSS {best[1] / 2**20:.1f} MiB, {per_session:.1f} KiB per session (target <= 12)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s per user")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds after the first delivery before the window opens")
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (order flips)")
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--hold", type=int, default=90, help="seconds the capacity run lasts")
    parser.add_argument("--skip", choices=("throughput", "capacity"), default=None)
    parser.add_argument("--shape", choices=("spread", "lockstep"), default="spread",
                        help="both users' send phases: spread evenly, or all in lock-step")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="service on CPU 0, generators on CPU 1 (when there are two)")
    parser.add_argument("--together", action="store_true",
                        help="run both users at once, each on its own service (one window of "
                             "the machine for both), instead of alternating")
    args = parser.parse_args()
    args.pin = pinning(args.pin)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    from harness.reference.launcher import ReferenceService

    with tempfile.TemporaryDirectory() as tmp, ReferenceService() as service:
        work = Path(tmp)
        if args.pin and service.pid is not None:
            pin(service.pid, SERVICE_CPU)
        app = service.create_app_sync(tier="pro", limits={"max_connections": 4 * args.sessions})
        (work / "im-harness.toml").write_text(
            f'[endpoints.new]\nurl = "{service.ws_url}"\napp_id = "{app.app_id}"\n'
            'app_key_env = "BENCH_APP_KEY"\nprotocol = "v2"\ntier = "pro"\n'
            f'options = {{ api_url = "{service.api_url}" }}\n')
        if args.skip != "throughput":
            if args.together:
                with ReferenceService() as second:
                    if args.pin and second.pid is not None:
                        pin(second.pid, SERVICE_CPU)
                    throughput(service, app, args, work, twin=(second, second.create_app_sync(
                        tier="pro", limits={"max_connections": 4 * args.users})))
            else:
                throughput(service, app, args, work)
        if args.skip != "capacity":
            capacity(service, app, args, work)


if __name__ == "__main__":
    main()
