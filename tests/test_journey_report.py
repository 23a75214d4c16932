"""The journey's sign-off sections, from the files a run leaves: steps, lags, what changed."""

from __future__ import annotations

import json
from pathlib import Path

from harness.journey import JourneyRecord, Step
from harness.report.readers import READERS
from harness.report.sections import RunFiles, read_sections


def _files(tmp_path: Path) -> RunFiles:
    return RunFiles(tmp_path, tmp_path / "reports", ("old", "new"))


def _record(*steps: Step) -> JourneyRecord:
    record = JourneyRecord("old", "new", server="svc 1 -> svc 2", steps=list(steps))
    record.lags = {"recall": {"seconds": 1.2, "bound_s": 3.0},
                   "old_token_refused": {"seconds": 8.1, "window_s": 8.0}}
    record.gaps = {"eve": {"max_ack_gap_s": 2.5, "acks": 30, "reconnects": [3],
                           "back_after_s": 1.5}}
    record.rollback = "refused: svc 1: the data was migrated by release 2"
    record.infos = {
        "before": {"protocol": "v1", "keepalive_s": 30.0, "capabilities": ["chat"],
                   "limits": {"send_burst": 20}},
        "after": {"protocol": "v2", "keepalive_s": 15.0, "capabilities": ["chat", "recall"],
                  "limits": {"send_burst": 200}},
    }
    record.differences = ["push delivery: webhook answered within 2 s on new"]
    return record


def test_readers_are_registered() -> None:
    names = {reader.__name__ for reader in READERS}
    assert {"read_journey", "read_changes"} <= names


def test_a_failed_step_is_a_no_go_naming_it(tmp_path: Path) -> None:
    _record(Step("history pages"), Step("old credentials refused after the window", "failed",
                                        "still accepted 13.0s after the upgrade")).write(tmp_path)
    journey = {s.key: s for s in read_sections(_files(tmp_path), READERS)}["journey"]
    assert not journey.ok
    assert journey.reasons() == [
        "Upgrade journey: step 'old credentials refused after the window' failed: still "
        "accepted 13.0s after the upgrade"]
    notes = " | ".join(journey.notes())
    assert "activation lag of recall: 1.20 s after the upgrade (bound 3.00 s)" in notes
    assert "old tokens refused: 8.10 s after the upgrade (transition window 8.00 s)" in notes
    assert ("client eve: connected again 1.50 s after the upgrade; longest gap between acks "
            "2.50 s, reconnected after 3 attempt(s), 30 messages acked") in notes
    assert "rollback drill: refused: svc 1" in notes
    assert "<td>history pages</td><td>passed</td>" in journey.to_html()


def test_a_journey_without_failures_blocks_nothing(tmp_path: Path) -> None:
    _record(Step("history pages"), Step("read cursors", "skipped", "no receipts")).write(tmp_path)
    sections = {s.key: s for s in read_sections(_files(tmp_path), READERS)}
    assert sections["journey"].ok
    assert sections["changes"].ok


def test_what_changed_lists_each_reported_default_and_observed_difference(tmp_path: Path) -> None:
    _record(Step("history pages")).write(tmp_path)
    changes = {s.key: s for s in read_sections(_files(tmp_path), READERS)}["changes"]
    assert changes.data["changed"] == [
        "capabilities: chat -> chat, recall", "keepalive_s: 30.0 -> 15.0",
        "limits.send_burst: 20 -> 200", "protocol: v1 -> v2"]
    assert "observed by the journey: push delivery: webhook answered within 2 s on new" in (
        changes.notes()[-1])
    assert "<td>keepalive_s</td><td>30.0</td><td>15.0</td>" in changes.to_html()


def test_what_changed_falls_back_to_the_endpoints_file(tmp_path: Path) -> None:
    (tmp_path / "im-endpoints.json").write_text(json.dumps({
        "old": {"protocol": "v1", "tier": "free", "url": "ws://a"},
        "new": {"protocol": "v2", "tier": "free", "url": "ws://b"}}))
    sections = {s.key: s for s in read_sections(_files(tmp_path), READERS)}
    assert "journey" not in sections
    assert sections["changes"].data["changed"] == ["protocol: v1 -> v2"]
