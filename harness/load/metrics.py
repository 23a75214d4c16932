"""Load metrics: one HdrHistogram per latency metric plus counters, mergeable across processes.

Latencies are recorded in microseconds from the INTENDED time of an operation (open model), so a
slow endpoint cannot hide its queueing. `encode()` gives a JSON-able payload that a worker sends
to the master; `merge()` adds one in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from hdrh.histogram import HdrHistogram

METRICS = ("connect", "send_ack", "delivery", "history")
PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0)
LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3

# Counter names and what they count.
COUNTERS = {
    "sends": "sends attempted on schedule",
    "acks": "sends acknowledged",
    "send_errors": "sends refused or failed",
    "deliveries": "messages received by a peer in this run (first sightings)",
    "offline_deliveries": "deliveries caught up after a reconnect",
    "connects": "successful connects (logins)",
    "connect_failures": "connects that failed",
    "limit_reached": "connects refused at the tier's connection cap (LimitReached)",
    "behind_schedule": "operations started later than their intended time",
    "history_pages": "history pages fetched",
    "history_errors": "history requests that failed",
    "loss": "acked messages a recipient never received (oracle)",
    "duplicates": "messages a recipient received twice (oracle)",
    "reordered": "messages received out of order (oracle)",
    "other_violations": "other oracle violations",
}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


class LoadMetrics:
    """Histograms per metric and counters of one process, or merged from several."""

    def __init__(self) -> None:
        self.histograms: dict[str, HdrHistogram] = {m: new_histogram() for m in METRICS}
        self.counts: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self.errors: Counter[str] = Counter()  # error type name -> count
        self.notes: list[str] = []  # facts the summary must state (e.g. a connection cap hit)
        self.sources = 0  # processes merged in (1 for a local run)

    def __repr__(self) -> str:
        return f"<LoadMetrics {dict(self.counts)}>"

    def record(self, metric: str, seconds: float) -> None:
        """Record one latency; negative values (clock rounding) count as the minimum."""
        us = int(seconds * 1_000_000)
        self.histograms[metric].record_value(min(max(us, LOWEST_US), HIGHEST_US))

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def error(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] += 1

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def percentiles_ms(self, metric: str) -> dict[str, float]:
        """`{"p50": ms, ..., "max": ms, "mean": ms}`; empty when nothing was recorded."""
        hist = self.histograms[metric]
        if hist.get_total_count() == 0:
            return {}
        out = {
            _pname(p): hist.get_value_at_percentile(p) / 1000.0 for p in PERCENTILES if p < 100
        }
        out["max"] = hist.get_max_value() / 1000.0
        out["min"] = hist.get_min_value() / 1000.0
        out["mean"] = round(hist.get_mean_value() / 1000.0, 3)
        return out

    def samples(self, metric: str) -> int:
        return int(self.histograms[metric].get_total_count())

    def encode(self) -> dict[str, Any]:
        """A JSON-able payload of everything (histograms HdrHistogram-encoded)."""
        return {
            "histograms": {m: h.encode().decode("ascii") for m, h in self.histograms.items()},
            "counts": dict(self.counts),
            "errors": dict(self.errors),
            "notes": list(self.notes),
            "sources": max(self.sources, 1),
        }

    def merge(self, payload: Mapping[str, Any]) -> None:
        """Add another process's `encode()` payload into this one."""
        for metric, blob in payload.get("histograms", {}).items():
            if metric in self.histograms and blob:
                self.histograms[metric].decode_and_add(blob.encode("ascii"))
        self.counts.update(payload.get("counts", {}))
        self.errors.update(payload.get("errors", {}))
        for text in payload.get("notes", ()):
            self.note(text)
        self.sources += int(payload.get("sources", 1))

    @classmethod
    def merged(cls, payloads: Iterable[Mapping[str, Any]]) -> LoadMetrics:
        out = cls()
        for payload in payloads:
            out.merge(payload)
        return out

    # -- ratios the budgets judge ------------------------------------------------------------

    def error_ratio(self) -> float:
        """Failed sends and history requests over all of them (0 when there were none)."""
        attempts = self.counts["sends"] + self.counts["history_pages"] + self.counts[
            "history_errors"]
        failed = self.counts["send_errors"] + self.counts["history_errors"]
        return failed / attempts if attempts else 0.0

    def connect_success_ratio(self) -> float | None:
        total = self.counts["connects"] + self.counts["connect_failures"]
        return self.counts["connects"] / total if total else None

    def behind_schedule_ratio(self) -> float:
        ops = self.counts["sends"] + self.counts["history_pages"] + self.counts["history_errors"]
        return self.counts["behind_schedule"] / ops if ops else 0.0


def _pname(p: float) -> str:
    text = f"{p:g}".replace(".", "")
    return f"p{text}"
