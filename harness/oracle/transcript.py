"""The oracle's per-participant log, one typed entry per thing it was fed, and its rendering."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from harness.contract import (
    Ack,
    Disconnected,
    Event,
    MembershipChanged,
    MessageRecalled,
    MessageReceived,
    MuteChanged,
    ReceiptUpdated,
    Reconnected,
)

if TYPE_CHECKING:
    from harness.oracle.ingest import Participant


@dataclass(frozen=True, slots=True)
class SentEntry:
    """An acked send, with the recipients it must reach."""

    ack: Ack
    recipients: tuple[str, ...]

    def render(self) -> str:
        ack = self.ack
        dup = " (duplicate ack)" if ack.duplicate else ""
        to = ", ".join(self.recipients) or "nobody"
        return (
            f"sent      {ack.message_id} seq {ack.seq} in {ack.conversation} "
            f"[client {ack.client_id}] to {to}{dup}"
        )


@dataclass(frozen=True, slots=True)
class UnackedEntry:
    """A send whose outcome the sender never learned."""

    client_id: str
    conversation_hint: str | None

    def render(self) -> str:
        toward = self.conversation_hint or "?"
        return f"sent      client {self.client_id} (outcome unknown) toward {toward}"


@dataclass(frozen=True, slots=True)
class RecalledEntry:
    """A recall the participant performed and got ok for."""

    conversation: str
    message_id: str

    def render(self) -> str:
        return f"recalled  {self.message_id} in {self.conversation}"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A history page the participant read (page #`number` of its reads)."""

    number: int
    conversation: str
    lo: int
    hi: int
    count: int
    has_more: bool

    def render(self) -> str:
        span = f"seq {self.lo}..{self.hi}" if self.count else "empty"
        return (
            f"history   page #{self.number} of {self.conversation}: {self.count} messages, "
            f"{span}, has_more={self.has_more}"
        )


@dataclass(frozen=True, slots=True)
class EventEntry:
    """Event #`index` the participant received."""

    index: int
    event: Event

    def render(self) -> str:
        event = self.event
        head = f"#{self.index:<4}"
        if isinstance(event, MessageReceived):
            m = event.message
            flag = " [recalled]" if m.recalled else ""
            return (
                f"{head} {_mode(event.offline)} message {m.message_id} seq {m.seq} in "
                f"{m.conversation} from {m.sender}: {_body(m.body)}{flag}"
            )
        if isinstance(event, MessageRecalled):
            return (
                f"{head} {_mode(event.offline)} recall  {event.message_id} in "
                f"{event.conversation} by {event.by}"
            )
        if isinstance(event, ReceiptUpdated):
            return (
                f"{head} {_mode(event.offline)} receipt {event.reader} read {event.conversation} "
                f"up to seq {event.up_to_seq}"
            )
        if isinstance(event, MembershipChanged):
            role = f" as {event.role}" if event.role else ""
            return (
                f"{head} group   {event.user} {event.change}{role} in {event.group} by {event.by}"
            )
        if isinstance(event, MuteChanged):
            who = event.user or "everyone"
            state = "muted" if event.muted else "unmuted"
            return f"{head} group   {who} {state} in {event.group} by {event.by}"
        if isinstance(event, Disconnected):
            return f"{head} disconnected: {event.reason}"
        if isinstance(event, Reconnected):
            return f"{head} reconnected after {event.attempts} attempt(s)"
        return f"{head} {event!r}"


LogEntry: TypeAlias = SentEntry | UnackedEntry | RecalledEntry | HistoryEntry | EventEntry
"""One line of a participant's timeline."""

# What a participant's log stores: an observed event stands for itself (it is a frozen contract
# dataclass already) and becomes an `EventEntry` with its index when read back, so the hot path
# of `observe()` allocates nothing for the log.
StoredEntry: TypeAlias = SentEntry | UnackedEntry | RecalledEntry | HistoryEntry | Event
_OWN = (SentEntry, UnackedEntry, RecalledEntry, HistoryEntry)


def _mode(offline: bool) -> str:
    return "offline" if offline else "live   "


def _body(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def format_event(event: Event, index: int) -> str:
    """One transcript line for event #`index` of a participant."""
    return EventEntry(index, event).render()


def entries(part: Participant, *, limit: int | None = None) -> list[LogEntry]:
    """The participant's log as typed entries, the last `limit` of them when given."""
    log = part.log
    if limit is not None and len(log) > limit:
        log = log[-limit:]
    out: list[LogEntry] = []
    index = part.count + 1  # events are numbered 1..count in arrival order; walk back from the end
    for stored in reversed(log):
        if isinstance(stored, _OWN):
            out.append(stored)
        else:
            index -= 1
            out.append(EventEntry(index, stored))
    out.reverse()
    return out


def render_transcript(parts: Iterable[Participant], *, limit: int) -> str:
    """A readable per-participant timeline (the last `limit` entries each)."""
    lines: list[str] = []
    for part in parts:
        flags = []
        if part.no_recall_events:
            flags.append("no recall events")
        if not part.observed:
            flags.append("not observed")
        extra = f" ({', '.join(flags)})" if flags else ""
        lines.append(f"== {part.name}{extra}: {part.count} events ==")
        if len(part.log) > limit:
            lines.append(f"  ... {len(part.log) - limit} earlier entries omitted")
        lines.extend("  " + entry.render() for entry in entries(part, limit=limit))
    return "\n".join(lines)
