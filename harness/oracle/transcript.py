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


class Standing:
    """Something the oracle keeps anyway that also stands for a `SentEntry` in a log."""

    __slots__ = ()

    def entry(self) -> SentEntry:
        raise NotImplementedError


# What a participant's log keeps besides its events (which stand for themselves, frozen contract
# dataclasses already, and become `EventEntry`s with their index when read back): a message's
# first acked send is its `SentRecord` (a `Standing`), so the hot paths of `observe()` and
# `sent()` allocate nothing for the log.
OwnEntry: TypeAlias = SentEntry | UnackedEntry | RecalledEntry | HistoryEntry | Standing


def _mode(offline: bool) -> str:
    return "offline" if offline else "live   "


def _body(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def format_event(event: Event, index: int) -> str:
    """One transcript line for event #`index` of a participant."""
    return EventEntry(index, event).render()


def entries(part: Participant, *, limit: int | None = None) -> list[LogEntry]:
    """The participant's log as typed entries, the last `limit` of them when given."""
    events, own, own_at = part.events, part.own, part.own_at
    e, o = len(events), len(own)
    want = e + o if limit is None else min(limit, e + o)
    out: list[LogEntry] = []
    while len(out) < want:  # walk back from the end, merging the two lists in arrival order
        if o and own_at[o - 1] >= e:  # own[o - 1] came after event #e
            o -= 1
            stored = own[o]
            out.append(stored.entry() if isinstance(stored, Standing) else stored)
        else:
            out.append(EventEntry(e, events[e - 1]))
            e -= 1
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
        total = len(part.events) + len(part.own)
        if total > limit:
            lines.append(f"  ... {total - limit} earlier entries omitted")
        lines.extend("  " + entry.render() for entry in entries(part, limit=limit))
    return "\n".join(lines)
