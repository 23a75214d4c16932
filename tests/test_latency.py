"""harness.latency on real HdrHistograms: delivery matching, merge, JSON, bad documents."""

from __future__ import annotations

import json

import pytest

from harness import latency as latency_module
from harness.errors import HarnessError
from harness.latency import OPERATIONS, EndpointLatency, LatencyFileError, LatencyLog


def test_delivery_is_timed_from_the_send_start_once_per_recipient() -> None:
    ep = EndpointLatency("new")
    ep.sent("m1", 10.0, {"bob", "carol"})
    ep.arrived("m1", "bob", 10.25)
    ep.arrived("m1", "bob", 10.9)  # a repeat: the oracle's business, not a second delivery
    ep.arrived("m1", "carol", 10.05)
    hist = ep.metrics.histograms["delivery"]
    assert hist.get_total_count() == 2
    assert hist.get_max_value() == pytest.approx(250_000, rel=1e-3)  # microseconds
    assert hist.get_min_value() == pytest.approx(50_000, rel=1e-3)


def test_an_arrival_before_the_ack_waits_for_the_send_start() -> None:
    ep = EndpointLatency("new")
    ep.arrived("m1", "bob", 5.2)  # the live frame beat the ack to the sender
    ep.arrived("m1", "alice", 5.1)  # the sender's own echo: not a recipient
    assert ep.samples("delivery") == 0
    ep.sent("m1", 5.0, {"bob"})
    assert ep.samples("delivery") == 1
    assert ep.metrics.histograms["delivery"].get_max_value() == pytest.approx(200_000, rel=1e-3)
    ep.arrived("m1", "bob", 6.0)  # seen again later: still one delivery
    assert ep.samples("delivery") == 1


def test_a_resend_with_the_same_id_keeps_the_first_start() -> None:
    ep = EndpointLatency("new")
    ep.sent("m1", 1.0, {"bob"})
    ep.sent("m1", 1.5, {"bob"})  # the idempotent resend's ack names the same message
    ep.arrived("m1", "bob", 1.6)
    assert ep.metrics.histograms["delivery"].get_max_value() == pytest.approx(600_000, rel=1e-3)


def test_pending_tables_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(latency_module, "MAX_PENDING", 3)
    ep = EndpointLatency("new")
    for i in range(5):
        ep.sent(f"m{i}", float(i), {"bob"})  # never delivered
        ep.arrived(f"x{i}", "bob", float(i))  # never sent by a User
    ep.arrived("m0", "bob", 9.0)  # forgotten: oldest first
    ep.arrived("m4", "bob", 4.5)
    assert ep.samples("delivery") == 1
    assert ep.metrics.histograms["delivery"].get_max_value() == pytest.approx(500_000, rel=1e-3)


def test_unknown_operation_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(HarnessError, match="'page' is unknown; known: connect, send_ack"):
        EndpointLatency("old").record("page", 0.1)


def _log(name: str, values_ms: dict[str, list[float]]) -> LatencyLog:
    log = LatencyLog()
    for op, values in values_ms.items():
        for ms in values:
            log.endpoint(name).record(op, ms / 1000)
    return log


def test_workers_merge_through_json_into_the_same_percentiles() -> None:
    gw0 = _log("new", {"delivery": [1.0] * 90, "connect": [5.0]})
    gw1 = _log("new", {"delivery": [200.0] * 10})
    gw1.endpoint("old").record("send_ack", 0.003)
    merged = LatencyLog()
    for worker in (gw0, gw1):
        merged.merge(json.loads(worker.to_json()), "im-latency-gw.json")
    assert merged.samples("new", "delivery") == 100
    assert merged.samples("new", "connect") == 1
    assert merged.samples("old", "send_ack") == 1
    pct = merged.percentiles_ms("new", "delivery")
    assert pct["p50"] == pytest.approx(1.0, rel=1e-2)
    assert pct["p95"] == pytest.approx(200.0, rel=1e-2)  # only the slow worker's values
    again = LatencyLog.from_json(merged.to_json())
    assert again.percentiles_ms("new", "delivery") == pct
    assert LatencyLog.merged([gw0, gw1]).encode() == merged.encode()


def test_empty_log_encodes_no_histograms() -> None:
    log = LatencyLog()
    assert log.empty()
    log.endpoint("new")  # opened, nothing recorded
    assert log.empty()
    assert log.encode()["endpoints"] == {"new": {}}
    assert set(OPERATIONS.values()) == {"connect", "send->ack", "send->delivery", "history page"}


@pytest.mark.parametrize(("text", "words"), [
    ("{", "im-latency-gw3.json is not JSON"),
    ('{"format": 9, "endpoints": {}}', "is not an im-harness latency file of format 1"),
    ('{"format": 1}', "has no 'endpoints' table"),
    ('{"format": 1, "endpoints": {"new": 3}}', "endpoint 'new' is not a table of histograms"),
    ('{"format": 1, "endpoints": {"new": {"page": "x"}}}', "has 'page', not an encoded"),
    ('{"format": 1, "endpoints": {"new": {"delivery": "bm90IGhkcg=="}}}',
     "endpoint 'new' 'delivery' is not an HdrHistogram"),
])
def test_bad_documents_name_the_file_and_the_problem(text: str, words: str) -> None:
    with pytest.raises(LatencyFileError, match=words.replace("'", ".")) as info:
        LatencyLog.from_json(text, "im-latency-gw3.json")
    assert "im-latency-gw3.json" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_bad_document_adds_nothing() -> None:
    good = _log("new", {"delivery": [1.0]}).encode()["endpoints"]["new"]["delivery"]
    log = LatencyLog()
    document = {"format": 1, "endpoints": {"new": {"delivery": good}, "old": {"connect": "x"}}}
    with pytest.raises(LatencyFileError):
        log.merge(document)
    assert log.samples("new", "delivery") == 0
