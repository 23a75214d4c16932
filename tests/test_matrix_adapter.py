"""The matrix adapter against real Synapse homeservers on loopback (old 1.141.0, new 1.163.2).

Synapse is installed once per version into the harness cache (see harness/matrix/launcher.py);
the module is skipped, with the reason, only when that install is impossible.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest

from harness.adapters.base import ClientState
from harness.adapters.matrix import MAX_BODY_BYTES, MatrixAdapter, MatrixClient, map_error
from harness.adapters.matrix.translate import UserState
from harness.contract import (
    ClientHides,
    Credentials,
    Disconnected,
    EndpointSettings,
    Event,
    MembershipChanged,
    MessageRecalled,
    MessageReceived,
    MuteChanged,
    ReceiptUpdated,
    Reconnected,
    Target,
)
from harness.errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    Forbidden,
    HarnessError,
    IMTimeout,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unsupported,
)
from harness.faults import FaultLink
from harness.matrix.launcher import SynapseServer, install_synapse
from harness.recorder import Recorder
from harness.timing import units, until

pytestmark = pytest.mark.slow
VERSIONS = os.environ.get("IM_HARNESS_SYNAPSE_VERSIONS", "1.141.0,1.163.2").split(",")


@pytest.fixture(scope="module", params=VERSIONS)
def synapse(request: pytest.FixtureRequest) -> Iterator[SynapseServer]:
    try:
        install_synapse(request.param)
    except HarnessError as exc:
        pytest.skip(f"Synapse {request.param} cannot be installed here: {str(exc).splitlines()[0]}")
    with SynapseServer(request.param) as server:
        yield server


@pytest.fixture
async def adapter(synapse: SynapseServer) -> AsyncIterator[MatrixAdapter]:
    adapter = await MatrixAdapter.open(synapse.endpoint_settings("matrix"))
    yield adapter
    await adapter.aclose()


def recording(client: MatrixClient) -> Recorder:
    """A started Recorder of `client`'s events."""
    recorder = Recorder(client.user_id, client)
    recorder.start()
    return recorder


async def wait(
    recorder: Recorder, predicate: Callable[[Event], bool], what: str, count: int = 1
) -> list[Event]:
    """The recorded events matching `predicate`, once there are `count` of them."""
    return await recorder.wait_for(predicate, count=count, timeout=units(10), what=what)


async def wait_bodies(recorder: Recorder, *bodies: str) -> list[MessageReceived]:
    """The MessageReceived events (with `offline`) carrying `bodies`, once all arrived."""
    want = set(bodies)
    found = await wait(
        recorder, lambda e: isinstance(e, MessageReceived) and e.message.body in want,
        f"messages {sorted(want)}", count=len(want),
    )
    return [e for e in found if isinstance(e, MessageReceived)]


@pytest.fixture
async def users(adapter: MatrixAdapter) -> AsyncIterator[Callable]:
    inboxes: list[Recorder] = []

    async def make(name: str) -> tuple[Credentials, MatrixClient, Recorder]:
        creds = await adapter.provision_user(f"{name}-{secrets.token_hex(4)}")
        client = await adapter.connect(creds)
        inbox = recording(client)
        inboxes.append(inbox)
        return creds, client, inbox

    yield make
    for inbox in inboxes:
        await inbox.stop()


async def test_direct_messages_both_ways(users: Callable) -> None:
    alice, ca, ia = await users("alice")
    bob, cb, ib = await users("bob")
    ack1 = await ca.send(Target.to_user(bob.user_id), "hi bob")
    (got1,) = await wait_bodies(ib, "hi bob")
    ack2 = await cb.send(Target.to_user(alice.user_id), "hi alice")
    (got2,) = await wait_bodies(ia, "hi alice")
    assert ack1.conversation == ack2.conversation  # one direct room per pair
    assert (ack1.seq, ack2.seq) == (1, 2)
    assert got1.message.message_id == ack1.message_id
    assert (got1.message.sender, got1.message.seq, got1.message.client_id) == (
        alice.user_id, 1, ack1.client_id)
    assert got1.message.group is None
    assert not got1.offline
    assert (got2.message.sender, got2.message.seq) == (bob.user_id, 2)
    assert [m.body for m in ia.messages()] == ["hi alice"]  # no echo of one's own


async def test_both_peers_sending_first_at_once_share_one_room(users: Callable) -> None:
    """The direct-room race of a load run: each peer's first send creates or joins one room."""
    for _ in range(3):
        alice, ca, ia = await users("alice")
        bob, cb, ib = await users("bob")
        ack_a, ack_b = await asyncio.gather(ca.send(Target.to_user(bob.user_id), "from alice"),
                                            cb.send(Target.to_user(alice.user_id), "from bob"))
        assert ack_a.conversation == ack_b.conversation
        assert sorted((ack_a.seq, ack_b.seq)) == [1, 2]
        await wait_bodies(ib, "from alice")
        await wait_bodies(ia, "from bob")
        assert [m.body for m in ia.messages()] == ["from bob"]
        assert [m.body for m in ib.messages()] == ["from alice"]


async def test_custom_payload_round_trips_with_floats(users: Callable) -> None:
    """Matrix events hold no floats; the adapter still carries any JSON object intact."""
    alice, ca, _ = await users("alice")
    bob, cb, ib = await users("bob")
    payload = {"total": 12.5, "ratio": 1e-7, "items": [{"sku": "café-☕", "qty": 2}],
               "flags": [True, False, None], "note": 'say "hi" 👍🏽'}
    ack = await ca.send(Target.to_user(bob.user_id), custom=payload)
    [got] = await wait(ib, lambda e: isinstance(e, MessageReceived), "the custom message")
    assert (got.message.kind, got.message.custom) == ("custom", payload)
    page = await cb.history(ack.conversation)
    assert [(m.kind, m.custom) for m in page.messages] == [("custom", payload)]
    with pytest.raises(BadRequest, match="custom payload is not JSON"):
        await ca.send(Target.to_user(bob.user_id), custom={"x": float("nan")})


async def test_group_fan_out_and_roles(users: Callable) -> None:
    owner, co, io = await users("owner")
    b, cb, ib = await users("bee")
    c, cc, ic = await users("cee")
    group = await co.create_group("team", [b.user_id, c.user_id])
    assert group.members == {owner.user_id: "owner", b.user_id: "member", c.user_id: "member"}
    ack = await co.send(Target.to_group(group.group_id), "to all")
    for inbox in (ib, ic):
        (got,) = await wait_bodies(inbox, "to all")
        assert (got.message.group, got.message.seq) == (group.group_id, ack.seq)
    with pytest.raises(Forbidden):  # a plain member cannot recall someone else's message
        await cb.recall(group.group_id, ack.message_id)
    await cc.send(Target.to_group(group.group_id), "from cee")
    await wait_bodies(io, "from cee")
    await wait_bodies(ib, "from cee")
    await co.set_role(group.group_id, b.user_id, "admin")
    await wait(ic, lambda e: isinstance(e, MembershipChanged) and e.change == "role"
               and e.user == b.user_id and e.role == "admin", "b promoted")
    assert (await cc.group_info(group.group_id)).members[b.user_id] == "admin"


async def test_membership_changes(users: Callable) -> None:
    owner, co, io = await users("owner")
    b, cb, ib = await users("bee")
    c, cc, ic = await users("cee")
    d, _, _ = await users("dee")
    group = await co.create_group("club", [b.user_id])
    to_group = Target.to_group(group.group_id)
    await co.add_member(group.group_id, c.user_id)
    await wait(ib, lambda e: isinstance(e, MembershipChanged) and e.change == "added"
               and e.user == c.user_id and e.by == owner.user_id, "cee added")
    await co.send(to_group, "welcome")
    await wait_bodies(ic, "welcome")
    with pytest.raises(Forbidden):  # members may not add others (invite level 50)
        await cc.add_member(group.group_id, d.user_id)
    await co.remove_member(group.group_id, c.user_id)
    await wait(ib, lambda e: isinstance(e, MembershipChanged) and e.change == "removed"
               and e.user == c.user_id, "cee removed")
    with pytest.raises(Forbidden):
        await cc.send(to_group, "still here?")
    await cb.leave(group.group_id)
    await wait(io, lambda e: isinstance(e, MembershipChanged) and e.change == "left"
               and e.user == b.user_id, "bee left")
    assert set((await co.group_info(group.group_id)).members) == {owner.user_id}


async def test_recall_is_seen_by_the_peer_and_in_history(users: Callable) -> None:
    alice, ca, _ = await users("alice")
    bob, cb, ib = await users("bob")
    ack = await ca.send(Target.to_user(bob.user_id), "oops")
    await wait_bodies(ib, "oops")
    await ca.recall(ack.conversation, ack.message_id)
    (recalled,) = await wait(ib, lambda e: isinstance(e, MessageRecalled), "the recall")
    assert (recalled.message_id, recalled.by) == (ack.message_id, alice.user_id)
    page = await cb.history(ack.conversation)
    assert [(m.message_id, m.recalled, m.body) for m in page.messages] == [
        (ack.message_id, True, "")]
    with pytest.raises(NotFound):
        await ca.recall(ack.conversation, "$no-such-event")


async def test_read_receipt_is_seen_by_the_sender(users: Callable) -> None:
    alice, ca, ia = await users("alice")
    bob, cb, ib = await users("bob")
    await ca.send(Target.to_user(bob.user_id), "one")
    ack = await ca.send(Target.to_user(bob.user_id), "two")
    await wait_bodies(ib, "one", "two")
    await cb.mark_read(ack.conversation, ack.seq)
    (receipt,) = await wait(ia, lambda e: isinstance(e, ReceiptUpdated), "bob's receipt")
    assert (receipt.conversation, receipt.reader, receipt.up_to_seq) == (
        ack.conversation, bob.user_id, 2)
    with pytest.raises(NotFound):
        await cb.mark_read(ack.conversation, 99)


async def test_offline_catch_up_after_drop(users: Callable) -> None:
    alice, ca, _ = await users("alice")
    bob, cb, ib = await users("bob")
    await ca.send(Target.to_user(bob.user_id), "before")
    await wait_bodies(ib, "before")
    await cb.drop()
    for body in ("m1", "m2", "m3"):
        await ca.send(Target.to_user(bob.user_id), body)
    await cb.reconnect()
    caught = await wait_bodies(ib, "m1", "m2", "m3")
    assert [(m.message.body, m.offline) for m in caught] == [
        ("m1", True), ("m2", True), ("m3", True)]
    assert [m.message.seq for m in caught] == [2, 3, 4]
    kinds = [type(e) for e in ib.events]
    assert kinds.index(Disconnected) < kinds.index(Reconnected)
    await ca.send(Target.to_user(bob.user_id), "live again")
    (live,) = await wait_bodies(ib, "live again")
    assert not live.offline
    assert len(ib.messages()) == 5  # nothing delivered twice


async def test_first_connect_catches_up_what_was_sent_before(
    adapter: MatrixAdapter, users: Callable
) -> None:
    alice, ca, _ = await users("alice")
    late = await adapter.provision_user(f"late-{secrets.token_hex(4)}")
    await ca.send(Target.to_user(late.user_id), "while you were away")
    inbox = recording(await adapter.connect(late))
    try:
        (got,) = await wait_bodies(inbox, "while you were away")
        assert got.offline
    finally:
        await inbox.stop()


async def test_history_pages_by_seq(users: Callable) -> None:
    alice, ca, _ = await users("alice")
    bob, cb, ib = await users("bob")
    acks = [await ca.send(Target.to_user(bob.user_id), f"h{i}") for i in range(1, 6)]
    assert [a.seq for a in acks] == [1, 2, 3, 4, 5]
    conv = acks[0].conversation
    newest = await ca.history(conv, limit=2)
    assert ([m.body for m in newest.messages], newest.has_more) == (["h4", "h5"], True)
    older = await ca.history(conv, before=4, limit=2)
    assert ([m.seq for m in older.messages], older.has_more) == ([2, 3], True)
    oldest = await ca.history(conv, before=2, limit=2)
    assert ([m.seq for m in oldest.messages], oldest.has_more) == ([1], False)
    newer = await ca.history(conv, after=3, limit=10)
    assert ([m.seq for m in newer.messages], newer.has_more) == ([4, 5], False)
    await wait_bodies(ib, "h5")
    assert [m.message_id for m in (await cb.history(conv)).messages] == [
        a.message_id for a in acks]  # the peer numbers the room the same way


async def test_errors_are_mapped(adapter: MatrixAdapter, users: Callable) -> None:
    owner, co, _ = await users("owner")
    outsider, cx, _ = await users("outsider")
    group = await co.create_group("closed", [])
    with pytest.raises(Forbidden):
        await cx.send(Target.to_group(group.group_id), "let me in")
    with pytest.raises(Forbidden):
        await cx.history(group.group_id)
    with pytest.raises(TooLarge):
        await co.send(Target.to_group(group.group_id), "x" * 70_000)
    with pytest.raises(Unauthorized):
        await adapter.connect(Credentials(owner.user_id, "wrong password"))
    with pytest.raises(Unsupported):
        await adapter.connect(owner, protocol="v1")
    limited = map_error(429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 1500}, "send")
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 1.5


async def test_declared_body_limit_is_usable_with_long_ids(adapter: MatrixAdapter) -> None:
    """A body of the declared size fits Synapse's event limit even with long ids; more does not."""
    assert adapter.info.limits.max_message_bytes == MAX_BODY_BYTES
    # The longest ids Synapse takes: a 255-character sender id, a long transaction id.
    long_name = f"long-{secrets.token_hex(4)}-" + "l" * (255 - len("@:localhost") - 14)
    sender = await adapter.provision_user(long_name)
    peer = await adapter.provision_user(f"peer-{secrets.token_hex(4)}")
    client = await adapter.connect(sender)
    inbox = recording(await adapter.connect(peer))
    try:
        to_peer = Target.to_user(peer.user_id)
        await client.send(to_peer, "warm up")  # the room exists, so more prev/auth events
        body = "é" * (MAX_BODY_BYTES // 2)
        ack = await client.send(to_peer, body, client_id="t" * 200)
        [got] = await wait(
            inbox,
            lambda e: isinstance(e, MessageReceived) and e.message.message_id == ack.message_id,
            "the largest body",
        )
        assert got.message.body == body
        with pytest.raises(TooLarge, match="over the 64000-byte limit"):
            await client.send(to_peer, body + "x")
        # Under the body limit but over the event limit: Synapse's own M_TOO_LARGE.
        with pytest.raises(TooLarge, match="M_TOO_LARGE"):
            await client.send(to_peer, "x", custom={"blob": "y" * 66_000})
    finally:
        await inbox.stop()


async def test_idempotent_resend_creates_no_second_event(users: Callable) -> None:
    alice, ca, _ = await users("alice")
    bob, cb, ib = await users("bob")
    to_bob = Target.to_user(bob.user_id)
    first = await ca.send(to_bob, "once", client_id="cid-1")
    again = await ca.send(to_bob, "once", client_id="cid-1")
    assert (again.message_id, again.seq, again.duplicate) == (first.message_id, first.seq, True)
    assert not first.duplicate
    await ca.drop()
    await ca.reconnect()  # same device: Synapse still knows the transaction
    after_drop = await ca.send(to_bob, "once", client_id="cid-1")
    assert after_drop.message_id == first.message_id
    await ca.send(to_bob, "marker")
    await wait_bodies(ib, "marker")
    assert [m.body for m in ib.messages()] == ["once", "marker"]


async def test_mute_member_and_mute_all(users: Callable) -> None:
    owner, co, _ = await users("owner")
    b, cb, ib = await users("bee")
    c, cc, ic = await users("cee")
    group = await co.create_group("quiet", [b.user_id, c.user_id])
    to_group = Target.to_group(group.group_id)
    await co.send(to_group, "hello")
    await wait_bodies(ib, "hello")
    await wait_bodies(ic, "hello")
    await co.mute(group.group_id, b.user_id)
    await wait(ic, lambda e: isinstance(e, MuteChanged) and e.user == b.user_id and e.muted,
               "bee muted")
    with pytest.raises(Forbidden):
        await cb.send(to_group, "can I speak?")
    assert (await co.group_info(group.group_id)).muted == frozenset({b.user_id})
    await co.mute(group.group_id, b.user_id, muted=False)
    await co.set_role(group.group_id, c.user_id, "admin")
    await co.mute_all(group.group_id)
    await wait(ib, lambda e: isinstance(e, MuteChanged) and e.user is None and e.muted,
               "everyone muted")
    with pytest.raises(Forbidden):
        await cb.send(to_group, "still muted")
    await cc.send(to_group, "admins may speak")
    assert (await co.group_info(group.group_id)).muted_all


async def test_fault_link_in_front_of_synapse(synapse: SynapseServer) -> None:
    """Latency through the link slows a send; a blackhole makes it time out; then it recovers."""
    async with FaultLink("127.0.0.1", synapse.port) as link:
        direct = await MatrixAdapter.open(synapse.endpoint_settings("direct"))
        base = synapse.endpoint_settings("linked")
        linked = await MatrixAdapter.open(replace(
            base, url=link.url_for(synapse.base_url),
            options={**base.options, "send_timeout_s": units(1), "sync_timeout_s": 2},
        ))
        try:
            alice = await linked.provision_user(f"alice-{secrets.token_hex(4)}")
            bob = await direct.provision_user(f"bob-{secrets.token_hex(4)}")
            ca = await linked.connect(alice)
            inbox = recording(await direct.connect(bob))
            to_bob = Target.to_user(bob.user_id)
            await ca.send(to_bob, "warm up")  # the direct room exists from here on
            start = time.monotonic()
            await ca.send(to_bob, "quick")
            quick = time.monotonic() - start
            with link.latency(ms=400, direction="up"):
                start = time.monotonic()
                await ca.send(to_bob, "slow")
                slow = time.monotonic() - start
            # Every request crosses the link up at least once: a send cannot beat the latency.
            assert slow >= 0.4, f"send took {slow:.2f}s under 400 ms latency ({quick:.2f}s before)"
            with link.blackhole():
                start = time.monotonic()
                with pytest.raises(IMTimeout):
                    await ca.send(to_bob, "into the void")
                assert time.monotonic() - start < units(1) + 1
            after = await ca.send(to_bob, "after the blackhole")  # held bytes flow again
            await wait(
                inbox, lambda e: isinstance(e, MessageReceived)
                and e.message.message_id == after.message_id, "the message after the blackhole"
            )
            assert [len(link.timeline.of_kind(k)) for k in ("latency", "blackhole")] == [1, 1]
            await inbox.stop()
        finally:
            await linked.aclose()
            await direct.aclose()


@contextlib.asynccontextmanager
async def behind_a_link(
    synapse: SynapseServer, **options: object
) -> AsyncIterator[tuple[FaultLink, MatrixClient, Recorder, MatrixClient, Recorder]]:
    """Alice through a FaultLink (with extra adapter options), Bob directly; both inboxes."""
    async with FaultLink("127.0.0.1", synapse.port) as link:
        direct = await MatrixAdapter.open(synapse.endpoint_settings("direct"))
        base = synapse.endpoint_settings("linked")
        linked = await MatrixAdapter.open(replace(
            base, url=link.url_for(synapse.base_url), options={**base.options, **options},
        ))
        inboxes: list[Recorder] = []
        try:
            alice = await linked.provision_user(f"alice-{secrets.token_hex(4)}")
            bob = await direct.provision_user(f"bob-{secrets.token_hex(4)}")
            ca, cb = await linked.connect(alice), await direct.connect(bob)
            inboxes += [recording(ca), recording(cb)]
            yield link, ca, inboxes[0], cb, inboxes[1]
        finally:
            for inbox in inboxes:
                await inbox.stop()
            await linked.aclose()
            await direct.aclose()


def _within_backoff(delays: list[float], base: float, cap: float) -> bool:
    """Full jitter: delay k is drawn from [0, min(cap, base * 2**k)]."""
    return all(0 <= d <= min(cap, base * 2**k) for k, d in enumerate(delays))


async def test_send_cut_by_a_reset_is_retried_with_backoff_and_stored_once(
    synapse: SynapseServer,
) -> None:
    """A reset kills the PUT in flight; the adapter retries (same txn id) with jittered,
    exponentially capped delays until the link heals; one event; /sync reconnects too."""
    base, cap = units(0.1), units(0.4)
    async with behind_a_link(
        synapse, backoff_base_s=base, backoff_cap_s=cap, send_timeout_s=units(15)
    ) as (link, ca, ia, cb, ib):
        to_bob = Target.to_user(cb.user_id)
        await ca.send(to_bob, "warm up")  # the direct room exists from here on
        await wait_bodies(ib, "warm up")
        partition = link.partition()  # holds the bytes of open connections, refuses new ones
        sending = asyncio.create_task(ca.send(to_bob, "through the reset"))
        await until(
            lambda: partition.refused or any(c.held("up") for c in link.connections),
            timeout=units(5), what="the send request in flight",
        )
        await link.reset_now()  # the held request never reached Synapse
        await until(lambda: len(ca.send_retries) >= 4, timeout=units(10),
                    what="4 refused send retries")
        partition.stop()
        attempts = len(ca.send_retries) + len(ca.reconnect_attempts) + 1  # + the first PUT
        ack = await asyncio.wait_for(sending, units(10))

        # One connection per attempt: nothing below the adapter retries behind its back.
        assert partition.refused <= attempts, (partition.refused, attempts)

        assert not ack.duplicate, "Synapse never saw the first request: no resend to recognise"
        delays = ca.send_retry_delays
        assert _within_backoff(delays, base, cap), delays
        assert len(set(delays)) == len(delays), f"the delays are not jittered: {delays}"
        # Each retry comes its drawn delay after the previous (refused at once) attempt.
        for k, (before, after) in enumerate(itertools.pairwise(ca.send_retries[:4]), start=1):
            assert delays[k] - 0.01 <= after - before <= delays[k] + units(0.15), (
                k, after - before, delays)
        await ca.send(to_bob, "marker")
        await wait_bodies(ib, "marker")
        assert [m.body for m in ib.messages()] == ["warm up", "through the reset", "marker"]
        # The /sync long-poll was cut as well: noticed, retried with the same backoff, resumed.
        await wait(ia, lambda e: isinstance(e, Reconnected), "the sync reconnected")
        kinds = [type(e) for e in ia.events]
        assert kinds.index(Disconnected) < kinds.index(Reconnected)
        assert ca.reconnect_attempts
        assert _within_backoff(ca.reconnect_delays, base, cap), ca.reconnect_delays


async def test_resend_after_a_lost_ack_is_recognised_as_a_duplicate(
    synapse: SynapseServer,
) -> None:
    """The ack is held back, the send times out; a resend with the same txn id gets the same
    event, marked duplicate because this client saw the event before resending."""
    async with behind_a_link(synapse) as (link, ca, _, cb, ib):
        to_bob = Target.to_user(cb.user_id)
        await ca.send(to_bob, "warm up")
        with link.blackhole(direction="down"), pytest.raises(IMTimeout):
            await ca.send(to_bob, "once", client_id="cid-lost", timeout=units(0.5))
        assert not ca.send_retries, "a timeout is the send's end, not a network error to retry"
        # White box: wait until the sync delivered the event itself (the precondition).
        await until(lambda: "cid-lost" in ca._state.sent, timeout=units(10),
                    what="alice's own event through /sync")
        again = await ca.send(to_bob, "once", client_id="cid-lost")
        assert again.duplicate
        (got,) = await wait_bodies(ib, "once")
        assert got.message.message_id == again.message_id
        fresh = await ca.send(to_bob, "fresh")
        assert not fresh.duplicate
        await wait_bodies(ib, "fresh")
        assert [m.body for m in ib.messages()] == ["warm up", "once", "fresh"]
        await ca.drop()
        with pytest.raises(ConnectionLost, match="not connected"):
            await ca.send(to_bob, "while dropped")
        assert not ca.send_retries, "a dropped client is not retried behind the caller's back"


def test_bad_backoff_options_name_the_key() -> None:
    for bad in (-1, "fast", True):
        settings = EndpointSettings("old", "matrix", "http://127.0.0.1:8008",
                                    options={"backoff_base_s": bad})
        with pytest.raises(ConfigError, match=r"'old'.*options\.backoff_base_s=.* >= 0"):
            MatrixAdapter(settings)
    ok = MatrixAdapter(EndpointSettings("old", "matrix", "http://127.0.0.1:8008",
                                        options={"backoff_cap_s": 2}))
    assert (ok.backoff_base_s, ok.backoff_cap_s) == (0.5, 2.0)


def test_failed_start_raises_with_the_log(synapse: SynapseServer) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = SynapseServer(synapse.version)
        server.port = busy.getsockname()[1]
        try:
            with pytest.raises(HarnessError, match="last log lines") as info:
                server.start()
        finally:
            server.cleanup()
    assert "Address already in use" in str(info.value) or "in use" in str(info.value).lower()
    assert server.pid is None
    assert synapse.registration_shared_secret not in str(info.value)


def test_the_embedded_synapse_takes_its_version_and_profile_from_the_server_table() -> None:
    """Bad server options are config errors (tests/test_config.py); good ones reach the server."""
    from harness.matrix.embedded import SynapseEmbedded, SynapseOptions
    from harness.servers import ServerRequest

    options = SynapseOptions.model_validate({"version": "1.163.2"})
    embedded = SynapseEmbedded.for_request(
        ServerRequest(endpoint="new", adapter="matrix", server_options=options)
    )
    server = embedded.server
    assert (server.version, server.profile) == ("1.163.2", "relaxed")
    assert server.registration_shared_secret not in repr(server)
    assert server.registration_shared_secret not in repr(embedded)
    assert embedded.secrets() == {server.registration_shared_secret}


# -- without a homeserver: the sync batch as the server sent it ------------------------------

ROOM = "!room:hs.test"


def text_event(n: int, sender: str = "@alice:hs.test") -> dict[str, Any]:
    return {"type": "m.room.message", "event_id": f"$t{n}", "sender": sender,
            "origin_server_ts": 1732160000000 + n,
            "content": {"msgtype": "m.text", "body": f"msg {n}"}}


def offline_client(answer: Callable[..., Any]) -> MatrixClient:
    """A client of user bob on hs.test whose every request `answer(method, path, params)` meets."""
    adapter = MatrixAdapter(EndpointSettings("old", "matrix", "http://127.0.0.1:9",
                                             connect_timeout_s=1.0,
                                             options={"server_name": "hs.test"}))
    client = MatrixClient(adapter, Credentials("bob", "pw"), UserState())
    calls: list[tuple[str, str, dict[str, str]]] = []

    async def call(method: str, path: str, body: Any = None, *,
                   params: dict[str, str] | None = None, within: float | None = None) -> Any:
        calls.append((method, path, dict(params or {})))
        if path.endswith("/filter"):  # the sync filter, uploaded once
            return {"filter_id": "f1"}
        return answer(method, path, dict(params or {}))

    client._call = call  # type: ignore[method-assign,assignment]
    client.calls = calls  # type: ignore[attr-defined]
    return client


def queued(client: MatrixClient) -> list[Event]:
    out: list[Event] = []
    while client._queue:
        out.append(client._queue.popleft())
    return out


def seqs(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.message.message_id, e.message.seq) for e in events
            if isinstance(e, MessageReceived)]


def sync_batch(*events: dict[str, Any], prev: str = "p1", limited: bool = False) -> dict:
    return {"next_batch": "s2", "rooms": {"join": {ROOM: {
        "timeline": {"events": list(events), "prev_batch": prev, "limited": limited}}}}}


async def test_a_new_rooms_backlog_ends_where_its_timeline_begins() -> None:
    create = {"type": "m.room.create", "event_id": "$c", "sender": "@alice:hs.test",
              "state_key": "", "content": {"room_version": "10"}}

    def answer(method: str, path: str, params: dict[str, str]) -> Any:
        assert (path, params) == (f"/rooms/{quote(ROOM)}/messages",
                                  {"dir": "b", "limit": "100", "from": "p1"})
        return {"chunk": [text_event(2), text_event(1), create]}  # newest first, no end

    client = offline_client(answer)
    await client._process(sync_batch(text_event(3)), offline=True)
    assert seqs(queued(client)) == [("$t1", 1), ("$t2", 2), ("$t3", 3)]  # nothing twice


async def test_a_backlog_read_from_synapses_end_token_is_cut_at_the_timeline() -> None:
    """Synapse's prev_batch of a newly joined room is the sync's end: /messages lists it all."""
    client = offline_client(lambda *_: {"chunk": [text_event(2), text_event(1)]})
    await client._process(sync_batch(text_event(1), text_event(2), prev="s10"), offline=True)
    assert seqs(queued(client)) == [("$t1", 1), ("$t2", 2)]


async def test_a_batch_is_applied_once_when_a_follow_up_request_failed() -> None:
    """The adapter repeats nothing of its own: a refetched batch was not applied before."""
    other = "!other:hs.test"
    failures = [ConnectionLost("the backlog request was cut")]

    def answer(method: str, path: str, params: dict[str, str]) -> Any:
        if path == f"/rooms/{quote(other)}/messages" and failures:
            raise failures.pop()
        return {"chunk": []}

    client = offline_client(answer)
    batch = sync_batch(text_event(1))
    batch["rooms"]["join"][other] = {"timeline": {"events": [text_event(9)], "prev_batch": "p"}}
    with pytest.raises(ConnectionLost):
        await client._process(batch, offline=False)
    assert queued(client) == []
    await client._process(batch, offline=False)
    assert sorted(seqs(queued(client))) == [("$t1", 1), ("$t9", 1)]


async def test_a_batch_the_server_sends_again_reaches_the_stream_again() -> None:
    client = offline_client(lambda *_: {"chunk": []})
    await client._process(sync_batch(text_event(1), text_event(2)), offline=False)
    assert seqs(queued(client)) == [("$t1", 1), ("$t2", 2)]
    # A replayed since token: the same events again, then a new one, in the server's order.
    await client._process(sync_batch(text_event(1), text_event(2), text_event(3)),
                          offline=False)
    assert seqs(queued(client)) == [("$t1", 1), ("$t2", 2), ("$t3", 3)]
    receipts = {"type": "m.receipt", "content": {
        "$t1": {"m.read": {"@alice:hs.test": {"ts": 1}}}}}
    batch = sync_batch()
    batch["rooms"]["join"][ROOM]["ephemeral"] = {"events": [receipts]}
    await client._process(batch, offline=False)
    await client._process(batch, offline=False)
    assert queued(client) == [ReceiptUpdated(ROOM, "alice", 1, False)] * 2


def test_the_matrix_endpoint_declares_what_real_sdks_hide() -> None:
    info = MatrixAdapter(EndpointSettings("old", "matrix", "http://127.0.0.1:9")).info
    assert info.client_hides == {ClientHides.DUPLICATE_EVENTS, ClientHides.RECEIPTS_BACKWARDS}


async def test_an_abandoned_echo_wait_leaves_no_unretrieved_future(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = offline_client(lambda *_: {})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):  # a send that gave up waiting for its echo
            await client._seen(ROOM, "$never")
    await client._stop_sync()  # the disconnect fails the wait nobody awaits any more
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


async def test_a_sync_loop_that_dies_says_so_and_its_error_is_retrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    syncs = itertools.count()

    def answer(method: str, path: str, params: dict[str, str]) -> Any:
        if path == "/sync" and next(syncs):
            raise map_error(500, {"errcode": "M_UNKNOWN", "error": "internal"}, "GET /sync")
        return {"next_batch": "s1"}

    client = offline_client(answer)
    await client._start(reconnected=False)
    task = client._sync_task
    assert task is not None
    await until(task.done, timeout=units(5), what="the sync loop to end")
    await asyncio.sleep(0)
    (gone,) = queued(client)
    assert isinstance(gone, Disconnected)
    assert "sync loop stopped" in gone.reason
    assert "internal" in gone.reason
    assert client._status is ClientState.FAILED
    syncs_made = [c for c in client.calls if c[1] == "/sync"]  # type: ignore[attr-defined]
    uploads = [c for c in client.calls if c[1].endswith("/filter")]  # type: ignore[attr-defined]
    assert len(syncs_made) == 2
    assert len(uploads) == 1  # the filter is uploaded once and named by its id
    assert all(params["filter"] == "f1" for _, _, params in syncs_made)
    with pytest.raises(ConnectionLost, match="not connected"):
        await client.send(Target.to_user("alice"), "after the loop died")
    await client.close()
    del task
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
