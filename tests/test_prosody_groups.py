"""The xmpp adapter's groups and resends on a real Prosody 13 (XEP-0045 rooms, XEP-0313).

Each check is run twice: on what the adapter does, and on the defect it guards against (a
room configured open to non-members; a muted member whose voice came back; a blind resend on
a server that keeps both copies), to show the check fails there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from harness.contract import (
    EndpointSettings,
    IMClient,
    MessageReceived,
    MuteChanged,
    Reconnected,
    Target,
)
from harness.errors import Forbidden, IMTimeout, NotFound
from harness.faults.link import FaultLink
from harness.servers import ServerRequest
from harness.timing import units
from harness.xmpp.adapter import XmppAdapter, muc
from harness.xmpp.embedded import ProsodyEmbedded, ProsodyOptions
from harness.xmpp.launcher import DEFAULT_BINARIES

pytestmark = pytest.mark.slow
NEW = ServerRequest("new", "xmpp", protocol="prosody-13",
                    server_options=ProsodyOptions(version="13"),
                    timeouts={"send_timeout_s": 5.0, "connect_timeout_s": 5.0})


@pytest.fixture(scope="module")
def prosody() -> Iterator[EndpointSettings]:
    if not Path(DEFAULT_BINARIES["13"]).exists():
        pytest.skip(f"Prosody 13 is not installed ({DEFAULT_BINARIES['13']}); .ci/run does it")
    server = ProsodyEmbedded.for_request(NEW)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
async def adapter(prosody: EndpointSettings) -> AsyncIterator[XmppAdapter]:
    opened = await XmppAdapter.open(prosody)
    try:
        yield opened
    finally:
        await opened.aclose()


async def _client(adapter: XmppAdapter) -> IMClient:
    return await adapter.connect(await adapter.provision_user())


async def _bodies(client: IMClient, group: str, until: str) -> list[str]:
    """The group's message bodies `client` receives, up to the one that reads `until`."""
    got: list[str] = []
    async with asyncio.timeout(units(5)):
        async for event in client.events():
            if isinstance(event, MessageReceived) and event.message.group == group:
                got.append(event.message.body)
                if event.message.body == until:
                    return got
    return got


async def _intruder_refused(adapter: XmppAdapter, owner: IMClient, group: str) -> str | None:
    """What went wrong when a non-member tries to post to `group` (None: it was refused)."""
    member = await _client(adapter)
    await owner.add_member(group, member.user_id)
    dave = await _client(adapter)
    try:
        await dave.send(Target.to_group(group), "intruder")
    except Forbidden:
        pass
    else:
        return "a non-member's group send was accepted"
    await owner.send(Target.to_group(group), "sentinel")
    got = await _bodies(member, group, "sentinel")
    return None if got == ["sentinel"] else f"a member received {got}"


async def test_a_non_member_cannot_enter_or_post(adapter: XmppAdapter) -> None:
    owner = await _client(adapter)
    group = await owner.create_group("members only")
    assert await _intruder_refused(adapter, owner, group.group_id) is None


async def test_the_non_member_check_fails_on_a_room_open_to_all(adapter: XmppAdapter) -> None:
    owner = await _client(adapter)
    group = await owner.create_group("open")
    form = muc.config_form("open")
    for field in form.iter("{jabber:x:data}field"):
        if field.get("var") in ("muc#roomconfig_membersonly", "muc#roomconfig_moderatedroom"):
            field[0].text = "0"  # the defect: anyone may enter and speak
    await owner._iq("set", form, to=owner._room(group.group_id))  # type: ignore[attr-defined]
    assert await _intruder_refused(adapter, owner, group.group_id) == (
        "a non-member's group send was accepted")


async def _mute_changed(client: IMClient, group: str, user: str, *, muted: bool) -> None:
    async with asyncio.timeout(units(5)):
        async for event in client.events():
            if (isinstance(event, MuteChanged) and event.group == group
                    and event.user == user and event.muted is muted):
                return


async def _muted_refused(adapter: XmppAdapter, *, rejoin: bool) -> str | None:
    """What went wrong with the suite's mute check (None: all as the contract says); rejoin:
    the muted member's client enters the room again (a reconnect) before it posts."""
    owner, bob, carol = [await _client(adapter) for _ in range(3)]
    gid = (await owner.create_group("voice", [bob.user_id, carol.user_id])).group_id
    try:
        await carol.mute(gid, bob.user_id)
    except Forbidden:
        pass
    else:
        return "a plain member's mute was accepted"
    await owner.mute(gid, bob.user_id)
    await _mute_changed(bob, gid, bob.user_id, muted=True)
    assert bob.user_id in (await owner.group_info(gid)).muted
    if rejoin:
        await bob.reconnect()
    try:
        await bob.send(Target.to_group(gid), "while muted")
    except Forbidden:
        pass
    else:
        return "a muted member's group send was accepted"
    await owner.mute(gid, bob.user_id, muted=False)
    await _mute_changed(bob, gid, bob.user_id, muted=False)
    await bob.send(Target.to_group(gid), "unmuted again")
    got = await _bodies(carol, gid, "unmuted again")
    return None if got == ["unmuted again"] else f"a member received {got}"


async def test_a_muted_member_is_refused_until_its_voice_is_given_back(
        adapter: XmppAdapter) -> None:
    assert await _muted_refused(adapter, rejoin=False) is None


async def test_the_mute_check_fails_when_the_muted_member_has_voice_again(
        adapter: XmppAdapter) -> None:
    """Voice is the occupant's role: Prosody gives a member that enters the room again its
    default role (participant), so the check sees the muted member's send accepted."""
    assert await _muted_refused(adapter, rejoin=True) == (
        "a muted member's group send was accepted")


async def test_a_member_who_is_not_in_the_room_cannot_be_muted(adapter: XmppAdapter) -> None:
    """Prosody has no occupant to set a role on: item-not-found, with the reason."""
    owner = await _client(adapter)
    away = await adapter.provision_user()  # a member that never connects
    gid = (await owner.create_group("voice", [away.user_id])).group_id
    with pytest.raises(NotFound, match="occupant's role"):
        await owner.mute(gid, away.user_id)


async def _resend_after_lost_ack(prosody: EndpointSettings, *, blind: bool) -> list[str]:
    """Send with the ack lost (the server->client direction held), reconnect, send again with
    the same client id, and once more after its ack; the client ids of the conversation's
    history (blind: the resends come from a client that does not know of the first attempt)."""
    direct = await XmppAdapter.open(prosody)
    async with FaultLink("127.0.0.1", int(prosody.url.rsplit(":", 1)[1])) as link:
        linked = await XmppAdapter.open(replace(prosody, url=link.url_for(prosody.url)))
        try:
            alice_id, bob_id = await linked.provision_user(), await direct.provision_user()
            alice = await linked.connect(alice_id)
            bob = await direct.connect(bob_id)
            to = Target.to_user(bob_id.user_id)
            with link.blackhole(direction="down"):
                with pytest.raises(IMTimeout):
                    await alice.send(to, "once", client_id="c-once", timeout=units(1))
                async with asyncio.timeout(units(5)):  # the server did store it
                    async for event in bob.events():
                        if isinstance(event, MessageReceived):
                            break
            await link.reset_now()
            if blind:
                alice = await direct.connect(alice_id)
            else:  # its own reconnect, with backoff
                async with asyncio.timeout(units(10)):
                    async for event in alice.events():
                        if isinstance(event, Reconnected):
                            break
            ack = await alice.send(to, "once", client_id="c-once")
            again = await alice.send(to, "once", client_id="c-once")  # acked, sent once more
            assert again.message_id == ack.message_id
            page = await bob.history(ack.conversation)
            return [m.client_id for m in page.messages]
        finally:
            await linked.aclose()
            await direct.aclose()


async def test_a_resend_after_a_lost_ack_is_stored_once(prosody: EndpointSettings) -> None:
    assert await _resend_after_lost_ack(prosody, blind=False) == ["c-once"]


async def test_the_resend_check_fails_on_a_blind_resend(prosody: EndpointSettings) -> None:
    """Prosody keeps both copies of a blind resend (it does not deduplicate on origin-id)."""
    assert await _resend_after_lost_ack(prosody, blind=True) == ["c-once", "c-once"]
