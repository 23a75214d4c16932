"""The checks that decide violations, each with the paragraph that explains it.

Two sorts: incremental checks, which `Ingest` calls with the fact it was just fed and what it
already knew (O(1) each, a history page O(its length + what it must contain); happens-before
is one of them, `causal_seen` for sightings and `causal_page`/`causal_pages` for history); and
whole-run checks over everything fed so far (`losses`, `unexpected`, `group_order`, `recalls`),
which `Oracle.violations()` runs. Those are incremental where the run is large: `unexpected`
judges each sighting once unless a later fact may still change it, and group order reads
`ConvView.fits`, kept as sightings arrive. None of them changes what they judge: calling
them again gives the same verdict.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import TYPE_CHECKING

from harness.contract import (
    Ack,
    ClientHides,
    HistoryPage,
    Message,
    MessageReceived,
    ReceiptUpdated,
)
from harness.oracle.violations import Violation, ViolationKind

if TYPE_CHECKING:
    from harness.oracle.ingest import Ingest, Participant, RecallRecord

LOSS = ViolationKind.LOSS
DUPLICATE = ViolationKind.DUPLICATE
ORDER = ViolationKind.ORDER
GROUP_ORDER = ViolationKind.GROUP_ORDER
RECALL = ViolationKind.RECALL
RECEIPT = ViolationKind.RECEIPT
HIDDEN_BY_SDK = ViolationKind.HIDDEN_BY_SDK
HISTORY = ViolationKind.HISTORY
UNEXPECTED = ViolationKind.UNEXPECTED
CAUSAL_ORDER = ViolationKind.CAUSAL_ORDER


def how(index: int, offline: bool) -> str:
    """`event #4 (offline catch-up)`: where in a participant's stream something arrived."""
    return f"event #{index} ({'offline catch-up' if offline else 'live'})"


def got(part: Participant, message_id: str) -> str:
    if message_id not in part.seen:
        return "sent"
    return f"received at {how(*part.sighting(message_id))}"


# -- incremental: called as facts arrive ----------------------------------------------------------


def ack_resend(ing: Ingest, sender: str, ack: Ack, first: str) -> Violation | None:
    """A send's client id acked as `first` before: a resend must return that same message."""
    if first == ack.message_id:
        return None
    return Violation(
        DUPLICATE,
        sender,
        ack.conversation,
        f"{sender}'s send with client id {ack.client_id!r} was acked twice as "
        f"different messages: {ing.describe(first)} and "
        f"{ack.message_id} (seq {ack.seq} in {ack.conversation}); a resend with "
        "the same client id must return the original message.",
        (ack.message_id, first),
    )


def _unless_hidden(
    part: Participant, hide: ClientHides, kind: ViolationKind, conversation: str, text: str,
    why: str, message_ids: tuple[str, ...] = (),
) -> Violation:
    """`kind`, or `hidden_by_sdk` (saying `why`) where the participant's SDKs hide `hide`."""
    if hide in part.hides:
        return Violation(HIDDEN_BY_SDK, part.name, conversation, f"{text} {why}", message_ids)
    return Violation(kind, part.name, conversation, text, message_ids)


def repeated_sighting(
    ing: Ingest, part: Participant, index: int, event: MessageReceived, first: tuple[int, bool]
) -> Violation:
    """A message the participant already saw at `first` (event index, offline) came again."""
    msg = event.message
    return _unless_hidden(
        part, ClientHides.DUPLICATE_EVENTS, DUPLICATE, msg.conversation,
        f"{part.name} saw message {ing.describe(msg.message_id)} twice: at "
        f"{how(*first)} and at {how(index, event.offline)}.",
        "The server sent the event twice; an SDK that de-duplicates by message id hides it "
        "from its users, but the server did send it.",
        (msg.message_id,),
    )


def stored_twice(
    ing: Ingest, part: Participant, index: int, event: MessageReceived, other: str
) -> Violation:
    """Two messages arrived for one (sender, client id): the send was stored twice."""
    msg = event.message
    mid = msg.message_id
    unknown = (
        " (its outcome was unknown to the sender)"
        if (msg.sender, msg.client_id) in ing._unacked
        else ""
    )
    return Violation(
        DUPLICATE,
        part.name,
        msg.conversation,
        f"{part.name} received two messages for {msg.sender}'s single send "
        f"with client id {msg.client_id!r}{unknown}: {ing.describe(other)} at "
        f"event #{part.sighting(other)[0]} and {ing.describe(mid)} at "
        f"{how(index, event.offline)}; a send must be stored at most once.",
        (mid, other),
    )


def order(
    ing: Ingest,
    part: Participant,
    index: int,
    event: MessageReceived,
    sender_max: tuple[int, str, int] | None,
    conv_max: tuple[int, str, int] | None,
) -> Violation | None:
    """A first sighting below the highest seq seen from its sender (or, strict, in its chat)."""
    msg = event.message
    if sender_max is not None and msg.seq < sender_max[0]:
        return Violation(
            ORDER,
            part.name,
            msg.conversation,
            f"{part.name} saw {ing.describe(msg.message_id)} at {how(index, event.offline)} "
            f"after {ing.describe(sender_max[1])} at event #{sender_max[2]}; {msg.sender}'s "
            f"messages must arrive in the order their sends were acked (seq order).",
            (msg.message_id, sender_max[1]),
        )
    if ing.strict_order and conv_max is not None and msg.seq < conv_max[0]:
        return Violation(
            ORDER,
            part.name,
            msg.conversation,
            f"{part.name} saw {ing.describe(msg.message_id)} at {how(index, event.offline)} "
            f"after {ing.describe(conv_max[1])} at event #{conv_max[2]}; the messages of "
            f"{msg.conversation} must arrive in seq order.",
            (msg.message_id, conv_max[1]),
        )
    return None


def receipt(
    part: Participant, index: int, event: ReceiptUpdated, last: tuple[int, int]
) -> Violation | None:
    """A reader's receipt below the last one seen for it: `last` is (seq, event index)."""
    if event.up_to_seq >= last[0]:
        return None
    return _unless_hidden(
        part, ClientHides.RECEIPTS_BACKWARDS, RECEIPT, event.conversation,
        f"read cursor of {event.conversation} moved back from {last[0]} to "
        f"{event.up_to_seq} at {event.reader}: {part.name} saw {event.reader}'s read receipt "
        f"up to seq {last[0]} at event #{last[1]}, then up to seq {event.up_to_seq} at "
        f"{how(index, event.offline)}; a read cursor must never move back.",
        "The server sent it; an SDK that ignores a receipt that does not advance hides it from "
        "its users.",
    )


def named(ing: Ingest, part: Participant, mid: str) -> str:
    """`m2 (seq 1 in g:g1, sent by carol) 'hello 2'`: a message with its body when known."""
    record = ing._sent.get(mid)
    body = record.body if record is not None else None
    if body is None:
        msg = part.message(mid)
        body = msg.body if msg is not None else None
    return ing.describe(mid) if body is None else f"{ing.describe(mid)} {body!r}"


def happens_before(ing: Ingest, a: str, b: str) -> str:
    """Why `a` happens before `b`, in the harness's clock, and what that requires."""
    acked = ing._sent[a].acked_at
    started = ing._sent[b].started_at
    assert started is not None
    return (
        f"though {a} happens before {b}: the ack of {a} arrived at {ing.at(acked)} and the "
        f"send of {b} started at {ing.at(started)} (relative to the oracle's first event); "
        "a message acked before another was started into the same conversation must be "
        "seen first by everyone, whatever their seqs."
    )


def causal_seen(ing: Ingest, part: Participant, a: str, b: str) -> Violation:
    """`part` saw `b` before `a`, though `a` was acked before `b` was started."""
    return Violation(
        CAUSAL_ORDER,
        part.name,
        ing._info[a].conversation,
        f"{part.name} saw {named(ing, part, b)} at {how(*part.sighting(b))} before "
        f"{named(ing, part, a)} at {how(*part.sighting(a))}, {happens_before(ing, a, b)}",
        (a, b),
    )


def causal_page(
    ing: Ingest, part: Participant, number: int, page: HistoryPage
) -> tuple[list[Violation], tuple[float, str] | None, tuple[float, str] | None]:
    """Happens-before in one page's order; also its latest start and earliest ack, with ids."""
    sent = ing._sent
    found: list[Violation] = []
    top: tuple[float, str] | None = None
    bottom: tuple[float, str] | None = None
    for m in page.messages:
        record = sent.get(m.message_id)
        if record is None:
            continue
        started, acked = record.started_at, record.acked_at
        if top is not None and acked < top[0]:
            found.append(Violation(
                CAUSAL_ORDER,
                part.name,
                page.conversation,
                f"{part.name}'s history page #{number} of {page.conversation} shows "
                f"{named(ing, part, top[1])} before {named(ing, part, m.message_id)}, "
                f"{happens_before(ing, m.message_id, top[1])}",
                (m.message_id, top[1]),
            ))
        if started is not None and (top is None or started > top[0]):
            top = (started, m.message_id)
        if bottom is None or acked < bottom[0]:
            bottom = (acked, m.message_id)
    return found, top, bottom


def causal_pages(
    ing: Ingest, part: Participant, conv: str, a: str, a_page: int, b: str, b_page: int
) -> Violation:
    """History shows `b` (on page #`b_page`) older than `a` (on page #`a_page`), though a -> b."""
    return Violation(
        CAUSAL_ORDER,
        part.name,
        conv,
        f"{part.name}'s history of {conv} shows {named(ing, part, b)} on page #{b_page} "
        f"before {named(ing, part, a)} on page #{a_page}, {happens_before(ing, a, b)}",
        (a, b),
    )


def history_recall(
    ing: Ingest, part: Participant, number: int, m: Message, known: RecallRecord
) -> Violation | None:
    """A history page showing a message not recalled after its recall was known."""
    if m.recalled:
        return None
    return Violation(
        RECALL,
        part.name,
        m.conversation,
        f"{part.name}'s history page #{number} of {m.conversation} shows "
        f"{ing.describe(m.message_id)} not recalled, after the recall was known "
        f"({known.source}); a recalled message must be recalled for everyone.",
        (m.message_id,),
    )


def history_page(
    ing: Ingest,
    part: Participant,
    number: int,
    page: HistoryPage,
    *,
    before: int | None,
    after: int | None,
) -> list[Violation]:
    """Page #`number` against itself, what the participant got, what was acked, the last page."""
    participant = part.name
    conv = page.conversation
    msgs = page.messages
    seqs = [m.seq for m in msgs]
    lo, hi = (seqs[0], seqs[-1]) if seqs else (0, -1)
    where = f"{participant}'s history page #{number} of {conv}"
    if seqs:
        where += f" (seq {lo}..{hi})"
    found: list[tuple[str, tuple[str, ...]]] = []  # explanation, message ids
    cv = part.convs.get(conv)
    view_ids = {} if cv is None else cv.view_ids
    for prev, cur in zip(msgs, msgs[1:], strict=False):
        if cur.seq <= prev.seq:
            found.append((
                f"{where} is not in ascending seq order: {prev.message_id} (seq {prev.seq}) "
                f"comes before {cur.message_id} (seq {cur.seq}).",
                (cur.message_id, prev.message_id),
            ))
    page_ids: dict[int, str] = {}
    for m in msgs:
        page_ids.setdefault(m.seq, m.message_id)
        if m.conversation != conv:
            found.append((
                f"{where} contains {m.message_id}, which belongs to {m.conversation}.",
                (m.message_id,),
            ))
        info = ing._info.get(m.message_id)
        if info is not None and (info.conversation, info.seq) != (m.conversation, m.seq):
            found.append((
                f"{where} shows {m.message_id} as seq {m.seq} in {m.conversation}, but it is "
                f"{ing.describe(m.message_id)}.",
                (m.message_id,),
            ))
        mine = view_ids.get(m.seq)
        if mine is not None and mine != m.message_id:
            found.append((
                f"{where} shows {m.message_id} at seq {m.seq}, but {participant} "
                f"{got(part, mine)} {ing.describe(mine)} at that seq.",
                (m.message_id, mine),
            ))
        if before is not None and m.seq >= before:
            found.append((
                f"{where} was asked for messages before seq {before} but contains "
                f"{m.message_id} (seq {m.seq}); consecutive pages must not overlap.",
                (m.message_id,),
            ))
        if after is not None and m.seq <= after:
            found.append((
                f"{where} was asked for messages after seq {after} but contains "
                f"{m.message_id} (seq {m.seq}); consecutive pages must not overlap.",
                (m.message_id,),
            ))
    view = [] if cv is None else cv.view_seqs
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
    acked_seqs, acked_ids = ing._acked.get(conv, ([], {}))
    missing_seen: set[int] = set()
    for a, b, label in ranges:
        for i in range(bisect.bisect_left(view, a), bisect.bisect_right(view, b)):
            s = view[i]
            if s in page_ids or s in missing_seen:
                continue
            missing_seen.add(s)
            mid = view_ids[s]
            found.append((
                f"{where} lacks {ing.describe(mid)} {label}, which {participant} "
                f"{got(part, mid)}; history must show exactly what was delivered.",
                (mid,),
            ))
        for i in range(bisect.bisect_left(acked_seqs, a), bisect.bisect_right(acked_seqs, b)):
            s = acked_seqs[i]
            record = ing._sent[acked_ids[s]]
            if s in page_ids or s in missing_seen or participant not in record.recipients:
                continue
            missing_seen.add(s)
            found.append((
                f"{where} lacks {ing.describe(record.message_id)} {label}, though "
                f"{record.sender}'s send was acked with {participant} as a recipient; an "
                "acked message is durable and must show in history.",
                (record.message_id,),
            ))
    last = part.pages.get(conv)
    if last is not None and seqs and before is None and after is None:
        # consecutive backward paging repeats the boundary message: overlap
        if hi == last.lo and lo < last.lo and last.has_more:
            found.append((
                f"{where} overlaps the previous page #{last.number} (seq "
                f"{last.lo}..{last.hi}): both contain {page_ids[hi]} (seq {hi}); "
                "consecutive pages must not overlap.",
                (page_ids[hi],),
            ))
    return [Violation(HISTORY, participant, conv, text, ids) for text, ids in found]


# -- whole run: called by Oracle.violations() -----------------------------------------------------


def losses(ing: Ingest) -> Iterable[Violation]:
    """Messages acked for an observed participant that none of its events carried."""
    for name, part in ing._parts.items():
        if not part.observed:
            continue
        for mid in part.pending:
            record = ing._sent[mid]
            stored = ""
            if mid in part.history:
                stored = f"; {name}'s history does show it, so it was stored but not delivered"
            yield Violation(
                LOSS,
                name,
                record.conversation,
                f"{name} never received {ing.describe(mid)}: {record.sender}'s send was "
                f"acked with {name} as a recipient, but none of {name}'s {part.count} "
                f"events carried it{stored}.",
                (mid,),
            )


def unexpected(ing: Ingest, complete: bool) -> list[Violation]:
    """Deliveries to non-recipients, at another place than acked, or of messages nobody sent.

    Incremental: a sighting whose ack names the participant (or it as the sender) at the seq
    it was seen at can never become unexpected (recipients only grow, an ack's place is its
    first), so each is judged once and dropped; the rest stay watched, judged on every call.
    """
    out: list[Violation] = []
    sent = ing._sent
    for name, part in ing._parts.items():
        if not part.unchecked and not part.watched:
            continue
        events = part.events
        watched: list[int] = []
        for batch in (part.watched, part.unchecked.values()):
            for index in batch:
                msg = events[index - 1].message  # type: ignore[union-attr]
                mid = msg.message_id
                record = sent.get(mid)
                if record is not None:
                    if name != record.sender and name not in record.recipients:
                        whom = ", ".join(sorted(record.recipients)) or "nobody"
                        out.append(Violation(
                            UNEXPECTED,
                            name,
                            msg.conversation,
                            f"{name} received {ing.describe(mid)} at "
                            f"{how(*part.sighting(mid))} but is not one of its "
                            f"recipients ({whom}).",
                            (mid,),
                        ))
                    elif msg.seq != record.seq or msg.conversation != record.conversation:
                        out.append(Violation(
                            UNEXPECTED,
                            name,
                            msg.conversation,
                            f"{name} received {mid} as seq {msg.seq} in {msg.conversation} at "
                            f"{how(*part.sighting(mid))}, but {record.sender}'s ack said seq "
                            f"{record.seq} in {record.conversation}.",
                            (mid,),
                        ))
                    else:
                        continue  # settled: fine for good
                    watched.append(index)
                    continue
                watched.append(index)  # its ack may still be on its way
                if not complete or (msg.sender, msg.client_id) in ing._unacked:
                    continue
                if msg.sender in ing._senders or ing.report_untracked:
                    out.append(Violation(
                        UNEXPECTED,
                        name,
                        msg.conversation,
                        f"{name} received {ing.describe(mid)} at {how(*part.sighting(mid))}, "
                        f"but nobody sent it through the oracle (no ack or unknown-outcome "
                        f"send from {msg.sender} with client id {msg.client_id!r}).",
                        (mid,),
                    ))
        part.watched = watched
        part.unchecked = {}
    return out


def group_order(ing: Ingest) -> Iterable[Violation]:
    """Two members of a conversation who saw the messages they share in different orders.

    Judged on the orders of sighting alone, never on the seqs members saw (an adapter may
    number by arrival): when one order fits every member's, no two members can disagree. That
    is tried first with each message's one acked seq as the order (`ConvView.fits`, kept up to
    date as sightings arrive, so a repeated call costs nothing per event), then
    exactly (the members' sightings chained together have no cycle), O(sightings); only when
    no order fits are members compared in pairs.
    """
    by_conv: dict[str, list[Participant]] = {}
    for part in ing._parts.values():
        for conv in part.sighted:
            by_conv.setdefault(conv, []).append(part)
    for conv, parts in by_conv.items():
        if len(parts) < 2:
            continue
        views = [p.sighted[conv] for p in parts]
        if all(cv.fits for cv in views):
            continue  # the acked seqs are one order that fits every member's
        orders = [cv.order for cv in views]
        if chains_acyclic(orders):
            continue
        reported: set[frozenset[str]] = set()
        # members out of seq order first: where seqs are honest, one of them is the culprit
        parts.sort(key=lambda p: in_seq_order(p, p.sighted[conv].order))
        for part in parts:
            ids = part.sighted[conv].order
            for other in parts:
                pair = frozenset((part.name, other.name))
                if other is part or pair in reported:
                    continue
                clash = first_disagreement(ids, other.sighted[conv].order)
                if clash is not None:
                    reported.add(pair)
                    a, b = clash
                    yield Violation(
                        GROUP_ORDER,
                        part.name,
                        conv,
                        f"{part.name} and {other.name} saw the messages of {conv} in "
                        f"different orders: {part.name} saw {ing.describe(a)} before "
                        f"{ing.describe(b)}, {other.name} saw {b} before {a}; every member "
                        "must see the messages they share in one and the same order.",
                        (a, b),
                    )


def recalls(ing: Ingest, complete: bool) -> Iterable[Violation]:
    """Receivers of a recalled message (but the recaller) who never learned of the recall."""
    for mid, recall in ing._recalls.items():
        for name in ing.receivers(mid):
            part = ing._parts[name]
            if name == recall.by or not part.observed:
                continue
            hist = part.history.get(mid)
            by_history = hist is not None and hist[1] >= recall.known_at and hist[0]
            if part.no_recall_events or mid in part.recalls or by_history or not complete:
                continue
            yield Violation(
                RECALL,
                name,
                recall.conversation,
                f"{name} received {ing.describe(mid)} at {how(*part.sighting(mid))} but never "
                f"got a recall for it, though it was recalled ({recall.source}); a recalled "
                "message must be recalled for everyone who received it.",
                (mid,),
            )


def in_seq_order(part: Participant, ids: list[str]) -> bool:
    seqs = [part.events[part.seen[mid] - 1].message.seq for mid in ids]  # type: ignore[union-attr]
    return all(a < b for a, b in zip(seqs, seqs[1:], strict=False))


def chains_acyclic(orders: list[list[str]]) -> bool:
    """Whether the orders chained together have no cycle (Kahn): one order fits them all."""
    after: dict[str, list[str]] = {}
    waiting: dict[str, int] = {}  # id -> how many chain links still point at it
    for ids in orders:
        prev: str | None = None
        for mid in ids:
            if mid not in waiting:
                waiting[mid] = 0
            if prev is not None:
                nxt = after.get(prev)
                if nxt is None:
                    after[prev] = [mid]
                else:
                    nxt.append(mid)
                waiting[mid] += 1
            prev = mid
    ready = [mid for mid, n in waiting.items() if n == 0]
    placed = 0
    while ready:
        mid = ready.pop()
        placed += 1
        for nxt_id in after.get(mid, ()):
            waiting[nxt_id] -= 1
            if waiting[nxt_id] == 0:
                ready.append(nxt_id)
    return placed == len(waiting)


def first_disagreement(mine: list[str], theirs: list[str]) -> tuple[str, str] | None:
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
