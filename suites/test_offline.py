"""Offline: catch-up once and in order, history paging, push, crash durability, keepalive."""

from __future__ import annotations

import pytest

from harness.contract import Message, MessageReceived, Target
from harness.testkit import (
    app_connections,
    burst_size,
    client_through_link,
    settled,
    wait_connections,
)

pytestmark = pytest.mark.capability("chat")


@pytest.mark.capability("offline")
@pytest.mark.parametrize("leave", ["close", "drop"])
async def test_missed_messages_arrive_once_in_order_on_reconnect(
    endpoint, im_user, oracle, units, leave
):
    """What was sent while a user was away arrives on reconnect once, in order, marked offline."""
    alice = await im_user("alice")
    bob = await im_user("bob")
    live = await alice.send(bob, "while bob is here")
    conv = live.conversation
    await bob.recorder.wait_messages(1, conversation=conv, timeout=units(5))
    await getattr(bob, leave)()

    n = burst_size(endpoint, 10)
    away = [await alice.send(bob, f"while away {i}") for i in range(n)]
    await bob.reconnect()
    got = await bob.recorder.wait_messages(n + 1, conversation=conv, timeout=units(5))
    assert [m.message_id for m in got] == [live.message_id] + [a.message_id for a in away]
    caught_up = [
        e for e in bob.recorder.of_type(MessageReceived) if e.message.message_id != live.message_id
    ]
    assert all(e.offline for e in caught_up), "messages sent while away must be marked offline"
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("offline", "groups")
async def test_offline_member_catches_up_across_conversations(
    endpoint, im_user, im_group, oracle, units
):
    """A member away while 1:1 and group messages interleave catches up on both, each in order."""
    alice, bob, carol = [await im_user(n) for n in ("alice", "bob", "carol")]
    group = await im_group(alice, [bob, carol])
    await bob.close()
    direct, grouped = [], []
    for i in range(4):
        direct.append(await alice.send(bob, f"direct {i}"))
        grouped.append(await carol.send(group, f"group {i}"))
    await bob.reconnect()
    got_d = await bob.recorder.wait_messages(4, conversation=direct[0].conversation,
                                             timeout=units(5))
    got_g = await bob.recorder.wait_messages(4, conversation=grouped[0].conversation,
                                             timeout=units(5))
    assert [m.body for m in got_d] == [f"direct {i}" for i in range(4)]
    assert [m.body for m in got_g] == [f"group {i}" for i in range(4)]
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("history")
async def test_history_pages_have_no_gap_or_overlap(endpoint, im_user, oracle, units):
    """Paging history backwards and forwards yields every message once, matching live delivery."""
    alice = await im_user("alice")
    bob = await im_user("bob")
    n = burst_size(endpoint)
    acks = [await alice.send(bob, f"h{i}") for i in range(n)]
    conv = acks[0].conversation
    live = await bob.recorder.wait_messages(n, conversation=conv, timeout=units(5))
    want = [a.message_id for a in acks]
    page_size = max(2, n // 3)

    backwards: list[Message] = []
    before: int | None = None
    pages = 0
    while True:
        page = await bob.history(conv, before=before, limit=page_size)
        oracle.observe_history(bob.id, page, before=before)
        pages += 1
        assert len(page.messages) <= page_size
        seqs = [m.seq for m in page.messages]
        assert seqs == sorted(seqs), f"a page is not oldest first: {seqs}"
        backwards = list(page.messages) + backwards
        if not page.has_more:
            break
        assert pages <= n, "backward paging does not end"
        before = page.messages[0].seq

    forwards: list[Message] = []
    after, pages = 0, 0
    while True:
        page = await bob.history(conv, after=after, limit=page_size)
        oracle.observe_history(bob.id, page, after=after)
        pages += 1
        forwards += page.messages
        if not page.has_more:
            break
        assert pages <= n, "forward paging does not end"
        after = page.messages[-1].seq

    assert [m.message_id for m in backwards] == want, "backward pages have a gap or an overlap"
    assert [m.message_id for m in forwards] == want, "forward pages have a gap or an overlap"
    assert [(m.message_id, m.seq, m.body) for m in forwards] == [
        (m.message_id, m.seq, m.body) for m in live
    ], "history differs from what was delivered live"
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.needs_admin
@pytest.mark.capability("push")
@pytest.mark.capability("offline")
async def test_offline_push_reaches_webhook(endpoint, im_user, push_receiver, oracle, units):
    """A message to a user with no live connection is pushed to the app's webhook promptly."""
    app = await endpoint.with_app(webhook=push_receiver.url)
    alice = await im_user("alice", endpoint=app)
    bob = await im_user("bob", endpoint=app, connect=False)
    ack = await alice.send(bob, "are you there? " + "x" * 40)
    await push_receiver.wait_for(
        lambda p: p.get("message_id") == ack.message_id, timeout=units(3)
    )
    [push] = [p for p in push_receiver.received if p.get("message_id") == ack.message_id]
    assert (push["to"], push["sender"]) == (bob.id, alice.id)
    assert push["conversation"] == ack.conversation
    assert push["preview"] == ("are you there? " + "x" * 40)[: len(push["preview"])]
    assert push["preview"], "the push carries a preview"
    await bob.connect()
    await bob.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.needs_admin
@pytest.mark.capability("push")
async def test_vanished_client_is_noticed_within_keepalive(
    endpoint, im_user, push_receiver, fault_link, units
):
    """A client that vanishes silently (no FIN/RST) is noticed in 2 x keepalive; push resumes."""
    keepalive = endpoint.info.keepalive_s
    if keepalive is None or 2 * keepalive > units(6):
        pytest.skip(
            f"endpoint {endpoint.name!r}: keepalive {keepalive}s is too long to wait for in a "
            "suite; set [harness] keepalive_v1/keepalive_v2 to a few seconds to run this"
        )
    app = await endpoint.with_app(webhook=push_receiver.url)
    alice = await im_user("alice", endpoint=app)

    async with client_through_link(fault_link, app) as (link, bob, _info):
        assert await app_connections(app) == 2
        with link.blackhole():  # bob's phone loses signal: nothing reaches the server any more
            await bob.drop()
            await wait_connections(
                app,
                1,
                timeout=2 * keepalive + units(1),
                what=f"the service to notice the vanished client (keepalive {keepalive}s)",
            )
            ack = await alice.client.send(Target.to_user(bob.user_id), "ping after vanishing")
            await push_receiver.wait_for(
                lambda p: p.get("message_id") == ack.message_id, timeout=units(3)
            )


@pytest.mark.capability("offline", "history")
async def test_acked_messages_survive_a_server_crash(
    endpoint, im_user, restart_service, oracle, units
):
    """Every acknowledged message survives a hard crash of the server (kill -9) and a restart."""
    if endpoint.server is None:
        pytest.skip(f"endpoint {endpoint.name!r} is not started by the harness; cannot crash it")
    alice = await im_user("alice")
    bob = await im_user("bob", connect=False)
    acks = [await alice.send(bob, f"durable {i}") for i in range(burst_size(endpoint, 10))]
    await restart_service(kill=True)

    await bob.connect()
    got = await bob.recorder.wait_messages(len(acks), conversation=acks[0].conversation,
                                           timeout=units(8))
    assert [m.message_id for m in got] == [a.message_id for a in acks]
    page = await bob.history(acks[0].conversation, limit=len(acks))
    assert [m.message_id for m in page.messages] == [a.message_id for a in acks]
    await settled(oracle)
    oracle.assert_ok()
