"""What a fault link did and when: faults with start/end, connection opens, closes and resets.

The report attaches `FaultTimeline.to_text()` (a readable table) or `to_json()` to a test, so a
failure can be read against the faults that were active at that moment.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def _wall_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fmt_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt_value(v) for v in value) or "-"
    return str(value)


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={_fmt_value(value)}" for key, value in params.items())


@dataclass
class FaultRecord:
    """One fault: kind, parameters, wall-clock and monotonic start/end (end None while active)."""

    kind: str
    params: dict[str, Any]
    link: str
    started_at: float
    started_mono: float
    ended_at: float | None = None
    ended_mono: float | None = None

    @property
    def active(self) -> bool:
        """True until the fault ends."""
        return self.ended_mono is None

    @property
    def duration_s(self) -> float | None:
        """Seconds the fault was active, None while it still is."""
        if self.ended_mono is None:
            return None
        return self.ended_mono - self.started_mono

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "type": "fault",
            "kind": self.kind,
            "link": self.link,
            "params": dict(self.params),
            "started_at": self.started_at,
            "started_mono": self.started_mono,
            "ended_at": self.ended_at,
            "ended_mono": self.ended_mono,
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True)
class ConnectionEvent:
    """An instant on one proxied connection: "open", "close", "reset" or "refused"."""

    kind: str
    connection: int
    link: str
    at: float
    mono: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "type": "connection",
            "kind": self.kind,
            "link": self.link,
            "connection": self.connection,
            "at": self.at,
            "mono": self.mono,
            "details": dict(self.details),
        }


class FaultTimeline:
    """Faults and connection events of one or more links, in the order they happened."""

    def __init__(self, name: str = "faults") -> None:
        self.name = name
        self.created_at = time.time()
        self.created_mono = time.monotonic()
        self.faults: list[FaultRecord] = []
        self.events: list[ConnectionEvent] = []

    def begin(self, kind: str, params: dict[str, Any], *, link: str = "link") -> FaultRecord:
        """Record that a fault starts now and return its record (end it with `end`)."""
        record = FaultRecord(kind, dict(params), link, time.time(), time.monotonic())
        self.faults.append(record)
        return record

    def end(self, record: FaultRecord) -> None:
        """Record that a fault ends now; ending twice keeps the first end."""
        if record.ended_mono is None:
            record.ended_at = time.time()
            record.ended_mono = time.monotonic()

    def instant(self, kind: str, params: dict[str, Any], *, link: str = "link") -> FaultRecord:
        """Record a fault that happens at one instant (start == end), such as a reset."""
        record = self.begin(kind, params, link=link)
        record.ended_at = record.started_at
        record.ended_mono = record.started_mono
        return record

    def connection(
        self, kind: str, connection: int, *, link: str = "link", **details: Any
    ) -> ConnectionEvent:
        """Record a connection event now."""
        event = ConnectionEvent(kind, connection, link, time.time(), time.monotonic(), details)
        self.events.append(event)
        return event

    def of_kind(self, kind: str) -> list[FaultRecord]:
        """The faults of one kind, oldest first."""
        return [f for f in self.faults if f.kind == kind]

    def active(self) -> list[FaultRecord]:
        """The faults that have not ended."""
        return [f for f in self.faults if f.active]

    def entries(self) -> list[FaultRecord | ConnectionEvent]:
        """Faults and events together, ordered by monotonic start time."""
        items: list[FaultRecord | ConnectionEvent] = [*self.faults, *self.events]
        return sorted(items, key=lambda e: e.started_mono if isinstance(e, FaultRecord) else e.mono)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the timeline's origin and every entry in order."""
        return {
            "name": self.name,
            "created_at": self.created_at,
            "created_mono": self.created_mono,
            "entries": [e.to_dict() for e in self.entries()],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The timeline as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_text(self) -> str:
        """A readable table; times are seconds since the timeline was created."""
        header = f"fault timeline {self.name!r}, t0 = {_wall_iso(self.created_at)}"
        rows = [("start", "end", "link", "what", "details")]
        for entry in self.entries():
            if isinstance(entry, FaultRecord):
                start = f"+{entry.started_mono - self.created_mono:.3f}s"
                if entry.ended_mono is None:
                    end = "active"
                elif entry.ended_mono == entry.started_mono:
                    end = "(instant)"
                else:
                    end = f"+{entry.ended_mono - self.created_mono:.3f}s"
                rows.append((start, end, entry.link, entry.kind, _fmt_params(entry.params)))
            else:
                start = f"+{entry.mono - self.created_mono:.3f}s"
                what = f"{entry.kind} #{entry.connection}"
                rows.append((start, "", entry.link, what, _fmt_params(entry.details)))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [header]
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(4)]
            lines.append("  ".join([*cells, row[4]]).rstrip())
        if len(rows) == 1:
            lines.append("(no faults or connections recorded)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"FaultTimeline({self.name!r}, {len(self.faults)} faults, {len(self.events)} events)"
