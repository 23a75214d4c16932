"""Security: bad, expired and cross-app tokens, non-members, impersonation, outsiders' recalls.

A 1:1 peer's and a plain group member's recalls are refused too: test_recall.py checks both.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from harness.contract import Credentials, MessageReceived, Target
from harness.errors import Forbidden, NotFound, RecallWindowExpired, Unauthorized
from harness.testkit import Endpoint, expect_event, mint_credentials, sentinel, settled

pytestmark = pytest.mark.capability("chat")


async def _refused_login(endpoint: Endpoint, credentials: Credentials) -> None:
    client = None
    try:
        with pytest.raises(Unauthorized):
            client = await endpoint.adapter.connect(credentials)
    finally:
        if client is not None:
            await client.close()


def _flip(text: str, index: int) -> str:
    ch = text[index]
    return text[:index] + ("A" if ch != "A" else "B") + text[index + 1 :]


async def test_garbage_token_is_refused(endpoint):
    """A login with a token that is not a token at all is refused as Unauthorized."""
    await _refused_login(endpoint, Credentials(f"nobody-{uuid.uuid4().hex[:8]}", "not-a-token"))
    await _refused_login(endpoint, Credentials(f"nobody-{uuid.uuid4().hex[:8]}", ""))


async def test_tampered_token_is_refused(endpoint, im_user):
    """A real token with one character changed is refused as Unauthorized."""
    alice = await im_user("alice", connect=False)
    token = alice.credentials.token
    for index in (len(token) - 2, len(token) // 3):
        await _refused_login(endpoint, Credentials(alice.id, _flip(token, index)))


@pytest.mark.needs_admin
async def test_expired_token_is_refused(endpoint, im_user):
    """A correctly signed token whose expiry has passed is refused as Unauthorized."""
    app = await endpoint.with_app()  # an app the harness holds the key of, to mint with
    alice = await im_user("alice", endpoint=app, connect=False)
    fresh = await mint_credentials(app, alice.id, ttl_s=600)
    client = await app.adapter.connect(fresh)  # the minting is right
    await client.close()
    expired = await mint_credentials(app, alice.id, ttl_s=0)  # expires as it is minted
    await asyncio.sleep(0.01)  # the expiry is rounded to the millisecond: be past it
    await _refused_login(app, expired)


@pytest.mark.needs_admin
async def test_token_of_another_app_is_refused(endpoint):
    """A token minted by another app is refused, even for a user id that exists in both apps."""
    other = await endpoint.with_app()
    user_id = f"twin-{uuid.uuid4().hex[:8]}"
    await endpoint.adapter.provision_user(user_id)
    foreign = await other.adapter.provision_user(user_id)
    client = await other.adapter.connect(foreign)  # valid where it was minted
    await client.close()
    await _refused_login(endpoint, foreign)


@pytest.mark.capability("groups")
@pytest.mark.capability("history")
async def test_non_member_cannot_read_or_post_to_group(
    endpoint, im_user, im_group, oracle, units
):
    """Someone outside a group can neither post to it nor read its history or details."""
    alice, bob, mallory = [await im_user(n) for n in ("alice", "bob", "mallory")]
    group = await im_group(alice, [bob])
    ack = await alice.send(group, "members only")
    await bob.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))

    with pytest.raises(Forbidden):
        await mallory.client.send(Target.to_group(group.group_id), "let me in")
    with pytest.raises(Forbidden):
        await mallory.history(ack.conversation)
    with pytest.raises((Forbidden, NotFound)):
        await mallory.client.group_info(group.group_id)

    # Everything for bob arrives in order: after the sentinel, an intruder's post would be in.
    await sentinel(alice, bob)
    senders = {m.sender for m in bob.recorder.messages(ack.conversation)}
    assert senders == {alice.id}, f"bob received group messages from {senders - {alice.id}}"
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("history")
async def test_outsider_cannot_read_a_one_to_one_conversation(endpoint, im_user, units):
    """A third user cannot read the history of a 1:1 conversation between two others."""
    alice, bob, mallory = [await im_user(n) for n in ("alice", "bob", "mallory")]
    ack = await alice.send(bob, "just between us")
    with pytest.raises((Forbidden, NotFound)):
        await mallory.history(ack.conversation)


async def test_sender_is_stamped_from_the_token(endpoint, im_user, units):
    """A client cannot send as another user: the server names the sender from the token."""
    alice, bob, carol = [await im_user(n) for n in ("alice", "bob", "carol")]
    # alice's token presented under bob's name: refused, or every send still comes from alice.
    posing = None
    with contextlib.suppress(Unauthorized):
        posing = await endpoint.adapter.connect(Credentials(bob.id, alice.credentials.token))
    if posing is not None:
        try:
            ack = await posing.send(Target.to_user(carol.id), "I am bob, honest")
            [got] = await carol.recorder.wait_messages(
                1, conversation=ack.conversation, timeout=units(5)
            )
            assert got.sender == alice.id, f"the message claims sender {got.sender!r}"
        finally:
            await posing.close()

    # Reusing bob's client id must neither return bob's message nor send in his name.
    client_id = f"c-{uuid.uuid4().hex}"
    by_bob = await bob.send(carol, "bob's words", client_id=client_id)
    by_alice = await alice.send(carol, "alice's words", client_id=client_id)
    assert not by_alice.duplicate
    assert by_alice.message_id != by_bob.message_id
    event = await expect_event(carol, MessageReceived, message_id=by_alice.message_id)
    assert (event.message.sender, event.message.body) == (alice.id, "alice's words")


@pytest.mark.capability("recall")
@pytest.mark.capability("history")
async def test_outsider_cannot_recall_a_one_to_one_message(endpoint, im_user, units):
    """A third user cannot recall a message of a 1:1 conversation between two others."""
    alice, bob, mallory = [await im_user(n) for n in ("alice", "bob", "mallory")]
    ack = await alice.send(bob, "not yours")
    with pytest.raises((Forbidden, NotFound)) as refused:
        await mallory.client.recall(ack.conversation, ack.message_id)
    assert not isinstance(refused.value, RecallWindowExpired)
    page = await alice.history(ack.conversation)
    [entry] = [m for m in page.messages if m.message_id == ack.message_id]
    assert (entry.recalled, entry.body) == (False, "not yours")
