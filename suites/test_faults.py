"""Fault suites: exactly-once, order and durability through resets, blackholes, latency, crashes.

Clients sit behind a loopback `FaultLink` (the `fault_link` fixture) so the network between
them and the service can misbehave on cue; the oracle judges what every user saw. Keepalive
tests need short keepalives: set `[harness] keepalive_v1` / `keepalive_v2` to a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from harness.contract import Ack, Disconnected, GroupInfo, MessageReceived
from harness.errors import ConnectionLost, IMTimeout, RateLimited
from harness.testkit import (
    Attempt,
    User,
    app_connections,
    burst_size,
    send_with_retry,
    sentinel,
    settled,
    wait_connections,
)
from harness.timing import WaitTimeout

pytestmark = [pytest.mark.capability("chat"), pytest.mark.slow]

# Reconnect fast, so a fault costs a fraction of a second rather than the SDK's default backoff.
FAST = {"backoff_base_s": 0.05, "backoff_cap_s": 0.5}


def disconnects(user: User) -> int:
    return len(user.recorder.of_type(Disconnected))


@pytest.mark.capability("offline", "idempotent_send")
async def test_reset_during_sends_delivers_every_acked_message_once(
    endpoint, im_user, fault_link, oracle, units
):
    """Connections reset while sends and deliveries are in flight: each acked message once."""
    alice_link, bob_link = await fault_link(), await fault_link()
    alice = await im_user("alice", via_link=alice_link, adapter_options=FAST)
    bob = await im_user("bob", via_link=bob_link, adapter_options=FAST)
    first = await alice.send(bob, "before the reset")
    conv = first.conversation
    await bob.recorder.wait_messages(1, conversation=conv, timeout=units(5))
    n = burst_size(endpoint, 8)

    async def burst() -> list[Ack]:
        return [await alice.send(bob, f"burst {i}") for i in range(n)]

    # The latency keeps a send and a delivery in flight at any moment.
    with alice_link.latency(ms=20), bob_link.latency(ms=20):
        sending = asyncio.create_task(burst())
        await bob.recorder.wait_messages(3, conversation=conv, timeout=units(5))
        resets = await asyncio.gather(alice_link.reset_now(), bob_link.reset_now())
        acks = await asyncio.wait_for(sending, units(15))

    assert len(acks) == n, "the SDK must resend unacked sends after it reconnects"
    for user, reset in zip((alice, bob), resets, strict=True):
        assert reset.params["connections"], f"the reset found no connection of {user.id} open"
    if endpoint.info.keepalive_s is not None:
        # A persistent connection was cut under the client: it must have noticed. (An HTTP
        # client has no such connection; its cut requests are retried and judged below.)
        assert disconnects(alice) >= 1, "the reset never reached alice"
        assert disconnects(bob) >= 1, "the reset never reached bob"
    await settled(oracle, timeout=units(5))
    oracle.assert_ok()
    await sentinel(alice, bob)
    got = [m.message_id for m in bob.recorder.messages(conv) if m.body != "sentinel"]
    assert got == [first.message_id] + [a.message_id for a in acks]
    oracle.assert_ok()


@pytest.mark.needs_admin
@pytest.mark.capability("offline")
@pytest.mark.parametrize("protocol", ["v1", "v2"])
async def test_blackholed_client_is_noticed_within_its_keepalive_and_catches_up(
    endpoint, protocol, im_user, fault_link, oracle, units
):
    """A silent (half-open) client is dropped within 2 x its version's keepalive; what it
    missed, including what was written to its dead socket, arrives once, offline, on return."""
    app = await endpoint.with_app(protocol=protocol)
    keepalive = app.info.keepalive_s
    if keepalive is None or 2 * keepalive > units(6):
        pytest.skip(
            f"endpoint {endpoint.name!r}: {protocol} keepalive {keepalive}s is too long to wait "
            "for in a suite; set [harness] keepalive_v1/keepalive_v2 to a few seconds"
        )
    link = await fault_link(app)
    alice = await im_user("alice", endpoint=app)
    bob = await im_user("bob", endpoint=app, protocol=protocol, via_link=link,
                        adapter_options=FAST)

    before = await alice.send(bob, "before the signal is lost")
    conv = before.conversation
    await bob.recorder.wait_messages(1, conversation=conv, timeout=units(5))
    assert await app_connections(app) == 2
    with link.blackhole():
        start = time.monotonic()
        await bob.drop()  # the phone loses signal: not even the reset reaches the service
        unnoticed = await alice.send(bob, "written to a dead socket")
        with contextlib.suppress(WaitTimeout):
            await wait_connections(app, 1, timeout=2 * keepalive + units(2),
                                   what="the service to notice the silent client")
        noticed_after = time.monotonic() - start
        assert await app_connections(app) == 1, (
            f"the service still counts bob's {protocol} connection {noticed_after:.1f}s after "
            f"it went silent; its keepalive ({keepalive}s) must drop it within {2 * keepalive}s"
        )
        noticed = await alice.send(bob, "after the service noticed")
    assert noticed_after <= 2 * keepalive + units(1)

    await bob.reconnect()
    await settled(oracle, timeout=units(5))
    oracle.assert_ok()
    received = [e for e in bob.recorder.of_type(MessageReceived) if e.message.conversation == conv]
    assert [e.message.message_id for e in received] == [
        before.message_id, unnoticed.message_id, noticed.message_id
    ]
    assert [e.offline for e in received[1:]] == [True, True], "missed messages come offline"
    print(f"{protocol}: silent client noticed after {noticed_after:.2f}s (keepalive {keepalive}s)")


@pytest.mark.capability("groups")
async def test_latency_spikes_and_jitter_do_not_reorder_conversations(
    endpoint, im_user, im_group, fault_link, oracle, units
):
    """Jittery links and a latency spike never change the order anyone sees."""
    alice_link, bob_link = await fault_link(), await fault_link()
    alice = await im_user("alice", via_link=alice_link)
    bob = await im_user("bob", via_link=bob_link)
    carol = await im_user("carol")
    group = await im_group(alice, [bob, carol])
    n = burst_size(endpoint, 16) // 2

    async def talk(sender: User, peer: User | GroupInfo, label: str) -> None:
        for i in range(n):
            await sender.send(peer, f"{label} {i}")
            if i == n // 2 and sender is alice:
                alice_link.latency(ms=250, duration_s=units(0.5))  # a spike mid-conversation

    with alice_link.latency(ms=15, jitter_ms=15), bob_link.latency(ms=5, jitter_ms=30):
        await asyncio.gather(
            talk(alice, bob, "direct"), talk(alice, group, "alice"), talk(carol, group, "carol")
        )
    assert alice_link.timeline.of_kind("latency"), "no latency was injected"
    await settled(oracle, timeout=units(5))
    oracle.assert_ok()
    direct = [m.body for m in bob.recorder.messages() if m.body.startswith("direct")]
    assert direct == [f"direct {i}" for i in range(n)]
    oracle.assert_ok()  # every conversation in seq order; bob and carol agree on the group's


@pytest.mark.capability("offline", "idempotent_send")
async def test_kill_9_under_traffic_loses_no_acked_message(
    endpoint, im_user, fault_link, restart_service, oracle, units, until
):
    """The service is killed while sends and deliveries are in flight; every ack holds."""
    if endpoint.server is None:
        pytest.skip(f"endpoint {endpoint.name!r} is not started by the harness; cannot crash it")
    alice = await im_user("alice", adapter_options=FAST)
    bob = await im_user("bob", adapter_options=FAST)
    n = burst_size(endpoint, 12)
    acks: list[Ack] = []

    async def traffic() -> None:
        for i in range(n):
            acks.append(await send_with_retry(
                alice, bob, f"durable {i}", attempts=8, base=0.1, cap=1.0, timeout=units(2)
            ))

    sending = asyncio.create_task(traffic())
    await until(lambda: len(acks) >= 3 or sending.done(), timeout=units(5), what="3 acks")
    await restart_service(kill=True)
    await asyncio.wait_for(sending, units(20))
    assert len(acks) == n
    assert disconnects(bob) >= 1, "bob's connection survived a kill -9?"
    await settled(oracle, timeout=units(8))
    oracle.assert_ok()
    page = await bob.client.history(acks[0].conversation, limit=n + 1)
    oracle.observe_history(bob.id, page)
    assert [m.message_id for m in page.messages] == [a.message_id for a in acks]
    oracle.assert_ok()


@pytest.mark.capability("offline")
async def test_send_retries_back_off_exponentially(
    endpoint, im_user, fault_link, oracle, units, until
):
    """Retries while the service is unreachable come base, 2 base, 4 base ... apart, capped."""
    link = await fault_link()
    alice = await im_user("alice", via_link=link)
    bob = await im_user("bob")
    base, cap = units(0.1), units(0.4)
    await alice.drop()  # offline: the next send fails at once and must reconnect to retry
    partition = link.partition()
    started = time.monotonic()
    retries: list[Attempt] = []
    sending = asyncio.create_task(send_with_retry(
        alice, bob, "through the partition", attempts=10, base=base, cap=cap, jitter=0,
        on_retry=retries.append,
    ))
    await until(lambda: partition.refused >= 5, timeout=units(10), what="5 refused reconnects")
    partition.stop()
    ack = await asyncio.wait_for(sending, units(5))

    times = [t for t in link.connection_times if t >= started]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)][:4]
    # attempt 1 fails offline, then reconnect k (k = 1, 2, ...) comes min(cap, base * 2**k)
    # after the previous one; the link measures the gaps between the connections it saw.
    expected = [min(cap, base * 2**k) for k in range(1, 5)]
    slack = units(0.15)
    for k, (gap, want) in enumerate(zip(gaps, expected, strict=True), start=1):
        assert want - 0.02 <= gap <= want + slack, (
            f"reconnect gap #{k} was {gap:.3f}s, expected {want:.3f}s (base {base}, cap {cap}); "
            f"all gaps: {[round(g, 3) for g in gaps]}"
        )
    assert all(isinstance(r.error, ConnectionLost) for r in retries)
    await settled(oracle, timeout=units(5))
    oracle.assert_ok()
    assert [m.client_id for m in bob.recorder.messages()] == [ack.client_id]


@pytest.mark.needs_admin
async def test_send_retry_honours_retry_after_and_never_duplicates(
    endpoint, im_user, oracle, units
):
    """Rate-limited sends wait at least retry_after, and each message is stored once."""
    app = await endpoint.with_app(limits={"send_rate_per_user": 5, "send_burst": 2})
    alice = await im_user("alice", endpoint=app)
    bob = await im_user("bob", endpoint=app)
    retries: list[Attempt] = []
    started = time.monotonic()
    acks = [
        await send_with_retry(alice, bob, f"limited {i}", attempts=6, base=0.01, cap=0.05,
                              jitter=0, on_retry=retries.append)
        for i in range(6)
    ]
    elapsed = time.monotonic() - started
    limited = [(r, r.error) for r in retries if isinstance(r.error, RateLimited)]
    assert len(limited) >= 3, f"6 sends at burst 2 were rate limited only {len(limited)} times"
    for r, error in limited:
        assert error.retry_after > 0, "a rate limit must say when to retry"
        assert r.wait_s >= error.retry_after, "the retry came before retry_after"
    assert elapsed >= sum(r.wait_s for r in retries) - 0.01
    assert len(limited) <= 2 * (len(acks) - 2), "waiting retry_after should mostly suffice"
    await settled(oracle, timeout=units(5))
    oracle.assert_ok()
    assert [m.message_id for m in bob.recorder.messages()] == [a.message_id for a in acks]


@pytest.mark.capability("idempotent_send")
async def test_send_retry_after_a_lost_ack_stores_the_message_once(
    endpoint, im_user, fault_link, oracle, units
):
    """The ack is lost, the send times out, the retry (same client id) gets the original."""
    link = await fault_link()
    alice = await im_user("alice", via_link=link)
    bob = await im_user("bob")
    # The conversation exists first (some servers create it on the first send), so what the
    # blackhole swallows is the answer to the send itself.
    await alice.send(bob, "hello")
    retries: list[Attempt] = []
    with link.blackhole(direction="down", duration_s=units(0.6)):  # the service hears; no ack
        ack = await send_with_retry(
            alice, bob, "exactly once", attempts=4, base=units(0.8), cap=units(1), jitter=0,
            timeout=units(0.3), on_retry=retries.append,
        )
    assert isinstance(retries[0].error, IMTimeout), retries
    assert ack.duplicate, "the retry must be recognised as a resend of the stored message"
    await settled(oracle, timeout=units(5))
    oracle.assert_ok()
    await sentinel(alice, bob)
    assert [m.body for m in bob.recorder.messages()] == ["hello", "exactly once", "sentinel"]
    oracle.assert_ok()


@pytest.mark.capability("groups", "offline", "idempotent_send")
async def test_exactly_once_survives_a_partition_mid_group_fanout(
    endpoint, im_user, im_group, fault_link, oracle, units
):
    """Sender and one member are partitioned mid fan-out; every member gets each post once."""
    alice_link, bob_link = await fault_link(), await fault_link()
    alice = await im_user("alice", via_link=alice_link, adapter_options=FAST)
    bob = await im_user("bob", via_link=bob_link, adapter_options=FAST)
    carol, dave = await im_user("carol"), await im_user("dave")
    group = await im_group(alice, [bob, carol, dave])
    n = burst_size(endpoint, 12)
    acks: list[Ack] = []

    async def fanout() -> None:
        for i in range(n):
            acks.append(await alice.send(group, f"post {i}"))

    with alice_link.latency(ms=10), bob_link.latency(ms=10):
        sending = asyncio.create_task(fanout())
        await carol.recorder.wait_messages(3, timeout=units(5))
        for link in (alice_link, bob_link):
            link.partition(duration_s=units(0.5))
            await link.reset_now()
        await asyncio.wait_for(sending, units(15))
    assert len(acks) == n
    assert alice_link.timeline.of_kind("partition"), "no partition happened"
    assert disconnects(alice) >= 1, "the partition never cut alice off"
    assert disconnects(bob) >= 1, "the partition never cut bob off"
    await settled(oracle, timeout=units(5))
    oracle.assert_ok()
    for member in (bob, carol, dave):
        got = [m.message_id for m in member.recorder.messages(acks[0].conversation)]
        assert got == [a.message_id for a in acks], f"{member.id} saw {got}"
    oracle.assert_ok()
