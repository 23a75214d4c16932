"""The `Oracle`: what it was fed (`Ingest`) judged by the checks, and its transcript."""

from __future__ import annotations

from harness.oracle import checks
from harness.oracle.ingest import Ingest
from harness.oracle.transcript import LogEntry, entries, render_transcript
from harness.oracle.violations import OracleViolation, Violation


class Oracle(Ingest):
    """The observed-conversation model: feed it acks, events and history pages, then judge.

    `strict_order`: messages of one conversation must arrive in seq order whoever sent them
    (when False, only each sender's own messages must keep their ack order).
    `report_untracked`: also report messages from senders that never reported a send here.

    Happens-before does not depend on either: when `sent()` is given `started_at` (and
    `acked_at`, default: the call), a message whose ack arrived before another's send was
    started into the same conversation happens before it, and any participant that sees the
    later one first (live, offline or in history) is a `causal_order` violation. Acks may
    reach the oracle after the events that carry them; they are judged when they do.
    """

    def missing(self) -> dict[str, list[str]]:
        """Participant -> ids of messages acked for them but not seen yet (for `until()`)."""
        return {name: list(p.pending) for name, p in self._parts.items() if p.pending}

    def violations(self, *, complete: bool = True) -> list[Violation]:
        """Every violation so far; `complete=False` skips what in-flight events could still heal."""
        out = list(self._found)
        if complete:
            out.extend(checks.losses(self))
        out.extend(checks.unexpected(self, complete))
        out.extend(checks.group_order(self))
        out.extend(checks.recalls(self, complete))
        return out

    def assert_ok(self, *, complete: bool = True) -> None:
        """Raise `OracleViolation` naming every violation, if there is any."""
        found = self.violations(complete=complete)
        if found:
            raise OracleViolation(found)

    def transcript(self, *, limit: int = 200) -> str:
        """A readable per-participant timeline (the last `limit` entries each)."""
        return render_transcript(self._parts.values(), limit=limit)

    def entries(self, participant: str, *, limit: int | None = None) -> list[LogEntry]:
        """A participant's timeline as typed entries (the last `limit` when given)."""
        part = self._parts.get(participant)
        return [] if part is None else entries(part, limit=limit)
