"""Load core without locust: budgets parsing and judging, histogram merging, scenario selection."""

from __future__ import annotations

import random

import pytest

from harness.errors import ConfigError
from harness.load.budgets import parse_budgets
from harness.load.metrics import HIGHEST_US, LoadMetrics, new_histogram
from harness.load.scenarios import plan
from harness.load.summary import build_summary


def _metrics(latencies_ms: list[float], **counts: int) -> LoadMetrics:
    m = LoadMetrics()
    for ms in latencies_ms:
        m.record("send_ack", ms / 1000)
    for name, n in counts.items():
        m.count(name, n)
    return m


def test_budgets_pass_and_fail_on_percentiles_and_counts() -> None:
    budgets = parse_budgets({"max_error_ratio": 0.1, "send_ack": {"p50_ms": 10, "p99_ms": 50}},
                            source="t.toml")
    ok = budgets.evaluate(_metrics([5.0] * 99 + [40.0], sends=100, connects=1))
    assert all(v.ok for v in ok), ok
    bad = budgets.evaluate(_metrics([5.0] * 90 + [80.0] * 10, sends=100, send_errors=20,
                                    loss=1, connects=1))
    failed = {v.budget for v in bad if not v.ok}
    assert failed == {"send_ack.p99_ms", "max_error_ratio", "max_loss"}


def test_budget_with_no_samples_fails() -> None:
    budgets = parse_budgets({"delivery": {"p99_ms": 100}}, source="t.toml")
    [verdict, *_] = budgets.evaluate(LoadMetrics())
    assert verdict.budget == "delivery.p99_ms"
    assert not verdict.ok
    assert verdict.detail == "nothing measured"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"max_los": 0}, "'max_los' is not a budget key"),
        ({"send_ack": {"p99": 3}}, "[send_ack] 'p99' is not a budget key"),
        ({"max_error_ratio": 2}, "must be a ratio between 0 and 1"),
        ({"max_loss": "none"}, "max_loss = 'none' must be a finite number >= 0"),
    ],
)
def test_bad_budget_keys_are_one_line_errors(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_budgets(data, source="b.toml")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_encoded_histograms_merge_exactly() -> None:
    a, b = _metrics([1.0] * 50, sends=50), _metrics([100.0] * 50, sends=50)
    merged = LoadMetrics.merged([a.encode(), b.encode()])
    assert merged.samples("send_ack") == 100
    assert merged.counts["sends"] == 100
    pct = merged.percentiles_ms("send_ack")
    assert pct["p50"] == pytest.approx(1.0, rel=0.01)
    assert pct["p99"] == pytest.approx(100.0, rel=0.01)
    assert merged.sources == 2


def test_scenario_selection_and_unknown_name() -> None:
    chosen = plan("chat:3,group", None, {"rate": 5.0, "group_size": None})
    assert chosen.weights == {"chat": 3, "group": 1}
    assert chosen.params["chat"]["rate"] == 5.0
    assert chosen.params["group"]["group_size"] == 5
    with pytest.raises(ConfigError, match="'chatt' is not a scenario; known: chat"):
        plan("chatt")


def test_batched_recording_matches_hdrhistogram_exactly() -> None:
    rng = random.Random(7)
    seconds = [rng.lognormvariate(-5, 1.5) for _ in range(5000)] + [-0.001, 0.0, 7200.0]
    batched, direct = LoadMetrics(), new_histogram()
    for s in seconds:
        batched.record("delivery", s)
        direct.record_value(min(max(int(s * 1_000_000), 1), HIGHEST_US))
    hist = batched.histograms["delivery"]
    assert list(hist.counts) == list(direct.counts)
    assert hist.get_total_count() == direct.get_total_count() == len(seconds)
    assert hist.get_min_value() == direct.get_min_value()
    assert hist.get_max_value() == direct.get_max_value()
    assert hist.get_value_at_percentile(99.9) == direct.get_value_at_percentile(99.9)
    batched.record("delivery", 0.5)  # recorded after a read: still counted
    assert batched.samples("delivery") == len(seconds) + 1


def test_summary_histogram_counts_every_sample_in_order() -> None:
    m = _metrics([1.0] * 30 + [2.0] * 50 + [40.0] * 20)
    summary = build_summary(m, scenario="chat", endpoint={"name": "new"})
    rows = summary["histogram_ms"]["send_ack"]
    assert set(summary["histogram_ms"]) == {"send_ack"}  # metrics with no samples are left out
    assert sum(n for _, n in rows) == 100
    uppers = [upper for upper, _ in rows]
    assert uppers == sorted(uppers)
    assert [n for _, n in rows] == [30, 50, 20]
    assert uppers[0] == pytest.approx(1.0, rel=0.01)
    assert uppers[-1] == pytest.approx(40.0, rel=0.01)
    assert len(m.histogram_ms("send_ack", buckets=10)) <= 11
