"""The adapter contract's clauses, each a small async check registered by name.

Every clause works through the public contract only (`Adapter`, `IMClient`, the dataclasses
and `harness.errors`), on users it provisions itself; a clause an endpoint cannot show raises
`NotApplicable` with the reason.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import fields
from typing import Any

from harness.conformance.kit import (
    ClauseFailed,
    Context,
    NotApplicable,
    Peer,
    check,
    clause,
    expect_error,
    setup,
    step,
)
from harness.contract import (
    Ack,
    Capability,
    Credentials,
    Disconnected,
    Event,
    GroupInfo,
    HistoryPage,
    MessageRecalled,
    MessageReceived,
    ReceiptUpdated,
    Reconnected,
    ServerRule,
    Target,
    TierLimits,
)
from harness.errors import (
    ConnectionLost,
    FeatureDisabled,
    Forbidden,
    IMError,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unsupported,
)
from harness.push import PushReceiver
from harness.timing import units

WAIT_UNITS = 5.0  # how long an event may take to arrive
MAX_PROVOKED_BURST = 1000  # above this many sends at once, the kit does not provoke RateLimited
# An undeclared capability's operation must refuse with one of these: Unsupported when the
# endpoint or protocol lacks it, FeatureDisabled when the tier has it but it is switched off.
REFUSALS: tuple[type[IMError], ...] = (Unsupported, FeatureDisabled)
CUSTOM_PAYLOAD = {"type": "card", "n": 3, "nested": {"items": [1, 2], "ok": True}}


def _cid() -> str:
    return f"conf-{uuid.uuid4().hex}"


def _is_message(message_id: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, MessageReceived) and e.message.message_id == message_id


async def _received(peer: Peer, ack: Ack, what: str = "") -> MessageReceived:
    """Wait until `peer` received the message `ack` names; return its event."""
    [event] = (await peer.rec.wait_for(
        _is_message(ack.message_id), timeout=units(WAIT_UNITS),
        what=what or f"message {ack.message_id} (seq {ack.seq})"))[:1]
    assert isinstance(event, MessageReceived)
    return event


async def _send(peer: Peer, to: Peer | GroupInfo, body: str = "", **kw: Any) -> Ack:
    target = Target.to_group(to.group_id) if isinstance(to, GroupInfo) else Target.to_user(to.id)
    kw.setdefault("client_id", _cid())
    return await step(f"{peer.id}: send({target}, ...)", peer.c.send(target, body, **kw))  # type: ignore[no-any-return]


async def _pair(ctx: Context) -> tuple[Peer, Peer]:
    return await ctx.user("alice"), await ctx.user("bob")


async def _group(ctx: Context, owner: Peer, *members: Peer) -> GroupInfo:
    return await step(  # type: ignore[no-any-return]
        f"{owner.id}: create_group(..., {[m.id for m in members]})",
        owner.c.create_group(f"conformance-{uuid.uuid4().hex[:6]}", [m.id for m in members]),
    )


async def _info(peer: Peer, group: str) -> GroupInfo:
    return await step(f"{peer.id}: group_info({group!r})", peer.c.group_info(group))  # type: ignore[no-any-return]


async def _reconnect(peer: Peer) -> None:
    await step(f"{peer.id}: reconnect()", peer.c.reconnect())
    if not peer.rec.running:
        peer.rec.start()


# --- the endpoint's self-description ------------------------------------------------------


@clause("info.shape")
async def info_shape(ctx: Context) -> str:
    """EndpointInfo names the endpoint and adapter and holds well-formed capabilities, limits"""
    info, settings = ctx.info, ctx.endpoint.settings
    check(info.name == settings.name,
          f"info.name = {info.name!r}; expected the endpoint's name {settings.name!r}")
    check(info.adapter == settings.adapter,
          f"info.adapter = {info.adapter!r}; expected the registry name {settings.adapter!r}")
    bad = [c for c in info.capabilities if not isinstance(c, Capability)]
    check(not bad, f"info.capabilities holds {bad!r}, which are not Capability members")
    check(isinstance(info.limits, TierLimits),
          f"info.limits is a {type(info.limits).__name__}; expected TierLimits")
    for f in fields(TierLimits):
        value = getattr(info.limits, f.name)
        check(value is None or (isinstance(value, int | float) and value > 0),
              f"info.limits.{f.name} = {value!r}; expected a positive number or None")
    for name in ("keepalive_s", "send_timeout_s"):
        value = getattr(info, name)
        check(value is None or value > 0, f"info.{name} = {value!r}; expected > 0 or None")
    check(info.protocol in info.protocols,
          f"info.protocol {info.protocol!r} is not among info.protocols")
    return (f"protocol {info.protocol}, {len(info.capabilities)} capabilities, "
            f"protocols {', '.join(sorted(info.protocols))}")


@clause("connect.protocols")
async def connect_protocols(ctx: Context) -> str:
    """connect() speaks the default protocol, and every protocol info.protocols lists"""
    peer = await ctx.user("proto")
    check(peer.c.user_id == peer.id,
          f"client.user_id = {peer.c.user_id!r}; expected {peer.id!r}")
    check(peer.c.protocol == ctx.info.protocol,
          f"connect() gave protocol {peer.c.protocol!r}; info.protocol is {ctx.info.protocol!r}")
    for protocol in sorted(ctx.info.protocols - {ctx.info.protocol}):
        other = await ctx.user(f"proto-{protocol}", protocol=protocol)
        check(other.c.protocol == protocol,
              f"connect(protocol={protocol!r}) gave a client speaking {other.c.protocol!r}")
    return f"connected with {', '.join(sorted(ctx.info.protocols))}"


# --- acks and events ----------------------------------------------------------------------


@clause("send.ack")
async def send_ack(ctx: Context) -> str:
    """Acks echo the client id, name one conversation, and seq strictly increases"""
    ctx.need(Capability.CHAT)
    alice, bob = await _pair(ctx)
    acks, cids = [], [_cid() for _ in range(3)]
    for cid in cids:
        acks.append(await _send(alice, bob, "ack shape", client_id=cid))
    for cid, ack in zip(cids, acks, strict=True):
        check(ack.client_id == cid, f"ack.client_id = {ack.client_id!r}; the send gave {cid!r}")
        check(not ack.duplicate, f"a first send was acked duplicate=True ({ack})")
        check(ack.server_ts > 0, f"ack.server_ts = {ack.server_ts!r}; expected a timestamp")
    convs = {a.conversation for a in acks}
    check(len(convs) == 1, f"three sends alice->bob were acked in conversations {sorted(convs)}")
    seqs = [a.seq for a in acks]
    check(all(x < y for x, y in zip(seqs, seqs[1:], strict=False)),
          f"seqs of three sends in one conversation are {seqs}; expected strictly increasing")
    ids = {a.message_id for a in acks}
    check(len(ids) == 3, f"three sends got message ids {sorted(ids)}; expected three distinct")
    return f"3 acks in {acks[0].conversation}, seqs {seqs}"


@clause("events.message")
async def events_message(ctx: Context) -> str:
    """A live MessageReceived carries the ack's id, conversation, seq, sender, client id, body"""
    ctx.need(Capability.CHAT)
    alice, bob = await _pair(ctx)
    cid, body = _cid(), f"shape {uuid.uuid4().hex[:8]} ünïcödé"
    ack = await _send(alice, bob, body, client_id=cid)
    event = await _received(bob, ack)
    m = event.message
    expected = {"message_id": ack.message_id, "conversation": ack.conversation, "seq": ack.seq,
                "sender": alice.id, "client_id": cid, "kind": "text", "body": body,
                "group": None, "recalled": False}
    wrong = {k: getattr(m, k) for k, v in expected.items() if getattr(m, k) != v}
    check(not wrong, f"bob's MessageReceived has {wrong}; expected "
          f"{ {k: expected[k] for k in wrong} }")
    check(not event.offline, "a message received while connected is marked offline=True")
    check(m.server_ts > 0, f"message.server_ts = {m.server_ts!r}; expected a timestamp")
    return f"MessageReceived matches the ack of {ack.message_id}"


# --- errors -------------------------------------------------------------------------------


@clause("errors.unauthorized")
async def errors_unauthorized(ctx: Context) -> str:
    """connect() with a bad token raises Unauthorized"""
    real = await ctx.user("unauth", connect=False)
    bad = Credentials(user_id=real.id, token="conformance-invalid-token")
    await expect_error("connect() with an invalid token", ctx.endpoint.adapter.connect(bad),
                       Unauthorized)
    return "connect() with an invalid token raised Unauthorized"


@clause("errors.forbidden")
async def errors_forbidden(ctx: Context) -> str:
    """A non-member's send to a group raises Forbidden"""
    if not ctx.declares(Capability.GROUPS):
        raise NotApplicable("a non-member needs a group to be refused from; the endpoint "
                            "declares no 'groups' capability")
    alice, bob = await _pair(ctx)
    carol = await ctx.user("carol")
    group = await _group(ctx, alice, bob)
    await expect_error(f"non-member {carol.id}: send to group {group.group_id}",
                       carol.c.send(Target.to_group(group.group_id), "let me in",
                                    client_id=_cid()), Forbidden)
    return "a non-member's group send raised Forbidden"


@clause("errors.not_found")
async def errors_not_found(ctx: Context) -> str:
    """A send to a user that does not exist raises NotFound"""
    ctx.need(Capability.CHAT)
    alice = await ctx.user("alice")
    nobody = f"nobody-{uuid.uuid4().hex[:12]}"
    await expect_error(f"send to the unknown user {nobody!r}",
                       alice.c.send(Target.to_user(nobody), "anyone?", client_id=_cid()),
                       NotFound)
    return "a send to an unknown user raised NotFound"


@clause("errors.too_large")
async def errors_too_large(ctx: Context) -> str:
    """A body of max_message_bytes is sent; one byte more raises TooLarge"""
    ctx.need(Capability.CHAT)
    limit = ctx.info.limits.max_message_bytes
    if limit is None:
        raise NotApplicable("info.limits.max_message_bytes is None: no size limit is declared")
    alice, bob = await _pair(ctx)
    ack = await step(f"send of exactly max_message_bytes={limit} bytes",
                     alice.c.send(Target.to_user(bob.id), "x" * limit, client_id=_cid()))
    check(isinstance(ack, Ack), f"send returned {type(ack).__name__}; expected Ack")
    await expect_error(f"send of max_message_bytes + 1 = {limit + 1} bytes",
                       alice.c.send(Target.to_user(bob.id), "x" * (limit + 1), client_id=_cid()),
                       TooLarge)
    return f"{limit} bytes sent, {limit + 1} raised TooLarge"


@clause("errors.rate_limited", timeout_units=40)
async def errors_rate_limited(ctx: Context) -> str:
    """Sends over the tier's burst raise RateLimited with a retry_after that is honoured"""
    ctx.need(Capability.CHAT)
    limits = ctx.info.limits
    burst, rate = limits.send_burst, limits.send_rate_per_user
    if burst is None:
        raise NotApplicable("info.limits.send_burst is None: the tier declares no send burst")
    if burst > MAX_PROVOKED_BURST:
        raise NotApplicable(f"info.limits.send_burst = {burst} is above the "
                            f"{MAX_PROVOKED_BURST} sends the kit fires at once")
    alice = await ctx.user("burst")
    bob = await ctx.user("burst-peer", connect=False)
    extra = max(5, burst // 4)
    target = Target.to_user(bob.id)
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(alice.c.send(target, f"burst {i}", client_id=_cid()) for i in range(burst + extra)),
        return_exceptions=True)
    elapsed = time.monotonic() - started
    limited = [o for o in outcomes if isinstance(o, RateLimited)]
    acked = [o for o in outcomes if isinstance(o, Ack)]
    other = [o for o in outcomes if not isinstance(o, RateLimited | Ack)]
    check(not other, f"{len(other)} of {len(outcomes)} burst sends raised neither Ack nor "
          f"RateLimited, e.g. {other[0]!r}" if other else "")
    check(limited, f"{len(outcomes)} sends at once (send_burst = {burst}) were all acked; "
          "expected RateLimited for those over the burst")
    allowed = burst + (rate or 0.0) * elapsed + 1
    check(len(acked) <= allowed,
          f"{len(acked)} of {len(outcomes)} sends were acked in {elapsed:.2f}s; send_burst = "
          f"{burst} and send_rate_per_user = {rate} allow at most {math.floor(allowed)}")
    waits = [e.retry_after for e in limited]
    check(all(w > 0 for w in waits), f"RateLimited.retry_after values {sorted(set(waits))[:5]} "
          "include one <= 0; expected the seconds to wait")
    wait = max(waits)
    check(wait <= units(10), f"retry_after = {wait:.2f}s is longer than the kit waits")
    await asyncio.sleep(wait)
    await step(f"a send after waiting retry_after = {wait:.3f}s",
               alice.c.send(target, "after the wait", client_id=_cid()))
    return (f"{len(limited)} of {len(outcomes)} raised RateLimited (retry_after up to "
            f"{wait:.3f}s); a send after it was acked")


# --- capabilities: declared ones behave, undeclared ones refuse ---------------------------


async def _chat(ctx: Context) -> str:
    alice, bob = await _pair(ctx)
    ack = await _send(alice, bob, "hello")
    event = await _received(bob, ack)
    check(event.message.body == "hello", f"bob received body {event.message.body!r}")
    return "a 1:1 text message was delivered"


async def _custom(ctx: Context) -> str:
    alice, bob = await _pair(ctx)
    ack = await _send(alice, bob, "", custom=CUSTOM_PAYLOAD)
    m = (await _received(bob, ack)).message
    check(m.kind == "custom", f"a custom message arrived with kind {m.kind!r}")
    check(m.custom is not None and dict(m.custom) == CUSTOM_PAYLOAD,
          f"the custom payload arrived as {m.custom!r}; sent {CUSTOM_PAYLOAD!r}")
    return "a custom message arrived with its payload intact"


async def _groups(ctx: Context) -> str:
    alice, bob = await _pair(ctx)
    carol = await ctx.user("carol")
    group = await _group(ctx, alice, bob)
    gid = group.group_id
    check(group.members.get(alice.id) == "owner",
          f"create_group's GroupInfo gives the creator role {group.members.get(alice.id)!r}")
    check(bob.id in group.members, f"create_group's GroupInfo lacks member {bob.id!r}")
    ack = await _send(alice, group, "to the group")
    m = (await _received(bob, ack)).message
    check(m.group == gid and m.conversation == ack.conversation,
          f"a group message arrived with group={m.group!r}, conversation={m.conversation!r}; "
          f"expected {gid!r}, {ack.conversation!r}")
    await step(f"add_member({gid!r}, carol)", alice.c.add_member(gid, carol.id))
    check(carol.id in (await _info(alice, gid)).members, "add_member: carol is not a member")
    await step(f"remove_member({gid!r}, carol)", alice.c.remove_member(gid, carol.id))
    check(carol.id not in (await _info(alice, gid)).members,
          "remove_member: carol is still a member")
    await step(f"bob: leave({gid!r})", bob.c.leave(gid))
    check(bob.id not in (await _info(alice, gid)).members, "leave: bob is still a member")
    return "create, send, add, remove and leave behave"


async def _roles(ctx: Context) -> str:
    ctx.need(Capability.GROUPS)
    alice, bob = await _pair(ctx)
    group = await _group(ctx, alice, bob)
    await step("set_role(bob, 'admin')", alice.c.set_role(group.group_id, bob.id, "admin"))
    role = (await _info(alice, group.group_id)).members.get(bob.id)
    check(role == "admin", f"after set_role(bob, 'admin') bob's role is {role!r}")
    await step("set_role(bob, 'member')", alice.c.set_role(group.group_id, bob.id, "member"))
    role = (await _info(alice, group.group_id)).members.get(bob.id)
    check(role == "member", f"after set_role(bob, 'member') bob's role is {role!r}")
    return "set_role shows in group_info"


async def _mute(ctx: Context) -> str:
    ctx.need(Capability.GROUPS)
    alice, bob = await _pair(ctx)
    group = await _group(ctx, alice, bob)
    gid, to = group.group_id, Target.to_group(group.group_id)
    await step("mute(bob)", alice.c.mute(gid, bob.id, True))
    await expect_error("a muted member's group send", bob.c.send(to, "m", client_id=_cid()),
                       Forbidden)
    await step("mute(bob, False)", alice.c.mute(gid, bob.id, False))
    await step("an unmuted member's group send", bob.c.send(to, "m", client_id=_cid()))
    return "mute refuses (Forbidden) and releases"


async def _mute_all(ctx: Context) -> str:
    ctx.need(Capability.GROUPS)
    alice, bob = await _pair(ctx)
    group = await _group(ctx, alice, bob)
    gid, to = group.group_id, Target.to_group(group.group_id)
    await step("mute_all()", alice.c.mute_all(gid, True))
    await expect_error("a member's group send while muted-all",
                       bob.c.send(to, "m", client_id=_cid()), Forbidden)
    await step("the owner's group send while muted-all", alice.c.send(to, "o", client_id=_cid()))
    await step("mute_all(False)", alice.c.mute_all(gid, False))
    await step("a member's group send after mute_all(False)",
               bob.c.send(to, "m", client_id=_cid()))
    return "mute_all refuses (Forbidden) members, not the owner, and releases"


async def _recall(ctx: Context) -> str:
    ctx.need(Capability.CHAT)
    alice, bob = await _pair(ctx)
    ack = await _send(alice, bob, "to be recalled")
    await _received(bob, ack)
    await step("recall(own message)", alice.c.recall(ack.conversation, ack.message_id))
    await bob.rec.wait_for(
        lambda e: isinstance(e, MessageRecalled) and e.message_id == ack.message_id
        and e.conversation == ack.conversation and e.by == alice.id,
        timeout=units(WAIT_UNITS), what=f"MessageRecalled({ack.message_id}, by={alice.id})")
    if ctx.declares(Capability.HISTORY):
        page = await step("history after a recall", bob.c.history(ack.conversation))
        [m] = [m for m in page.messages if m.message_id == ack.message_id] or [None]
        check(m is not None and m.recalled and not m.body,
              f"history shows the recalled message as {m!r}; expected recalled=True, body ''")
    return "the peer got MessageRecalled" + (
        " and history shows it recalled" if ctx.declares(Capability.HISTORY) else "")


async def _receipt_reaches_the_sender(
    alice: Peer, bob: Peer, to: Peer | GroupInfo, what: str
) -> None:
    """Bob reads what alice sent to `to`; alice must get a ReceiptUpdated for exactly that."""
    ack = await _send(alice, to, f"read me, {what}")
    await _received(bob, ack)
    await step(f"mark_read({what})", bob.c.mark_read(ack.conversation, ack.seq))
    await alice.rec.wait_event(
        ReceiptUpdated, conversation=ack.conversation, reader=bob.id, up_to_seq=ack.seq,
        timeout=units(WAIT_UNITS),
    )


async def _receipts(ctx: Context) -> str:
    ctx.need(Capability.CHAT)
    alice, bob = await _pair(ctx)
    await _receipt_reaches_the_sender(alice, bob, bob, "1:1")
    return "the sender got ReceiptUpdated"


async def _group_receipts(ctx: Context) -> str:
    ctx.need(Capability.GROUPS)
    alice, bob = await _pair(ctx)
    group = await _group(ctx, alice, bob)
    await _receipt_reaches_the_sender(alice, bob, group, "group")
    return "the group sender got ReceiptUpdated"


async def _offline(ctx: Context) -> str:
    ctx.need(Capability.CHAT)
    alice, bob = await _pair(ctx)
    live = await _send(alice, bob, "before the drop")
    check(not (await _received(bob, live)).offline, "a live message is marked offline=True")
    await step("bob: drop()", bob.c.drop())
    missed = [await _send(alice, bob, f"missed {i}") for i in range(2)]
    await _reconnect(bob)
    events = [await _received(bob, ack, f"missed message {ack.message_id} after reconnect")
              for ack in missed]
    check(all(e.offline for e in events),
          f"messages sent while bob was away arrived with offline={[e.offline for e in events]};"
          " expected True")
    order = [e.message.seq for e in bob.rec.of_type(MessageReceived)
             if e.message.message_id in {a.message_id for a in missed}]
    check(order == sorted(order), f"the caught-up messages arrived in seq order {order}")
    after = await _send(alice, bob, "after the reconnect")
    check(not (await _received(bob, after)).offline,
          "a message sent after the reconnect is marked offline=True")
    seen = [e.message.message_id for e in bob.rec.of_type(MessageReceived)]
    dupes = sorted({m for m in seen if seen.count(m) > 1})
    check(not dupes, f"bob received {dupes} more than once across the reconnect")
    return "2 missed messages caught up offline=True, in order, once; live ones offline=False"


async def _history(ctx: Context) -> str:
    ctx.need(Capability.CHAT)
    alice, bob = await _pair(ctx)
    ack = await _send(alice, bob, "for the record")
    page = await step("history(conversation)", alice.c.history(ack.conversation))
    check(isinstance(page, HistoryPage), f"history returned {type(page).__name__}")
    found = [m for m in page.messages if m.message_id == ack.message_id]
    check(found and found[0].seq == ack.seq and found[0].body == "for the record",
          f"history of {ack.conversation} lacks the sent message {ack.message_id}: {page}")
    return "history returns the sent message"


async def _push(ctx: Context) -> str:
    if ctx.endpoint.admin is None:
        raise NotApplicable("push is declared, but the kit needs the endpoint's admin API to "
                            "point an app's webhook at a local receiver")
    push = await PushReceiver().start()
    ctx.on_exit(push.stop)
    child = await setup("with_app(webhook=...)", ctx.endpoint.with_app(webhook=push.url))
    sub = Context(child)
    ctx.on_exit(sub.aclose)
    alice = await sub.user("alice")
    bob = await sub.user("bob", connect=False)
    ack = await _send(alice, bob, "push me")
    await push.wait_for(lambda p: p.get("to") == bob.id, timeout=units(WAIT_UNITS),
                        what=f"push to the offline {bob.id}")
    return f"an offline recipient got a push for {ack.message_id}"


async def _idempotent(ctx: Context) -> str:
    ctx.need(Capability.CHAT)
    alice, bob = await _pair(ctx)
    cid = _cid()
    first = await _send(alice, bob, "once", client_id=cid)
    again = await _send(alice, bob, "once", client_id=cid)
    check(again.message_id == first.message_id and again.seq == first.seq,
          f"the same client_id sent twice gave message ids {first.message_id!r} (seq "
          f"{first.seq}) and {again.message_id!r} (seq {again.seq}); expected one message")
    await step("alice: drop()", alice.c.drop())
    await _reconnect(alice)
    resent = await _send(alice, bob, "once", client_id=cid)
    check(resent.message_id == first.message_id,
          f"a resend after reconnect with the same client_id gave {resent.message_id!r}; "
          f"expected {first.message_id!r}")
    marker = await _send(alice, bob, "marker")
    await _received(bob, marker)
    copies = [e for e in bob.rec.of_type(MessageReceived)
              if e.message.client_id == cid or e.message.message_id == first.message_id]
    check(len(copies) == 1, f"bob received {len(copies)} deliveries of client_id {cid!r}; "
          "expected exactly one")
    return "one message id and one delivery for 3 sends with one client_id"


async def _tier_admin(ctx: Context) -> str:
    child = await setup("with_app()", ctx.endpoint.with_app())
    sub = Context(child)
    ctx.on_exit(sub.aclose)
    alice, bob = await _pair(sub)
    ack = await _send(alice, bob, "in a fresh app")
    await _received(bob, ack)
    return f"with_app() opened a fresh app (tier {child.info.tier}) that delivers"


# Probes: the operation an undeclared capability must refuse.


async def _try_chat(ctx: Context) -> Awaitable[Any]:
    alice, bob = await _pair(ctx)
    return alice.c.send(Target.to_user(bob.id), "chat?", client_id=_cid())


async def _try_custom(ctx: Context) -> Awaitable[Any]:
    alice, bob = await _pair(ctx)
    return alice.c.send(Target.to_user(bob.id), "", custom=CUSTOM_PAYLOAD, client_id=_cid())


async def _try_groups(ctx: Context) -> Awaitable[Any]:
    alice, bob = await _pair(ctx)
    return alice.c.create_group("undeclared", [bob.id])


async def _try_roles(ctx: Context) -> Awaitable[Any]:
    _needs_for_probe(ctx, Capability.GROUPS)
    alice, bob = await _pair(ctx)
    group = await _group(ctx, alice, bob)
    return alice.c.set_role(group.group_id, bob.id, "admin")


async def _try_mute(ctx: Context) -> Awaitable[Any]:
    _needs_for_probe(ctx, Capability.GROUPS)
    alice, bob = await _pair(ctx)
    group = await _group(ctx, alice, bob)
    return alice.c.mute(group.group_id, bob.id, True)


async def _try_mute_all(ctx: Context) -> Awaitable[Any]:
    _needs_for_probe(ctx, Capability.GROUPS)
    alice, bob = await _pair(ctx)
    group = await _group(ctx, alice, bob)
    return alice.c.mute_all(group.group_id, True)


async def _try_recall(ctx: Context) -> Awaitable[Any]:
    _needs_for_probe(ctx, Capability.CHAT)
    alice, bob = await _pair(ctx)
    ack = await _send(alice, bob, "recall me?")
    return alice.c.recall(ack.conversation, ack.message_id)


async def _try_receipts(ctx: Context) -> Awaitable[Any]:
    _needs_for_probe(ctx, Capability.CHAT)
    alice, bob = await _pair(ctx)
    ack = await _send(alice, bob, "read me?")
    await _received(bob, ack)
    return bob.c.mark_read(ack.conversation, ack.seq)


async def _try_group_receipts(ctx: Context) -> Awaitable[Any]:
    _needs_for_probe(ctx, Capability.GROUPS)
    alice, bob = await _pair(ctx)
    group = await _group(ctx, alice, bob)
    ack = await _send(alice, group, "read me, group?")
    await _received(bob, ack)
    return bob.c.mark_read(ack.conversation, ack.seq)


async def _try_history(ctx: Context) -> Awaitable[Any]:
    _needs_for_probe(ctx, Capability.CHAT)
    alice, bob = await _pair(ctx)
    ack = await _send(alice, bob, "history?")
    return alice.c.history(ack.conversation)


async def _try_tier_admin(ctx: Context) -> Awaitable[Any]:
    return ctx.endpoint.with_app()


def _needs_for_probe(ctx: Context, capability: Capability) -> None:
    if not ctx.declares(capability):
        raise NotApplicable(f"cannot probe the refusal: the probe needs {capability.value!r}, "
                            "which is not declared either")


Behaviour = Callable[[Context], Awaitable[str]]
Probe = Callable[[Context], Awaitable[Awaitable[Any]]]
# For each capability: what "behaves as declared" means, and the operation an endpoint that
# does not declare it must refuse (or, as a string, why no client operation can show that).
CAPABILITY_CHECKS: dict[Capability, tuple[Behaviour, Probe | str]] = {
    Capability.CHAT: (_chat, _try_chat),
    Capability.CUSTOM: (_custom, _try_custom),
    Capability.GROUPS: (_groups, _try_groups),
    Capability.ROLES: (_roles, _try_roles),
    Capability.MUTE: (_mute, _try_mute),
    Capability.MUTE_ALL: (_mute_all, _try_mute_all),
    Capability.RECALL: (_recall, _try_recall),
    Capability.RECEIPTS: (_receipts, _try_receipts),
    Capability.GROUP_RECEIPTS: (_group_receipts, _try_group_receipts),
    Capability.OFFLINE: (_offline, "no operation to refuse: without offline catch-up a "
                                   "reconnected client just receives nothing it missed"),
    Capability.HISTORY: (_history, _try_history),
    Capability.PUSH: (_push, "no client operation to refuse: push is the server's webhook"),
    Capability.IDEMPOTENT_SEND: (_idempotent, "no operation to refuse: every send takes a "
                                              "client_id; deduplication is not promised"),
    Capability.TIER_ADMIN: (_tier_admin, _try_tier_admin),
}


def _capability_clause(cap: Capability, behaves: Behaviour, probe: Probe | str) -> None:
    async def run(ctx: Context) -> str:
        if ctx.declares(cap):
            return f"declared; {await behaves(ctx)}"
        if isinstance(probe, str):
            raise NotApplicable(f"not declared; {probe}")
        operation = await probe(ctx)
        exc = await expect_error(f"undeclared {cap.value!r}: its operation", operation,
                                 *REFUSALS)
        return f"not declared; its operation raised {type(exc).__name__}"

    run.__doc__ = f"Capability {cap.value!r} behaves as declared, or refuses when undeclared"
    clause(f"capability.{cap.value}")(run)


for _cap, (_behaves, _probe) in CAPABILITY_CHECKS.items():
    _capability_clause(_cap, _behaves, _probe)


# --- connection lifecycle -----------------------------------------------------------------


@clause("lifecycle.drop")
async def lifecycle_drop(ctx: Context) -> str:
    """drop() emits Disconnected and refuses sends; reconnect() emits Reconnected and sends"""
    ctx.need(Capability.CHAT)
    alice, bob = await _pair(ctx)
    await step("bob: drop()", bob.c.drop())
    await bob.rec.wait_for(lambda e: isinstance(e, Disconnected), timeout=units(WAIT_UNITS),
                           what="Disconnected after drop()")
    await expect_error("send after drop()",
                       bob.c.send(Target.to_user(alice.id), "x", client_id=_cid()),
                       ConnectionLost)
    await _reconnect(bob)
    await bob.rec.wait_for(lambda e: isinstance(e, Reconnected), timeout=units(WAIT_UNITS),
                           what="Reconnected after reconnect()")
    ack = await _send(bob, alice, "back again")
    await _received(alice, ack)
    return "Disconnected, ConnectionLost while away, Reconnected, then delivery"


@clause("lifecycle.close")
async def lifecycle_close(ctx: Context) -> str:
    """close() refuses later sends with ConnectionLost; reconnect() after close() works"""
    ctx.need(Capability.CHAT)
    alice, bob = await _pair(ctx)
    await step("bob: close()", bob.c.close())
    await expect_error("send after close()",
                       bob.c.send(Target.to_user(alice.id), "x", client_id=_cid()),
                       ConnectionLost)
    missed = await _send(alice, bob, "while closed")
    await _reconnect(bob)
    ack = await _send(bob, alice, "reopened")
    await _received(alice, ack)
    if ctx.declares(Capability.OFFLINE):
        event = await _received(bob, missed, "the message sent while bob was closed")
        check(event.offline, "a message sent while bob was closed arrived offline=False")
    return "ConnectionLost after close, reconnect delivers both ways"


# --- history paging -----------------------------------------------------------------------

HISTORY_MESSAGES = 7
PAGE_LIMIT = 3


def _check_page(page: HistoryPage, conversation: str, where: str) -> list[int]:
    seqs = [m.seq for m in page.messages]
    check(page.conversation == conversation,
          f"{where}: page.conversation = {page.conversation!r}; expected {conversation!r}")
    check(len(seqs) <= PAGE_LIMIT, f"{where}: {len(seqs)} messages for limit={PAGE_LIMIT}")
    check(all(x < y for x, y in zip(seqs, seqs[1:], strict=False)),
          f"{where}: seqs {seqs} are not oldest first, strictly increasing")
    return seqs


@clause("history.paging")
async def history_paging(ctx: Context) -> str:
    """Paging back (before=) and forward (after=) has no gap, no overlap and keeps the order"""
    ctx.need(Capability.CHAT, Capability.HISTORY)
    alice, bob = await _pair(ctx)
    acks = [await _send(alice, bob, f"page {i}") for i in range(HISTORY_MESSAGES)]
    conv = acks[0].conversation
    by_seq = {a.seq: a.message_id for a in acks}
    want = sorted(by_seq)

    def judge(pages: list[list[int]], direction: str) -> None:
        flat = [s for p in pages for s in p]
        dupes = sorted({s for s in flat if flat.count(s) > 1})
        check(not dupes, f"{direction}: pages {pages} overlap at seqs {dupes}")
        check(sorted(flat) == want,
              f"{direction}: pages {pages} hold seqs {sorted(flat)}; sent {want} (a gap or extra)")

    back: list[list[int]] = []
    before: int | None = None
    for n in range(HISTORY_MESSAGES + 2):
        page: HistoryPage = await step(f"history(before={before}, limit={PAGE_LIMIT})",
                                       bob.c.history(conv, before=before, limit=PAGE_LIMIT))
        seqs = _check_page(page, conv, f"backward page {n + 1} (before={before})")
        if back and seqs:
            check(seqs[-1] < back[-1][0], f"backward page {n + 1} {seqs} is not older than "
                  f"the page before it {back[-1]}")
        for m in page.messages:
            check(by_seq.get(m.seq) == m.message_id,
                  f"history seq {m.seq} is message {m.message_id!r}; its ack said "
                  f"{by_seq.get(m.seq)!r}")
        back.append(seqs)
        if not page.has_more or not seqs:
            break
        before = seqs[0]
    else:
        raise ClauseFailed(f"backward paging did not end after {len(back)} pages: {back}")
    judge(back, "backward paging (before=)")

    fwd: list[list[int]] = []
    after = want[0] - 1
    for n in range(HISTORY_MESSAGES + 2):
        page = await step(f"history(after={after}, limit={PAGE_LIMIT})",
                          bob.c.history(conv, after=after, limit=PAGE_LIMIT))
        seqs = _check_page(page, conv, f"forward page {n + 1} (after={after})")
        if fwd and seqs:
            check(seqs[0] > fwd[-1][-1], f"forward page {n + 1} {seqs} is not newer than "
                  f"the page before it {fwd[-1]}")
        fwd.append(seqs)
        if not page.has_more or not seqs:
            break
        after = seqs[-1]
    else:
        raise ClauseFailed(f"forward paging did not end after {len(fwd)} pages: {fwd}")
    judge(fwd, "forward paging (after=)")
    return f"{HISTORY_MESSAGES} messages in pages of {PAGE_LIMIT}: back {back}, forward {fwd}"


# --- what the adapter enforces itself -----------------------------------------------------


async def _rule_peer_recall(ctx: Context) -> str:
    ctx.need(Capability.CHAT, Capability.RECALL)
    alice, bob = await _pair(ctx)
    ack = await _send(alice, bob, "only alice may recall this")
    await _received(bob, ack)
    await expect_error("the peer's recall of a 1:1 message",
                       bob.c.recall(ack.conversation, ack.message_id), Forbidden)
    return "a 1:1 peer's recall raised Forbidden"


async def _rule_former_member(ctx: Context) -> str:
    ctx.need(Capability.GROUPS)
    alice, bob = await _pair(ctx)
    group = await _group(ctx, alice, bob)
    ack = await _send(alice, group, "members only")
    await _received(bob, ack)
    await step("remove_member(bob)", alice.c.remove_member(group.group_id, bob.id))
    await expect_error("a former member's group_info", bob.c.group_info(group.group_id),
                       Forbidden)
    if ctx.declares(Capability.HISTORY):
        await expect_error("a former member's history", bob.c.history(ack.conversation),
                           Forbidden)
    return "a former member's reads raised Forbidden"


RULE_CHECKS: dict[ServerRule, Behaviour] = {
    ServerRule.PEER_RECALL_1TO1: _rule_peer_recall,
    ServerRule.FORMER_MEMBER_READS: _rule_former_member,
}


@clause("declared.client_enforced")
async def declared_client_enforced(ctx: Context) -> str:
    """Every rule info.client_enforced declares is enforced by the adapter"""
    rules = sorted(ctx.info.client_enforced)
    if not rules:
        raise NotApplicable("declares nothing hidden: info.client_enforced is empty (the "
                            "server enforces every contract rule itself)")
    done = []
    for rule in rules:
        checker = RULE_CHECKS.get(rule)
        if checker is None:
            raise ClauseFailed(f"info.client_enforced declares {rule.value!r}, which the kit "
                               "has no check for")
        done.append(f"{rule.value}: {await checker(ctx)}")
    return "; ".join(done)

