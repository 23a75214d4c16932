"""Old vs new, generator health and the capacity search, as plain functions on summaries.

The real runs (sign-off GO and NO-GO on a seeded defect, a saturated generator, the capacity
search on the embedded service) are in test_load_compare_runs.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.load.budgets import CompareRules, parse_budgets
from harness.load.capacity import Status, Step, ratio_line, search
from harness.load.compare import compare_runs, run_order
from harness.load.health import Bounds, LoopProbe, judge, offered_rate
from harness.load.scenarios import plan

RULES = CompareRules()


def summary(delivery_ms: float, *, error: float = 0.0, rate: float = 40.0,
            describe: str = "reference v2, tier pro", void: bool = False,
            resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parts of a load summary (harness.load.summary.build_summary) the comparison reads."""
    pct = {"p50": delivery_ms, "p95": delivery_ms * 1.5, "p99": delivery_ms * 2}
    return {"endpoint": {"describe": describe}, "samples": {"send_ack": 100, "delivery": 100},
            "latency_ms": {"send_ack": {"p50": 5.0, "p95": 8.0, "p99": 9.0}, "delivery": pct},
            "ratios": {"error": error}, "deliveries_per_s": rate,
            "generator": {"void": void, "reasons": ["event-loop lag p99 900 ms > 100 ms"]
                          if void else []},
            "server_resources": resources}


def test_run_order_alternates_and_always_has_an_aa_pair() -> None:
    assert run_order(2) == ["old", "new", "new", "old"]
    assert run_order(3) == ["old", "new", "new", "old", "old", "new"]
    assert run_order(1) == ["old", "new", "old"]


def test_slower_delivery_on_new_in_every_run_is_a_regression_with_both_numbers() -> None:
    found = compare_runs([summary(10), summary(11)], [summary(210), summary(212)], RULES,
                         scenario="chat")
    labels = {r.label for r in found.regressions}
    assert labels == {"delivery p50", "delivery p95", "delivery p99"}
    line = next(what for what, blocking in found.findings() if blocking)
    assert "delivery p50 211 ms on new vs 10.5 ms on old" in line
    assert "A/A noise 1 ms" in line


def test_within_the_noise_or_the_thresholds_or_in_one_run_only_is_no_regression() -> None:
    noisy = compare_runs([summary(10), summary(40)], [summary(38), summary(39)], RULES)
    assert not noisy.regressions  # +13.5 ms, but old differs from itself by 30 ms
    small = compare_runs([summary(10), summary(10.5)], [summary(17), summary(17)], RULES)
    assert not small.regressions  # +6.8 ms p50: under the absolute 10 ms
    once = compare_runs([summary(10), summary(11)], [summary(300), summary(9)], RULES)
    assert not once.regressions  # one slow new run on a busy machine
    [(what, blocking)] = once.findings()
    assert not blocking
    assert "not worse than old" in what


def test_errors_fewer_deliveries_and_server_growth_are_regressions() -> None:
    grown = {"cpu_s_per_delivery": 0.002, "peak_rss_bytes": 90e6}
    base = {"cpu_s_per_delivery": 0.001, "peak_rss_bytes": 60e6}
    found = compare_runs([summary(10, resources=base), summary(10, resources=base)],
                         [summary(10, error=0.05, rate=20, resources=grown),
                          summary(10, error=0.04, rate=21, resources=grown)], RULES)
    assert {r.label for r in found.regressions} == {
        "error ratio", "deliveries/s", "server CPU s/delivery"}  # RSS 1.5x is not beyond 1.5x
    cpu = next(r for r in found.regressions if r.label == "server CPU s/delivery")
    assert "0.002 on new vs 0.001 on old" in cpu.finding()


def test_a_void_run_leaves_the_scenario_not_judged_never_a_server_regression() -> None:
    found = compare_runs([summary(10), summary(10)], [summary(500, void=True), summary(500)],
                         RULES, scenario="chat")
    assert not found.rows
    assert not found.regressions
    [(what, blocking)] = found.findings()
    assert blocking
    assert "new run 1 is void" in what
    assert "event-loop lag p99 900 ms" in what


@pytest.mark.parametrize(("table", "words"), [
    ({"relatve": 0.1}, "'relatve' is not a compare key"),
    ({"relative": -1}, "compare.relative = -1 must be a finite number >= 0"),
    ({"absolute_ms": {"p42": 1}}, "'p42' is not a percentile"),
    ({"metrics": ["latency"]}, "metrics = ['latency'] must be a non-empty list"),
    ({"cpu_growth": 0.5}, "cpu_growth = 0.5 must be a ratio >= 1"),
    ({"deliveries_drop": 2}, "deliveries_drop = 2 must be a ratio between 0 and 1"),
])
def test_bad_compare_table_is_one_line_naming_key_and_value(table: dict[str, Any],
                                                            words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_budgets({"compare": table}, source="b.toml")
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_compare_table_sets_rules_and_keeps_the_defaults() -> None:
    rules = parse_budgets({"compare": {"relative": 0.5, "absolute_ms": 3}}, source="b").compare
    assert rules.relative == 0.5
    assert rules.absolute("p99") == 3
    assert rules.metrics == CompareRules().metrics
    assert CompareRules.from_dict(rules.to_dict()) == rules


def test_loop_probe_sees_a_blocked_loop_and_the_judge_voids_it() -> None:
    async def run(block_s: float) -> dict[str, Any] | None:
        probe = LoopProbe(interval_s=0.01)
        probe.start()
        for _ in range(5):
            await asyncio.sleep(0.02)
            time.sleep(block_s)  # noqa: ASYNC251 - the generator's own work holding the loop
        return probe.stop()

    blocked = asyncio.run(run(0.15))
    assert blocked is not None
    assert blocked["loop_lag_ms"]["max"] >= 100
    verdict = judge([{"health": blocked}], behind_ratio=0.0, bounds=Bounds(loop_lag_p99_ms=50))
    assert verdict["void"]
    assert "event-loop lag p99" in verdict["reasons"][0]
    free = asyncio.run(run(0.0))
    assert not judge([{"health": free}], behind_ratio=0.0,
                     bounds=Bounds(loop_lag_p99_ms=50, cpu_ratio=1.0))["void"]
    brief = {**free, "cpu_ratio": 1.03, "wall_s": 0.05}  # ended right after it started
    assert not judge([{"health": brief}], behind_ratio=0.0)["void"]
    late = judge([{"health": free}], behind_ratio=0.4, bounds=Bounds(cpu_ratio=1.0))
    assert late["void"]
    assert late["reasons"] == ["40.0% of sends behind schedule > 30%"]


def test_offered_rate_is_users_times_rate_times_senders_times_fan_out() -> None:
    chosen = plan("chat:1,group:1", overrides={"rate": 2.0, "group_size": 5})
    sends, deliveries = offered_rate(chosen.weights, chosen.params, 10) or (0, 0)
    # 5 chat users x 2 senders x 2/s = 20; 5 group owners x 2/s = 10 sends, x 4 members
    assert (sends, deliveries) == (30.0, 60.0)


def _endpoint(capacity: int, *, void_from: int | None = None):  # noqa: ANN202
    def probe(users: int) -> Step:
        if void_from is not None and void_from <= users <= max(capacity, void_from) + 10:
            return Step(users, False, void="event-loop lag p99 500 ms > 100 ms")
        return Step(users, users <= capacity, failed=() if users <= capacity else ("cap",))
    return probe


def test_capacity_brackets_then_bisects_to_the_resolution() -> None:
    found = search(_endpoint(50), start=8, cap=256, resolution=0.1, endpoint="old")
    assert found.status is Status.CONVERGED
    assert [s.users for s in found.steps] == [8, 16, 32, 64, 48, 56, 52]
    assert (found.low, found.high) == (48, 52)
    assert "48 users within budget, 52 over (cap): capacity 48-51 users" in found.line()


def test_capacity_at_the_user_cap_or_a_saturated_generator_is_only_a_lower_bound() -> None:
    capped = search(_endpoint(10_000), start=8, cap=100, endpoint="new")
    assert capped.status is Status.USER_CAP
    assert capped.low == 100
    assert [s.users for s in capped.steps] == [8, 16, 32, 64, 100]
    assert "hit the user cap without converging" in capped.line()
    bound = search(_endpoint(10_000, void_from=64), start=8, cap=256, endpoint="new")
    assert bound.status is Status.GENERATOR
    assert bound.low == 32
    assert "generator saturated at 64 users" in bound.line()
    narrowing = search(_endpoint(50, void_from=40), start=8, cap=256, endpoint="old")
    assert (narrowing.low, narrowing.high, narrowing.status) == (32, 64, Status.GENERATOR)
    assert "32 users within budget, 64 over; the load generator saturated at 48" in \
        narrowing.line()
    old = search(_endpoint(50), start=8, cap=256, endpoint="old")
    assert "holds at least 2.1x the users of old" in ratio_line(old, capped)
    assert "neither search converged" in ratio_line(bound, capped)


def test_capacity_below_the_first_step_is_bisected_down() -> None:
    found = search(_endpoint(3), start=8, cap=64, endpoint="old")
    assert (found.low, found.high, found.status) == (3, 4, Status.CONVERGED)


def test_capacity_section_is_notes_and_its_result_carries_the_curve(tmp_path: Path) -> None:
    from harness.report.capacityreport import (
        capacity_document,
        capacity_result,
        read_capacity,
        write_capacity,
    )
    from harness.report.sections import RunFiles

    old = search(_endpoint(50), start=8, cap=256, endpoint="old")
    new = search(_endpoint(10_000), start=8, cap=128, endpoint="new")
    write_capacity(tmp_path, capacity_document("chat", old, new))
    files = RunFiles(tmp_path / "allure-results", tmp_path, ("old", "new"))
    assert read_capacity(files) is None  # this run did not search: earlier files stay unread
    section = read_capacity(RunFiles(files.results_dir, tmp_path, ("old", "new"),
                                     options={"capacity": True}))
    assert section is not None
    assert section.ok  # a capacity is a fact to know, not a NO-GO
    assert "holds at least 2.7x the users of old" in section.text
    result = capacity_result(section)
    assert [a.mime for a in result.attachments] == ["application/json", "image/png"]
