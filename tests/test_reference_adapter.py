"""The reference adapter against the real reference service, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.adapters.reference import ReferenceAdapter, ReferenceClient
from harness.contract import (
    Capability,
    Disconnected,
    EndpointSettings,
    MembershipChanged,
    MessageRecalled,
    MessageReceived,
    ReceiptUpdated,
    Reconnected,
    Target,
)
from harness.errors import FeatureDisabled, IMTimeout, RateLimited, Unauthorized, Unsupported
from harness.recorder import Recorder
from harness.reference.admin import AppHandle
from harness.reference.launcher import ReferenceService
from harness.timing import units, until

FAST = {"backoff_base_s": 0.02, "backoff_cap_s": 0.32}


@pytest.fixture(scope="module")
def service() -> Iterator[ReferenceService]:
    with ReferenceService() as svc:
        yield svc


@pytest.fixture(scope="module")
def pro_app(service: ReferenceService) -> AppHandle:
    return service.create_app_sync(tier="pro", features={"recall": True, "receipts": True})


@pytest.fixture(scope="module")
def free_app(service: ReferenceService) -> AppHandle:
    return service.create_app_sync(tier="free")


def settings_for(svc: ReferenceService, app: AppHandle, protocol: str = "v2",
                 **options: Any) -> EndpointSettings:
    return EndpointSettings(
        name="new" if protocol == "v2" else "old", adapter="reference", url=svc.ws_url,
        app_id=app.app_id, protocol=protocol, secrets={"app_key": app.app_key},
        options={"api_url": svc.api_url, **options},
    )


@contextlib.asynccontextmanager
async def opened(svc: ReferenceService, app: AppHandle, protocol: str = "v2",
                 **options: Any) -> AsyncIterator[ReferenceAdapter]:
    adapter = await ReferenceAdapter.open(settings_for(svc, app, protocol, **options))
    try:
        yield adapter
    finally:
        await adapter.aclose()


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def user(adapter: ReferenceAdapter, name: str, protocol: str | None = None,
               ) -> tuple[ReferenceClient, Recorder]:
    creds = await adapter.provision_user(uid(name))
    client = await adapter.connect(creds, protocol=protocol)
    recorder = Recorder(client.user_id, client)
    recorder.start()
    return client, recorder


def bodies(recorder: Recorder) -> list[str]:
    return [m.body for m in recorder.messages()]


async def received(recorder: Recorder, n: int) -> list[MessageReceived]:
    """Wait for `n` messages; return every MessageReceived event (with its `offline` flag)."""
    await recorder.wait_messages(n, timeout=units(5))
    return recorder.of_type(MessageReceived)


# -- the endpoint's description -------------------------------------------------------------


async def test_info_reflects_protocol_tier_and_features(
    service: ReferenceService, pro_app: AppHandle, free_app: AppHandle
) -> None:
    async with opened(service, pro_app, "v2") as new, opened(service, free_app, "v1") as old:
        assert new.info.protocol == "v2"
        assert new.info.tier == "pro"
        assert {Capability.RECALL, Capability.RECEIPTS, Capability.CHAT} <= new.info.capabilities
        assert new.info.send_timeout_s == 5.0
        assert new.info.keepalive_s == 15.0
        assert new.info.limits.max_message_bytes == 65536
        assert old.info.protocol == "v1"
        assert old.info.tier == "free"
        assert not old.info.capabilities & {Capability.RECALL, Capability.RECEIPTS,
                                            Capability.GROUP_RECEIPTS}
        assert old.info.send_timeout_s == 10.0
        assert old.info.keepalive_s == 30.0
        assert old.info.limits.max_connections == 100
        assert Capability.TIER_ADMIN not in new.info.capabilities
        assert new.info.client_hides == old.info.client_hides == frozenset()  # hides nothing
    async with opened(service, pro_app, "v1", send_timeout_s=2.5) as tuned:
        assert tuned.info.send_timeout_s == 2.5
        assert Capability.RECALL not in tuned.info.capabilities, "v1 has no recall"


async def test_features_switched_off_are_not_capabilities(service: ReferenceService) -> None:
    plain = await asyncio.to_thread(service.create_app_sync, tier="pro")
    async with opened(service, plain, "v2") as adapter:
        assert Capability.RECALL not in adapter.info.capabilities
        assert Capability.RECEIPTS not in adapter.info.capabilities
        assert Capability.GROUPS in adapter.info.capabilities
        alice, _ = await user(adapter, "alice")
        bob, _ = await user(adapter, "bob")
        ack = await alice.send(Target.to_user(bob.user_id), "hi")
        with pytest.raises(FeatureDisabled):
            await alice.recall(ack.conversation, ack.message_id)


async def test_token_of_another_app_is_refused(
    service: ReferenceService, pro_app: AppHandle, free_app: AppHandle
) -> None:
    async with opened(service, pro_app) as mine, opened(service, free_app) as theirs:
        foreign = await theirs.provision_user(uid("mallory"))
        with pytest.raises(Unauthorized):
            await mine.connect(foreign)


# -- messaging ------------------------------------------------------------------------------


async def test_one_to_one_both_ways(service: ReferenceService, pro_app: AppHandle) -> None:
    async with opened(service, pro_app) as adapter:
        alice, a_in = await user(adapter, "alice")
        bob, b_in = await user(adapter, "bob")
        ack1 = await alice.send(Target.to_user(bob.user_id), "hi bob")
        ack2 = await bob.send(Target.to_user(alice.user_id), "", custom={"kind": "wave"})
        assert ack1.conversation == "d:" + ":".join(sorted([alice.user_id, bob.user_id]))
        assert ack2.conversation == ack1.conversation
        assert ack2.seq > ack1.seq
        assert not ack1.duplicate
        (got,) = await received(b_in, 1)
        assert (got.message.body, got.message.sender, got.offline) == ("hi bob", alice.user_id,
                                                                       False)
        assert got.message.message_id == ack1.message_id
        assert got.message.seq == ack1.seq
        (back,) = await received(a_in, 1)
        assert back.message.kind == "custom"
        assert back.message.custom == {"kind": "wave"}
        assert bodies(a_in) == [""], "a sender never receives its own message"
        page = await alice.history(ack1.conversation)
        assert [m.message_id for m in page.messages] == [ack1.message_id, ack2.message_id]


async def test_group_fan_out_in_order(service: ReferenceService, pro_app: AppHandle) -> None:
    async with opened(service, pro_app) as adapter:
        alice, a_in = await user(adapter, "alice")
        bob, b_in = await user(adapter, "bob")
        carol, c_in = await user(adapter, "carol")
        group = await alice.create_group("team", [bob.user_id, carol.user_id])
        assert group.members[alice.user_id] == "owner"
        assert group.members[bob.user_id] == "member"
        acks = [await alice.send(Target.to_group(group.group_id), f"g{i}") for i in range(5)]
        assert [a.seq for a in acks] == sorted({a.seq for a in acks})
        for inbox in (b_in, c_in):
            await received(inbox, 5)
            assert bodies(inbox) == [f"g{i}" for i in range(5)]
            assert {m.group for m in inbox.messages()} == {group.group_id}
        assert a_in.of_type(MessageReceived) == []
        dave, d_in = await user(adapter, "dave")
        await alice.add_member(group.group_id, dave.user_id)
        added = MembershipChanged(group.group_id, dave.user_id, "added", alice.user_id, "member")
        for inbox in (a_in, b_in, d_in):
            await until(lambda inbox=inbox: added in inbox.of_type(MembershipChanged),
                        timeout=units(5), what=f"{added} for {inbox.user_id}")
        await alice.send(Target.to_group(group.group_id), "welcome")
        assert [m.message.body for m in await received(d_in, 1)] == ["welcome"]


async def test_recall_and_receipts_on_v2(service: ReferenceService, pro_app: AppHandle) -> None:
    async with opened(service, pro_app) as adapter:
        alice, a_in = await user(adapter, "alice")
        bob, b_in = await user(adapter, "bob")
        ack = await alice.send(Target.to_user(bob.user_id), "oops")
        await received(b_in, 1)
        await bob.mark_read(ack.conversation, ack.seq)
        await until(lambda: a_in.of_type(ReceiptUpdated), timeout=units(5), what="a receipt")
        (receipt,) = a_in.of_type(ReceiptUpdated)
        assert (receipt.reader, receipt.up_to_seq) == (bob.user_id, ack.seq)
        await alice.recall(ack.conversation, ack.message_id)
        await until(lambda: b_in.of_type(MessageRecalled), timeout=units(5), what="a recall")
        (recall,) = b_in.of_type(MessageRecalled)
        assert (recall.message_id, recall.by) == (ack.message_id, alice.user_id)
        (stored,) = (await bob.history(ack.conversation)).messages
        assert stored.recalled
        assert stored.body == ""


async def test_v1_gets_unsupported_for_recall_and_read(
    service: ReferenceService, pro_app: AppHandle
) -> None:
    async with opened(service, pro_app, "v1") as adapter:
        alice, _ = await user(adapter, "alice")
        bob, _ = await user(adapter, "bob")
        ack = await alice.send(Target.to_user(bob.user_id), "hi")
        with pytest.raises(Unsupported):
            await alice.recall(ack.conversation, ack.message_id)
        with pytest.raises(Unsupported):
            await bob.mark_read(ack.conversation, ack.seq)


async def test_v1_and_v2_interoperate(service: ReferenceService, pro_app: AppHandle) -> None:
    async with opened(service, pro_app, "v2") as adapter:
        old, old_in = await user(adapter, "old", protocol="v1")
        new, new_in = await user(adapter, "new", protocol="v2")
        assert (old.protocol, new.protocol) == ("v1", "v2")
        await old.send(Target.to_user(new.user_id), "from v1")
        await new.send(Target.to_user(old.user_id), "from v2")
        assert [m.message.body for m in await received(new_in, 1)] == ["from v1"]
        assert [m.message.body for m in await received(old_in, 1)] == ["from v2"]


async def test_resend_with_same_client_id_is_deduplicated_by_the_server(
    service: ReferenceService, pro_app: AppHandle
) -> None:
    async with opened(service, pro_app) as adapter:
        alice, _ = await user(adapter, "alice")
        bob, b_in = await user(adapter, "bob")
        first = await alice.send(Target.to_user(bob.user_id), "once", client_id="cid-1")
        again = await alice.send(Target.to_user(bob.user_id), "once", client_id="cid-1")
        assert again.duplicate
        assert again.message_id == first.message_id
        await alice.send(Target.to_user(bob.user_id), "marker")
        await received(b_in, 2)
        assert bodies(b_in) == ["once", "marker"]


async def test_rate_limit_raises_with_retry_after(
    service: ReferenceService, free_app: AppHandle
) -> None:
    async with opened(service, free_app, "v2") as adapter:
        alice, _ = await user(adapter, "alice")
        bob, _ = await user(adapter, "bob")
        burst = adapter.info.limits.send_burst or 20

        async def flood() -> None:
            for i in range(burst * 3):
                await alice.send(Target.to_user(bob.user_id), f"m{i}")

        with pytest.raises(RateLimited) as info:
            await flood()
        assert info.value.retry_after > 0


async def test_send_times_out_when_the_service_freezes(
    service: ReferenceService, pro_app: AppHandle
) -> None:
    async with opened(service, pro_app) as adapter:
        alice, _ = await user(adapter, "alice")
        bob, _ = await user(adapter, "bob")
        assert service.pid is not None
        os.kill(service.pid, signal.SIGSTOP)
        try:
            with pytest.raises(IMTimeout, match="no ack"):
                await alice.send(Target.to_user(bob.user_id), "into the void", timeout=0.3)
        finally:
            os.kill(service.pid, signal.SIGCONT)


# -- dropping and reconnecting ---------------------------------------------------------------


async def test_drop_then_reconnect_catches_up_offline(
    service: ReferenceService, pro_app: AppHandle
) -> None:
    async with opened(service, pro_app) as adapter:
        alice, _ = await user(adapter, "alice")
        bob, b_in = await user(adapter, "bob")
        await alice.send(Target.to_user(bob.user_id), "live")
        await received(b_in, 1)
        await bob.drop()
        assert bob.state == "dropped"
        for i in range(3):
            await alice.send(Target.to_user(bob.user_id), f"missed{i}")
        await bob.reconnect()
        await received(b_in, 4)
        assert bodies(b_in) == ["live", "missed0", "missed1", "missed2"]
        assert [m.offline for m in b_in.of_type(MessageReceived)] == [False, True, True, True]
        kinds = [type(e).__name__ for e in b_in.events]
        assert kinds.index("Disconnected") < kinds.index("Reconnected")
        await bob.wait_caught_up(units(5))
        await alice.send(Target.to_user(bob.user_id), "live again")
        await received(b_in, 5)
        assert b_in.of_type(MessageReceived)[-1].offline is False
        assert not bob.reconnect_attempts, "drop() must not reconnect by itself"


async def test_a_duplicate_from_the_server_reaches_the_caller(
    service: ReferenceService, pro_app: AppHandle
) -> None:
    """The adapter hides no server defect: a replayed entry is passed on as is."""
    admin = service.admin()
    await admin.set_defects(duplicate_on_reconnect=True)
    try:
        async with opened(service, pro_app) as adapter:
            alice, _ = await user(adapter, "alice")
            bob, b_in = await user(adapter, "bob")
            ack = await alice.send(Target.to_user(bob.user_id), "twice")
            await received(b_in, 1)
            await bob.drop()
            await bob.reconnect()
            copies = await received(b_in, 2)
            assert [m.message.message_id for m in copies] == [ack.message_id] * 2
    finally:
        await admin.set_defects(duplicate_on_reconnect=False)
        await admin.aclose()


async def test_unacked_send_is_resent_with_its_client_id(
    service: ReferenceService, pro_app: AppHandle
) -> None:
    """The resend after a reconnect carries the original client id, so the server dedups it."""
    async with opened(service, pro_app) as adapter:
        alice, _ = await user(adapter, "alice")
        bob, b_in = await user(adapter, "bob")
        to_bob = Target.to_user(bob.user_id)
        assert service.pid is not None
        os.kill(service.pid, signal.SIGSTOP)  # no ack can come back
        try:
            pending = asyncio.create_task(alice.send(to_bob, "once", client_id="cid-x"))
            await until(lambda: alice.unacked == ["cid-x"], timeout=units(5),
                        what="a send in flight")
            await alice.drop()  # whatever the server makes of that frame, alice sees no ack
        finally:
            os.kill(service.pid, signal.SIGCONT)
        assert alice.unacked == ["cid-x"]
        other_device = await adapter.connect(alice.credentials)
        stored = await other_device.send(to_bob, "once", client_id="cid-x")
        await alice.reconnect()
        ack = await pending
        assert ack.duplicate, "the resend was not recognised as the same message"
        assert ack.message_id == stored.message_id
        await alice.send(to_bob, "marker")
        await received(b_in, 2)
        assert bodies(b_in) == ["once", "marker"]
        assert alice.unacked == []


@pytest.fixture
def own_service(tmp_path: Path) -> Iterator[ReferenceService]:
    """A service this test may kill and restart (on the same db and ports)."""
    with ReferenceService(tmp_path / "ref.db") as svc:
        yield svc


async def test_auto_reconnect_after_a_crash_delivers_exactly_once(
    own_service: ReferenceService,
) -> None:
    svc = own_service
    app = await asyncio.to_thread(svc.create_app_sync, tier="pro")
    async with opened(svc, app, **FAST) as adapter:
        alice, a_in = await user(adapter, "alice")
        bob, b_in = await user(adapter, "bob")
        to_bob = Target.to_user(bob.user_id)
        acked = [await alice.send(to_bob, f"before{i}") for i in range(5)]
        await received(b_in, 5)
        # Sends in flight while the service dies: some acked, some stored-but-unacked, some lost.
        in_flight = [asyncio.create_task(alice.send(to_bob, f"during{i}", timeout=units(15)))
                     for i in range(20)]
        await asyncio.sleep(0)
        await asyncio.to_thread(svc.kill)
        await until(lambda: alice.state == "reconnecting" and bob.state == "reconnecting",
                    timeout=units(5), what="both clients to notice the crash")
        late = [asyncio.create_task(alice.send(to_bob, f"after{i}", timeout=units(15)))
                for i in range(3)]
        await asyncio.to_thread(svc.restart)
        acked += await asyncio.gather(*in_flight, *late)
        assert len({a.message_id for a in acked}) == len(acked) == 28
        await received(b_in, 28)
        counts = Counter(m.message.message_id for m in b_in.of_type(MessageReceived))
        assert counts == Counter(a.message_id for a in acked), "each acked message exactly once"
        expected = [f"before{i}" for i in range(5)] + [f"during{i}" for i in range(20)]
        assert [b for b in bodies(b_in) if not b.startswith("after")] == expected
        for inbox in (a_in, b_in):
            assert inbox.of_type(Disconnected)
            assert inbox.of_type(Reconnected)
            assert inbox.client.state == "connected"
        assert alice.reconnect_attempts
        assert bob.reconnect_attempts


async def test_auto_reconnect_after_a_graceful_restart(own_service: ReferenceService) -> None:
    svc = own_service
    app = await asyncio.to_thread(svc.create_app_sync, tier="free")
    async with opened(svc, app, "v1", **FAST) as adapter:
        alice, _ = await user(adapter, "alice")
        bob, b_in = await user(adapter, "bob")
        await asyncio.to_thread(svc.restart)
        await until(lambda: alice.state == bob.state == "connected" and b_in.of_type(Reconnected),
                    timeout=units(5), what="both clients back after the restart")
        await alice.send(Target.to_user(bob.user_id), "after restart")
        assert [m.message.body for m in await received(b_in, 1)] == ["after restart"]
        assert b_in.of_type(Disconnected)


async def test_backoff_grows_with_full_jitter(own_service: ReferenceService) -> None:
    svc = own_service
    app = await asyncio.to_thread(svc.create_app_sync, tier="pro")
    async with opened(svc, app, **FAST, jitter_seed=7) as adapter:
        bob, b_in = await user(adapter, "bob")
        await asyncio.to_thread(svc.kill)
        await until(lambda: len(bob.reconnect_attempts) >= 8, timeout=units(10),
                    what="8 reconnect attempts")
        times, delays = bob.reconnect_attempts[:8], bob.reconnect_delays[:8]
        base, cap = FAST["backoff_base_s"], FAST["backoff_cap_s"]
        for k, delay in enumerate(delays):
            assert 0 <= delay <= min(cap, base * 2**k), f"delay {k} outside its jitter bound"
        for k in range(1, 8):
            gap = times[k] - times[k - 1]
            # A failed attempt takes a little time on top of the drawn delay.
            assert delays[k] <= gap + 0.005, f"attempt {k} came {gap:.3f}s after, before its delay"
            assert gap <= min(cap, base * 2**k) + units(0.5), f"attempt {k} waited {gap:.3f}s"
        assert sum(delays[5:8]) > sum(delays[0:3]), f"delays did not grow: {delays}"
        await asyncio.to_thread(svc.restart)
        # The state flips before the Reconnected event is pumped into the inbox: wait for both.
        await until(lambda: bob.state == "connected" and b_in.of_type(Reconnected),
                    timeout=units(5), what="reconnect")
        assert b_in.of_type(Reconnected)[-1].attempts == len(bob.reconnect_attempts)
