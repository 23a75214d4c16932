"""What "delivered exactly once, in order, recalled, read up to N" means, without I/O.

The `Oracle` is fed what senders were acked and what every participant observed (events and
history pages), and judges it: loss, duplicates, order, group order, recall consistency, receipt
monotonicity, history against deliveries, and unexpected deliveries. It never awaits and never
touches a socket, so suites, property tests and load users share one definition.

`observe()` is O(1) per event; the whole-run checks in `violations()` are O(n log n).

The package's seams: `ingest` (what the oracle is fed and keeps), `checks` (what decides a
violation and explains it), `violations` (`Violation`, `ViolationKind`, `OracleViolation`),
`transcript` (the typed per-participant log and its rendering); `core` puts them together.

Example::

    oracle.sent("alice", ack, recipients={"bob"})
    oracle.observe("bob", MessageReceived(message))
    oracle.assert_ok()
"""

from harness.oracle.core import Oracle
from harness.oracle.transcript import (
    EventEntry,
    HistoryEntry,
    LogEntry,
    RecalledEntry,
    SentEntry,
    UnackedEntry,
    format_event,
)
from harness.oracle.violations import (
    KINDS,
    MAX_PARAGRAPHS_PER_KIND,
    OracleViolation,
    Violation,
    ViolationKind,
)

__all__ = [
    "KINDS",
    "MAX_PARAGRAPHS_PER_KIND",
    "EventEntry",
    "HistoryEntry",
    "LogEntry",
    "Oracle",
    "OracleViolation",
    "RecalledEntry",
    "SentEntry",
    "UnackedEntry",
    "Violation",
    "ViolationKind",
    "format_event",
]
