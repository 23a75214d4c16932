"""Benchmark the oracle's feeding path (a script, not a test): observed events per second.

A four-member group where every message goes to the three others, fed the way a load run feeds
it: `sent()` with the recipients, then one `observe()` per recipient, then `violations()`. The
events are built before the clock starts, so only the oracle is timed, in process CPU seconds
(the best round). With `--baseline FILE` another oracle module, one file such as the one before
the package split (`git show f2bf19f~1:harness/oracle.py > /tmp/oracle_old.py`), is measured
in the same run, alternating rounds, so both see the same machine load.

Usage: python bench/bench_oracle.py [--events 300000] [--rounds 5] [--baseline /tmp/old.py]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
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


def script(events: int) -> list[tuple[str, Ack, tuple[str, ...], MessageReceived]]:
    """Sends with their recipients and the event each recipient gets, built ahead of time."""
    out = []
    for n in range(1, events // (len(PEOPLE) - 1) + 1):
        sender = PEOPLE[n % len(PEOPLE)]
        ack = Ack(f"c{n}", f"m{n}", GROUP, n, 1000.0 + n)
        msg = Message(f"m{n}", GROUP, n, sender, f"c{n}", "text", f"hello {n}", 1000.0 + n, "g1")
        recipients = tuple(p for p in PEOPLE if p != sender)
        out.append((sender, ack, recipients, MessageReceived(msg, offline=n % 7 == 0)))
    return out


def run(oracle_cls: Any, plan: list[tuple[str, Ack, tuple[str, ...], MessageReceived]]) -> dict:
    oracle = oracle_cls()
    gc.collect()
    gc.freeze()  # the plan is long-lived: keep the collector from re-walking it
    observe, sent = oracle.observe, oracle.sent
    events = 0
    started = time.process_time()  # CPU time: the machine may be shared with other work
    for sender, ack, recipients, event in plan:
        sent(sender, ack, recipients=recipients)
        for who in recipients:
            observe(who, event)
        events += len(recipients)
    feed = time.process_time() - started
    judged = time.process_time()
    found = oracle.violations()
    judge = time.process_time() - judged
    gc.unfreeze()
    assert found == [], found[:3]
    return {"events": events, "feed_s": feed, "judge_s": judge}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", help="path of another oracle module to measure alongside")
    args = parser.parse_args()
    import harness.oracle as current

    candidates: dict[str, Any] = {"current": current.Oracle}
    if args.baseline:
        candidates["baseline"] = load(args.baseline).Oracle
    plan = script(args.events)
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, cls in candidates.items():
            result = run(cls, plan)
            if name not in best or result["feed_s"] < best[name]["feed_s"]:
                best[name] = result
    for name, result in best.items():
        rate = result["events"] / result["feed_s"]
        print(
            f"{name:<9} {result['events']} events: feed {result['feed_s']:.3f} CPU s "
            f"({rate:,.0f} events/s incl. sent()), violations() {result['judge_s']:.3f} CPU s "
            f"(best of {args.rounds})"
        )
    if "baseline" in best:
        ratio = best["baseline"]["feed_s"] / best["current"]["feed_s"]
        print(f"current/baseline throughput: {ratio:.3f}")


if __name__ == "__main__":
    main()
