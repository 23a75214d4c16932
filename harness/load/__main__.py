"""`python -m harness.load compare`: one scenario, the same load on old and new, judged.

Example::

    python -m harness.load compare --scenario chat --users 20 --run-time 10s
    python -m harness.load list        # the registered scenarios, defaults and budgets

The scenario runs old,new,new,old (`--repeats 2`), each run its own headless locust process (so
no locust import here); the old runs are an A/A pair, the noise floor. New regresses on a number
only beyond that noise and the `[compare]` thresholds of the scenario's budgets file
(`harness.load.compare`). Summaries and CSVs land under <--report-dir>/load. Exit code: 0 when
new is no worse than old and within its budgets, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib.resources import files
from pathlib import Path
from typing import NoReturn

from harness.load.summary import EXIT_OK, EXIT_OVER_BUDGET, EXIT_USAGE


def default_locustfile() -> Path:
    """The locustfile installed with the package (`harness/loadtests/locustfile.py`)."""
    return Path(str(files("harness.loadtests").joinpath("locustfile.py")))


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compare":
        return compare(args)
    if args.command == "list":
        return list_scenarios()
    return EXIT_USAGE  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
