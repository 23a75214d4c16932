"""Recall: within the window for everyone (live, offline, history); refused late or by others."""

from __future__ import annotations

import asyncio

import pytest

from harness.contract import Message, MessageRecalled, ServerRule
from harness.errors import Forbidden, RecallWindowExpired
from harness.testkit import User, expect_event, require_server_enforces, settled

pytestmark = pytest.mark.capability("chat", "recall")


async def _history_entry(user: User, conversation: str, message_id: str) -> Message:
    page = await user.history(conversation, limit=100)
    [entry] = [m for m in page.messages if m.message_id == message_id]
    return entry


@pytest.mark.capability("history")
async def test_recall_reaches_online_peer_and_history(endpoint, im_user, oracle, units):
    """A recall within the window reaches the online peer and blanks the message in history."""
    alice = await im_user("alice")
    bob = await im_user("bob")
    ack = await alice.send(bob, "oops, wrong chat")
    kept = await alice.send(bob, "this one stays")
    await bob.recorder.wait_messages(2, conversation=ack.conversation, timeout=units(5))

    await alice.recall(ack)
    event = await expect_event(bob, MessageRecalled, message_id=ack.message_id, offline=False)
    assert (event.conversation, event.by) == (ack.conversation, alice.id)

    for reader in (alice, bob):
        entry = await _history_entry(reader, ack.conversation, ack.message_id)
        assert (entry.recalled, entry.body) == (True, ""), f"history at {reader.id} shows it"
        other = await _history_entry(reader, ack.conversation, kept.message_id)
        assert not other.recalled
        assert other.body == "this one stays"
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("offline", "history")
async def test_recall_reaches_offline_peer_on_reconnect(endpoint, im_user, oracle, units):
    """A peer offline during a recall learns of it when it reconnects."""
    alice = await im_user("alice")
    bob = await im_user("bob")
    ack = await alice.send(bob, "recall me while bob is away")
    await bob.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))
    await bob.close()

    await alice.recall(ack)
    await bob.reconnect()
    await expect_event(bob, MessageRecalled, message_id=ack.message_id, offline=True)
    assert (await _history_entry(bob, ack.conversation, ack.message_id)).recalled
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("groups", "roles")
async def test_group_recall_by_sender_or_admin_only(endpoint, im_user, im_group, oracle, units):
    """In a group, the sender and an admin may recall a message; another member may not."""
    alice, bob, carol = [await im_user(n) for n in ("alice", "bob", "carol")]
    group = await im_group(alice, [bob, carol])
    by_bob = await bob.send(group, "bob's first")
    by_bob2 = await bob.send(group, "bob's second")
    conv = by_bob.conversation
    await carol.recorder.wait_messages(2, conversation=conv, timeout=units(5))

    with pytest.raises(Forbidden) as refused:
        await carol.client.recall(conv, by_bob.message_id)
    assert not isinstance(refused.value, RecallWindowExpired)

    await alice.recall(by_bob)  # the owner moderates
    await bob.recall(by_bob2)  # the sender takes back his own
    for member, mid in ((bob, by_bob.message_id), (carol, by_bob.message_id),
                        (carol, by_bob2.message_id), (alice, by_bob2.message_id)):
        await expect_event(member, MessageRecalled, message_id=mid)
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("history")
async def test_only_sender_recalls_in_one_to_one(endpoint, im_user, oracle, units):
    """The receiver of a 1:1 message cannot recall it: Forbidden, and it stays in history."""
    require_server_enforces(endpoint, ServerRule.PEER_RECALL_1TO1, "only the sender recalls 1:1")
    alice = await im_user("alice")
    bob = await im_user("bob")
    ack = await alice.send(bob, "mine to recall")
    await bob.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))
    with pytest.raises(Forbidden) as refused:
        await bob.client.recall(ack.conversation, ack.message_id)
    assert not isinstance(refused.value, RecallWindowExpired)
    entry = await _history_entry(alice, ack.conversation, ack.message_id)
    assert not entry.recalled
    assert entry.body == "mine to recall"
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.needs_admin
@pytest.mark.capability("history")
async def test_recall_after_window_is_refused(endpoint, im_user, oracle, units):
    """After the app's recall window a recall is refused with RecallWindowExpired."""
    window = units(1)
    app = await endpoint.with_app(tier="pro", features={"recall": True}, recall_window_s=window)
    alice = await im_user("alice", endpoint=app)
    bob = await im_user("bob", endpoint=app)
    fresh = await alice.send(bob, "recalled in time")
    await alice.recall(fresh)

    late = await alice.send(bob, "too late to recall")
    await bob.recorder.wait_messages(2, conversation=late.conversation, timeout=units(5))
    await asyncio.sleep(window + units(0.3))  # pass the app's recall window
    with pytest.raises(RecallWindowExpired):
        await alice.client.recall(late.conversation, late.message_id)
    entry = await _history_entry(bob, late.conversation, late.message_id)
    assert not entry.recalled
    assert entry.body == "too late to recall"
    await settled(oracle)
    oracle.assert_ok()
