"""Load metrics: one HdrHistogram per latency metric plus counters, mergeable across processes.

Latencies are recorded in microseconds from the INTENDED time of an operation (open model), so a
slow endpoint cannot hide its queueing. `encode()` gives a JSON-able payload that a worker sends
to the master; `merge()` adds one in.

`record()` is on the load generator's hot path and HdrHistogram's `record_value` is pure Python,
so a value is first rounded down to its HdrHistogram bucket and counted in a dict; the counts go
into the histogram (`record_value(value, count)`) whenever it is read. The histogram's contents,
percentiles, min and max are exactly what recording each value would have given.
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


HISTOGRAM_BUCKETS = 40  # upper bounds per metric in the summary's histogram_ms


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


# A value's bucket in a histogram of that shape: its top SUB_BITS bits (after OR-ing SUB_MASK).
_shape = new_histogram()
SUB_MASK = _shape.sub_bucket_mask
SUB_BITS = _shape.sub_bucket_half_count_magnitude + 1
del _shape


def bucket_floor(us: int) -> int:
    """The lowest value HdrHistogram counts in the same bucket as `us` (its equivalent)."""
    shift = (us | SUB_MASK).bit_length() - SUB_BITS
    return us >> shift << shift


class LoadMetrics:
    """Histograms per metric and counters of one process, or merged from several."""

    def __init__(self) -> None:
        self._histograms: dict[str, HdrHistogram] = {m: new_histogram() for m in METRICS}
        self._pending: dict[str, dict[int, int]] = {m: {} for m in METRICS}  # bucket -> count
        self.counts: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self.errors: Counter[str] = Counter()  # error type name -> count
        self.notes: list[str] = []  # facts the summary must state (e.g. a connection cap hit)
        self.sources = 0  # processes merged in (1 for a local run)

    def __repr__(self) -> str:
        return f"<LoadMetrics {dict(self.counts)}>"

    @property
    def histograms(self) -> dict[str, HdrHistogram]:
        """The histogram of every metric, with everything recorded so far."""
        for metric, pending in self._pending.items():
            if pending:
                hist = self._histograms[metric]
                for value, n in pending.items():
                    hist.record_value(value, n)
                pending.clear()
        return self._histograms

    def record(self, metric: str, seconds: float) -> None:
        """Record one latency; negative values (clock rounding) count as the minimum."""
        us = int(seconds * 1_000_000)
        if us < LOWEST_US:
            us = LOWEST_US
        elif us > HIGHEST_US:
            us = HIGHEST_US
        shift = (us | SUB_MASK).bit_length() - SUB_BITS
        key = us >> shift << shift
        pending = self._pending[metric]
        pending[key] = pending.get(key, 0) + 1

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

    def histogram_ms(self, metric: str, buckets: int = HISTOGRAM_BUCKETS) -> list[list[float]]:
        """`[[upper_ms, count], ...]`: the latency histogram in about `buckets` equal steps.

        A row counts the values above the previous row's bound up to its own; the steps span
        min to max, and empty rows are left out.
        """
        hist = self.histograms[metric]
        if hist.get_total_count() == 0:
            return []
        low, high = hist.get_min_value(), hist.get_max_value()
        step = max(1, -(-(high - low) // buckets))
        counts: dict[int, int] = {}
        for item in hist.get_recorded_iterator():  # only the non-empty HdrHistogram buckets
            index = -(-(item.value_iterated_to - low) // step)
            counts[index] = counts.get(index, 0) + item.count_at_value_iterated_to
        return [[round((low + i * step) / 1000.0, 3), n] for i, n in sorted(counts.items())]

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
        histograms = self.histograms
        for metric, blob in payload.get("histograms", {}).items():
            if metric in histograms and blob:
                histograms[metric].decode_and_add(blob.encode("ascii"))
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
