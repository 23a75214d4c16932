"""Groups: lifecycle, fan-out exactly once to members only, roles, mutes, the member limit."""

from __future__ import annotations

import asyncio

import pytest

from harness.contract import MembershipChanged, MuteChanged, ServerRule, Target
from harness.errors import Forbidden, LimitReached, NotFound, Unsupported
from harness.testkit import (
    Endpoint,
    burst_size,
    expect_event,
    require_server_enforces,
    sentinel,
    settled,
)

pytestmark = pytest.mark.capability("groups")

# A tier limit this small is tested for real when the service cannot lower it per app.
SMALL_ENOUGH = 128


async def test_create_add_remove_leave(endpoint, im_user, im_group, units):
    """A group's membership follows create, add, remove and leave; the owner cannot leave."""
    alice, bob, carol = [await im_user(n) for n in ("alice", "bob", "carol")]
    group = await im_group(alice, [bob])
    gid = group.group_id
    assert dict(group.members) == {alice.id: "owner", bob.id: "member"}

    await alice.client.add_member(gid, carol.id)
    await expect_event(carol, MembershipChanged, user=carol.id, change="added")
    info = await alice.client.group_info(gid)
    assert dict(info.members) == {alice.id: "owner", bob.id: "member", carol.id: "member"}

    await alice.client.remove_member(gid, bob.id)
    await expect_event(bob, MembershipChanged, user=bob.id, change="removed")

    await carol.client.leave(gid)
    await expect_event(alice, MembershipChanged, user=carol.id, change="left")
    info = await alice.client.group_info(gid)
    assert dict(info.members) == {alice.id: "owner"}

    with pytest.raises(Forbidden):
        await alice.client.leave(gid)


async def test_fanout_once_to_every_member_never_to_outsiders(
    endpoint, im_user, im_group, oracle, units
):
    """Every member gets every other member's group message exactly once; outsiders get none."""
    alice, bob, carol, dave = [await im_user(n) for n in ("alice", "bob", "carol", "dave")]
    group = await im_group(alice, [bob, carol])
    conv = None
    for sender in (alice, bob, carol):
        for i in range(2):
            conv = (await sender.send(group, f"{sender.id} #{i}")).conversation
    for member in (alice, bob, carol):
        got = await member.recorder.wait_messages(4, conversation=conv, timeout=units(5))
        assert sorted(m.body for m in got) == sorted(
            f"{s.id} #{i}" for s in (alice, bob, carol) if s is not member for i in range(2)
        )
    await sentinel(alice, dave)
    assert dave.recorder.messages(conv) == [], "a non-member received group messages"
    await settled(oracle)
    oracle.assert_ok()


async def test_group_burst_arrives_in_order_at_every_member(
    endpoint, im_user, im_group, oracle, units
):
    """A burst to a group reaches each member complete and in the order it was sent."""
    alice, bob, carol = [await im_user(n) for n in ("alice", "bob", "carol")]
    group = await im_group(alice, [bob, carol])
    n = burst_size(endpoint)
    acks = [await alice.send(group, f"g{i}") for i in range(n)]
    for member in (bob, carol):
        got = await member.recorder.wait_messages(n, conversation=acks[0].conversation,
                                                  timeout=units(5))
        assert [m.body for m in got] == [f"g{i}" for i in range(n)], f"order at {member.id}"
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("history")
async def test_removed_member_gets_nothing_more(endpoint, im_user, im_group, oracle, units):
    """After removal a former member receives no new group messages."""
    alice, bob, carol = [await im_user(n) for n in ("alice", "bob", "carol")]
    group = await im_group(alice, [bob, carol])
    before = await alice.send(group, "before removal")
    await carol.recorder.wait_messages(1, conversation=before.conversation, timeout=units(5))

    await alice.client.remove_member(group.group_id, carol.id)
    await expect_event(carol, MembershipChanged, user=carol.id, change="removed")
    await alice.send(await alice.client.group_info(group.group_id), "after removal")
    await bob.recorder.wait_messages(2, conversation=before.conversation, timeout=units(5))
    await sentinel(alice, carol)
    assert [m.body for m in carol.recorder.messages(before.conversation)] == ["before removal"]
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("history")
async def test_removed_member_cannot_read_the_group(endpoint, im_user, im_group, units):
    """A removed member can read neither the group's history nor its details any more."""
    require_server_enforces(
        endpoint, ServerRule.FORMER_MEMBER_READS, "a removed member reads nothing of the group"
    )
    alice, bob = [await im_user(n) for n in ("alice", "bob")]
    group = await im_group(alice, [bob])
    ack = await alice.send(group, "seen while a member")
    await bob.recorder.wait_messages(1, conversation=ack.conversation, timeout=units(5))
    assert [m.body for m in (await bob.history(ack.conversation)).messages] == [
        "seen while a member"
    ], "a member reads the history (else the refusal below proves nothing)"

    await alice.client.remove_member(group.group_id, bob.id)
    await expect_event(bob, MembershipChanged, user=bob.id, change="removed")
    with pytest.raises(Forbidden):
        await bob.history(ack.conversation)
    with pytest.raises((Forbidden, NotFound)):
        await bob.client.group_info(group.group_id)


@pytest.mark.capability("roles")
async def test_only_owner_and_admins_manage_members(endpoint, im_user, im_group, units):
    """Members cannot add or remove; the owner makes admins, who can; only the owner sets roles."""
    alice, bob, carol, dave = [await im_user(n) for n in ("alice", "bob", "carol", "dave")]
    group = await im_group(alice, [bob, carol])
    gid = group.group_id

    with pytest.raises(Forbidden):
        await bob.client.add_member(gid, dave.id)
    with pytest.raises(Forbidden):
        await bob.client.remove_member(gid, carol.id)
    with pytest.raises(Forbidden):
        await bob.client.set_role(gid, bob.id, "admin")

    await alice.client.set_role(gid, bob.id, "admin")
    await expect_event(bob, MembershipChanged, user=bob.id, change="role", role="admin")
    assert (await bob.client.group_info(gid)).members[bob.id] == "admin"

    await bob.client.add_member(gid, dave.id)
    await expect_event(dave, MembershipChanged, user=dave.id, change="added")
    await bob.client.remove_member(gid, dave.id)
    with pytest.raises(Forbidden):
        await bob.client.set_role(gid, carol.id, "admin")
    with pytest.raises(Forbidden):
        await bob.client.remove_member(gid, alice.id)
    info = await alice.client.group_info(gid)
    assert dict(info.members) == {alice.id: "owner", bob.id: "admin", carol.id: "member"}


@pytest.mark.capability("mute")
async def test_muted_member_cannot_post(endpoint, im_user, im_group, oracle, units):
    """A muted member's sends are refused (Forbidden), never delivered; unmuting restores them."""
    alice, bob, carol = [await im_user(n) for n in ("alice", "bob", "carol")]
    group = await im_group(alice, [bob, carol])
    gid = group.group_id
    with pytest.raises(Forbidden):
        await carol.client.mute(gid, bob.id)  # a plain member may not mute

    await alice.client.mute(gid, bob.id)
    await expect_event(bob, MuteChanged, user=bob.id, muted=True)
    with pytest.raises(Forbidden):
        await bob.client.send(Target.to_group(gid), "while muted")
    ack = await carol.send(group, "carol is not muted")

    await alice.client.mute(gid, bob.id, muted=False)
    await expect_event(bob, MuteChanged, user=bob.id, muted=False)
    await bob.send(group, "unmuted again")
    got = await alice.recorder.wait_messages(2, conversation=ack.conversation, timeout=units(5))
    assert [m.body for m in got] == ["carol is not muted", "unmuted again"]
    await settled(oracle)
    oracle.assert_ok()


@pytest.mark.capability("mute_all", "roles")
async def test_mute_all_leaves_only_owner_and_admins_posting(
    endpoint, im_user, im_group, oracle, units
):
    """Under mute-all members are refused (Forbidden) while the owner and admins still post."""
    alice, bob, carol = [await im_user(n) for n in ("alice", "bob", "carol")]
    group = await im_group(alice, [bob, carol])
    gid = group.group_id
    await alice.client.set_role(gid, bob.id, "admin")
    await alice.client.mute_all(gid)
    await expect_event(carol, MuteChanged, user=None, muted=True)
    assert (await carol.client.group_info(gid)).muted_all

    with pytest.raises(Forbidden):
        await carol.client.send(Target.to_group(gid), "member under mute-all")
    info = await alice.client.group_info(gid)
    first = await alice.send(info, "owner under mute-all")
    await bob.send(info, "admin under mute-all")

    await alice.client.mute_all(gid, muted=False)
    await expect_event(carol, MuteChanged, user=None, muted=False)
    await carol.send(info, "member after mute-all")
    got = await alice.recorder.wait_messages(2, conversation=first.conversation, timeout=units(5))
    assert [m.body for m in got] == ["admin under mute-all", "member after mute-all"]
    await settled(oracle)
    oracle.assert_ok()


async def _endpoint_with_small_limit(
    endpoint: Endpoint, field: str, small: int
) -> tuple[Endpoint, int]:
    """`endpoint` itself when its tier limit is small, else a fresh app with the limit lowered."""
    declared = getattr(endpoint.info.limits, field)
    try:
        app = await endpoint.with_app(limits={field: small})
    except (TypeError, Unsupported) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if getattr(app.info.limits, field) == small:
            return app, small
        reason = f"with_app(limits=...) did not lower {field} (it reports "
        reason += f"{getattr(app.info.limits, field)})"
    if declared is not None and declared <= SMALL_ENOUGH:
        return endpoint, declared
    pytest.skip(
        f"endpoint {endpoint.name!r}: {field}={declared} is too large to reach in a suite and "
        f"no per-app override is available ({reason})"
    )


async def test_member_limit_is_enforced(endpoint, im_user, im_group, units):
    """Adding a member beyond the tier's group size is refused with LimitReached."""
    ep, limit = await _endpoint_with_small_limit(endpoint, "max_group_members", 4)
    owner = await im_user("owner", endpoint=ep)
    others = await asyncio.gather(
        *(im_user(f"m{i}", endpoint=ep, connect=False) for i in range(limit))
    )
    group = await im_group(owner, list(others[: limit - 1]))
    assert len(group.members) == limit, "the owner counts as a member"
    with pytest.raises(LimitReached):
        await owner.client.add_member(group.group_id, others[-1].id)
    info = await owner.client.group_info(group.group_id)
    assert len(info.members) == limit
    assert others[-1].id not in info.members
