"""`python -m harness.load compare`: one scenario, same load, against old and new, side by side.

Example::

    python -m harness.load compare --scenario chat --users 20 --run-time 10s
    python -m harness.load list        # the registered scenarios, defaults and budgets

Each endpoint runs as its own headless locust process (so no locust import here); the summaries,
CSVs and HTML reports land under --report-dir. Exit code: 0 when every run is within budget,
1 when one is over, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import NoReturn

from harness.load.summary import EXIT_OK, EXIT_OVER_BUDGET, EXIT_USAGE, compare_table


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
    cmp = sub.add_parser("compare", help="run a scenario against two endpoints, side by side")
    cmp.add_argument("--scenario", default="chat")
    cmp.add_argument("--endpoints", default="old,new", help="two endpoint names, old first")
    cmp.add_argument("--users", type=int, default=10)
    cmp.add_argument("--spawn-rate", type=float, default=None, help="default: --users per s")
    cmp.add_argument("--run-time", default="10s")
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


def compare(args: argparse.Namespace) -> int:
    if args.users < 1 or args.processes < 0 or (args.spawn_rate is not None and not (
            0 < args.spawn_rate < float("inf"))):
        print(f"im-harness load: --users {args.users} must be >= 1, --processes "
              f"{args.processes} >= 0 and --spawn-rate {args.spawn_rate} a finite number > 0",
              file=sys.stderr)
        return EXIT_USAGE
    names = [n.strip() for n in args.endpoints.split(",") if n.strip()]
    if len(names) != 2:
        print(f"im-harness load: --endpoints {args.endpoints!r} must name two endpoints, "
              "e.g. old,new", file=sys.stderr)
        return EXIT_USAGE
    extra = [a for a in args.extra if a != "--"]
    report = Path(args.report_dir)
    summaries = []
    for name in names:
        stem = report / f"load-{args.scenario}-{name}"
        locustfile = args.locustfile or str(default_locustfile())
        cmd = [sys.executable, "-m", "locust", "-f", locustfile, "--headless",
               "-u", str(args.users), "-r", str(args.spawn_rate or args.users),
               "-t", args.run_time, "--scenario", args.scenario, "--endpoint", name,
               "--summary-json", f"{stem}.json", "--csv", str(stem), "--html", f"{stem}.html",
               "--only-summary", *extra]
        if args.processes:
            cmd += ["--processes", str(args.processes)]
        print(f"== {name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, check=False)
        if done.returncode == EXIT_USAGE:
            return EXIT_USAGE
        try:
            summaries.append(json.loads(Path(f"{stem}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            print(f"im-harness load: the {name} run wrote no summary ({exc}); see its output "
                  "above", file=sys.stderr)
            return EXIT_OVER_BUDGET
    old, new = summaries
    print(f"scenario {args.scenario}: {names[0]} = {old['endpoint']['describe']}, "
          f"{names[1]} = {new['endpoint']['describe']}")
    print(compare_table(old, new))
    ok = old["within_budget"] and new["within_budget"]
    return EXIT_OK if ok else EXIT_OVER_BUDGET


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compare":
        return compare(args)
    if args.command == "list":
        return list_scenarios()
    return EXIT_USAGE  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
