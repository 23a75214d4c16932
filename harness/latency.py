"""Per-operation latency of a suite run, per endpoint, in HdrHistograms (mergeable, JSON).

The operations are the load metrics' (`harness.load.metrics.METRICS`, whose `LoadMetrics` holds
the histograms here too): `connect` (a login), `send_ack` (send start to ack), `delivery` (send
start to the recipient's event arriving in its Recorder, once per recipient) and `history` (one
page). Every time is the harness's monotonic clock; a delivery is timed from the very
`started_at` that `User.send` gives the oracle. Only live first sightings are deliveries: a
message caught up after a reconnect was late because the test disconnected its recipient, and a
repeat is the oracle's business, not a latency.

A message may reach its recipient before its sender has the ack (so before `sent()` is called):
its arrival waits for the send's start. Both waiting tables are bounded (`MAX_PENDING`): a
message that is never delivered, or one sent by something other than a `User`, is forgotten
oldest first instead of growing with the session.

Example::

    log = LatencyLog()
    ep = log.endpoint("new")
    ep.sent("m1", started_at, {"bob"})
    ep.arrived("m1", "bob", time.monotonic())
    log.percentiles_ms("new", "delivery")["p95"]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

from harness.errors import HarnessError
from harness.load.metrics import METRICS, LoadMetrics

_LABELS = {"connect": "connect", "send_ack": "send->ack", "delivery": "send->delivery",
           "history": "history page"}
# The load metrics' operations, in their order, each with the name the report gives it (a metric
# added there without a label here fails at import, not in a report).
OPERATIONS: dict[str, str] = {metric: _LABELS[metric] for metric in METRICS}

FILE_PREFIX = "im-latency"  # im-latency-<worker>.json beside the Allure results
FORMAT = 1
MAX_PENDING = 10_000  # sends awaiting deliveries, and deliveries awaiting their send's start


class LatencyFileError(HarnessError):
    """A latency file that cannot be read: it names the file and what is wrong."""


class EndpointLatency:
    """One endpoint's latencies in one process, and the sends still awaiting their deliveries."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.metrics = LoadMetrics()
        self._sends: dict[str, tuple[float, set[str]]] = {}  # id -> (started_at, still to see)
        self._early: dict[str, dict[str, float]] = {}  # id -> {recipient: arrived_at}

    def __repr__(self) -> str:
        counts = {op: self.metrics.samples(op) for op in METRICS}
        return f"<EndpointLatency {self.name} {counts}>"

    def record(self, operation: str, seconds: float) -> None:
        """Record one latency of `operation` (one of `OPERATIONS`)."""
        if operation not in OPERATIONS:
            raise HarnessError(
                f"latency operation {operation!r} is unknown; known: {', '.join(OPERATIONS)}"
            )
        self.metrics.record(operation, seconds)

    def sent(self, message_id: str, started_at: float, recipients: Iterable[str]) -> None:
        """A send of `message_id` started at `started_at` was acked for `recipients`."""
        if message_id in self._sends:
            return  # a resend with the same client id: the first start counts
        waiting = set(recipients)
        for recipient, at in self._early.pop(message_id, {}).items():
            if recipient in waiting:
                waiting.discard(recipient)
                self.metrics.record("delivery", at - started_at)
        if waiting:
            _bounded_put(self._sends, message_id, (started_at, waiting))

    def arrived(self, message_id: str, recipient: str, at: float) -> None:
        """`recipient`'s Recorder got `message_id` live at `at` (time.monotonic())."""
        entry = self._sends.get(message_id)
        if entry is None:
            early = self._early.get(message_id)
            if early is None:
                _bounded_put(self._early, message_id, {recipient: at})
            else:
                early.setdefault(recipient, at)
            return
        started_at, waiting = entry
        if recipient in waiting:  # the first sighting; a repeat or the sender's echo is not
            waiting.discard(recipient)
            self.metrics.record("delivery", at - started_at)
            if not waiting:
                del self._sends[message_id]

    def samples(self, operation: str) -> int:
        return self.metrics.samples(operation)


def _bounded_put(table: dict[str, Any], key: str, value: Any) -> None:
    while len(table) >= MAX_PENDING:
        del table[next(iter(table))]  # the oldest entry
    table[key] = value


class LatencyLog:
    """Every endpoint's latencies of one run: recorded in one process, or merged from several."""

    def __init__(self) -> None:
        self._endpoints: dict[str, EndpointLatency] = {}

    def __repr__(self) -> str:
        return f"<LatencyLog {', '.join(self._endpoints) or 'empty'}>"

    def endpoint(self, name: str) -> EndpointLatency:
        """Endpoint `name`'s recorder (made on first use)."""
        found = self._endpoints.get(name)
        if found is None:
            found = self._endpoints[name] = EndpointLatency(name)
        return found

    @property
    def names(self) -> list[str]:
        return list(self._endpoints)

    def samples(self, endpoint: str, operation: str) -> int:
        found = self._endpoints.get(endpoint)
        return found.samples(operation) if found is not None else 0

    def percentiles_ms(self, endpoint: str, operation: str) -> dict[str, float]:
        """`{"p50": ms, ..., "max": ms}` of one endpoint's operation; empty without samples."""
        found = self._endpoints.get(endpoint)
        return found.metrics.percentiles_ms(operation) if found is not None else {}

    def empty(self) -> bool:
        return not any(ep.samples(op) for ep in self._endpoints.values() for op in METRICS)

    def encode(self) -> dict[str, Any]:
        """A JSON-able document: per endpoint, each operation's HdrHistogram, encoded."""
        return {
            "format": FORMAT,
            "endpoints": {
                name: {
                    op: hist.encode().decode("ascii")
                    for op, hist in ep.metrics.histograms.items()
                    if hist.get_total_count()
                }
                for name, ep in self._endpoints.items()
            },
        }

    def merge(self, document: Mapping[str, Any], where: str = "latency document") -> None:
        """Add another process's `encode()` into this log; a malformed one raises naming `where`.

        A document is checked whole before anything is added, so a bad one leaves the log as it
        was.
        """
        if not isinstance(document, Mapping) or document.get("format") != FORMAT:
            raise LatencyFileError(f"{where} is not an im-harness latency file of format {FORMAT}")
        endpoints = document.get("endpoints")
        if not isinstance(endpoints, Mapping):
            raise LatencyFileError(f"{where} has no 'endpoints' table")
        decoded: list[tuple[str, str, HdrHistogram]] = []
        for name, blobs in endpoints.items():
            if not isinstance(blobs, Mapping):
                raise LatencyFileError(f"{where}: endpoint {name!r} is not a table of histograms")
            for op, blob in blobs.items():
                if op not in OPERATIONS or not isinstance(blob, str):
                    raise LatencyFileError(
                        f"{where}: endpoint {name!r} has {op!r}, not an encoded histogram of "
                        f"one of {', '.join(OPERATIONS)}"
                    )
                try:
                    decoded.append((str(name), op, HdrHistogram.decode(blob.encode("ascii"))))
                except Exception as exc:  # noqa: BLE001 - hdrh raises assorted errors on junk
                    raise LatencyFileError(
                        f"{where}: endpoint {name!r} {op!r} is not an HdrHistogram "
                        f"({type(exc).__name__})"
                    ) from None
        for name, op, hist in decoded:
            self.endpoint(name).metrics.histograms[op].add(hist)

    def to_json(self) -> str:
        return json.dumps(self.encode(), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "latency document") -> LatencyLog:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise LatencyFileError(f"{where} is not JSON ({exc})") from None
        log = cls()
        log.merge(document, where)
        return log

    @classmethod
    def merged(cls, logs: Iterable[LatencyLog]) -> LatencyLog:
        out = cls()
        for log in logs:
            out.merge(log.encode())
        return out


__all__ = [
    "FILE_PREFIX",
    "OPERATIONS",
    "EndpointLatency",
    "LatencyFileError",
    "LatencyLog",
]
