"""What "delivered exactly once, in order, recalled, read up to N" means, without I/O.

The `Oracle` is fed what senders were acked and what every participant observed (events and
history pages), and judges it: loss, duplicates, order, group order, causal order, recall
consistency, receipt monotonicity, history against deliveries, and unexpected deliveries. It
never awaits and never touches a socket, so suites, property tests and load users share one
definition.

Order is judged twice. By the endpoint's numbering: a conversation's (or a sender's) messages
arrive in seq order. And by happens-before, from the harness's own monotonic clock, which an
adapter numbering by arrival cannot fool: message A happens before message B when A's ack
arrived before B's send was started into the same conversation (`A.acked_at < B.started_at`,
both given to `sent()`); then every participant must see A before B, live, after offline
catch-up and in history pages (in page order: oldest first), whatever their seqs. Sends that
overlap in time are concurrent and may arrive in either order, but every member of a group sees
one order, judged on the orders of sighting, not on seqs.

`observe()` is O(1) amortised per event (what a participant saw of a conversation is one
`ConvView`); `violations()` and `missing()` may be called as often as wanted: they consume
nothing, and a repeated `violations()` judges only what arrived since (and what a later fact
may still change). `bench/bench_oracle.py` measures the cost per event.

The package's seams: `ingest` (what the oracle is fed and keeps), `checks` (what decides a
violation and explains it), `violations` (`Violation`, `ViolationKind`, `OracleViolation`),
`transcript` (the typed per-participant log and its rendering); `core` puts them together.

Example::

    started = time.monotonic()
    ack = await client.send(Target.to_user("bob"), "hi", client_id="c1")
    oracle.sent("alice", ack, recipients={"bob"}, started_at=started)
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
