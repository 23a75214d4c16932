"""What the oracle is fed and what it keeps of it, per message, conversation and participant.

`Ingest` takes acks with their intended recipients, sends of unknown outcome, recalls, observed
events and history pages, and keeps just enough to judge them: `observe()` is O(1) per event,
`sent()` costs its recipients (and, for a message already seen, what its receivers saw of the
conversation since), a history page its length plus what it must contain plus one comparison
per page of that conversation read before. Where a fed fact can break a guarantee on its own,
`checks` is asked right away and the violation kept.

The hot path is a load run's: one `sent()` per message and one `observe()` per recipient. What
a participant saw of one conversation lives in one `ConvView` (its order of sightings, the
highest seqs, the seqs it holds, the happens-before frontier), so an event costs one lookup of
that view plus a few comparisons and appends; what is kept per message is the message itself,
its `SentRecord` and plain ints and strings, which the garbage collector need not walk again.

Happens-before comes from the harness's own monotonic clock, never from the endpoint's seq: A
happens before B when A's ack arrived before B's send was started into the same conversation
(`A.acked_at < B.started_at`); then everyone must see A before B. Per participant and
conversation the oracle keeps the latest start among the messages it has seen (`hb_top`): a new
sighting whose ack came before that start was seen too late, one comparison per event. A message
seen before its `sent()` arrived waits in `hb_late` with that frontier as it stood; its late
`sent()` then checks it against the frontier and walks only what the participant saw since
(the messages of one ack's latency), so facts may arrive in any order and still be judged.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from harness.contract import (
    Ack,
    Event,
    HistoryPage,
    Message,
    MessageRecalled,
    MessageReceived,
    ReceiptUpdated,
)
from harness.oracle import checks
from harness.oracle.transcript import (
    HistoryEntry,
    OwnEntry,
    RecalledEntry,
    SentEntry,
    Standing,
    UnackedEntry,
)
from harness.oracle.violations import Violation


@dataclass(slots=True, eq=False)
class SentRecord(Standing):
    """An acked message, everyone it was acked for, and its first `sent()`'s harness times."""

    message_id: str
    conversation: str
    seq: int
    sender: str
    client_id: str
    recipients: set[str]  # the union over every sent() of it
    body: str | None
    started_at: float | None  # None: never the later one of a happens-before pair
    acked_at: float
    ack: Ack  # the first sent()'s ack, and `first_to` its recipients: its transcript entry
    first_to: set[str]
    known_first: bool = True  # this record is what the oracle first knew of the message
    receivers: tuple[str, ...] = ()  # who saw the message, in order (before: Ingest._receivers)

    def entry(self) -> SentEntry:
        return SentEntry(self.ack, tuple(sorted(self.first_to)))


@dataclass
class RecallRecord:
    """A recall the oracle knows of."""

    conversation: str
    by: str | None
    known_at: int  # oracle clock when the recall first became known
    source: str  # how the oracle learned of it, for explanations


@dataclass
class PageMark:
    """The last history page a participant read of one conversation."""

    number: int
    lo: int
    hi: int
    has_more: bool


@dataclass
class PageSpan:
    """What a history page showed, for happens-before across pages: its seq range and extremes."""

    number: int
    lo: int
    hi: int
    top: tuple[float, str] | None  # the latest send start on the page, and its message
    bottom: tuple[float, str] | None  # the earliest ack on the page, and its message


# The latest send start among what a participant saw of a conversation: (started_at, message id).
Frontier = tuple[float, str]
# Where a message first stands in what the oracle knows: an ack's record, or the message itself
# as first seen; both have `.conversation`, `.seq` and `.sender`.
Known = SentRecord | Message
NO_SEQ = float("-inf")  # below every seq: "nothing seen yet" without a None check


@dataclass(slots=True, eq=False)
class ConvView:
    """What one participant saw of one conversation (and, for its own sends, holds in it)."""

    order: list[str] = field(default_factory=list)  # ids in order of first sighting
    top_seq: float = NO_SEQ  # the highest seq seen, and its message (strict order)
    top_id: str = ""
    sender_max: dict[str, tuple[int, str]] = field(default_factory=dict)  # sender -> (seq, id)
    # seqs of messages delivered to or sent by the participant: sorted, and seq -> id
    view_seqs: list[int] = field(default_factory=list)
    view_ids: dict[int, str] = field(default_factory=dict)
    hb_top: Frontier | None = None  # happens-before: the latest send start among those seen
    # group order: whether `order` rises in each message's one seq (the first known), up to
    # fits_seq; the acked seqs are then one order that fits this member's
    fits_seq: float = NO_SEQ
    fits: bool = True

    def add_view(self, seq: int, message_id: str) -> None:
        ids = self.view_ids
        if seq in ids:
            return
        ids[seq] = message_id
        seqs = self.view_seqs
        if not seqs or seqs[-1] < seq:
            seqs.append(seq)
        else:
            bisect.insort(seqs, seq)


@dataclass
class Participant:
    """Everything one participant was fed, indexed the way the checks look it up."""

    name: str
    events: list[Event] = field(default_factory=list)  # what it observed: event #n is [n - 1]
    # its own entries (sends, recalls, history pages) and how many events came before each
    own: list[OwnEntry] = field(default_factory=list)
    own_at: list[int] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # message id -> its first sighting's #
    convs: dict[str, ConvView] = field(default_factory=dict)  # conversation -> view
    sighted: dict[str, ConvView] = field(default_factory=dict)  # the views with sightings
    by_client: dict[str, dict[str, str]] = field(default_factory=dict)  # sender -> client -> id
    recalls: dict[str, int] = field(default_factory=dict)  # message id -> event index
    receipts: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # seq, index
    history: dict[str, tuple[bool, int]] = field(default_factory=dict)  # id -> (recalled, clock)
    pages: dict[str, PageMark] = field(default_factory=dict)  # conversation -> last page read
    page_count: int = 0
    pending: dict[str, None] = field(default_factory=dict)  # acked for us, not yet seen
    # seen before their sent(): id -> (conversation, position in its order, frontier before it)
    hb_late: dict[str, tuple[str, int, Frontier | None]] = field(default_factory=dict)
    hb_pages: dict[str, list[PageSpan]] = field(default_factory=dict)  # conversation -> pages
    # first sightings (event #s) not yet judged by checks.unexpected, and those judged but
    # not settled: a later fact may still change what they are
    unchecked: dict[str, int] = field(default_factory=dict)  # message id -> event #
    watched: list[int] = field(default_factory=list)
    no_recall_events: bool = False
    observed: bool = True  # False: events not fed to the oracle, no loss/recall checks
    hides: frozenset[str] = frozenset()  # what its client's real SDKs would hide (ClientHides)

    @property
    def count(self) -> int:
        """Events observed so far."""
        return len(self.events)

    def sighting(self, message_id: str) -> tuple[int, bool]:
        """(event index, offline) of the participant's first sighting of the message."""
        index = self.seen[message_id]
        event = self.events[index - 1]
        assert isinstance(event, MessageReceived)
        return index, event.offline

    def message(self, message_id: str) -> Message | None:
        """The message as the participant first saw it, if it did."""
        index = self.seen.get(message_id)
        if index is None:
            return None
        event = self.events[index - 1]
        assert isinstance(event, MessageReceived)
        return event.message

    def add_own(self, entry: OwnEntry) -> None:
        self.own.append(entry)
        self.own_at.append(len(self.events))


class Ingest:
    """The feeding half of the oracle: every fact it is given, indexed for the checks."""

    def __init__(self, *, strict_order: bool = True, report_untracked: bool = False) -> None:
        self.strict_order = strict_order
        self.report_untracked = report_untracked
        self._clock = 0
        self._parts: dict[str, Participant] = {}
        self._sent: dict[str, SentRecord] = {}
        self._acked_by_client: dict[str, dict[str, str]] = {}  # sender -> client id -> id
        self._unacked: dict[tuple[str, str], str | None] = {}
        self._senders: set[str] = set()
        self._info: dict[str, Known] = {}  # id -> its ack's record, or the message first seen
        # id -> who saw it, in order, until its ack's record holds that (`receivers()`)
        self._receivers: dict[str, tuple[str, ...]] = {}
        # conversation -> (sorted seqs, seq -> id) of acked messages
        self._acked: dict[str, tuple[list[int], dict[int, str]]] = {}
        self._recalls: dict[str, RecallRecord] = {}
        self._found: list[Violation] = []  # violations detected as events arrive
        self._t0: float | None = None  # the oracle's first event on the monotonic clock
        self._timed = False  # has a sent() set _t0 from its own times yet

    def at(self, t: float) -> str:
        """`t=1.250s`: a monotonic time relative to the oracle's first event."""
        return f"t={t - (self._t0 if self._t0 is not None else t):.3f}s"

    def _part(self, name: str) -> Participant:
        part = self._parts.get(name)
        if part is None:
            part = self._parts[name] = Participant(name)
            if self._t0 is None:
                self._t0 = time.monotonic()
        return part

    def receivers(self, message_id: str) -> tuple[str, ...]:
        """Who saw the message, in the order of their first sightings."""
        record = self._sent.get(message_id)
        if record is not None:
            return record.receivers
        return self._receivers.get(message_id, ())

    def describe(self, message_id: str) -> str:
        """`m17 (seq 5 in d:alice:bob, sent by alice)`, as far as the oracle knows it."""
        info = self._info.get(message_id)
        if info is None:
            return message_id
        return f"{message_id} (seq {info.seq} in {info.conversation}, sent by {info.sender})"

    # -- declarations --------------------------------------------------------------------------

    def no_recall_events(self, participant: str) -> None:
        """Declare a participant (a v1 client) that gets no recall events: judged by history."""
        self._part(participant).no_recall_events = True

    def client_hides(self, participant: str, hides: Iterable[str]) -> None:
        """Declare what the participant's protocol's real SDKs hide (`ClientHides` values).

        The server's behaviour is judged all the same: a repeat or a backward receipt is then
        reported as `hidden_by_sdk`, saying that users of such an SDK would not see it.
        """
        self._part(participant).hides = frozenset(str(h) for h in hides)

    def not_observed(self, *participants: str) -> None:
        """Declare participants whose events are not fed here: no loss or recall checks for them."""
        for name in participants:
            part = self._part(name)
            part.observed = False
            part.pending.clear()

    # -- what the test did ---------------------------------------------------------------------

    def sent(
        self,
        sender: str,
        ack: Ack,
        *,
        recipients: Iterable[str],
        body: str | None = None,
        started_at: float | None = None,
        acked_at: float | None = None,
    ) -> None:
        """Record an acked send; `recipients` are who must receive it (the sender is dropped).

        `started_at` is `time.monotonic()` when the send was started, `acked_at` when its ack
        arrived (default: now). A message acked before another was started into the same
        conversation happens before it: everyone must see it first, live, after offline catch-up
        and in history. Without `started_at` the message is never the later one of such a pair.
        """
        self._clock += 1
        if acked_at is None:
            acked_at = time.monotonic()
        if not self._timed:  # the first send may have started before anything was fed
            self._timed = True
            origin = acked_at if started_at is None else min(started_at, acked_at)
            if self._t0 is None or origin < self._t0:
                self._t0 = origin
        self._senders.add(sender)
        wanted = set(recipients)
        wanted.discard(sender)
        parts = self._parts
        sender_part = parts.get(sender) or self._part(sender)
        mid = ack.message_id
        record = self._sent.get(mid)
        fresh = record is None
        if record is None:
            record = self._sent[mid] = SentRecord(
                mid, ack.conversation, ack.seq, sender, ack.client_id, wanted, body,
                started_at, acked_at, ack, wanted,
            )
            sender_part.add_own(record)  # its first sent()'s entry: record.entry()
        else:
            sender_part.add_own(SentEntry(ack, tuple(sorted(wanted))))
        if ack.client_id:
            by_client = self._acked_by_client.get(sender)
            if by_client is None:
                by_client = self._acked_by_client[sender] = {}
            first = by_client.setdefault(ack.client_id, mid)
            if first != mid:
                resent = checks.ack_resend(self, sender, ack, first)
                if resent is not None:
                    self._found.append(resent)
        if fresh:  # index the new record
            info = self._info
            if mid in info:
                record.known_first = False
            else:
                info[mid] = record
            seen_by = self._receivers.pop(mid, None)
            if seen_by is not None:  # seen before its ack reached the oracle: judge it now
                record.receivers = seen_by
                for name in seen_by:
                    part = parts[name]
                    self._late_times(part, mid, started_at, acked_at)
                    index = part.unchecked.get(mid)
                    if index is not None and (name in wanted or name == sender):
                        seen = part.events[index - 1].message  # type: ignore[union-attr]
                        if seen.seq == ack.seq and seen.conversation == ack.conversation:
                            del part.unchecked[mid]  # settled: checks.unexpected need not look
            cv = sender_part.convs.get(ack.conversation)
            if cv is None:
                cv = sender_part.convs[ack.conversation] = ConvView()
            cv.add_view(ack.seq, mid)
            acked = self._acked.get(ack.conversation)
            if acked is None:
                acked = self._acked[ack.conversation] = ([], {})
            seqs, ids = acked
            if ack.seq not in ids:
                ids[ack.seq] = mid
                if not seqs or seqs[-1] < ack.seq:
                    seqs.append(ack.seq)
                else:
                    bisect.insort(seqs, ack.seq)
            new = wanted
        else:
            new = wanted - record.recipients
            record.recipients = record.recipients | wanted
        for name in new:
            part = parts.get(name) or self._part(name)
            if part.observed and mid not in part.seen:
                part.pending[mid] = None

    def _late_times(
        self, part: Participant, mid: str, started: float | None, acked: float
    ) -> None:
        """The times of `mid`, which `part` saw before they were known: judge it both ways."""
        late = part.hb_late.pop(mid, None)
        if late is None:
            return
        conv, pos, before = late
        if before is not None and acked < before[0]:  # something seen earlier came after mid
            self._found.append(checks.causal_seen(self, part, mid, before[1]))
        if started is None:
            return
        cv = part.convs[conv]
        ids = cv.order
        sent = self._sent
        reported = False
        for i in range(pos + 1, len(ids)):  # what part saw since mid: one ack's latency, mostly
            later = ids[i]
            record = sent.get(later)
            if record is None:  # still waiting for its own times: mid now stands before it
                wait = part.hb_late.get(later)
                if wait is not None and (wait[2] is None or started > wait[2][0]):
                    part.hb_late[later] = (wait[0], wait[1], (started, mid))
            elif not reported and record.acked_at < started:
                self._found.append(checks.causal_seen(self, part, later, mid))
                reported = True
        top = cv.hb_top
        if top is None or started > top[0]:
            cv.hb_top = (started, mid)

    def sent_unacked(
        self, sender: str, client_id: str, conversation_hint: str | None = None
    ) -> None:
        """Record a send whose outcome is unknown: it may arrive at most once, or not at all."""
        self._clock += 1
        self._senders.add(sender)
        self._unacked[(sender, client_id)] = conversation_hint
        self._part(sender).add_own(UnackedEntry(client_id, conversation_hint))

    def recalled(self, conversation: str, message_id: str, by: str) -> None:
        """Record a recall the test performed and got ok for."""
        self._clock += 1
        self._part(by).add_own(RecalledEntry(conversation, message_id))
        self._learn_recall(conversation, message_id, by, f"{by} recalled it")

    def _learn_recall(self, conversation: str, message_id: str, by: str | None, src: str) -> None:
        known = self._recalls.get(message_id)
        if known is None:
            self._recalls[message_id] = RecallRecord(conversation, by, self._clock, src)
        elif known.by is None and by is not None:
            known.by = by

    # -- what the participants saw -------------------------------------------------------------

    def observe(self, participant: str, event: Event) -> None:
        """Record one event a participant received, in arrival order."""
        # The oracle's clock orders recalls against history pages; a message sighting is
        # neither, so the hot path below leaves it alone.
        part = self._parts.get(participant) or self._part(participant)
        events = part.events
        events.append(event)  # EventEntry(index, event) when read back
        index = len(events)
        if not isinstance(event, MessageReceived):
            self._observe_other(part, index, event)
            return
        # A message sighting, the hot path of a load run: kept in one body, no calls but where
        # a check finds something.
        msg = event.message
        mid = msg.message_id
        seen = part.seen
        if mid in seen:
            first = part.sighting(mid)
            self._found.append(checks.repeated_sighting(self, part, index, event, first))
            return
        seen[mid] = index
        if part.pending:
            part.pending.pop(mid, None)
        record = self._sent.get(mid)
        known: Known
        if record is None:
            known = self._info.get(mid) or msg
            if known is msg:
                self._info[mid] = msg
            receivers = self._receivers.get(mid)
            self._receivers[mid] = (part.name,) if receivers is None else (*receivers, part.name)
        else:
            known = record if record.known_first else self._info[mid]
            record.receivers = (*record.receivers, part.name)
        conv = msg.conversation
        cv = part.convs.get(conv)
        if cv is None:
            cv = part.convs[conv] = ConvView()
        ids = cv.order
        if not ids:
            part.sighted[conv] = cv
        ids.append(mid)
        seq = msg.seq
        top = cv.hb_top
        if record is None:  # its sent() has not arrived (yet): judged when it does
            part.hb_late[mid] = (conv, len(ids) - 1, top)
            part.unchecked[mid] = index
        else:
            if top is not None and record.acked_at < top[0]:
                self._found.append(checks.causal_seen(self, part, mid, top[1]))
            started = record.started_at
            if started is not None and (top is None or started > top[0]):
                cv.hb_top = (started, mid)
            if (
                seq != record.seq
                or conv != record.conversation
                or (part.name not in record.recipients and part.name != record.sender)
            ):  # unexpected, or still may be: judged by checks.unexpected
                part.unchecked[mid] = index
        if cv.fits:  # group order: the sightings still rise in each message's one seq
            if known.seq > cv.fits_seq:
                cv.fits_seq = known.seq
            else:
                cv.fits = False  # for good: the order only grows and the seqs stay
        view_ids = cv.view_ids
        if seq not in view_ids:  # ConvView.add_view, inlined: this runs once per event
            view_ids[seq] = mid
            view_seqs = cv.view_seqs
            if not view_seqs or view_seqs[-1] < seq:
                view_seqs.append(seq)
            else:
                bisect.insort(view_seqs, seq)
        sender = msg.sender
        if msg.client_id:
            by_client = part.by_client.get(sender)
            if by_client is None:
                by_client = part.by_client[sender] = {}
            other = by_client.setdefault(msg.client_id, mid)
            if other != mid:
                self._found.append(checks.stored_twice(self, part, index, event, other))
        smax = cv.sender_max.get(sender)
        if (smax is not None and seq < smax[0]) or (self.strict_order and seq < cv.top_seq):
            found = checks.order(
                self, part, index, event,
                None if smax is None else (smax[0], smax[1], part.sighting(smax[1])[0]),
                None if cv.top_seq == NO_SEQ else (
                    int(cv.top_seq), cv.top_id, part.sighting(cv.top_id)[0]),
            )
            if found is not None:
                self._found.append(found)
        if smax is None or seq > smax[0]:
            cv.sender_max[sender] = (seq, mid)
        if seq > cv.top_seq:
            cv.top_seq = seq
            cv.top_id = mid

    def _observe_other(self, part: Participant, index: int, event: Event) -> None:
        """A recall or a receipt (or a connection event, which only the log keeps)."""
        participant = part.name
        self._clock += 1
        if isinstance(event, MessageRecalled):
            part.recalls.setdefault(event.message_id, index)
            self._learn_recall(
                event.conversation,
                event.message_id,
                event.by,
                f"{participant} got a recall by {event.by} at {checks.how(index, event.offline)}",
            )
        elif isinstance(event, ReceiptUpdated):
            key = (event.conversation, event.reader)
            last = part.receipts.get(key)
            if last is None:
                part.receipts[key] = (event.up_to_seq, index)
                return
            found = checks.receipt(part, index, event, last)
            if found is not None:
                self._found.append(found)
            else:
                part.receipts[key] = (event.up_to_seq, index)

    def observe_history(
        self,
        participant: str,
        page: HistoryPage,
        *,
        before: int | None = None,
        after: int | None = None,
    ) -> None:
        """Record a history page a participant read; pass the query's `before`/`after` if any.

        Without `before`/`after` the page is still checked against what was delivered; with
        them the oracle also checks the page's bounds, gaps next to them, and `has_more`.
        """
        self._clock += 1
        part = self._part(participant)
        part.page_count += 1
        number = part.page_count
        msgs = page.messages
        lo, hi = (msgs[0].seq, msgs[-1].seq) if msgs else (0, -1)
        part.add_own(HistoryEntry(number, page.conversation, lo, hi, len(msgs), page.has_more))
        found = checks.history_page(self, part, number, page, before=before, after=after)
        for m in msgs:
            self._history_recall(part, number, m)
        self._found.extend(found)
        if msgs:
            part.pages[page.conversation] = PageMark(number, lo, hi, page.has_more)
            self._history_causal(part, number, page, lo, hi)

    def _history_causal(
        self, part: Participant, number: int, page: HistoryPage, lo: int, hi: int
    ) -> None:
        """Happens-before within the page, in its order, and against the pages read before."""
        found, top, bottom = checks.causal_page(self, part, number, page)
        spans = part.hb_pages.get(page.conversation)
        if spans is None:
            spans = part.hb_pages[page.conversation] = []
        conv = page.conversation
        for span in spans:  # a few pages per conversation: each is one comparison
            # a page below this one (older in history) shows its latest start before our
            # earliest ack; a page above shows its earliest ack after our latest start
            if span.hi < lo and span.top is not None and bottom is not None:
                if bottom[0] < span.top[0]:
                    found.append(checks.causal_pages(
                        self, part, conv, bottom[1], number, span.top[1], span.number
                    ))
            elif span.lo > hi and top is not None and span.bottom is not None:
                if span.bottom[0] < top[0]:
                    found.append(checks.causal_pages(
                        self, part, conv, span.bottom[1], span.number, top[1], number
                    ))
        spans.append(PageSpan(number, lo, hi, top, bottom))
        self._found.extend(found)

    def _history_recall(self, part: Participant, number: int, m: Message) -> None:
        part.history[m.message_id] = (m.recalled, self._clock)
        known = self._recalls.get(m.message_id)
        if known is None:
            if m.recalled:
                self._learn_recall(
                    m.conversation,
                    m.message_id,
                    None,
                    f"{part.name}'s history page #{number} showed it recalled",
                )
            return
        found = checks.history_recall(self, part, number, m, known)
        if found is not None:
            self._found.append(found)
