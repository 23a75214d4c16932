"""Old vs new on real runs: the sign-off's comparison gives GO on the embedded default and NO-GO
with slow_delivery seeded on new only; a saturated generator's run is void; `im-harness
capacity` finds old's connection cap and new's lower bound. Each run lasts a few seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.report.allure import ALLURE_ENV
from harness.timing import units

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RECALL_ONLINE = "test_recall_reaches_online_peer_and_history"
DEFAULT_LIKE = """
[endpoints.old]
protocol = "v1"
tier = { name = "free" }

[endpoints.new]
protocol = "v2"
tier = { name = "pro", features = { recall = true, receipts = true } }
"""


def cli(*args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=units(timeout),
                          env={**os.environ, "COLUMNS": "200", ALLURE_ENV: str(ROOT)},
                          check=False)


def _results(reports: Path, full_name: str) -> dict[str, Any]:
    [found] = [r for r in (json.loads(p.read_text()) for p in
                           (reports / "allure-results").glob("*-result.json"))
               if r.get("fullName") == full_name]
    return found


def test_signoff_compares_old_and_new_with_a_noise_floor_and_gives_go(tmp_path: Path) -> None:
    done = cli("signoff", "-k", RECALL_ONLINE, "--scenario", "chat", "--users", "4",
               "--load-time", "2s", "--no-html", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    doc = json.loads((tmp_path / "reports" / "verdict.json").read_text())
    section = doc["sections"]["load_compare"]
    assert section["ok"], section["findings"]
    [chat] = section["data"]["scenarios"]
    assert (chat["old"], chat["new"]) == ("reference v1, tier free", "reference v2, tier pro")
    rows = {r["label"]: r for r in chat["rows"]}
    assert {"send_ack p99", "delivery p50", "delivery p95", "delivery p99", "error ratio",
            "deliveries/s"} <= set(rows)
    assert len(rows["delivery p99"]["old"]) == 2
    assert rows["delivery p99"]["noise"] is not None
    assert "A/A noise" in done.stdout
    assert "delivery p99 (ms)" in done.stdout
    # both runs on new are also judged against the absolute budgets (the SLA)
    assert [lo["within_budget"] for lo in doc["load"]] == [True, True]
    picture = _results(tmp_path / "reports", "load.compare")
    assert picture["status"] == "passed"
    assert any(a["type"] == "image/png" for a in picture["attachments"])


def test_slow_delivery_on_new_only_is_no_go_naming_the_metric_and_both_numbers(
        tmp_path: Path) -> None:
    config = tmp_path / "im-harness.toml"
    config.write_text(DEFAULT_LIKE.replace('protocol = "v2"',
                                           'protocol = "v2"\ndefects = ["slow_delivery"]'))
    done = cli("signoff", "-k", RECALL_ONLINE, "--scenario", "chat", "--users", "4",
               "--load-time", "2s", "--compare-repeats", "1", "--no-html", cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    doc = json.loads((tmp_path / "reports" / "verdict.json").read_text())
    reasons = [r for r in doc["reasons"] if r.startswith("Load, old vs new: chat: delivery p50")]
    assert reasons, doc["reasons"]
    [row] = [r for r in doc["sections"]["load_compare"]["data"]["scenarios"][0]["rows"]
             if r["label"] == "delivery p50"]
    assert row["regression"]
    assert row["new_value"] - row["old_value"] > 150
    assert f"{row['old_value']:.2f}".rstrip("0").rstrip(".") + " ms on old" in reasons[0]
    assert not any(r["regression"] for r in doc["sections"]["load_compare"]["data"]
                   ["scenarios"][0]["rows"] if r["label"].startswith("send_ack"))  # acks on time


def test_a_saturated_generator_makes_the_run_void_not_over_budget(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
         "--headless", "-u", "20", "-r", "20", "-t", "3s", "--rate", "100", "--drain-s", "1",
         "--scenario", "chat", "--endpoint", "new", "--summary-json", str(summary),
         "--only-summary"], cwd=tmp_path, capture_output=True, text=True,
        timeout=units(120), check=False)
    assert "the plan offers 4000 sends/s and 4000 deliveries/s" in done.stderr
    data = json.loads(summary.read_text())
    assert data["void"], data["generator"]
    assert not data["within_budget"]
    assert data["generator"]["reasons"], data["generator"]
    assert "VOID: the load generator was saturated" in done.stderr

    from harness.report.parity import ParityTable
    from harness.report.results import Results
    from harness.report.verdict import LoadOutcome, decide

    verdict = decide(Results([]), ParityTable.build([], ("old", "new")), promised=[],
                     loads=[LoadOutcome("chat", data)])
    [reason] = [r for r in verdict.reasons if "chat" in r]
    assert "is void, not judged: the load generator was saturated" in reason
    assert "budget exceeded" not in reason


def test_capacity_finds_the_free_tiers_connection_cap_and_the_ratio(tmp_path: Path) -> None:
    # idle: each user holds 10 sessions, so the free tier's 100 connections are 10 users
    done = cli("capacity", "--scenario", "idle", "--start", "8", "--max-users", "16",
               "--resolution", "0.25", "--step-time", "2s", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    doc = json.loads((tmp_path / "reports" / "capacity.json").read_text())
    old, new = doc["old"], doc["new"]
    assert old["status"] == "converged"
    assert old["low"] is not None
    assert old["low"] <= 10
    over = [s for s in old["steps"] if s["users"] > 10]
    assert over
    assert all(not s["ok"] and any("min_connect_success_ratio" in f
                                            for f in s["failed"]) for s in over)
    assert new["status"] == "user_cap"
    assert new["low"] == 16
    assert "hit the user cap without converging" in done.stdout
    assert f"holds at least {16 / old['low']:.1f}x the users of old" in done.stdout
    assert (tmp_path / "reports" / "capacity.png").stat().st_size > 0
