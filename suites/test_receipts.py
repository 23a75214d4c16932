"""Read receipts: cursors reach the sender, never move back, and catch up after being offline."""

from __future__ import annotations

import pytest

from harness.contract import ReceiptUpdated
from harness.testkit import User, expect_event, sentinel, settled

pytestmark = pytest.mark.capability("chat", "receipts")


def _receipts(user: User, conversation: str, reader: str) -> list[int]:
    return [
        e.up_to_seq
        for e in user.recorder.of_type(ReceiptUpdated)
        if e.conversation == conversation and e.reader == reader
    ]


async def test_one_to_one_read_cursor_reaches_sender_and_never_goes_back(
    endpoint, im_user, oracle, units
):
    """The sender sees how far the peer has read, and that mark never moves backwards."""
    alice = await im_user("alice")
    bob = await im_user("bob")
    acks = [await alice.send(bob, f"read me {i}") for i in range(3)]
    conv = acks[0].conversation
    await bob.recorder.wait_messages(3, conversation=conv, timeout=units(5))
    s1, s2, s3 = (a.seq for a in acks)

    await bob.client.mark_read(conv, s2)
    await expect_event(
        alice, ReceiptUpdated, conversation=conv, reader=bob.id, up_to_seq=s2, offline=False
    )
    await bob.client.mark_read(conv, s1)  # an older position must not move the cursor back
    await bob.client.mark_read(conv, s2)  # nor does re-reading the same position announce again
    await bob.client.mark_read(conv, s3)
    await expect_event(alice, ReceiptUpdated, conversation=conv, reader=bob.id, up_to_seq=s3)
    assert _receipts(alice, conv, bob.id) == [s2, s3]
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("groups", "group_receipts")
async def test_group_read_cursors_reach_every_other_member(
    endpoint, im_user, im_group, oracle, units
):
    """In a group, each member's read position reaches every other member and never goes back."""
    alice, bob, carol = [await im_user(n) for n in ("alice", "bob", "carol")]
    group = await im_group(alice, [bob, carol])
    acks = [await alice.send(group, f"group read {i}") for i in range(2)]
    conv = acks[0].conversation
    s1, s2 = (a.seq for a in acks)
    for member in (bob, carol):
        await member.recorder.wait_messages(2, conversation=conv, timeout=units(5))

    await bob.client.mark_read(conv, s2)
    await carol.client.mark_read(conv, s1)
    for watcher in (alice, carol):
        await expect_event(watcher, ReceiptUpdated, conversation=conv, reader=bob.id, up_to_seq=s2)
    for watcher in (alice, bob):
        await expect_event(
            watcher, ReceiptUpdated, conversation=conv, reader=carol.id, up_to_seq=s1
        )

    await bob.client.mark_read(conv, s1)  # backwards: no effect
    await carol.client.mark_read(conv, s2)
    await expect_event(alice, ReceiptUpdated, conversation=conv, reader=carol.id, up_to_seq=s2)
    await sentinel(bob, alice)
    assert _receipts(alice, conv, bob.id) == [s2]
    assert _receipts(alice, conv, carol.id) == [s1, s2]
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("offline")
async def test_offline_sender_catches_up_on_receipts(endpoint, im_user, oracle, units):
    """A sender that was offline while the peer read gets the receipt when it reconnects."""
    alice = await im_user("alice")
    bob = await im_user("bob")
    ack = await alice.send(bob, "read this while I am away")
    await bob.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))
    await alice.close()
    await bob.client.mark_read(ack.conversation, ack.seq)
    await alice.reconnect()
    await expect_event(
        alice, ReceiptUpdated,
        conversation=ack.conversation, reader=bob.id, up_to_seq=ack.seq, offline=True,
    )
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("offline")
async def test_offline_reader_catches_up_then_reads(endpoint, im_user, oracle, units):
    """A reader that was offline catches up on messages, and its read mark reaches the sender."""
    alice = await im_user("alice")
    bob = await im_user("bob")
    first = await alice.send(bob, "before bob leaves")
    await bob.recorder.wait_messages(1, conversation=first.conversation, timeout=units(5))
    await bob.close()
    acks = [await alice.send(bob, f"while away {i}") for i in range(3)]
    await bob.reconnect()
    got = await bob.recorder.wait_messages(4, conversation=first.conversation, timeout=units(5))
    assert [m.body for m in got[1:]] == [f"while away {i}" for i in range(3)]
    await bob.client.mark_read(first.conversation, got[-1].seq)
    await expect_event(
        alice, ReceiptUpdated,
        conversation=first.conversation, reader=bob.id, up_to_seq=acks[-1].seq, offline=False,
    )
    await settled(oracle)
    oracle.assert_ok()
