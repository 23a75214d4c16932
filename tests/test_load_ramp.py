"""The canary ramp: real locust runs on two embedded reference services (old and new), and the
stage judgement on real metrics. A seeded `slow_delivery` on the new endpoint only must roll the
ramp back at its first stage, naming the budget and the numbers; clean, it completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.load.budgets import parse_budgets
from harness.load.metrics import LoadMetrics
from harness.load.ramp import (
    OVERALL_ERROR,
    Outcome,
    RampPlan,
    judge_payloads,
    on_new,
    parse_hold,
    parse_stages,
    ramp_plan,
    ramp_verdicts,
)
from harness.load.resources import absent
from harness.report.loadreport import load_result
from harness.report.verdict import LoadOutcome
from harness.timing import units

ROOT = Path(__file__).resolve().parents[1]
LOCUST = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py")]
ENDPOINTS = """
[endpoints.old]
protocol = "v1"
tier = {{ name = "free" }}

[endpoints.new]
protocol = "v2"
defects = {defects}
tier = {{ name = "pro", features = {{ recall = true, receipts = true }} }}
"""
BUDGETS = parse_budgets({"max_error_ratio": 0.01, "delivery": {"p95_ms": 150}}, source="t")


def _ramp(tmp: Path, *extra: str, defects: str = "[]", run_time: str = "90s"
          ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    (tmp / "im-harness.toml").write_text(ENDPOINTS.format(defects=defects), encoding="utf-8")
    done = subprocess.run(
        [*LOCUST, "--headless", "-u", "4", "-r", "4", "-t", run_time, "--scenario", "chat",
         "--ramp", "5,20,50,100", "--ramp-hold", "1s", "--drain-s", "1",
         "--summary-json", str(tmp / "summary.json"), "--only-summary", *extra],
        cwd=tmp, capture_output=True, text=True, timeout=units(120), env=dict(os.environ),
        check=False)
    file = tmp / "summary.json"
    return done, json.loads(file.read_text(encoding="utf-8")) if file.exists() else None


@pytest.mark.slow
def test_clean_ramp_completes_with_every_stage_within_budget(tmp_path: Path) -> None:
    done, s = _ramp(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert s is not None
    ramp = s["ramp"]
    assert ramp["outcome"] == Outcome.COMPLETE
    assert ramp["line"] == "ramp complete: 100 % on new"
    assert "ramp complete: 100 % on new" in done.stderr
    assert [r["percent"] for r in ramp["results"]] == [5, 20, 50, 100]
    assert all(r["ok"] and not r["breaches"] for r in ramp["results"])
    shares = [r["users"]["new"] for r in ramp["results"]]
    assert shares == sorted(shares)
    assert shares[0] >= 1
    assert ramp["results"][0]["users"]["old"] > 0
    assert ramp["results"][-1]["users"]["old"] == 0
    assert all(r["counts"]["new"]["deliveries"] > 0 for r in ramp["results"])
    assert s["within_budget"]
    assert "run-time limit reached" not in done.stderr  # the ramp ended the run
    assert s["server_resources"]["peak_rss_bytes"] > 0
    both = ramp["server_resources"]
    assert both["new"] == s["server_resources"]
    assert both["old"]["pid"] != both["new"]["pid"]
    assert both["old"]["cpu_s"] > 0
    assert both["old"]["deliveries"] == sum(r["counts"]["old"]["deliveries"]
                                            for r in ramp["results"]) > 0


@pytest.mark.slow
def test_slow_new_endpoint_rolls_back_at_the_first_stage_naming_budget_and_numbers(
        tmp_path: Path) -> None:
    done, s = _ramp(tmp_path, defects='["slow_delivery"]')
    assert done.returncode == 1, done.stderr[-3000:]
    assert s is not None
    ramp = s["ramp"]
    assert ramp["outcome"] == Outcome.ROLLED_BACK
    assert ramp["stopped_at"] == 5
    [stage] = ramp["results"]  # judged live: no later stage ran
    assert stage["users"]["new"] >= 1
    assert stage["users"]["old"] >= 1
    assert ramp["line"].startswith("roll back at 5 %: delivery.p50_ms ")
    assert ramp["line"] in done.stderr
    p50 = stage["latency_ms"]["new"]["delivery"]["p50"]
    assert p50 >= 200  # the defect's 200 ms is in the numbers
    assert f"delivery.p50_ms {p50:.1f} > 150" in ramp["line"]
    # only the new endpoint is slow: the old one's users of the same stage are not
    assert stage["latency_ms"]["old"]["delivery"]["p50"] < 150
    assert not s["within_budget"]
    assert any(v["budget"] == "5 %: delivery.p50_ms" and not v["ok"]
               for v in s["budgets"]["verdicts"])


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "needle"), [
    (["--ramp", "5,50,20"], "--ramp '5,50,20': stages must rise (20 after 50)"),
    (["--ramp-from", "older"], "'older' is not configured"),
])
def test_bad_ramp_input_is_one_line_and_exit_2(tmp_path: Path, extra: list[str],
                                               needle: str) -> None:
    done, s = _ramp(tmp_path, *extra)
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("im-harness load:")]
    assert needle in line
    assert "Traceback" not in done.stderr
    assert s is None


def test_stages_and_hold_are_validated() -> None:
    assert parse_stages("5, 20%,50,100") == (5, 20, 50, 100)
    assert parse_hold("2m") == 120
    assert parse_hold("1.5") == 1.5
    for text in ("", "0,5", "5,5", "5,101", "x"):
        with pytest.raises(ConfigError, match="--ramp"):
            parse_stages(text)
    with pytest.raises(ConfigError, match="--ramp-hold '0s' must be more than 0s"):
        parse_hold("0s")
    with pytest.raises(ConfigError, match="--ramp-from 'new' is also --endpoint"):
        ramp_plan("5", "1s", old="new", new="new")
    with pytest.raises(ConfigError, match="--hold 'ten' is not a duration"):
        parse_hold("ten", "--hold")
    with pytest.raises(ConfigError, match="--endpoints 'old' is also --endpoints"):
        ramp_plan("5", "1s", old="old", new="old", options=("a", "b", "--endpoints",
                                                              "--endpoints"))


def test_shares_spread_evenly_and_units_on_new_stay_there() -> None:
    for percent, expected in ((5, 1), (20, 2), (50, 5), (100, 10)):
        assert sum(on_new(i, percent) for i in range(10)) == expected
    for i in range(50):
        flags = [on_new(i, p) for p in (5, 20, 50, 100)]
        assert flags == sorted(flags)  # once on new, on new at every later stage


def _payload(new_delivery_ms: float, *, old_errors: int = 0) -> dict[str, Any]:
    """A stage of one process: real metrics, delivered at the given latency."""
    new, old = LoadMetrics(), LoadMetrics()
    for m in (new, old):
        m.count("sends", 100)
        m.count("acks", 100)
    for _ in range(100):
        new.record("delivery", new_delivery_ms / 1000)
        old.record("delivery", 0.01)
    old.count("send_errors", old_errors)
    return {"new": new.encode(), "old": old.encode()}


def _part(*stages: tuple[float, dict[str, Any]]) -> dict[str, Any]:
    plan = RampPlan(stages=(5, 20, 50, 100), hold_s=1)
    return {"ramp": {"plan": plan.to_dict(), "stages": [
        {"percent": p, "users": {"old": 9, "new": 1}, "held_s": 1.0, "cut_short": False, **d}
        for p, d in stages]}}


def test_the_first_breaching_stage_is_the_one_named() -> None:
    ramp = judge_payloads([_part((5, _payload(20)), (20, _payload(231)))], BUDGETS)
    assert ramp is not None
    assert ramp["outcome"] == Outcome.ROLLED_BACK
    assert ramp["stopped_at"] == 20
    assert ramp["line"] == "roll back at 20 %: delivery.p95_ms 231.0 > 150"
    assert [r["ok"] for r in ramp["results"]] == [True, False]
    names = {v.budget for v in ramp_verdicts(ramp) if not v.ok}
    assert names == {"20 %: delivery.p95_ms"}


def test_the_overall_error_ratio_counts_the_old_endpoints_traffic() -> None:
    ramp = judge_payloads([_part((5, _payload(20, old_errors=10)))], BUDGETS)
    assert ramp is not None
    [stage] = ramp["results"]
    assert stage["error_ratio"] == {"new": 0, "old": 0.1, "overall": 0.05}
    assert stage["breaches"] == [f"{OVERALL_ERROR} 0.05 > 0.01"]


def test_processes_merge_by_stage_and_later_stages_are_marked_after_the_breach() -> None:
    a = _part((5, _payload(20)), (20, _payload(400)), (50, _payload(20)), (100, _payload(20)))
    b = _part((5, _payload(20)), (20, _payload(20)), (50, _payload(20)), (100, _payload(20)))
    ramp = judge_payloads([a, b], BUDGETS)
    assert ramp is not None
    assert ramp["stopped_at"] == 20
    assert ramp["judged"] == "at the end"
    assert [r["after_breach"] for r in ramp["results"]] == [False, False, True, True]
    assert ramp["results"][1]["users"] == {"old": 18, "new": 2}
    assert ramp["results"][1]["latency_ms"]["new"]["delivery"]["p95"] >= 399
    assert "the later stages ran" in ramp["line"]


def test_a_ramp_the_run_time_cut_short_is_incomplete() -> None:
    part = _part((5, _payload(20)), (20, _payload(20)))
    part["ramp"]["stages"][-1]["cut_short"] = True
    ramp = judge_payloads([part], BUDGETS)
    assert ramp is not None
    assert ramp["outcome"] == Outcome.INCOMPLETE
    assert ramp["line"].startswith("ramp incomplete: the run ended during stage 2 of 4 "
                                   "(held within budget: 5 %)")
    assert judge_payloads([{"counts": {}}], BUDGETS) is None  # not a ramp run


def test_the_load_report_page_shows_the_stages_and_the_server_resources() -> None:
    ramp = judge_payloads([_part((5, _payload(20)), (20, _payload(231)))], BUDGETS)
    resources = {"pid": 7, "cpu_s": 0.5, "peak_rss_bytes": 50 * 2**20, "deliveries": 1000,
                 "cpu_s_per_delivery": 0.0005, "samples": 9, "reason": None}
    summary = {"scenario": "chat", "ramp": ramp, "server_resources": resources,
               "within_budget": False, "budgets": {"source": "t", "verdicts": []}}
    page = load_result(LoadOutcome("chat", summary)).description_html
    assert "roll back at 20 %: delivery.p95_ms 231.0 &gt; 150" in page
    assert "<td>5 %</td><td>1 / 9</td>" in page
    assert "<b>BREACH</b> delivery.p95_ms 231.0 &gt; 150" in page
    assert "500.0 µs per delivery; peak RSS 50.0 MiB" in page
    assert ramp is not None
    ramp["server_resources"] = {"new": resources, "old": {**resources, "pid": 8}}
    page = load_result(LoadOutcome("chat", summary)).description_html
    assert "The old endpoint's server resources (pid 8, children included)" in page
    summary["server_resources"] = absent("endpoint 'new' is a url endpoint", 3)
    page = load_result(LoadOutcome("chat", summary)).description_html
    assert "Server resources: not measured (endpoint &#x27;new&#x27; is a url endpoint)" in page


@pytest.mark.parametrize(("args", "needle"), [
    (["--stages", "5,50,20"], "--stages '5,50,20': stages must rise (20 after 50)"),
    (["--hold", "ten"], "--hold 'ten' is not a duration"),
    (["--endpoints", "new,new"], "--endpoints 'new,new' names one endpoint twice"),
])
def test_im_harness_ramp_refuses_bad_input_before_starting_anything(
        tmp_path: Path, args: list[str], needle: str) -> None:
    done = subprocess.run([sys.executable, "-m", "harness.cli", "ramp", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=units(60), check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("im-harness ramp: ")
    assert needle in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()
