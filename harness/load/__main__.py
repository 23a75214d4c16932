"""`python -m harness.load compare`: one scenario, the same load on old and new, judged.

Example::

    python -m harness.load compare --scenario chat --users 20 --run-time 10s
    python -m harness.load ramp --stages 5,20,50,100 --hold 10s --users 20   # canary ramp
    python -m harness.load list        # the registered scenarios, defaults and budgets

The scenario runs old,new,new,old (`--repeats 2`), each run its own headless locust process (so
no locust import here); the old runs are an A/A pair, the noise floor. New regresses on a number
only beyond that noise and the `[compare]` thresholds of the scenario's budgets file
(`harness.load.compare`). Summaries and CSVs land under <--report-dir>/load. Exit code: 0 when
new is no worse than old and within its budgets, 1 otherwise, 2 for a usage error. `ramp` is one
locust run that moves users from old to new stage by stage (`harness.load.ramp`).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib.resources import files
from pathlib import Path
from typing import NoReturn

from harness.load.summary import EXIT_OK, EXIT_OVER_BUDGET, EXIT_USAGE


def default_locustfile() -> Path:
    """The locustfile installed with the package (`harness/loadtests/locustfile.py`)."""
    return Path(str(files("harness.loadtests").joinpath("locustfile.py")))


def processes_args(processes: int) -> list[str]:
    """locust's `--processes N`, its master on loopback at a port free now (never `*:5557`)."""
    from harness.managed import free_port

    port = str(free_port())
    return ["--processes", str(processes), "--master-bind-host", "127.0.0.1",
            "--master-bind-port", port, "--master-port", port]


def locustfile_problem(locustfile: str | Path, scenarios: list[str], *, endpoint: str = "new",
                       config: str | None = None, timeout_s: float = 120.0) -> str | None:
    """What a team's locustfile makes of these scenarios, asked before any run starts.

    Runs locust on it with `--im-check`: the harness's listeners check the scenario names (the
    locustfile may register its own), their budgets and the config, start no server and exit.
    Returns the one-line problem, or None when the file takes them.
    """
    import subprocess

    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--im-check",
           "--scenario", ",".join(scenarios), "--endpoint", endpoint]
    if config:
        cmd += ["--im-config", config]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        return f"--locustfile {str(locustfile)!r} did not answer --im-check in {timeout_s:g} s"
    if done.returncode == EXIT_OK:
        return None
    lines = [ln.strip() for ln in (done.stderr or done.stdout).strip().splitlines()]
    mine = [ln for ln in lines if ln.startswith("im-harness load: ")]
    if mine:
        return mine[-1].removeprefix("im-harness load: ")
    last = lines[-1] if lines else f"exit {done.returncode}"
    return f"--locustfile {str(locustfile)!r} does not load: {last}"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), as everywhere in the harness."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message}; see {self.prog} --help\n")
        sys.exit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m harness.load")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="old vs new under the same load, alternating, with an "
                         "A/A noise floor")
    cmp.add_argument("--scenario", default="chat")
    cmp.add_argument("--endpoints", default="old,new", help="two endpoint names, old first")
    cmp.add_argument("--users", type=int, default=10)
    cmp.add_argument("--spawn-rate", type=float, default=None, help="default: --users per s")
    cmp.add_argument("--run-time", default="10s")
    cmp.add_argument("--repeats", type=int, default=2,
                     help="runs per endpoint, alternating: 2 is old,new,new,old")
    cmp.add_argument("--processes", type=int, default=0, help="locust --processes per run")
    cmp.add_argument("--report-dir", default="reports")
    cmp.add_argument("--locustfile", default=None,
                     help="default: the installed harness.loadtests locustfile")
    cmp.add_argument("extra", nargs=argparse.REMAINDER,
                     help="after --: more locustfile options (--budgets, --im-config, --rate...)")
    sub.add_parser("list", help="the registered scenarios: parameters, defaults, budgets")
    ramp = sub.add_parser("ramp", help="canary ramp: stages of users moving from old to new, "
                                       "each judged against the budgets; stops at a breach")
    ramp.add_argument("--scenario", default="chat")
    ramp.add_argument("--stages", default="5,20,50,100", help="percent of users on new per stage")
    ramp.add_argument("--hold", default="10s", help="how long each stage holds, e.g. 10s")
    ramp.add_argument("--endpoints", default="old,new", help="from,to: two endpoint names")
    ramp.add_argument("--users", type=int, default=10)
    ramp.add_argument("--spawn-rate", type=float, default=None, help="default: --users per s")
    ramp.add_argument("--drain-s", type=float, default=None,
                      help="per stage: seconds for in-flight messages (default 3 units)")
    ramp.add_argument("--processes", type=int, default=0,
                      help="locust --processes (the stages are then judged at the end)")
    ramp.add_argument("--report-dir", default="reports")
    ramp.add_argument("--locustfile", default=None,
                      help="default: the installed harness.loadtests locustfile")
    ramp.add_argument("extra", nargs=argparse.REMAINDER,
                      help="after --: more locustfile options (--budgets, --im-config, ...)")
    return parser


def list_scenarios() -> int:
    from harness.load.scenarios import scenarios

    for name in scenarios:
        item = scenarios.get(name)
        params = ", ".join(f"{k}={v:g}" for k, v in item.defaults.items())
        print(f"{name}: {item.description}\n    {params}\n    budgets: {item.budgets or '-'}")
    return EXIT_OK


class _Lines:
    """Progress as one stderr line per run (the CLI has rich bars; this has none)."""

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None
             ) -> Iterator[Callable[[float], None]]:
        print(f"== {description}", file=sys.stderr, flush=True)
        yield lambda completed: None

    def line(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def compare(args: argparse.Namespace) -> int:
    from harness.errors import ConfigError
    from harness.load.compare import compare_rules
    from harness.report.loadcompare import comparisons
    from harness.report.signoff import Plan, run_compare

    if args.users < 1 or args.processes < 0 or args.repeats < 1 or (
            args.spawn_rate is not None and not (0 < args.spawn_rate < float("inf"))):
        print(f"im-harness load: --users {args.users} must be >= 1, --repeats {args.repeats} "
              f">= 1, --processes {args.processes} >= 0 and --spawn-rate {args.spawn_rate} a "
              "finite number > 0", file=sys.stderr)
        return EXIT_USAGE
    names = [n.strip() for n in args.endpoints.split(",") if n.strip()]
    if len(names) != 2:
        print(f"im-harness load: --endpoints {args.endpoints!r} must name two endpoints, "
              "e.g. old,new", file=sys.stderr)
        return EXIT_USAGE
    try:
        compare_rules(args.scenario)  # a bad [compare] table: before any run
    except ConfigError as exc:
        print(f"im-harness load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    extra = [a for a in args.extra if a != "--"]
    if args.spawn_rate is not None:
        extra += ["-r", f"{args.spawn_rate:g}"]  # after run_load's own -r: this one wins
    plan = Plan(reports=Path(args.report_dir), endpoints=(names[0], names[1]),
                scenarios=[args.scenario], users=args.users, run_time=args.run_time,
                locustfile=args.locustfile, compare_repeats=args.repeats,
                processes=args.processes, locust_args=extra)
    on_new = run_compare(plan, _Lines())
    if any(lo.usage for lo, _, _ in on_new):
        print(next(lo.problem for lo, _, _ in on_new if lo.usage), file=sys.stderr)
        return EXIT_USAGE
    found = comparisons(plan.reports / "load") or []
    bad = False
    for comparison in found:
        print(comparison.text())
        for what, blocking in comparison.findings():
            print(("REGRESSION " if blocking else "note: ") + what)
            bad = bad or blocking
    for lo, _, _ in on_new:
        if lo.summary is not None and not lo.ok:
            print(f"new run {lo.run} over its budgets (SLA): "
                  + ("; ".join(lo.failed_budgets()) or lo.void))
            bad = True
    return EXIT_OVER_BUDGET if bad else EXIT_OK


def ramp(args: argparse.Namespace) -> int:
    """One locust run with `--ramp`: its summary names the stage it rolled back at, if any."""
    from harness.errors import ConfigError
    from harness.load.ramp import ramp_plan
    from harness.timing import units

    names = [n.strip() for n in args.endpoints.split(",")]
    try:
        if len(names) != 2 or not all(names):
            raise ConfigError(f"--endpoints {args.endpoints!r} must name two endpoints, from "
                              "and to, e.g. old,new")
        if names[0] == names[1]:
            raise ConfigError(f"--endpoints {args.endpoints!r} names one endpoint twice; pass "
                              "the endpoint users leave and the one they move to, e.g. old,new")
        plan = ramp_plan(args.stages, args.hold, old=names[0], new=names[1],
                         options=("--stages", "--hold", "--endpoints", "--endpoints"))
        if args.users < 1 or args.processes < 0:
            raise ConfigError(f"--users {args.users} must be >= 1 and --processes "
                              f"{args.processes} >= 0")
        for option, value in (("--spawn-rate", args.spawn_rate), ("--drain-s", args.drain_s)):
            if value is not None and not 0 <= value < float("inf"):
                raise ConfigError(f"{option} {value} must be a finite number >= 0")
    except ConfigError as exc:
        print(f"im-harness ramp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    drain = units(3) if args.drain_s is None else args.drain_s
    stem = Path(args.report_dir) / f"ramp-{args.scenario}-{plan.new}"
    cmd = [sys.executable, "-m", "locust", "-f", args.locustfile or str(default_locustfile()),
           "--headless", "-u", str(args.users), "-r", str(args.spawn_rate or args.users),
           "-t", f"{plan.run_time_s(drain):.0f}s", "--scenario", args.scenario,
           "--endpoint", plan.new, "--ramp", args.stages, "--ramp-hold", args.hold,
           "--ramp-from", plan.old, "--drain-s", f"{drain:g}", "--summary-json", f"{stem}.json",
           "--csv", str(stem), "--html", f"{stem}.html", "--only-summary",
           *[a for a in args.extra if a != "--"]]
    if args.processes:
        cmd += processes_args(args.processes)
    print(f"== ramp: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compare":
        return compare(args)
    if args.command == "ramp":
        return ramp(args)
    if args.command == "list":
        return list_scenarios()
    return EXIT_USAGE  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
