"""Benchmark the oracle's feeding path (a script, not a test): observed events per second.

A four-member group where every message goes to the three others, fed the way a load run feeds
it: `sent()` with the recipients, then one `observe()` per recipient, then `violations()`. The
events are built before the clock starts, so only the oracle is timed, in process CPU seconds
(the best round). Scenarios: `plain` (no harness times, as before happens-before), `late`
(each ack reaches the oracle after the recipients' events, as when fan-out beats the ack),
and, for an oracle whose `sent()` takes `started_at`/`acked_at`, `timed` and `timed-late`
(every send started after the previous ack: each pair of messages is happens-before).

Each line gives the cost per observed event of feeding and of the one `violations()` at the
end, together (the figure the oracle's budget is stated in, issue #15: <= 3 us per event).

A baseline is measured in the same run, alternating rounds, so both see the same machine load:
`--baseline-ref main` reads `harness/oracle/` at that git ref into a temporary package;
`--baseline FILE` loads one module file, such as the oracle before the package split
(`git show f2bf19f~1:harness/oracle.py > /tmp/oracle_old.py`).

`--scaling` measures each candidate at a tenth of `--events` too and prints the per-event cost
at the full size over that at the tenth: about 1 for an oracle linear in the events (memory
that outgrows the caches adds some), about 10 for a quadratic one.

Usage: python bench/bench_oracle.py [--events 300000] [--rounds 5] [--baseline-ref main]
       [--scenarios plain,late] [--scaling]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import inspect
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.contract import Ack, Message, MessageReceived  # noqa: E402

PEOPLE = ("alice", "bob", "carol", "dave")
GROUP = "g:g1"


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("oracle_baseline", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def load_ref(ref: str, into: Path) -> ModuleType:
    """`harness/oracle/` at git `ref` as a package of its own (its imports pointed at it)."""
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{ref}:harness/oracle/"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    package = into / "oracle_baseline_pkg"
    package.mkdir()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{ref}:harness/oracle/{name}"],
                check=True, capture_output=True, text=True,
            ).stdout
            text = text.replace("harness.oracle", "oracle_baseline_pkg")
            (package / name).write_text(text)
    sys.path.insert(0, str(into))
    return importlib.import_module("oracle_baseline_pkg")


Plan = list[tuple[str, Ack, tuple[str, ...], MessageReceived, float, float]]
SCENARIOS = ("plain", "late", "timed", "timed-late")


def script(events: int) -> Plan:
    """Sends with their recipients, the event each gets and the send's times, built ahead."""
    out = []
    for n in range(1, events // (len(PEOPLE) - 1) + 1):
        sender = PEOPLE[n % len(PEOPLE)]
        ack = Ack(f"c{n}", f"m{n}", GROUP, n, 1000.0 + n)
        msg = Message(f"m{n}", GROUP, n, sender, f"c{n}", "text", f"hello {n}", 1000.0 + n, "g1")
        recipients = tuple(p for p in PEOPLE if p != sender)
        event = MessageReceived(msg, offline=n % 7 == 0)
        out.append((sender, ack, recipients, event, float(n), n + 0.5))
    return out


def run(oracle_cls: Any, plan: Plan, scenario: str) -> dict:
    oracle = oracle_cls()
    gc.collect()
    gc.freeze()  # the plan is long-lived: keep the collector from re-walking it
    observe, sent = oracle.observe, oracle.sent
    timed, late = scenario.startswith("timed"), scenario.endswith("late")
    events = 0
    started = time.process_time()  # CPU time: the machine may be shared with other work
    for sender, ack, recipients, event, start, acked in plan:
        if not late:
            if timed:
                sent(sender, ack, recipients=recipients, started_at=start, acked_at=acked)
            else:
                sent(sender, ack, recipients=recipients)
        for who in recipients:
            observe(who, event)
        if late:
            if timed:
                sent(sender, ack, recipients=recipients, started_at=start, acked_at=acked)
            else:
                sent(sender, ack, recipients=recipients)
        events += len(recipients)
    feed = time.process_time() - started
    judged = time.process_time()
    found = oracle.violations()
    judge = time.process_time() - judged
    gc.unfreeze()
    assert found == [], found[:3]
    return {"events": events, "feed_s": feed, "judge_s": judge}


def timed_sent(oracle_cls: Any) -> bool:
    return "started_at" in inspect.signature(oracle_cls.sent).parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument(
        "--scaling", action="store_true", help="also measure at a tenth of --events: the ratio"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--baseline", help="path of another oracle module to measure alongside")
    source.add_argument("--baseline-ref", help="git ref whose harness/oracle/ to measure alongside")
    args = parser.parse_args()
    import harness.oracle as current

    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    candidates: dict[str, Any] = {"current": current.Oracle}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            candidates["baseline"] = load(args.baseline).Oracle
        elif args.baseline_ref:
            candidates["baseline"] = load_ref(args.baseline_ref, Path(tmp)).Oracle
        plan = script(args.events)
        best: dict[tuple[str, str], dict] = {}
        for _ in range(args.rounds):
            for scenario in scenarios:
                for name, cls in candidates.items():
                    if scenario.startswith("timed") and not timed_sent(cls):
                        continue
                    result = run(cls, plan, scenario)
                    key = (scenario, name)
                    if key not in best or result["feed_s"] < best[key]["feed_s"]:
                        best[key] = result
    for (scenario, name), result in best.items():
        rate = result["events"] / result["feed_s"]
        print(
            f"{scenario:<10} {name:<9} {result['events']} events: feed {result['feed_s']:.3f} "
            f"CPU s ({rate:,.0f} events/s incl. sent()), violations() "
            f"{result['judge_s']:.3f} CPU s: {per_event(result):.2f} us per event in all "
            f"(best of {args.rounds})"
        )
    for scenario in scenarios:
        if (scenario, "baseline") in best and (scenario, "current") in best:
            base, cur = best[scenario, "baseline"], best[scenario, "current"]
            print(
                f"{scenario:<10} current/baseline: feed throughput "
                f"{base['feed_s'] / cur['feed_s']:.3f}x, feed + violations() "
                f"{per_event(base) / per_event(cur):.3f}x"
            )
    if args.scaling:
        small = script(args.events // 10)
        for scenario in scenarios:
            for name, cls in candidates.items():
                if scenario.startswith("timed") and not timed_sent(cls):
                    continue
                tenth = min(
                    (run(cls, small, scenario) for _ in range(args.rounds)), key=per_event
                )
                full = best[scenario, name]
                print(
                    f"{scenario:<10} {name:<9} scaling: {per_event(tenth):.2f} us per event at "
                    f"{tenth['events']} events, {per_event(full):.2f} at {full['events']}: "
                    f"{per_event(full) / per_event(tenth):.2f}x per event for 10x the events"
                )


def per_event(result: dict) -> float:
    """Microseconds of CPU per observed event, feeding and judging together."""
    return 1e6 * (result["feed_s"] + result["judge_s"]) / result["events"]


if __name__ == "__main__":
    main()
