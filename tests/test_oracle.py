"""The oracle judged on hand-built scenarios: every violation kind both ways, plus properties.

The oracle's input is the contract's dataclasses, so these tests feed them directly.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import FrozenInstanceError, dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.contract import (
    Ack,
    Event,
    HistoryPage,
    Message,
    MessageRecalled,
    MessageReceived,
    ReceiptUpdated,
)
from harness.errors import HarnessError
from harness.oracle import (
    KINDS,
    EventEntry,
    HistoryEntry,
    Oracle,
    OracleViolation,
    RecalledEntry,
    SentEntry,
    UnackedEntry,
    Violation,
    ViolationKind,
    format_event,
)

A, B, C, D = "alice", "bob", "carol", "dave"
GROUP = "g:g1"


def dm(x: str, y: str) -> str:
    return "d:" + ":".join(sorted((x, y)))


@dataclass
class World:
    """Builds acks and messages the way a well-behaved service numbers them."""

    oracle: Oracle = field(default_factory=Oracle)
    seqs: dict[str, int] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def make(self, sender: str, conv: str) -> tuple[Ack, Message]:
        n = next(self.ids)
        seq = self.seqs[conv] = self.seqs.get(conv, 0) + 1
        ack = Ack(f"c{n}", f"m{n}", conv, seq, 1000.0 + n)
        group = conv[2:] if conv.startswith("g:") else None
        msg = Message(f"m{n}", conv, seq, sender, f"c{n}", "text", f"hello {n}", 1000.0 + n, group)
        return ack, msg

    def send(self, sender: str, conv: str, recipients: set[str]) -> Message:
        ack, msg = self.make(sender, conv)
        self.oracle.sent(sender, ack, recipients=recipients, body=msg.body)
        return msg

    def timed(
        self, sender: str, conv: str, recipients: set[str], started: float, acked: float,
        *, seq: int | None = None,
    ) -> Message:
        """A send the harness's clock saw start at `started` and acked at `acked`."""
        msg = self.message(sender, conv, seq=seq)
        self.ack(msg, recipients, started, acked)
        return msg

    def message(self, sender: str, conv: str, *, seq: int | None = None) -> Message:
        """A message as the service would store it, its seq overridden when `seq` is given."""
        _, msg = self.make(sender, conv)
        return msg if seq is None else replace(msg, seq=seq)

    def ack(self, msg: Message, recipients: set[str], started: float, acked: float) -> None:
        ack = Ack(msg.client_id, msg.message_id, msg.conversation, msg.seq, msg.server_ts)
        self.oracle.sent(
            msg.sender, ack, recipients=recipients, body=msg.body, started_at=started,
            acked_at=acked,
        )

    def deliver(self, who: str, *msgs: Message, offline: bool = False) -> None:
        for msg in msgs:
            self.oracle.observe(who, MessageReceived(msg, offline=offline))


def kinds(oracle: Oracle, *, complete: bool = True) -> list[str]:
    return [v.kind for v in oracle.violations(complete=complete)]


def only(oracle: Oracle, kind: str, *, complete: bool = True) -> Violation:
    found = [v for v in oracle.violations(complete=complete) if v.kind == kind]
    assert len(found) == 1, oracle.violations(complete=complete)
    return found[0]


def page(conv: str, *msgs: Message, has_more: bool = False) -> HistoryPage:
    return HistoryPage(conv, tuple(msgs), has_more)


# -- a clean scenario ----------------------------------------------------------------------


def test_clean_scenario_has_no_violations() -> None:
    w = World()
    o = w.oracle
    m1 = w.send(A, dm(A, B), {B})
    m2 = w.send(B, dm(A, B), {A})
    g1 = w.send(A, GROUP, {B, C})
    g2 = w.send(C, GROUP, {A, B})
    w.deliver(B, m1)
    w.deliver(A, m2, g2)
    w.deliver(B, g1, offline=True)
    w.deliver(B, g2)
    w.deliver(C, g1)
    o.recalled(GROUP, g1.message_id, by=A)
    for who in (B, C):
        o.observe(who, MessageRecalled(GROUP, g1.message_id, A))
    o.observe(A, ReceiptUpdated(dm(A, B), B, 1))
    o.observe(A, ReceiptUpdated(dm(A, B), B, 1))
    o.observe(A, ReceiptUpdated(dm(A, B), B, 2))
    o.observe_history(B, page(dm(A, B), m1, m2))
    o.observe_history(C, page(GROUP, replace(g1, recalled=True, body=""), g2))

    assert o.violations() == []
    assert o.missing() == {}
    o.assert_ok()


def test_missing_lists_what_is_still_in_flight() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    m2 = w.send(A, GROUP, {B, C})
    w.deliver(B, m1)
    assert w.oracle.missing() == {B: [m2.message_id], C: [m2.message_id]}
    assert w.oracle.violations(complete=False) == []


def test_a_message_seen_before_its_ack_is_not_missing() -> None:
    w = World()
    ack, msg = w.make(A, dm(A, B))
    w.deliver(B, msg)
    w.oracle.sent(A, ack, recipients={B})
    assert w.oracle.missing() == {}
    w.oracle.assert_ok()


# -- loss ----------------------------------------------------------------------------------


def test_loss_names_recipient_and_message_only_when_complete() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    m2 = w.send(A, dm(A, B), {B})
    w.deliver(B, m1)
    assert kinds(w.oracle, complete=False) == []
    v = only(w.oracle, "loss")
    assert (v.participant, v.conversation) == (B, dm(A, B))
    assert f"bob never received {m2.message_id} (seq 2 in d:alice:bob, sent by alice)" in str(v)


def test_loss_mentions_history_that_shows_the_message() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    w.oracle.observe_history(B, page(dm(A, B), m1))
    v = only(w.oracle, "loss")
    assert "history does show it" in v.explanation


def test_no_loss_for_participants_declared_not_observed() -> None:
    w = World()
    w.oracle.not_observed(B)
    w.send(A, dm(A, B), {B})
    w.oracle.assert_ok()
    assert w.oracle.missing() == {}


# -- duplicates ----------------------------------------------------------------------------


def test_duplicate_paragraph_names_both_sightings() -> None:
    w = World()
    for _ in range(16):
        w.make(A, dm(A, B))
    msgs = [w.send(A, dm(A, B), {B}) for _ in range(5)]
    w.deliver(B, msgs[0], msgs[1])
    w.deliver(B, msgs[4])
    w.deliver(B, msgs[2], msgs[3], offline=True)
    w.deliver(B, msgs[4], offline=True)
    v = only(w.oracle, "duplicate")
    assert v.explanation == (
        "bob saw message m21 (seq 21 in d:alice:bob, sent by alice) twice: at event #3 (live) "
        "and at event #6 (offline catch-up)."
    )


def test_unacked_send_may_be_missing_or_arrive_once() -> None:
    w = World()
    _, lost = w.make(A, dm(A, B))
    _, arrived = w.make(A, dm(A, B))
    w.oracle.sent_unacked(A, lost.client_id, dm(A, B))
    w.oracle.sent_unacked(A, arrived.client_id, dm(A, B))
    w.deliver(B, arrived)
    w.oracle.assert_ok()


def test_unacked_send_stored_twice_is_a_duplicate() -> None:
    w = World()
    _, first = w.make(A, dm(A, B))
    _, again = w.make(A, dm(A, B))
    again = replace(again, client_id=first.client_id)
    w.oracle.sent_unacked(A, first.client_id, dm(A, B))
    w.deliver(B, first, again)
    v = only(w.oracle, "duplicate")
    assert first.message_id in v.explanation
    assert again.message_id in v.explanation
    assert "outcome was unknown" in v.explanation


def test_resend_acked_as_a_new_message_is_a_duplicate() -> None:
    w = World()
    ack, _ = w.make(A, dm(A, B))
    w.oracle.sent(A, ack, recipients={B})
    w.oracle.sent(A, replace(ack, duplicate=True), recipients={B})  # the original: fine
    assert kinds(w.oracle, complete=False) == []
    w.oracle.sent(A, replace(ack, message_id="m99", seq=7), recipients={B})
    v = only(w.oracle, "duplicate", complete=False)
    assert "m1" in v.explanation
    assert "m99" in v.explanation


# -- order ---------------------------------------------------------------------------------


def test_one_senders_messages_out_of_ack_order() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    m2 = w.send(A, dm(A, B), {B})
    w.deliver(B, m2, m1)
    v = only(w.oracle, "order")
    assert v.explanation.startswith(f"bob saw {m1.message_id} (seq 1")
    assert f"after {m2.message_id} (seq 2" in v.explanation
    assert "alice's messages" in v.explanation


def test_conversation_out_of_seq_order_only_when_strict() -> None:
    for strict in (True, False):
        w = World(Oracle(strict_order=strict))
        g1 = w.send(A, GROUP, {B, C})
        g2 = w.send(C, GROUP, {A, B})
        w.deliver(B, g2, g1)
        if strict:
            v = only(w.oracle, "order", complete=False)
            assert "must arrive in seq order" in v.explanation
            assert g1.message_id in v.explanation
            assert g2.message_id in v.explanation
        else:
            w.oracle.assert_ok(complete=False)


def test_group_members_disagreeing_on_order() -> None:
    w = World(Oracle(strict_order=False))
    g1 = w.send(A, GROUP, {B, C, D})
    g2 = w.send(B, GROUP, {A, C, D})
    w.deliver(C, g1, g2)
    w.deliver(D, g2, g1)
    w.deliver(A, g2)
    v = only(w.oracle, "group_order")
    assert v.conversation == GROUP
    assert {C, D} <= set(v.explanation.replace(",", " ").split())
    assert g1.message_id in v.explanation
    assert g2.message_id in v.explanation


def test_members_agreeing_on_order_pass() -> None:
    w = World(Oracle(strict_order=False))
    g1 = w.send(A, GROUP, {B, C, D})
    g2 = w.send(B, GROUP, {A, C, D})
    w.deliver(C, g2, g1)
    w.deliver(D, g2, g1)
    w.deliver(A, g2)
    w.deliver(B, g1)
    w.oracle.assert_ok()


def test_group_order_does_not_rest_on_seqs() -> None:
    # an adapter numbering by arrival: each member sees seqs 1, 2, but in different orders
    w = World(Oracle(strict_order=False))
    g1 = w.send(A, GROUP, {C, D})
    g2 = w.send(B, GROUP, {C, D})
    w.deliver(C, replace(g1, seq=1), replace(g2, seq=2))
    w.deliver(D, replace(g2, seq=1), replace(g1, seq=2))
    v = only(w.oracle, "group_order")
    assert {C, D} <= set(v.explanation.replace(",", " ").split())
    assert set(v.message_ids) == {g1.message_id, g2.message_id}


def test_group_order_cycle_without_a_disagreeing_pair_is_not_reported() -> None:
    # three members share one message pairwise: the chains form a cycle, no pair disagrees
    w = World(Oracle(strict_order=False))
    conv = GROUP
    g1, g2, g3 = (w.send(D, conv, {A, B, C}) for _ in range(3))
    w.deliver(A, g1, g2)
    w.deliver(B, g2, g3)
    w.deliver(C, g3, g1)
    assert "group_order" not in kinds(w.oracle, complete=False)


# -- happens-before ------------------------------------------------------------------------
# A happens before B when A's ack arrived before B's send was started (harness clock): then
# everyone sees A first, whatever the seqs say. Times below are crafted monotonic seconds.


def _hb_pair(w: World, *, seq_lies: bool = False) -> tuple[Message, Message]:
    """m1 by alice acked at 2.0, then m2 by carol started at 3.0: m1 happens before m2."""
    a = w.timed(A, GROUP, {B}, 1.0, 2.0, seq=2 if seq_lies else None)
    b = w.timed(C, GROUP, {B}, 3.0, 4.0, seq=1 if seq_lies else None)
    return a, b


def test_causal_order_seen_live_out_of_happens_before() -> None:
    w = World()
    a, b = _hb_pair(w, seq_lies=True)  # b has the lower seq: seq order says b first
    w.deliver(B, b, a)
    v = only(w.oracle, "causal_order")
    assert (v.participant, v.conversation, v.message_ids) == (B, GROUP, ("m1", "m2"))
    assert v.explanation == (
        "bob saw m2 (seq 1 in g:g1, sent by carol) 'hello 2' at event #1 (live) before "
        "m1 (seq 2 in g:g1, sent by alice) 'hello 1' at event #2 (live), though m1 happens "
        "before m2: the ack of m1 arrived at t=1.000s and the send of m2 started at t=2.000s "
        "(relative to the oracle's first event); a message acked before another was started "
        "into the same conversation must be seen first by everyone, whatever their seqs."
    )
    assert kinds(w.oracle) == ["causal_order"]  # the seqs lie: the seq order check is blind


def test_causal_order_with_honest_seqs_is_also_an_order_violation() -> None:
    w = World()
    a, b = _hb_pair(w)
    w.deliver(B, b, a)
    assert sorted(kinds(w.oracle)) == ["causal_order", "order"]


def test_causal_order_after_offline_catch_up() -> None:
    w = World()
    a, b = _hb_pair(w, seq_lies=True)
    w.deliver(B, b)  # live
    w.deliver(B, a, offline=True)  # the older message only in the catch-up afterwards
    v = only(w.oracle, "causal_order")
    assert v.message_ids == (a.message_id, b.message_id)
    assert "at event #1 (live) before" in v.explanation
    assert "'hello 1' at event #2 (offline catch-up)" in v.explanation
    w2 = World()
    a, b = _hb_pair(w2, seq_lies=True)
    w2.deliver(B, b, a, offline=True)  # both in one catch-up, out of happens-before
    assert only(w2.oracle, "causal_order").message_ids == (a.message_id, b.message_id)


def test_happens_before_kept_passes() -> None:
    w = World(Oracle(strict_order=False))  # the lying seqs would break strict seq order
    a, b = _hb_pair(w, seq_lies=True)
    w.deliver(B, a, b)
    w.oracle.assert_ok()


@pytest.mark.parametrize("first", ["m1", "m2"])
def test_concurrent_sends_may_arrive_in_either_order(first: str) -> None:
    w = World()
    a = w.timed(A, GROUP, {B}, 1.0, 3.0)
    b = w.timed(C, GROUP, {B}, 2.0, 4.0)  # started before a's ack: concurrent with a
    w.oracle.strict_order = False  # seq order across senders is not what is judged here
    w.deliver(B, *((a, b) if first == "m1" else (b, a)))
    w.oracle.assert_ok()


def test_sends_without_a_start_time_are_never_the_later_one() -> None:
    w = World()
    a = w.timed(A, GROUP, {B}, 1.0, 2.0, seq=2)
    b = w.message(C, GROUP, seq=1)
    ack = Ack(b.client_id, b.message_id, GROUP, 1, b.server_ts)
    w.oracle.sent(C, ack, recipients={B}, acked_at=4.0)  # no started_at: nothing known
    w.deliver(B, b, a)
    w.oracle.assert_ok()


def test_causal_order_caught_when_acks_reach_the_oracle_after_the_events() -> None:
    # every order of facts: seen b, seen a, then the acks in either order
    for acks_first in ("a", "b"):
        w = World()
        a = w.message(A, GROUP, seq=2)
        b = w.message(C, GROUP, seq=1)
        w.deliver(B, b, a)
        for m in (a, b) if acks_first == "a" else (b, a):
            started, acked = (1.0, 2.0) if m is a else (3.0, 4.0)
            w.ack(m, {B}, started, acked)
        assert only(w.oracle, "causal_order").message_ids == (a.message_id, b.message_id)
    # b's ack known, a's not yet when a is seen; and the other way round
    for known in ("a", "b"):
        w = World()
        a = w.message(A, GROUP, seq=2)
        b = w.message(C, GROUP, seq=1)
        if known == "b":
            w.ack(b, {B}, 3.0, 4.0)
        else:
            w.ack(a, {B}, 1.0, 2.0)
        w.deliver(B, b, a)
        if known == "b":
            w.ack(a, {B}, 1.0, 2.0)
        else:
            w.ack(b, {B}, 3.0, 4.0)
        assert only(w.oracle, "causal_order").message_ids == (a.message_id, b.message_id)


def test_causal_order_caught_when_the_earlier_sighting_is_timed_in_between() -> None:
    # b seen, a seen (both untimed); b's times arrive, then a's: b's walk leaves its mark on a
    w = World()
    a = w.message(A, GROUP, seq=2)
    b = w.message(C, GROUP, seq=1)
    w.deliver(B, b, a)
    w.ack(b, {B}, 3.0, 4.0)
    w.ack(a, {B}, 1.0, 2.0)
    assert only(w.oracle, "causal_order").message_ids == (a.message_id, b.message_id)


def test_causal_order_in_a_history_page() -> None:
    w = World(Oracle(strict_order=False))  # the lying seqs would break strict seq order
    a, b = _hb_pair(w, seq_lies=True)
    w.deliver(B, a, b)  # delivered in happens-before order: fine
    w.oracle.assert_ok()
    w.oracle.observe_history(B, page(GROUP, b, a))  # history (seq order) says b first
    v = only(w.oracle, "causal_order")
    assert v.message_ids == (a.message_id, b.message_id)
    assert v.explanation.startswith(
        "bob's history page #1 of g:g1 shows m2 (seq 1 in g:g1, sent by carol) 'hello 2' "
        "before m1 (seq 2 in g:g1, sent by alice) 'hello 1', though m1 happens before m2: "
        "the ack of m1 arrived at t=1.000s"
    )


@pytest.mark.parametrize("newer_first", [True, False])
def test_causal_order_across_history_pages(newer_first: bool) -> None:
    w = World(Oracle(strict_order=False))
    a, b = _hb_pair(w, seq_lies=True)
    w.deliver(B, a, b)
    newer, older = page(GROUP, a, has_more=True), page(GROUP, b)
    if newer_first:  # paging back: the page with b comes second and is older
        w.oracle.observe_history(B, newer)
        w.oracle.observe_history(B, older, before=a.seq)
    else:
        w.oracle.observe_history(B, older)
        w.oracle.observe_history(B, page(GROUP, a), after=b.seq)
    v = only(w.oracle, "causal_order")
    assert v.message_ids == (a.message_id, b.message_id)
    b_page, a_page = (2, 1) if newer_first else (1, 2)
    assert f"shows m2 (seq 1 in g:g1, sent by carol) 'hello 2' on page #{b_page} before" in str(v)
    assert f"'hello 1' on page #{a_page}, though m1 happens before m2" in str(v)


def test_history_pages_in_happens_before_order_pass() -> None:
    w = World()
    a, b = _hb_pair(w)
    w.deliver(B, a, b)
    w.oracle.observe_history(B, page(GROUP, b, has_more=True))
    w.oracle.observe_history(B, page(GROUP, a), before=b.seq)
    w.oracle.observe_history(B, page(GROUP, a, b))
    w.oracle.assert_ok()


# -- recall --------------------------------------------------------------------------------


def test_recall_must_reach_every_receiver_but_the_recaller() -> None:
    w = World()
    g1 = w.send(A, GROUP, {B, C, D})
    w.deliver(B, g1)
    w.deliver(C, g1)
    w.deliver(D, g1)
    w.oracle.recalled(GROUP, g1.message_id, by=B)  # an admin; gets no recall event itself
    w.oracle.observe(C, MessageRecalled(GROUP, g1.message_id, B, offline=True))
    assert kinds(w.oracle, complete=False) == []
    v = only(w.oracle, "recall")
    assert v.participant == D
    assert f"dave received {g1.message_id}" in v.explanation
    assert "bob recalled it" in v.explanation


def test_recall_seen_by_one_participant_binds_the_others() -> None:
    w = World()
    g1 = w.send(A, GROUP, {B, C})
    w.deliver(B, g1)
    w.deliver(C, g1)
    w.oracle.observe(B, MessageRecalled(GROUP, g1.message_id, A))
    v = only(w.oracle, "recall")
    assert v.participant == C
    assert "bob got a recall by alice at event #2 (live)" in v.explanation


def test_history_showing_a_recalled_message_unrecalled() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    w.deliver(B, m1)
    w.oracle.observe_history(B, page(dm(A, B), m1))  # before the recall: fine
    w.oracle.recalled(dm(A, B), m1.message_id, by=A)
    w.oracle.observe(B, MessageRecalled(dm(A, B), m1.message_id, A))
    w.oracle.assert_ok()
    w.oracle.observe_history(B, page(dm(A, B), m1))
    v = only(w.oracle, "recall", complete=False)
    assert f"shows {m1.message_id} (seq 1 in d:alice:bob, sent by alice) not recalled" in str(v)


def test_v1_participants_are_judged_by_history_only() -> None:
    w = World()
    w.oracle.no_recall_events(C)
    g1 = w.send(A, GROUP, {B, C})
    w.deliver(B, g1)
    w.deliver(C, g1)
    w.oracle.recalled(GROUP, g1.message_id, by=A)
    w.oracle.observe(B, MessageRecalled(GROUP, g1.message_id, A))
    w.oracle.assert_ok()  # carol got no event and read no history: nothing to judge
    w.oracle.observe_history(C, page(GROUP, replace(g1, recalled=True, body="")))
    w.oracle.assert_ok()
    w.oracle.observe_history(C, page(GROUP, g1))
    assert only(w.oracle, "recall").participant == C


def test_history_recalled_flag_counts_as_the_recall() -> None:
    w = World()
    g1 = w.send(A, GROUP, {B, C})
    w.deliver(B, g1)
    w.deliver(C, g1)
    w.oracle.observe_history(B, page(GROUP, replace(g1, recalled=True, body="")))
    v = only(w.oracle, "recall")  # bob is satisfied by his history; carol got nothing
    assert v.participant == C


# -- receipts ------------------------------------------------------------------------------


def test_receipt_moving_back() -> None:
    w = World()
    o = w.oracle
    o.observe(A, ReceiptUpdated(dm(A, B), B, 3))
    o.observe(A, ReceiptUpdated(GROUP, C, 1))
    o.observe(A, ReceiptUpdated(GROUP, B, 9))  # another key: independent
    o.assert_ok()
    o.observe(A, ReceiptUpdated(dm(A, B), B, 2, offline=True))
    v = only(o, "receipt", complete=False)
    assert v.explanation == (
        "read cursor of d:alice:bob moved back from 3 to 2 at bob: alice saw bob's read "
        "receipt up to seq 3 at event #1, then up to seq 2 at event #4 (offline catch-up); a "
        "read cursor must never move back."
    )


# -- history -------------------------------------------------------------------------------


def _dm_scenario(n: int) -> tuple[World, list[Message]]:
    w = World()
    msgs = [w.send(A if i % 3 else B, dm(A, B), {B} if i % 3 else {A}) for i in range(n)]
    for m in msgs:
        w.deliver(A if m.sender == B else B, m)
    return w, msgs


def test_history_paging_clean() -> None:
    w, msgs = _dm_scenario(10)
    w.oracle.observe_history(B, page(dm(A, B), *msgs[6:], has_more=True))
    w.oracle.observe_history(B, page(dm(A, B), *msgs[2:6], has_more=True), before=7)
    w.oracle.observe_history(B, page(dm(A, B), *msgs[:2]), before=3)
    w.oracle.observe_history(A, page(dm(A, B), *msgs[:5], has_more=True), after=0)
    w.oracle.observe_history(A, page(dm(A, B), *msgs[5:]), after=5)
    w.oracle.observe_history(A, page(dm(A, B), *msgs[3:8], has_more=True))  # random access
    w.oracle.assert_ok()


def test_history_lacking_a_delivered_message() -> None:
    w, msgs = _dm_scenario(5)
    w.oracle.observe_history(B, page(dm(A, B), msgs[0], msgs[1], msgs[3], msgs[4]))
    v = only(w.oracle, "history")
    assert v.participant == B
    assert f"lacks {msgs[2].message_id} (seq 3" in v.explanation


def test_history_lacking_an_acked_message_that_was_never_delivered() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    w.send(A, dm(A, B), {B})  # acked, so durable, but the service lost it
    m3 = w.send(A, dm(A, B), {B})
    w.deliver(B, m1, m3)
    w.oracle.observe_history(A, page(dm(A, B), m1, m3))
    v = only(w.oracle, "history", complete=False)
    assert "lacks m2 (seq 2" in v.explanation


def test_history_showing_another_message_at_a_delivered_seq() -> None:
    w, msgs = _dm_scenario(3)
    impostor = replace(msgs[1], message_id="m77")
    w.oracle.observe_history(B, page(dm(A, B), msgs[0], impostor, msgs[2]))
    found = [v for v in w.oracle.violations() if v.kind == "history"]
    assert found
    assert all("m77" in v.explanation for v in found)


def test_history_pages_overlapping_at_the_boundary() -> None:
    w, msgs = _dm_scenario(10)
    w.oracle.observe_history(B, page(dm(A, B), *msgs[5:], has_more=True))
    w.oracle.observe_history(B, page(dm(A, B), *msgs[1:6], has_more=True))
    v = only(w.oracle, "history")
    assert "overlaps the previous page #1 (seq 6..10)" in v.explanation
    assert f"{msgs[5].message_id} (seq 6)" in v.explanation


def test_history_page_beyond_its_before_bound() -> None:
    w, msgs = _dm_scenario(10)
    w.oracle.observe_history(B, page(dm(A, B), *msgs[5:], has_more=True))
    w.oracle.observe_history(B, page(dm(A, B), *msgs[1:6], has_more=True), before=6)
    v = only(w.oracle, "history")
    assert "asked for messages before seq 6 but contains" in v.explanation


def test_history_page_skipping_messages_below_its_before_bound() -> None:
    w, msgs = _dm_scenario(10)
    w.oracle.observe_history(B, page(dm(A, B), *msgs[5:], has_more=True))
    w.oracle.observe_history(B, page(dm(A, B), *msgs[1:4], has_more=True), before=6)
    found = [v for v in w.oracle.violations() if v.kind == "history"]
    assert [m.seq for m in msgs[4:5]] == [5]
    assert len(found) == 1
    assert f"lacks {msgs[4].message_id} (seq 5" in found[0].explanation


def test_history_without_more_must_reach_the_oldest() -> None:
    w, msgs = _dm_scenario(6)
    w.oracle.observe_history(B, page(dm(A, B), *msgs[3:], has_more=False), before=10)
    found = [v for v in w.oracle.violations() if v.kind == "history"]
    text = " ".join(map(str, found))
    assert all(f"lacks {m.message_id} (seq {m.seq}" in text for m in msgs[:3])
    assert len(found) == 3


def test_late_joiner_history_may_show_earlier_messages() -> None:
    w = World()
    g1 = w.send(A, GROUP, {B})
    g2 = w.send(A, GROUP, {B, D})  # dave joined after g1
    w.deliver(B, g1, g2)
    w.deliver(D, g2)
    w.oracle.observe_history(D, page(GROUP, g1, g2))
    w.oracle.assert_ok()


# -- unexpected ----------------------------------------------------------------------------


def test_non_member_receiving_a_group_message() -> None:
    w = World()
    g1 = w.send(A, GROUP, {B})
    w.deliver(B, g1)
    w.deliver(D, g1)
    v = only(w.oracle, "unexpected", complete=False)
    assert v.participant == D
    assert f"dave received {g1.message_id}" in v.explanation
    assert "not one of its recipients (bob)" in v.explanation


def test_message_nobody_sent() -> None:
    w = World()
    w.send(A, dm(A, B), {B})
    _, ghost = w.make(A, dm(A, B))  # from alice, a tracked sender, but never acked
    w.deliver(B, ghost)
    assert kinds(w.oracle, complete=False) == []  # its ack may still come
    v = only(w.oracle, "unexpected")
    assert "nobody sent it" in v.explanation
    assert ghost.message_id in v.explanation


def test_untracked_senders_are_ignored_unless_asked() -> None:
    for report in (False, True):
        w = World(Oracle(report_untracked=report))
        _, stray = w.make(C, dm(C, B))
        w.deliver(B, stray)
        assert kinds(w.oracle) == (["unexpected"] if report else [])


def test_message_delivered_with_another_seq_than_acked() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    w.deliver(B, replace(m1, seq=4))
    v = only(w.oracle, "unexpected")
    assert "as seq 4 in d:alice:bob" in v.explanation
    assert "ack said seq 1" in v.explanation


# -- reporting -----------------------------------------------------------------------------


def test_assert_ok_raises_one_paragraph_per_violation() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    w.send(A, dm(A, B), {B})
    w.deliver(B, m1, m1)
    with pytest.raises(OracleViolation) as info:
        w.oracle.assert_ok()
    err = info.value
    assert isinstance(err, HarnessError)
    assert isinstance(err, AssertionError)
    assert sorted(v.kind for v in err.violations) == ["duplicate", "loss"]
    paragraphs = str(err).split("\n\n")
    assert paragraphs[0] == "2 IM guarantee violation(s) observed:"
    assert paragraphs[1].startswith("[duplicate] bob saw message m1")
    assert paragraphs[2].startswith("[loss] bob never received m2")
    assert all(v.kind in KINDS for v in err.violations)


def test_assert_ok_caps_paragraphs_per_kind() -> None:
    w = World()
    for _ in range(40):
        w.send(A, dm(A, B), {B})
    with pytest.raises(OracleViolation) as info:
        w.oracle.assert_ok()
    assert len(info.value.violations) == 40
    assert "... and 15 more loss violations." in str(info.value)


def test_transcript_is_a_per_participant_timeline() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    w.deliver(B, m1, offline=True)
    w.oracle.observe(A, ReceiptUpdated(dm(A, B), B, 1))
    w.oracle.observe_history(B, page(dm(A, B), m1))
    text = w.oracle.transcript()
    assert "== alice: 1 events ==" in text
    assert "sent      m1 seq 1 in d:alice:bob [client c1] to bob" in text
    assert "#1    offline message m1 seq 1 in d:alice:bob from alice: 'hello 1'" in text
    assert "receipt bob read d:alice:bob up to seq 1" in text
    assert "history   page #1 of d:alice:bob: 1 messages, seq 1..1" in text


# -- kinds and typed entries ---------------------------------------------------------------


def _fires_loss(w: World) -> tuple[str, ...]:
    m1 = w.send(A, dm(A, B), {B})
    return (m1.message_id,)


def _fires_duplicate(w: World) -> tuple[str, ...]:
    m1 = w.send(A, dm(A, B), {B})
    w.deliver(B, m1, m1)
    return (m1.message_id,)


def _fires_order(w: World) -> tuple[str, ...]:
    m1 = w.send(A, dm(A, B), {B})
    m2 = w.send(A, dm(A, B), {B})
    w.deliver(B, m2, m1)
    return (m1.message_id, m2.message_id)


def _fires_group_order(w: World) -> tuple[str, ...]:
    w.oracle.strict_order = False  # else each member's own stream is already out of order
    g1 = w.send(A, GROUP, {C, D})
    g2 = w.send(B, GROUP, {C, D})
    w.deliver(C, g1, g2)
    w.deliver(D, g2, g1)
    return (g2.message_id, g1.message_id)


def _fires_recall(w: World) -> tuple[str, ...]:
    m1 = w.send(A, dm(A, B), {B})
    w.deliver(B, m1)
    w.oracle.recalled(dm(A, B), m1.message_id, by=A)
    return (m1.message_id,)


def _fires_receipt(w: World) -> tuple[str, ...]:
    w.oracle.observe(A, ReceiptUpdated(dm(A, B), B, 2))
    w.oracle.observe(A, ReceiptUpdated(dm(A, B), B, 1))
    return ()


def _fires_history(w: World) -> tuple[str, ...]:
    m1, m2, m3 = (w.send(A, dm(A, B), {B}) for _ in range(3))
    w.deliver(B, m1, m2, m3)
    w.oracle.observe_history(B, page(dm(A, B), m1, m3))
    return (m2.message_id,)


def _fires_hidden_by_sdk(w: World) -> tuple[str, ...]:
    w.oracle.client_hides(B, ["duplicate_events"])
    return _fires_duplicate(w)


def _fires_causal_order(w: World) -> tuple[str, ...]:
    a, b = _hb_pair(w, seq_lies=True)
    w.deliver(B, b, a)
    return (a.message_id, b.message_id)


def _fires_unexpected(w: World) -> tuple[str, ...]:
    g1 = w.send(A, GROUP, {B})
    w.deliver(B, g1)
    w.deliver(D, g1)
    return (g1.message_id,)


FIRES = {
    ViolationKind.LOSS: _fires_loss,
    ViolationKind.DUPLICATE: _fires_duplicate,
    ViolationKind.ORDER: _fires_order,
    ViolationKind.GROUP_ORDER: _fires_group_order,
    ViolationKind.RECALL: _fires_recall,
    ViolationKind.RECEIPT: _fires_receipt,
    ViolationKind.HISTORY: _fires_history,
    ViolationKind.UNEXPECTED: _fires_unexpected,
    ViolationKind.CAUSAL_ORDER: _fires_causal_order,
    ViolationKind.HIDDEN_BY_SDK: _fires_hidden_by_sdk,
}


@pytest.mark.parametrize("kind", list(ViolationKind))
def test_each_kind_fires_alone_on_its_crafted_stream(kind: ViolationKind) -> None:
    w = World()
    ids = FIRES[kind](w)  # a KeyError here: a new kind needs a crafted stream in FIRES
    found = w.oracle.violations()
    assert len(found) == 1, found
    v = found[0]
    assert v.kind is kind
    assert v.message_ids == ids
    assert all(mid in v.explanation for mid in ids)
    with pytest.raises(OracleViolation) as info:
        w.oracle.assert_ok()
    assert f"\n\n[{kind.value}] {v.explanation}" in str(info.value)


def test_kinds_are_strings_with_the_names_reports_use() -> None:
    assert KINDS == tuple(ViolationKind)
    assert KINDS == (  # what load counters and the defect matrix match on
        "loss", "duplicate", "order", "group_order", "recall", "receipt", "history", "unexpected",
        "causal_order", "hidden_by_sdk",
    )
    assert {ViolationKind.LOSS: 1}.get("loss") == 1  # type: ignore[call-overload]
    assert f"{ViolationKind.GROUP_ORDER}" == str(ViolationKind.GROUP_ORDER) == "group_order"


def test_a_violation_built_with_a_string_kind_gets_the_enum() -> None:
    v = Violation("receipt", A, dm(A, B), "text")  # type: ignore[arg-type]
    assert v.kind is ViolationKind.RECEIPT
    with pytest.raises(ValueError, match="'lost'"):
        Violation("lost", A, dm(A, B), "text")  # type: ignore[arg-type]


def test_violations_are_frozen() -> None:
    w = World()
    _fires_loss(w)
    v = only(w.oracle, "loss")
    with pytest.raises(FrozenInstanceError):
        v.kind = ViolationKind.ORDER  # type: ignore[misc]


def test_duplicate_acks_and_double_stores_name_both_messages() -> None:
    w = World()
    ack, first = w.make(A, dm(A, B))
    w.oracle.sent(A, ack, recipients={B})
    w.oracle.sent(A, replace(ack, message_id="m99", seq=7), recipients={B})
    _, again = w.make(A, dm(A, B))
    w.deliver(B, first, replace(again, client_id=first.client_id))
    found = w.oracle.violations(complete=False)
    assert [(v.kind, v.message_ids) for v in found] == [
        (ViolationKind.DUPLICATE, ("m99", first.message_id)),
        (ViolationKind.DUPLICATE, (again.message_id, first.message_id)),
    ]


def test_entries_are_typed_and_numbered() -> None:
    w = World()
    m1 = w.send(A, dm(A, B), {B})
    w.oracle.sent_unacked(A, "c-lost", dm(A, B))
    w.oracle.recalled(dm(A, B), m1.message_id, by=A)
    w.deliver(B, m1, offline=True)
    w.oracle.observe(B, MessageRecalled(dm(A, B), m1.message_id, A))
    w.oracle.observe_history(B, page(dm(A, B), replace(m1, recalled=True, body="")))
    assert w.oracle.entries(A) == [
        SentEntry(Ack("c1", "m1", dm(A, B), 1, 1001.0), (B,)),
        UnackedEntry("c-lost", dm(A, B)),
        RecalledEntry(dm(A, B), m1.message_id),
    ]
    assert w.oracle.entries(B) == [
        EventEntry(1, MessageReceived(m1, offline=True)),
        EventEntry(2, MessageRecalled(dm(A, B), m1.message_id, A)),
        HistoryEntry(1, dm(A, B), 1, 1, 1, False),
    ]
    assert w.oracle.entries(B, limit=2)[0] == EventEntry(2, MessageRecalled(dm(A, B), "m1", A))
    assert w.oracle.entries(C) == []
    entry = w.oracle.entries(B)[0]
    assert isinstance(entry, EventEntry)
    with pytest.raises(FrozenInstanceError):
        entry.index = 5  # type: ignore[misc]
    lines = w.oracle.transcript().splitlines()
    assert [line.strip() for line in lines[1:4]] == [e.render() for e in w.oracle.entries(A)]
    assert format_event(MessageRecalled(dm(A, B), "m1", A), 2) == w.oracle.entries(B)[1].render()


# -- properties ----------------------------------------------------------------------------

PEOPLE = (A, B, C, D)
MEMBERS = (A, B, C)  # dave is not in the group
CONVS = [*(dm(x, y) for x, y in itertools.combinations(PEOPLE, 2)), GROUP]


def _participants(conv: str) -> tuple[str, ...]:
    return MEMBERS if conv == GROUP else tuple(conv[2:].split(":"))


@dataclass
class Run:
    """A correct run: each participant's stream, and the oracle calls interleaved."""

    world: World
    streams: dict[str, list[Event]]
    acks: list[tuple[str, Ack, set[str]]]
    recalls: list[Message]
    messages: dict[str, Message]
    pages: dict[str, int]  # participant -> history page size (0: no history read)
    timed: bool = False  # acks carry harness times: each send started after the last one's ack


@st.composite
def runs(draw: st.DrawFn) -> Run:
    rnd = draw(st.randoms(use_true_random=False))
    world = World()
    n = draw(st.integers(1, 25))
    streams: dict[str, list[Event]] = {p: [] for p in PEOPLE}
    queues: dict[tuple[str, str], list[Message]] = {}
    acks: list[tuple[str, Ack, set[str]]] = []
    sent: list[Message] = []
    for _ in range(n):
        conv = rnd.choice(CONVS)
        sender = rnd.choice(_participants(conv))
        ack, msg = world.make(sender, conv)
        recipients = set(_participants(conv)) - {sender}
        acks.append((sender, ack, recipients))
        sent.append(msg)
        for who in recipients:
            queues.setdefault((who, conv), []).append(msg)
    # each participant merges its per-conversation queues in a random interleaving
    for who in PEOPLE:
        mine = [list(q) for (p, _), q in queues.items() if p == who]
        while any(mine):
            q = rnd.choice([q for q in mine if q])
            streams[who].append(MessageReceived(q.pop(0), offline=rnd.random() < 0.3))
    # read receipts only move forward
    for who in PEOPLE:
        for reader in PEOPLE:
            if reader == who:
                continue
            seq = 0
            spots = sorted(rnd.randrange(len(streams[who]) + 1) for _ in range(rnd.randrange(3)))
            for k, pos in enumerate(spots):
                seq += rnd.randrange(2)
                streams[who].insert(pos + k, ReceiptUpdated(dm(who, reader), reader, seq))
    recalls = [m for m in sent if rnd.random() < 0.2]
    for m in recalls:
        for who in set(_participants(m.conversation)) - {m.sender}:
            streams[who].append(MessageRecalled(m.conversation, m.message_id, m.sender))
    pages = {who: rnd.choice((0, 1, 2, 5)) for who in PEOPLE}
    messages = {m.message_id: m for m in sent}
    return Run(world, streams, acks, recalls, messages, pages, draw(st.booleans()))


def play(run: Run, rnd: random.Random) -> Oracle:
    """Feed a run to its oracle: acks interleaved at random with the participants' events."""
    oracle = run.world.oracle
    ops: list[tuple[str, object]] = [("ack", a) for a in run.acks]
    for who, events in run.streams.items():
        cursor = iter(events)
        ops.extend(("event", (who, cursor)) for _ in events)
    rnd.shuffle(ops)  # acks often reach the oracle after the events: judged when they do
    times = {
        ack.message_id: (10.0 + 2 * k, 11.0 + 2 * k) if run.timed else (None, None)
        for k, (_, ack, _) in enumerate(run.acks)
    }
    for op, arg in ops:
        if op == "ack":
            sender, ack, recipients = arg  # type: ignore[misc]
            started, acked = times[ack.message_id]
            oracle.sent(sender, ack, recipients=recipients, started_at=started, acked_at=acked)
        else:
            who, cursor = arg  # type: ignore[misc]
            oracle.observe(who, next(cursor))
    for m in run.recalls:
        oracle.recalled(m.conversation, m.message_id, by=m.sender)
    recalled = {m.message_id for m in run.recalls}
    for who, size in run.pages.items():
        if not size:
            continue
        for conv in CONVS:
            if who not in _participants(conv):
                continue
            msgs = [
                replace(m, recalled=True, body="") if m.message_id in recalled else m
                for _, ack, _ in run.acks
                if ack.conversation == conv
                for m in [run.messages[ack.message_id]]
            ]
            before: int | None = None
            while True:
                older = [m for m in msgs if before is None or m.seq < before]
                chunk = older[-size:]
                has_more = len(older) > len(chunk)
                oracle.observe_history(
                    who, HistoryPage(conv, tuple(chunk), has_more), before=before
                )
                if not has_more:
                    break
                before = chunk[0].seq
    return oracle


PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(runs(), st.randoms(use_true_random=False))
def test_correct_runs_are_never_reported(run: Run, rnd: random.Random) -> None:
    oracle = play(run, rnd)
    assert oracle.violations() == [], oracle.transcript()
    assert oracle.missing() == {}


def _message_positions(run: Run) -> list[tuple[str, int]]:
    return [
        (who, i)
        for who, events in run.streams.items()
        for i, e in enumerate(events)
        if isinstance(e, MessageReceived)
    ]


@PROPS
@given(runs(), st.randoms(use_true_random=False))
def test_an_injected_duplicate_is_reported(run: Run, rnd: random.Random) -> None:
    who, i = rnd.choice(_message_positions(run))
    event = run.streams[who][i]
    assert isinstance(event, MessageReceived)
    later = rnd.randrange(i + 1, len(run.streams[who]) + 1)
    run.streams[who].insert(later, MessageReceived(event.message, offline=True))
    found = play(run, rnd).violations()
    assert any(
        v.kind == "duplicate" and v.participant == who and event.message.message_id in str(v)
        for v in found
    ), found


@PROPS
@given(runs(), st.randoms(use_true_random=False))
def test_an_injected_drop_is_reported(run: Run, rnd: random.Random) -> None:
    who, i = rnd.choice(_message_positions(run))
    event = run.streams[who].pop(i)
    assert isinstance(event, MessageReceived)
    oracle = play(run, rnd)
    assert oracle.missing()[who] == [event.message.message_id]
    found = oracle.violations()
    assert any(
        v.kind == "loss" and v.participant == who and event.message.message_id in str(v)
        for v in found
    ), found


@PROPS
@given(runs(), st.randoms(use_true_random=False))
def test_an_injected_swap_is_reported(run: Run, rnd: random.Random) -> None:
    pairs = [
        (who, i, j)
        for who, events in run.streams.items()
        for i, j in itertools.combinations(range(len(events)), 2)
        if isinstance(a := events[i], MessageReceived)
        and isinstance(b := events[j], MessageReceived)
        and a.message.conversation == b.message.conversation
    ]
    if not pairs:
        return  # no participant got two messages of one conversation: nothing to swap
    who, i, j = rnd.choice(pairs)
    events = run.streams[who]
    events[i], events[j] = events[j], events[i]
    moved = events[j]
    assert isinstance(moved, MessageReceived)
    found = play(run, rnd).violations()
    assert any(v.kind == "order" and v.participant == who for v in found), found
    if run.timed:  # every send started after the previous ack: each pair is happens-before
        assert any(
            v.kind == "causal_order" and v.participant == who and moved.message.message_id in str(v)
            for v in found
        ), found


@PROPS
@given(runs(), st.randoms(use_true_random=False))
def test_an_injected_receipt_regression_is_reported(run: Run, rnd: random.Random) -> None:
    who = rnd.choice(PEOPLE)
    reader = rnd.choice([p for p in PEOPLE if p != who])
    events = run.streams[who]
    i = rnd.randrange(len(events) + 1)
    events.insert(i, ReceiptUpdated(dm(who, reader), reader, 5))
    events.insert(rnd.randrange(i + 1, len(events) + 1), ReceiptUpdated(dm(who, reader), reader, 4))
    found = play(run, rnd).violations()
    assert any(
        v.kind == "receipt" and v.participant == who and f"{reader}'s read receipt" in str(v)
        for v in found
    ), found


def test_what_an_sdk_would_hide_is_reported_as_such_never_dropped() -> None:
    """A declared hide changes the kind and says why; the server's behaviour is still judged."""
    oracle = Oracle()
    oracle.client_hides(B, ["duplicate_events", "receipts_backwards"])
    ack = Ack("c1", "m1", dm(A, B), 1, 0.0)
    oracle.sent(A, ack, recipients={B}, body="hi")
    msg = Message("m1", dm(A, B), 1, A, "c1", "text", "hi", 0.0)
    oracle.observe(B, MessageReceived(msg))
    oracle.observe(B, MessageReceived(msg))
    oracle.observe(B, ReceiptUpdated(dm(A, B), A, 2))
    oracle.observe(B, ReceiptUpdated(dm(A, B), A, 1))
    kinds = [v.kind for v in oracle.violations()]
    assert kinds == [ViolationKind.HIDDEN_BY_SDK, ViolationKind.HIDDEN_BY_SDK]
    dup, back = oracle.violations()
    assert "saw message m1" in dup.explanation
    assert "an SDK that de-duplicates by message id hides it" in dup.explanation
    assert "moved back from 2 to 1 at " + A in back.explanation
    assert "ignores a receipt that does not advance" in back.explanation
    # Without the declaration the same stream is a plain duplicate and a plain receipt violation.
    plain = Oracle()
    plain.sent(A, ack, recipients={B}, body="hi")
    for event in (MessageReceived(msg), MessageReceived(msg),
                  ReceiptUpdated(dm(A, B), A, 2), ReceiptUpdated(dm(A, B), A, 1)):
        plain.observe(B, event)
    assert [v.kind for v in plain.violations()] == [ViolationKind.DUPLICATE, ViolationKind.RECEIPT]


# -- judged as often as asked --------------------------------------------------------------
# The fault world asserts after every step and `until()` polls `missing()`: judging must not
# consume what the oracle keeps, so a run judged after every fact ends with the same verdict as
# one judged once. (How fast a large run is fed: bench/bench_oracle.py, with --scaling.)


class Probed(Oracle):
    """An oracle judged after every fact it is fed, both ways, and asked what is missing."""

    def _probe(self) -> None:
        self.violations(complete=False)
        self.violations()
        self.missing()

    def sent(self, *args: Any, **kwargs: Any) -> None:
        super().sent(*args, **kwargs)
        self._probe()

    def observe(self, participant: str, event: Event) -> None:
        super().observe(participant, event)
        self._probe()

    def observe_history(self, *args: Any, **kwargs: Any) -> None:
        super().observe_history(*args, **kwargs)
        self._probe()

    def recalled(self, conversation: str, message_id: str, by: str) -> None:
        super().recalled(conversation, message_id, by)
        self._probe()


def _inject_defects(run: Run, rnd: random.Random) -> None:
    """A repeat, a drop, a swap, a delivery to a non-member and a message nobody acked."""
    positions = _message_positions(run)
    who, i = rnd.choice(positions)
    event = run.streams[who][i]
    assert isinstance(event, MessageReceived)
    run.streams[who].insert(rnd.randrange(i + 1, len(run.streams[who]) + 1), event)
    others = [
        (w, j) for w, j in _message_positions(run)
        if run.streams[w][j].message.message_id != event.message.message_id  # type: ignore[union-attr]
    ]
    if others:
        who, i = rnd.choice(others)
        run.streams[who].pop(i)
    events = run.streams[rnd.choice(PEOPLE)]
    if len(events) > 1:
        j = rnd.randrange(len(events) - 1)
        events[j], events[j + 1] = events[j + 1], events[j]
    stray = rnd.choice(list(run.messages.values()))
    outsider = rnd.choice([p for p in PEOPLE if p not in _participants(stray.conversation)])
    run.streams[outsider].insert(rnd.randrange(len(run.streams[outsider]) + 1),
                                 MessageReceived(stray))
    _, ghost = run.world.make(A, dm(A, B))  # from a tracked sender, never acked
    run.streams[B].insert(rnd.randrange(len(run.streams[B]) + 1), MessageReceived(ghost))


@PROPS
@given(runs(), st.integers(0, 2**32 - 1))
def test_judging_after_every_fact_ends_with_the_same_verdict(run: Run, seed: int) -> None:
    _inject_defects(run, random.Random(seed))
    run.world.oracle = Probed()
    probed = play(run, random.Random(seed))
    run.world.oracle = Oracle()
    once = play(run, random.Random(seed))
    assert probed.violations(complete=False) == once.violations(complete=False)
    found = once.violations()
    assert probed.violations() == found
    assert probed.missing() == once.missing()
    assert {"duplicate", "unexpected"} <= {v.kind for v in found}, found
    assert "loss" in {v.kind for v in found} or len(run.messages) == 1, found
