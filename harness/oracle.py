"""What "delivered exactly once, in order, recalled, read up to N" means, without I/O.

The `Oracle` is fed what senders were acked and what every participant observed (events and
history pages), and judges it: loss, duplicates, order, group order, recall consistency, receipt
monotonicity, history against deliveries, and unexpected deliveries. It never awaits and never
touches a socket, so suites, property tests and load users share one definition.

`observe()` is O(1) per event; the whole-run checks in `violations()` are O(n log n).

Example::

    oracle.sent("alice", ack, recipients={"bob"})
    oracle.observe("bob", MessageReceived(message))
    oracle.assert_ok()
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from harness.contract import (
    Ack,
    Disconnected,
    Event,
    HistoryPage,
    MembershipChanged,
    Message,
    MessageRecalled,
    MessageReceived,
    MuteChanged,
    ReceiptUpdated,
    Reconnected,
)
from harness.errors import HarnessError

KINDS = ("loss", "duplicate", "order", "group_order", "recall", "receipt", "history", "unexpected")
MAX_PARAGRAPHS_PER_KIND = 25  # assert_ok keeps failure messages readable under load


@dataclass(frozen=True)
class Violation:
    """One broken guarantee, explained in one readable paragraph."""

    kind: str  # one of KINDS
    participant: str
    conversation: str
    explanation: str

    def __str__(self) -> str:
        return self.explanation


class OracleViolation(HarnessError, AssertionError):
    """The observed conversations break an IM guarantee; the message lists every violation."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__(_render_paragraphs(violations))


def _render_paragraphs(violations: list[Violation]) -> str:
    per_kind: dict[str, int] = {}
    shown: list[str] = []
    for v in violations:
        per_kind[v.kind] = per_kind.get(v.kind, 0) + 1
        if per_kind[v.kind] <= MAX_PARAGRAPHS_PER_KIND:
            shown.append(f"[{v.kind}] {v.explanation}")
    for kind, n in per_kind.items():
        if n > MAX_PARAGRAPHS_PER_KIND:
            shown.append(f"... and {n - MAX_PARAGRAPHS_PER_KIND} more {kind} violations.")
    head = f"{len(violations)} IM guarantee violation(s) observed:"
    return "\n\n".join([head, *shown])


@dataclass
class _Sent:
    message_id: str
    conversation: str
    seq: int
    sender: str
    client_id: str
    recipients: set[str]
    body: str | None


@dataclass
class _Recall:
    conversation: str
    by: str | None
    known_at: int  # oracle clock when the recall first became known
    source: str  # how the oracle learned of it, for explanations


@dataclass
class _Page:
    number: int
    lo: int
    hi: int
    has_more: bool


@dataclass
class _Participant:
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
    pages: dict[str, _Page] = field(default_factory=dict)  # conversation -> last page read
    page_count: int = 0
    pending: dict[str, None] = field(default_factory=dict)  # acked for us, not yet seen
    log: list[tuple[object, ...]] = field(default_factory=list)  # timeline for transcript()
    no_recall_events: bool = False
    observed: bool = True  # False: events not fed to the oracle, no loss/recall checks

    def add_view(self, conversation: str, seq: int, message_id: str) -> None:
        ids = self.view_ids.setdefault(conversation, {})
        if seq in ids:
            return
        ids[seq] = message_id
        seqs = self.view_seqs.setdefault(conversation, [])
        if not seqs or seqs[-1] < seq:
            seqs.append(seq)
        else:
            bisect.insort(seqs, seq)


def _how(index: int, offline: bool) -> str:
    return f"event #{index} ({'offline catch-up' if offline else 'live'})"


class Oracle:
    """The observed-conversation model: feed it acks, events and history pages, then judge.

    `strict_order`: messages of one conversation must arrive in seq order whoever sent them
    (when False, only each sender's own messages must keep their ack order).
    `report_untracked`: also report messages from senders that never reported a send here.
    """

    def __init__(self, *, strict_order: bool = True, report_untracked: bool = False) -> None:
        self.strict_order = strict_order
        self.report_untracked = report_untracked
        self._clock = 0
        self._parts: dict[str, _Participant] = {}
        self._sent: dict[str, _Sent] = {}
        self._acked_by_client: dict[tuple[str, str], str] = {}
        self._unacked: dict[tuple[str, str], str | None] = {}
        self._senders: set[str] = set()
        self._info: dict[str, tuple[str, int, str]] = {}  # id -> (conversation, seq, sender)
        self._receivers: dict[str, list[str]] = {}  # id -> participants who saw it, in order
        # conversation -> (sorted seqs, seq -> id) of acked messages
        self._acked: dict[str, tuple[list[int], dict[int, str]]] = {}
        self._recalls: dict[str, _Recall] = {}
        self._found: list[Violation] = []  # violations detected as events arrive

    # -- feeding -------------------------------------------------------------------------------

    def _part(self, name: str) -> _Participant:
        part = self._parts.get(name)
        if part is None:
            part = self._parts[name] = _Participant(name)
        return part

    def no_recall_events(self, participant: str) -> None:
        """Declare a participant (a v1 client) that gets no recall events: judged by history."""
        self._part(participant).no_recall_events = True

    def not_observed(self, *participants: str) -> None:
        """Declare participants whose events are not fed here: no loss or recall checks for them."""
        for name in participants:
            part = self._part(name)
            part.observed = False
            part.pending.clear()

    def sent(
        self, sender: str, ack: Ack, *, recipients: Iterable[str], body: str | None = None
    ) -> None:
        """Record an acked send; `recipients` are who must receive it (the sender is dropped)."""
        self._clock += 1
        self._senders.add(sender)
        wanted = set(recipients)
        wanted.discard(sender)
        sender_part = self._part(sender)
        sender_part.log.append(("sent", ack, tuple(sorted(wanted))))
        if ack.client_id:
            key = (sender, ack.client_id)
            first = self._acked_by_client.setdefault(key, ack.message_id)
            if first != ack.message_id:
                self._found.append(
                    Violation(
                        "duplicate",
                        sender,
                        ack.conversation,
                        f"{sender}'s send with client id {ack.client_id!r} was acked twice as "
                        f"different messages: {self.describe(first)} and "
                        f"{ack.message_id} (seq {ack.seq} in {ack.conversation}); a resend with "
                        "the same client id must return the original message.",
                    )
                )
        record = self._sent.get(ack.message_id)
        if record is None:
            record = self._sent[ack.message_id] = _Sent(
                ack.message_id, ack.conversation, ack.seq, sender, ack.client_id, set(), body
            )
            self._info.setdefault(ack.message_id, (ack.conversation, ack.seq, sender))
            sender_part.add_view(ack.conversation, ack.seq, ack.message_id)
            seqs, ids = self._acked.setdefault(ack.conversation, ([], {}))
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

    def sent_unacked(
        self, sender: str, client_id: str, conversation_hint: str | None = None
    ) -> None:
        """Record a send whose outcome is unknown: it may arrive at most once, or not at all."""
        self._clock += 1
        self._senders.add(sender)
        self._unacked[(sender, client_id)] = conversation_hint
        self._part(sender).log.append(("unacked", client_id, conversation_hint))

    def recalled(self, conversation: str, message_id: str, by: str) -> None:
        """Record a recall the test performed and got ok for."""
        self._clock += 1
        self._part(by).log.append(("recalled", conversation, message_id))
        self._learn_recall(conversation, message_id, by, f"{by} recalled it")

    def _learn_recall(self, conversation: str, message_id: str, by: str | None, src: str) -> None:
        known = self._recalls.get(message_id)
        if known is None:
            self._recalls[message_id] = _Recall(conversation, by, self._clock, src)
        elif known.by is None and by is not None:
            known.by = by

    def observe(self, participant: str, event: Event) -> None:
        """Record one event a participant received, in arrival order."""
        self._clock += 1
        part = self._part(participant)
        part.count += 1
        index = part.count
        part.log.append(("event", index, event))
        if isinstance(event, MessageReceived):
            self._observe_message(part, index, event)
        elif isinstance(event, MessageRecalled):
            part.recalls.setdefault(event.message_id, index)
            self._learn_recall(
                event.conversation,
                event.message_id,
                event.by,
                f"{participant} got a recall by {event.by} at {_how(index, event.offline)}",
            )
        elif isinstance(event, ReceiptUpdated):
            key = (event.conversation, event.reader)
            last = part.receipts.get(key)
            if last is not None and event.up_to_seq < last[0]:
                self._found.append(
                    Violation(
                        "receipt",
                        participant,
                        event.conversation,
                        f"{participant} saw {event.reader}'s read receipt in "
                        f"{event.conversation} move back from seq {last[0]} (event #{last[1]}) "
                        f"to seq {event.up_to_seq} at {_how(index, event.offline)}; a read "
                        "cursor must never move back.",
                    )
                )
            if last is None or event.up_to_seq >= last[0]:
                part.receipts[key] = (event.up_to_seq, index)

    def _observe_message(self, part: _Participant, index: int, event: MessageReceived) -> None:
        msg = event.message
        mid = msg.message_id
        first = part.seen.get(mid)
        if first is not None:
            self._found.append(
                Violation(
                    "duplicate",
                    part.name,
                    msg.conversation,
                    f"{part.name} saw message {self.describe(mid)} twice: at "
                    f"{_how(*first)} and at {_how(index, event.offline)}.",
                )
            )
            return
        part.seen[mid] = (index, event.offline)
        part.seen_msg[mid] = msg
        part.pending.pop(mid, None)
        self._info.setdefault(mid, (msg.conversation, msg.seq, msg.sender))
        self._receivers.setdefault(mid, []).append(part.name)
        part.order.setdefault(msg.conversation, []).append(mid)
        part.add_view(msg.conversation, msg.seq, mid)
        if msg.client_id:
            key = (msg.sender, msg.client_id)
            other = part.by_client.setdefault(key, mid)
            if other != mid:
                unknown = " (its outcome was unknown to the sender)" if key in self._unacked else ""
                self._found.append(
                    Violation(
                        "duplicate",
                        part.name,
                        msg.conversation,
                        f"{part.name} received two messages for {msg.sender}'s single send "
                        f"with client id {msg.client_id!r}{unknown}: {self.describe(other)} at "
                        f"event #{part.seen[other][0]} and {self.describe(mid)} at "
                        f"{_how(index, event.offline)}; a send must be stored at most once.",
                    )
                )
        here = _how(index, event.offline)
        skey = (msg.conversation, msg.sender)
        smax = part.sender_max.get(skey)
        cmax = part.conv_max.get(msg.conversation)
        if smax is not None and msg.seq < smax[0]:
            self._found.append(
                Violation(
                    "order",
                    part.name,
                    msg.conversation,
                    f"{part.name} saw {self.describe(mid)} at {here} after "
                    f"{self.describe(smax[1])} at event #{smax[2]}; {msg.sender}'s messages "
                    f"must arrive in the order their sends were acked (seq order).",
                )
            )
        elif self.strict_order and cmax is not None and msg.seq < cmax[0]:
            self._found.append(
                Violation(
                    "order",
                    part.name,
                    msg.conversation,
                    f"{part.name} saw {self.describe(mid)} at {here} after "
                    f"{self.describe(cmax[1])} at event #{cmax[2]}; the messages of "
                    f"{msg.conversation} must arrive in seq order.",
                )
            )
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
        conv = page.conversation
        msgs = page.messages
        seqs = [m.seq for m in msgs]
        lo, hi = (seqs[0], seqs[-1]) if seqs else (0, -1)
        part.log.append(("history", number, conv, lo, hi, len(msgs), page.has_more))
        where = f"{participant}'s history page #{number} of {conv}"
        if seqs:
            where += f" (seq {lo}..{hi})"
        found: list[str] = []
        for prev, cur in zip(msgs, msgs[1:], strict=False):
            if cur.seq <= prev.seq:
                found.append(
                    f"{where} is not in ascending seq order: {prev.message_id} (seq {prev.seq}) "
                    f"comes before {cur.message_id} (seq {cur.seq})."
                )
        page_ids: dict[int, str] = {}
        for m in msgs:
            page_ids.setdefault(m.seq, m.message_id)
            if m.conversation != conv:
                found.append(f"{where} contains {m.message_id}, which belongs to {m.conversation}.")
            info = self._info.get(m.message_id)
            if info is not None and (info[0], info[1]) != (m.conversation, m.seq):
                found.append(
                    f"{where} shows {m.message_id} as seq {m.seq} in {m.conversation}, but it is "
                    f"{self.describe(m.message_id)}."
                )
            mine = part.view_ids.get(conv, {}).get(m.seq)
            if mine is not None and mine != m.message_id:
                found.append(
                    f"{where} shows {m.message_id} at seq {m.seq}, but {participant} "
                    f"{self._got(part, mine)} {self.describe(mine)} at that seq."
                )
            if before is not None and m.seq >= before:
                found.append(
                    f"{where} was asked for messages before seq {before} but contains "
                    f"{m.message_id} (seq {m.seq}); consecutive pages must not overlap."
                )
            if after is not None and m.seq <= after:
                found.append(
                    f"{where} was asked for messages after seq {after} but contains "
                    f"{m.message_id} (seq {m.seq}); consecutive pages must not overlap."
                )
            self._history_recall(part, number, m)
        view = part.view_seqs.get(conv, [])
        ranges: list[tuple[int, int, str]] = []  # inclusive seq ranges that must all be on the page
        if seqs:
            ranges.append((lo, hi, "within its range"))
        if before is not None:
            start = hi + 1 if seqs else None
            if not page.has_more:
                start = None
            ranges.append(
                (start if start is not None else -(2**62), before - 1, f"before seq {before}")
            )
        if after is not None and seqs:
            ranges.append((after + 1, lo - 1, f"after seq {after}"))
        acked_seqs, acked_ids = self._acked.get(conv, ([], {}))
        missing_seen: set[int] = set()
        for a, b, label in ranges:
            for i in range(bisect.bisect_left(view, a), bisect.bisect_right(view, b)):
                s = view[i]
                if s in page_ids or s in missing_seen:
                    continue
                missing_seen.add(s)
                mid = part.view_ids[conv][s]
                found.append(
                    f"{where} lacks {self.describe(mid)} {label}, which {participant} "
                    f"{self._got(part, mid)}; history must show exactly what was delivered."
                )
            for i in range(bisect.bisect_left(acked_seqs, a), bisect.bisect_right(acked_seqs, b)):
                s = acked_seqs[i]
                record = self._sent[acked_ids[s]]
                if s in page_ids or s in missing_seen or participant not in record.recipients:
                    continue
                missing_seen.add(s)
                found.append(
                    f"{where} lacks {self.describe(record.message_id)} {label}, though "
                    f"{record.sender}'s send was acked with {participant} as a recipient; an "
                    "acked message is durable and must show in history."
                )
        last = part.pages.get(conv)
        if last is not None and seqs and before is None and after is None:
            # consecutive backward paging repeats the boundary message: overlap
            if hi == last.lo and lo < last.lo and last.has_more:
                found.append(
                    f"{where} overlaps the previous page #{last.number} (seq "
                    f"{last.lo}..{last.hi}): both contain {page_ids[hi]} (seq {hi}); "
                    "consecutive pages must not overlap."
                )
        if seqs:
            part.pages[conv] = _Page(number, lo, hi, page.has_more)
        self._found.extend(Violation("history", participant, conv, text) for text in found)

    def _history_recall(self, part: _Participant, number: int, m: Message) -> None:
        part.history[m.message_id] = (m.recalled, self._clock)
        known = self._recalls.get(m.message_id)
        if m.recalled and known is None:
            self._learn_recall(
                m.conversation,
                m.message_id,
                None,
                f"{part.name}'s history page #{number} showed it recalled",
            )
        elif not m.recalled and known is not None:
            self._found.append(
                Violation(
                    "recall",
                    part.name,
                    m.conversation,
                    f"{part.name}'s history page #{number} of {m.conversation} shows "
                    f"{self.describe(m.message_id)} not recalled, after the recall was known "
                    f"({known.source}); a recalled message must be recalled for everyone.",
                )
            )

    # -- judging -------------------------------------------------------------------------------

    def describe(self, message_id: str) -> str:
        """`m17 (seq 5 in d:alice:bob, sent by alice)`, as far as the oracle knows it."""
        info = self._info.get(message_id)
        if info is None:
            return message_id
        return f"{message_id} (seq {info[1]} in {info[0]}, sent by {info[2]})"

    def _got(self, part: _Participant, message_id: str) -> str:
        first = part.seen.get(message_id)
        if first is None:
            return "sent"
        return f"received at {_how(*first)}"

    def missing(self) -> dict[str, list[str]]:
        """Participant -> ids of messages acked for them but not seen yet (for `until()`)."""
        return {name: list(p.pending) for name, p in self._parts.items() if p.pending}

    def violations(self, *, complete: bool = True) -> list[Violation]:
        """Every violation so far; `complete=False` skips what in-flight events could still heal."""
        out = list(self._found)
        if complete:
            out.extend(self._losses())
        out.extend(self._unexpected(complete))
        out.extend(self._group_order())
        out.extend(self._recall_checks(complete))
        return out

    def assert_ok(self, *, complete: bool = True) -> None:
        """Raise `OracleViolation` naming every violation, if there is any."""
        found = self.violations(complete=complete)
        if found:
            raise OracleViolation(found)

    def _losses(self) -> Iterable[Violation]:
        for name, part in self._parts.items():
            if not part.observed:
                continue
            for mid in part.pending:
                record = self._sent[mid]
                stored = ""
                if mid in part.history:
                    stored = f"; {name}'s history does show it, so it was stored but not delivered"
                yield Violation(
                    "loss",
                    name,
                    record.conversation,
                    f"{name} never received {self.describe(mid)}: {record.sender}'s send was "
                    f"acked with {name} as a recipient, but none of {name}'s {part.count} "
                    f"events carried it{stored}.",
                )

    def _unexpected(self, complete: bool) -> Iterable[Violation]:
        for name, part in self._parts.items():
            for mid, msg in part.seen_msg.items():
                record = self._sent.get(mid)
                at = _how(*part.seen[mid])
                if record is not None:
                    if name != record.sender and name not in record.recipients:
                        whom = ", ".join(sorted(record.recipients)) or "nobody"
                        yield Violation(
                            "unexpected",
                            name,
                            msg.conversation,
                            f"{name} received {self.describe(mid)} at {at} but is not one of its "
                            f"recipients ({whom}).",
                        )
                    elif (msg.conversation, msg.seq) != (record.conversation, record.seq):
                        yield Violation(
                            "unexpected",
                            name,
                            msg.conversation,
                            f"{name} received {mid} as seq {msg.seq} in {msg.conversation} at "
                            f"{at}, but {record.sender}'s ack said seq {record.seq} in "
                            f"{record.conversation}.",
                        )
                    continue
                if not complete or (msg.sender, msg.client_id) in self._unacked:
                    continue  # its ack may still be on its way
                if msg.sender in self._senders or self.report_untracked:
                    yield Violation(
                        "unexpected",
                        name,
                        msg.conversation,
                        f"{name} received {self.describe(mid)} at {at}, but nobody sent it "
                        f"through the oracle (no ack or unknown-outcome send from "
                        f"{msg.sender} with client id {msg.client_id!r}).",
                    )

    def _group_order(self) -> Iterable[Violation]:
        by_conv: dict[str, list[_Participant]] = {}
        for part in self._parts.values():
            for conv in part.order:
                by_conv.setdefault(conv, []).append(part)
        for conv, parts in by_conv.items():
            if len(parts) < 2:
                continue
            reported: set[frozenset[str]] = set()
            for part in parts:
                ids = part.order[conv]
                seqs = [part.seen_msg[mid].seq for mid in ids]
                if all(a < b for a, b in zip(seqs, seqs[1:], strict=False)):
                    continue  # in seq order: agrees with every other member that is too
                for other in parts:
                    pair = frozenset((part.name, other.name))
                    if other is part or pair in reported:
                        continue
                    clash = _first_disagreement(ids, other.order[conv])
                    if clash is not None:
                        reported.add(pair)
                        a, b = clash
                        yield Violation(
                            "group_order",
                            part.name,
                            conv,
                            f"{part.name} and {other.name} saw the messages of {conv} in "
                            f"different orders: {part.name} saw {self.describe(a)} before "
                            f"{self.describe(b)}, {other.name} saw {b} before {a}; every member "
                            "must see the messages they share in one and the same order.",
                        )

    def _recall_checks(self, complete: bool) -> Iterable[Violation]:
        for mid, recall in self._recalls.items():
            for name in self._receivers.get(mid, ()):
                part = self._parts[name]
                if name == recall.by or not part.observed:
                    continue
                hist = part.history.get(mid)
                by_history = hist is not None and hist[1] >= recall.known_at and hist[0]
                if part.no_recall_events or mid in part.recalls or by_history or not complete:
                    continue
                yield Violation(
                    "recall",
                    name,
                    recall.conversation,
                    f"{name} received {self.describe(mid)} at {_how(*part.seen[mid])} but never "
                    f"got a recall for it, though it was recalled ({recall.source}); a recalled "
                    "message must be recalled for everyone who received it.",
                )

    # -- reporting -----------------------------------------------------------------------------

    def transcript(self, *, limit: int = 200) -> str:
        """A readable per-participant timeline (the last `limit` entries each)."""
        lines: list[str] = []
        for name, part in self._parts.items():
            flags = []
            if part.no_recall_events:
                flags.append("no recall events")
            if not part.observed:
                flags.append("not observed")
            extra = f" ({', '.join(flags)})" if flags else ""
            lines.append(f"== {name}{extra}: {part.count} events ==")
            entries = part.log
            if len(entries) > limit:
                lines.append(f"  ... {len(entries) - limit} earlier entries omitted")
                entries = entries[-limit:]
            lines.extend("  " + _render_entry(entry) for entry in entries)
        return "\n".join(lines)


def _first_disagreement(mine: list[str], theirs: list[str]) -> tuple[str, str] | None:
    """Two shared ids that `mine` has as (a, b) and `theirs` as (b, a), or None."""
    pos = {mid: i for i, mid in enumerate(theirs)}
    prev: tuple[str, int] | None = None
    for mid in mine:
        p = pos.get(mid)
        if p is None:
            continue
        if prev is not None and p < prev[1]:
            return prev[0], mid
        prev = (mid, p)
    return None


def format_event(event: Event, index: int) -> str:
    """One transcript line for event #`index` of a participant."""
    return _render_entry(("event", index, event))


def _body(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _render_entry(entry: tuple[object, ...]) -> str:
    tag = entry[0]
    if tag == "sent":
        ack, recipients = entry[1], entry[2]
        assert isinstance(ack, Ack)
        dup = " (duplicate ack)" if ack.duplicate else ""
        to = ", ".join(recipients) or "nobody"  # type: ignore[arg-type]
        return (
            f"sent      {ack.message_id} seq {ack.seq} in {ack.conversation} "
            f"[client {ack.client_id}] to {to}{dup}"
        )
    if tag == "unacked":
        return f"sent      client {entry[1]} (outcome unknown) toward {entry[2] or '?'}"
    if tag == "recalled":
        return f"recalled  {entry[2]} in {entry[1]}"
    if tag == "history":
        _, number, conv, lo, hi, n, more = entry
        span = f"seq {lo}..{hi}" if n else "empty"
        return f"history   page #{number} of {conv}: {n} messages, {span}, has_more={more}"
    index, event = entry[1], entry[2]
    head = f"#{index:<4}"
    if isinstance(event, MessageReceived):
        m = event.message
        mode = "offline" if event.offline else "live"
        flag = " [recalled]" if m.recalled else ""
        return (
            f"{head} {mode:<7} message {m.message_id} seq {m.seq} in {m.conversation} "
            f"from {m.sender}: {_body(m.body)}{flag}"
        )
    if isinstance(event, MessageRecalled):
        mode = "offline" if event.offline else "live"
        return f"{head} {mode:<7} recall  {event.message_id} in {event.conversation} by {event.by}"
    if isinstance(event, ReceiptUpdated):
        mode = "offline" if event.offline else "live"
        return (
            f"{head} {mode:<7} receipt {event.reader} read {event.conversation} "
            f"up to seq {event.up_to_seq}"
        )
    if isinstance(event, MembershipChanged):
        role = f" as {event.role}" if event.role else ""
        return f"{head} group   {event.user} {event.change}{role} in {event.group} by {event.by}"
    if isinstance(event, MuteChanged):
        who = event.user or "everyone"
        state = "muted" if event.muted else "unmuted"
        return f"{head} group   {who} {state} in {event.group} by {event.by}"
    if isinstance(event, Disconnected):
        return f"{head} disconnected: {event.reason}"
    if isinstance(event, Reconnected):
        return f"{head} reconnected after {event.attempts} attempt(s)"
    return f"{head} {event!r}"
