"""The matrix adapter against a real Synapse behind the harness's corrupting HTTP proxy.

What a server does wrong reaches the Recorder and the oracle as it was sent: a repeated event
comes again (reported `hidden_by_sdk`, as the endpoint declares, or `duplicate` without that
declaration), a receipt moved back is reported as moved back. Bad input never crashes the run:
a /sync answer that is not JSON is a `Disconnected` naming the endpoint and the body's first
bytes, after which the sync resumes; an event of an unknown type is passed over and reported.
Each check is also run through the clean proxy, where it must not fire.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

import pytest

from harness.adapters.matrix import MatrixAdapter, MatrixClient
from harness.contract import Ack, Disconnected, MessageReceived, ReceiptUpdated, Target
from harness.errors import HarnessError
from harness.faults.httpproxy import HttpProxy, SyncFault
from harness.matrix.launcher import SynapseServer, install_synapse
from harness.oracle import Oracle, ViolationKind
from harness.recorder import Recorder
from harness.timing import units, until

pytestmark = pytest.mark.slow
VERSION = "1.163.2"


@pytest.fixture(scope="module")
def synapse() -> Iterator[SynapseServer]:
    try:
        install_synapse(VERSION)
    except HarnessError as exc:
        pytest.skip(f"Synapse {VERSION} cannot be installed here: {str(exc).splitlines()[0]}")
    with SynapseServer(VERSION) as server:
        yield server


@pytest.fixture
async def proxy(synapse: SynapseServer) -> AsyncIterator[HttpProxy]:
    async with HttpProxy(synapse.base_url, hold_s=units(0.5)) as running:
        yield running


@pytest.fixture
async def adapter(synapse: SynapseServer, proxy: HttpProxy) -> AsyncIterator[MatrixAdapter]:
    settings = replace(synapse.endpoint_settings("new"), url=proxy.url)
    opened = await MatrixAdapter.open(settings)
    yield opened
    await opened.aclose()


@dataclass
class Peer:
    name: str
    client: MatrixClient
    inbox: Recorder


@pytest.fixture
async def pair(adapter: MatrixAdapter) -> AsyncIterator[tuple[Peer, Peer, Oracle]]:
    """Alice and Bob through the proxy, both fed to one oracle that knows what Matrix hides."""
    oracle = Oracle()
    peers: list[Peer] = []
    for name in ("alice", "bob"):
        creds = await adapter.provision_user(f"{name}-{secrets.token_hex(4)}")
        client = await adapter.connect(creds)
        oracle.client_hides(creds.user_id, adapter.info.client_hides)
        inbox = Recorder(creds.user_id, client, oracle)
        inbox.start()
        peers.append(Peer(creds.user_id, client, inbox))
    yield peers[0], peers[1], oracle
    for peer in peers:
        await peer.inbox.stop()
        await peer.client.close()


async def send(oracle: Oracle, sender: Peer, to: Peer, body: str) -> Ack:
    started = time.monotonic()
    ack = await sender.client.send(Target.to_user(to.name), body)
    oracle.sent(sender.name, ack, recipients={to.name}, started_at=started)
    return ack


async def copies(peer: Peer, ack: Ack, count: int) -> list[MessageReceived]:
    found = await peer.inbox.wait_for(
        lambda e: isinstance(e, MessageReceived) and e.message.message_id == ack.message_id,
        count=count, timeout=units(10), what=f"{count} copies of {ack.message_id}")
    return [e for e in found if isinstance(e, MessageReceived)]


@pytest.mark.parametrize("fault", [None, SyncFault.DUPLICATE])
async def test_a_server_repeated_event_reaches_the_recorder_and_the_oracle(
    pair: tuple[Peer, Peer, Oracle], proxy: HttpProxy, fault: SyncFault | None,
) -> None:
    alice, bob, oracle = pair
    proxy.fault = fault
    first = await send(oracle, alice, bob, "said once")
    await copies(bob, first, 1)
    proxy.fault = None
    last = await send(oracle, alice, bob, "the last one")  # bob's inbox is ordered: all is in
    await copies(bob, last, 1)
    seen = [e.message for e in bob.inbox.of_type(MessageReceived)
            if e.message.message_id == first.message_id]
    found = oracle.violations()
    if fault is None:
        assert len(seen) == 1
        assert not found, found
        return
    assert [m.seq for m in seen] == [first.seq, first.seq], "a repeat keeps its first seq"
    assert proxy.of(SyncFault.DUPLICATE), "the proxy repeated nothing"
    (hidden,) = found
    assert hidden.kind is ViolationKind.HIDDEN_BY_SDK
    assert f"saw message {first.message_id}" in hidden.explanation
    assert "twice" in hidden.explanation
    assert "the server did send it" in hidden.explanation
    # Without the declaration it is a plain duplicate: the same events, judged again.
    bare = Oracle()
    bare.sent(alice.name, first, recipients={bob.name})
    for event in bob.inbox.of_type(MessageReceived):
        bare.observe(bob.name, event)
    assert [v.kind for v in bare.violations(complete=False)] == [ViolationKind.DUPLICATE]


@pytest.mark.parametrize("fault", [None, SyncFault.RECEIPT_BACK])
async def test_a_receipt_the_server_moves_back_is_reported_as_moved_back(
    pair: tuple[Peer, Peer, Oracle], proxy: HttpProxy, fault: SyncFault | None,
) -> None:
    alice, bob, oracle = pair
    acks = [await send(oracle, alice, bob, f"read {i}") for i in range(2)]
    await copies(bob, acks[-1], 1)
    proxy.fault = fault
    await bob.client.mark_read(acks[-1].conversation, acks[-1].seq)
    await alice.inbox.wait_event(ReceiptUpdated, up_to_seq=acks[-1].seq, timeout=units(10))
    last = await send(oracle, bob, alice, "after the receipt")  # alice's inbox is ordered
    await copies(alice, last, 1)
    receipts = [e.up_to_seq for e in alice.inbox.of_type(ReceiptUpdated)]
    found = oracle.violations()
    if fault is None:
        assert receipts == [acks[-1].seq]
        assert not found, found
        return
    assert receipts == [acks[-1].seq, acks[0].seq], "the adapter hid the receipt moved back"
    (back,) = found
    assert back.kind is ViolationKind.HIDDEN_BY_SDK
    assert f"moved back from {acks[-1].seq} to {acks[0].seq}" in back.explanation


@pytest.mark.parametrize("fault", [None, SyncFault.DROP])
async def test_a_message_the_server_drops_is_named_lost(
    pair: tuple[Peer, Peer, Oracle], proxy: HttpProxy, fault: SyncFault | None,
) -> None:
    alice, bob, oracle = pair
    proxy.fault = fault
    lost = await send(oracle, alice, bob, "into the void")
    if fault is None:
        await copies(bob, lost, 1)
    else:  # bob's sync may pass the proxy after alice's ack: the fault stays until it did
        await until(lambda: proxy.of(SyncFault.DROP), timeout=units(10), what="the drop")
    proxy.fault = None
    last = await send(oracle, alice, bob, "after it")
    await copies(bob, last, 1)
    found = oracle.violations()
    if fault is None:
        assert not found, found
        return
    assert [i.event_ids for i in proxy.of(SyncFault.DROP)] == [(lost.message_id,)]
    # The loss; and bob numbered the next message as his first (`unexpected`: another seq).
    (loss,) = [v for v in found if v.kind is ViolationKind.LOSS]
    assert f"{bob.name} never received {lost.message_id}" in loss.explanation


@pytest.mark.parametrize("fault", [None, SyncFault.SWAP])
async def test_two_messages_the_server_swaps_break_happens_before(
    pair: tuple[Peer, Peer, Oracle], proxy: HttpProxy, fault: SyncFault | None,
) -> None:
    alice, bob, oracle = pair
    proxy.hold_s = units(3)  # the first is held until the second passes (a slow machine too)
    proxy.fault = fault
    first = await send(oracle, alice, bob, "first")
    second = await send(oracle, alice, bob, "second")
    await copies(bob, first, 1)
    await copies(bob, second, 1)
    proxy.fault = None
    order = [e.message.message_id for e in bob.inbox.of_type(MessageReceived)]
    kinds = {v.kind for v in oracle.violations()}
    if fault is None:
        assert order == [first.message_id, second.message_id]
        assert not kinds, oracle.violations()
        return
    assert order == [second.message_id, first.message_id]
    assert ViolationKind.CAUSAL_ORDER in kinds, oracle.violations()


async def test_a_sync_answer_that_is_not_json_is_a_clear_disconnect_and_the_sync_resumes(
    pair: tuple[Peer, Peer, Oracle], proxy: HttpProxy, caplog: pytest.LogCaptureFixture,
) -> None:
    alice, bob, oracle = pair
    with proxy.inject(SyncFault.MALFORMED_JSON), caplog.at_level(logging.WARNING):
        ack = await send(oracle, alice, bob, "behind a garbled answer")
        (got,) = await copies(bob, ack, 1)
    assert proxy.of(SyncFault.MALFORMED_JSON), "the proxy garbled nothing"
    (gone,) = bob.inbox.of_type(Disconnected)
    assert "endpoint 'new': GET /sync: the 200 answer is malformed (not JSON: " in gone.reason
    assert "it begins b'{" in gone.reason
    assert gone.reason in caplog.text
    assert got.message.body == "behind a garbled answer"
    assert not alice.inbox.of_type(Disconnected), "only bob's answers were garbled"
    await oracle_settles(oracle)


async def test_an_unknown_event_type_is_passed_over_and_reported(
    pair: tuple[Peer, Peer, Oracle], proxy: HttpProxy, caplog: pytest.LogCaptureFixture,
) -> None:
    alice, bob, oracle = pair
    with proxy.inject(SyncFault.UNKNOWN_TYPE), caplog.at_level(logging.WARNING):
        ack = await send(oracle, alice, bob, "beside an odd event")
        (got,) = await copies(bob, ack, 1)
    (odd,) = proxy.of(SyncFault.UNKNOWN_TYPE)
    (odd_id,) = odd.event_ids
    assert [(room, event_id) for room, event_id, _ in bob.client.unknown_events] == [
        (ack.conversation, odd_id)]
    assert f"endpoint 'new': {bob.name}'s sync: event {odd_id} of unknown type" in caplog.text
    assert got.message.seq == ack.seq, "the unknown event took no message number"
    assert not bob.inbox.of_type(Disconnected)
    await oracle_settles(oracle)


async def oracle_settles(oracle: Oracle) -> None:
    """Every acked copy seen and nothing wrong: the run went on as if the input were good."""
    assert not oracle.missing()
    oracle.assert_ok()
