"""What the oracle is fed and what it keeps of it, per message, conversation and participant.

`Ingest` takes acks with their intended recipients, sends of unknown outcome, recalls, observed
events and history pages, and keeps just enough to judge them: `observe()` is O(1) per event,
`sent()` costs its recipients (and, for a message already seen, what its receivers saw of the
conversation since), a history page its length plus what it must contain plus one comparison
per page of that conversation read before. Where a fed fact can break a guarantee on its own,
`checks` is asked right away and the violation kept.

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
    RecalledEntry,
    SentEntry,
    StoredEntry,
    UnackedEntry,
)
from harness.oracle.violations import Violation


@dataclass
class SentRecord:
    """An acked message and everyone it was acked for."""

    message_id: str
    conversation: str
    seq: int
    sender: str
    client_id: str
    recipients: set[str]
    body: str | None


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


# A message's send as the harness's clock saw it: (started_at or None, acked_at).
Times = tuple[float | None, float]
# The latest send start among what a participant saw of a conversation: (started_at, message id).
Frontier = tuple[float, str]


@dataclass
class Participant:
    """Everything one participant was fed, indexed the way the checks look it up."""

    name: str
    count: int = 0  # events observed so far; event #n is the n-th
    # message id -> (event index, offline) of its first sighting
    seen: dict[str, tuple[int, bool]] = field(default_factory=dict)
    seen_msg: dict[str, Message] = field(default_factory=dict)
    order: dict[str, list[str]] = field(default_factory=dict)  # conversation -> ids, first sighting
    conv_max: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # (seq, id, index)
    sender_max: dict[tuple[str, str], tuple[int, str, int]] = field(default_factory=dict)
    by_client: dict[tuple[str, str], str] = field(default_factory=dict)  # (sender, client id) -> id
    # conversation -> sorted seqs and seq -> id of messages delivered to or sent by this participant
    view_seqs: dict[str, list[int]] = field(default_factory=dict)
    view_ids: dict[str, dict[int, str]] = field(default_factory=dict)
    recalls: dict[str, int] = field(default_factory=dict)  # message id -> event index
    receipts: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # seq, index
    history: dict[str, tuple[bool, int]] = field(default_factory=dict)  # id -> (recalled, clock)
    pages: dict[str, PageMark] = field(default_factory=dict)  # conversation -> last page read
    page_count: int = 0
    pending: dict[str, None] = field(default_factory=dict)  # acked for us, not yet seen
    # happens-before: conversation -> the latest send start among the messages seen in it
    hb_top: dict[str, Frontier] = field(default_factory=dict)
    # seen before their sent(): id -> (conversation, position in order[conv], frontier before it)
    hb_late: dict[str, tuple[str, int, Frontier | None]] = field(default_factory=dict)
    hb_pages: dict[str, list[PageSpan]] = field(default_factory=dict)  # conversation -> pages
    log: list[StoredEntry] = field(default_factory=list)  # timeline; see transcript.entries()
    no_recall_events: bool = False
    observed: bool = True  # False: events not fed to the oracle, no loss/recall checks
    hides: frozenset[str] = frozenset()  # what its client's real SDKs would hide (ClientHides)

    def add_view(self, conversation: str, seq: int, message_id: str) -> None:
        # get-then-insert, not setdefault: no throwaway dict and list per message
        ids = self.view_ids.get(conversation)
        if ids is None:
            ids = self.view_ids[conversation] = {}
            seqs = self.view_seqs[conversation] = []
        elif seq in ids:
            return
        else:
            seqs = self.view_seqs[conversation]
        ids[seq] = message_id
        if not seqs or seqs[-1] < seq:
            seqs.append(seq)
        else:
            bisect.insort(seqs, seq)


class Ingest:
    """The feeding half of the oracle: every fact it is given, indexed for the checks."""

    def __init__(self, *, strict_order: bool = True, report_untracked: bool = False) -> None:
        self.strict_order = strict_order
        self.report_untracked = report_untracked
        self._clock = 0
        self._parts: dict[str, Participant] = {}
        self._sent: dict[str, SentRecord] = {}
        self._acked_by_client: dict[tuple[str, str], str] = {}
        self._unacked: dict[tuple[str, str], str | None] = {}
        self._senders: set[str] = set()
        self._info: dict[str, tuple[str, int, str]] = {}  # id -> (conversation, seq, sender)
        self._receivers: dict[str, list[str]] = {}  # id -> participants who saw it, in order
        # conversation -> (sorted seqs, seq -> id) of acked messages
        self._acked: dict[str, tuple[list[int], dict[int, str]]] = {}
        self._recalls: dict[str, RecallRecord] = {}
        self._found: list[Violation] = []  # violations detected as events arrive
        self._times: dict[str, Times] = {}  # id -> its first sent()'s (started_at, acked_at)
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

    def describe(self, message_id: str) -> str:
        """`m17 (seq 5 in d:alice:bob, sent by alice)`, as far as the oracle knows it."""
        info = self._info.get(message_id)
        if info is None:
            return message_id
        return f"{message_id} (seq {info[1]} in {info[0]}, sent by {info[2]})"

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
        sender_part = self._part(sender)
        sender_part.log.append(SentEntry(ack, tuple(sorted(wanted))))
        if ack.client_id:
            first = self._acked_by_client.setdefault((sender, ack.client_id), ack.message_id)
            found = checks.ack_resend(self, sender, ack, first)
            if found is not None:
                self._found.append(found)
        record = self._sent.get(ack.message_id)
        if record is None:
            record = self._sent[ack.message_id] = SentRecord(
                ack.message_id, ack.conversation, ack.seq, sender, ack.client_id, set(), body
            )
            self._info.setdefault(ack.message_id, (ack.conversation, ack.seq, sender))
            self._times[ack.message_id] = (started_at, acked_at)
            seen_by = self._receivers.get(ack.message_id)
            if seen_by is not None:  # seen before its ack reached the oracle: judge it now
                for name in seen_by:
                    self._late_times(self._parts[name], ack.message_id, started_at, acked_at)
            sender_part.add_view(ack.conversation, ack.seq, ack.message_id)
            acked = self._acked.get(ack.conversation)
            if acked is None:
                acked = self._acked[ack.conversation] = ([], {})
            seqs, ids = acked
            if ack.seq not in ids:
                ids[ack.seq] = ack.message_id
                if not seqs or seqs[-1] < ack.seq:
                    seqs.append(ack.seq)
                else:
                    bisect.insort(seqs, ack.seq)
        for name in wanted - record.recipients:
            part = self._part(name)
            if part.observed and ack.message_id not in part.seen:
                part.pending[ack.message_id] = None
        record.recipients |= wanted

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
        ids = part.order[conv]
        reported = False
        for i in range(pos + 1, len(ids)):  # what part saw since mid: one ack's latency, mostly
            later = ids[i]
            times = self._times.get(later)
            if times is None:  # still waiting for its own times: mid now stands before it
                wait = part.hb_late.get(later)
                if wait is not None and (wait[2] is None or started > wait[2][0]):
                    part.hb_late[later] = (wait[0], wait[1], (started, mid))
            elif not reported and times[1] < started:
                self._found.append(checks.causal_seen(self, part, later, mid))
                reported = True
        top = part.hb_top.get(conv)
        if top is None or started > top[0]:
            part.hb_top[conv] = (started, mid)

    def sent_unacked(
        self, sender: str, client_id: str, conversation_hint: str | None = None
    ) -> None:
        """Record a send whose outcome is unknown: it may arrive at most once, or not at all."""
        self._clock += 1
        self._senders.add(sender)
        self._unacked[(sender, client_id)] = conversation_hint
        self._part(sender).log.append(UnackedEntry(client_id, conversation_hint))

    def recalled(self, conversation: str, message_id: str, by: str) -> None:
        """Record a recall the test performed and got ok for."""
        self._clock += 1
        self._part(by).log.append(RecalledEntry(conversation, message_id))
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
        self._clock += 1
        part = self._part(participant)
        part.count += 1
        index = part.count
        part.log.append(event)  # EventEntry(index, event) when read back
        if isinstance(event, MessageReceived):
            self._observe_message(part, index, event)
        elif isinstance(event, MessageRecalled):
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

    def _observe_message(self, part: Participant, index: int, event: MessageReceived) -> None:
        msg = event.message
        mid = msg.message_id
        first = part.seen.get(mid)
        if first is not None:
            self._found.append(checks.repeated_sighting(self, part, index, event, first))
            return
        part.seen[mid] = (index, event.offline)
        part.seen_msg[mid] = msg
        part.pending.pop(mid, None)
        if mid not in self._info:
            self._info[mid] = (msg.conversation, msg.seq, msg.sender)
        receivers = self._receivers.get(mid)
        if receivers is None:
            self._receivers[mid] = [part.name]
        else:
            receivers.append(part.name)
        conv = msg.conversation
        ids = part.order.get(conv)
        if ids is None:
            ids = part.order[conv] = [mid]
        else:
            ids.append(mid)
        top = part.hb_top.get(conv)
        times = self._times.get(mid)
        if times is None:  # its sent() has not arrived (yet): judged when it does
            part.hb_late[mid] = (conv, len(ids) - 1, top)
        else:
            if top is not None and times[1] < top[0]:
                self._found.append(checks.causal_seen(self, part, mid, top[1]))
            started = times[0]
            if started is not None and (top is None or started > top[0]):
                part.hb_top[conv] = (started, mid)
        part.add_view(msg.conversation, msg.seq, mid)
        if msg.client_id:
            key = (msg.sender, msg.client_id)
            other = part.by_client.setdefault(key, mid)
            if other != mid:
                self._found.append(checks.stored_twice(self, part, index, event, other))
        skey = (msg.conversation, msg.sender)
        smax = part.sender_max.get(skey)
        cmax = part.conv_max.get(msg.conversation)
        found = checks.order(self, part, index, event, smax, cmax)
        if found is not None:
            self._found.append(found)
        if smax is None or msg.seq > smax[0]:
            part.sender_max[skey] = (msg.seq, mid, index)
        if cmax is None or msg.seq > cmax[0]:
            part.conv_max[msg.conversation] = (msg.seq, mid, index)

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
        part.log.append(HistoryEntry(number, page.conversation, lo, hi, len(msgs), page.has_more))
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
