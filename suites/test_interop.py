"""Interop: an old (v1) and a new (v2) client converse both ways in one app during a rollout."""

from __future__ import annotations

import pytest

from harness.contract import MessageRecalled
from harness.testkit import Endpoint, require_protocols, settled

pytestmark = pytest.mark.capability("chat")


@pytest.fixture(autouse=True)
def _old_and_new_protocols(endpoint: Endpoint) -> None:
    """Every test here mixes v1 and v2 clients in one app."""
    require_protocols(endpoint, "v1", "v2")


async def test_old_and_new_clients_converse_both_ways(endpoint, im_user, oracle, units):
    """A v1 and a v2 user of one app exchange 1:1 messages both ways, intact and in order."""
    old = await im_user("old", protocol="v1")
    new = await im_user("new", protocol="v2")
    assert (old.client.protocol, new.client.protocol) == ("v1", "v2")
    acks = []
    for i in range(3):
        acks.append(await old.send(new, f"from v1 #{i} ✓"))
        acks.append(await new.send(old, f"from v2 #{i} 🚀"))
    conv = acks[0].conversation
    assert {a.conversation for a in acks} == {conv}
    got_new = await new.recorder.wait_messages(3, conversation=conv, timeout=units(5))
    got_old = await old.recorder.wait_messages(3, conversation=conv, timeout=units(5))
    assert [m.body for m in got_new] == [f"from v1 #{i} ✓" for i in range(3)]
    assert [m.body for m in got_old] == [f"from v2 #{i} 🚀" for i in range(3)]
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("groups")
async def test_mixed_versions_share_a_group(endpoint, im_user, im_group, oracle, units):
    """In a group of v1 and v2 members, each member gets every other member's message once."""
    owner = await im_user("owner", protocol="v2")
    old = await im_user("old", protocol="v1")
    new = await im_user("new", protocol="v2")
    group = await im_group(owner, [old, new])
    conv = None
    for sender in (owner, old, new):
        conv = (await sender.send(group, f"hello from {sender.client.protocol}")).conversation
    for member in (owner, old, new):
        got = await member.recorder.wait_messages(2, conversation=conv, timeout=units(5))
        assert sorted(m.sender for m in got) == sorted(
            u.id for u in (owner, old, new) if u is not member
        )
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("history")
async def test_both_versions_read_the_same_history(endpoint, im_user, oracle, units):
    """A v1 and a v2 client read the same stored conversation from history."""
    old = await im_user("old", protocol="v1")
    new = await im_user("new", protocol="v2")
    for i in range(2):
        await old.send(new, f"v1 says {i}")
        ack = await new.send(old, f"v2 says {i}")
    await old.recorder.wait_messages(2, conversation=ack.conversation, timeout=units(5))
    page_old = await old.history(ack.conversation, limit=10)
    page_new = await new.history(ack.conversation, limit=10)
    oracle.observe_history(old.id, page_old)
    oracle.observe_history(new.id, page_new)
    assert page_old.messages == page_new.messages
    assert [m.body for m in page_new.messages] == [
        "v1 says 0", "v2 says 0", "v1 says 1", "v2 says 1"
    ]
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("recall")
@pytest.mark.capability("history")
async def test_recall_by_new_client_shows_for_old_client(endpoint, im_user, oracle, units):
    """A v2 user's recall shows as recalled in a v1 peer's history (v1 gets no recall event)."""
    sender = await im_user("sender", protocol="v2")
    old = await im_user("old", protocol="v1")
    ack = await sender.send(old, "recall me across versions")
    await old.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))
    await sender.recall(ack)
    after = await sender.send(old, "after the recall")  # inbox order: events before it are in
    await old.recorder.wait_messages(2, conversation=ack.conversation, timeout=units(5))
    page = await old.history(ack.conversation, before=after.seq, limit=10)
    [entry] = [m for m in page.messages if m.message_id == ack.message_id]
    assert (entry.recalled, entry.body) == (True, "")
    assert not old.recorder.of_type(MessageRecalled), "v1 clients are not sent recall events"
    await settled(oracle)
    oracle.assert_ok()
