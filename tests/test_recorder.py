"""The recorder against a real async event stream fed through an `asyncio.Queue`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from harness.contract import (
    Ack,
    Disconnected,
    Event,
    MembershipChanged,
    Message,
    MessageRecalled,
    MessageReceived,
    Reconnected,
)
from harness.errors import ConnectionLost, HarnessError
from harness.oracle import Oracle
from harness.recorder import Recorder
from harness.timing import WaitTimeout, units

CONV = "d:alice:bob"
END = object()  # put on the queue to end the stream


class QueueClient:
    """A minimal producer: `events()` yields what the test puts on its queue."""

    def __init__(self, user_id: str = "bob") -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self.queue.get()
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]


def message(n: int, conv: str = CONV) -> MessageReceived:
    return MessageReceived(
        Message(f"m{n}", conv, n, "alice", f"c{n}", "text", f"hi {n}", 1000.0 + n)
    )


async def settle(rec: Recorder, n: int) -> None:
    """Wait until the recorder holds `n` events."""
    await rec.wait_for(lambda e: True, count=n, timeout=units(5), what=f"{n} events")


async def test_pumps_events_into_list_and_oracle() -> None:
    client = QueueClient()
    oracle = Oracle()
    oracle.sent("alice", Ack("c1", "m1", CONV, 1, 1001.0), recipients={"bob"})
    rec = Recorder("bob", client, oracle)  # type: ignore[arg-type]
    rec.start()
    client.queue.put_nowait(message(1))
    client.queue.put_nowait(Disconnected("network"))
    client.queue.put_nowait(message(2, "g:g1"))
    client.queue.put_nowait(MessageRecalled(CONV, "m1", "alice"))
    await settle(rec, 4)
    assert [m.message_id for m in rec.messages()] == ["m1", "m2"]
    assert [m.message_id for m in rec.messages(CONV)] == ["m1"]
    assert rec.of_type(Disconnected) == [Disconnected("network")]
    assert oracle.missing() == {}
    assert "#2    disconnected: network" in oracle.transcript()
    await rec.stop()


async def test_wait_messages_returns_once_enough_arrived() -> None:
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    client.queue.put_nowait(message(1, "g:g1"))

    async def feed() -> None:
        for n in (2, 3):
            await asyncio.sleep(0)
            client.queue.put_nowait(message(n))

    feeder = asyncio.create_task(feed())
    got = await rec.wait_messages(2, conversation=CONV, timeout=units(5))
    assert [m.message_id for m in got] == ["m2", "m3"]
    await feeder
    await rec.stop()


async def test_wait_for_counts_events_recorded_before_the_call() -> None:
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    for n in (1, 2, 3):
        client.queue.put_nowait(message(n))
    await settle(rec, 3)
    odd = await rec.wait_for(
        lambda e: isinstance(e, MessageReceived) and e.message.seq % 2 == 1, count=2
    )
    assert [e.message.message_id for e in odd] == ["m1", "m3"]  # type: ignore[union-attr]
    await rec.stop()


async def test_timeout_names_what_was_awaited_and_what_was_seen() -> None:
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    client.queue.put_nowait(message(1))
    client.queue.put_nowait(Reconnected(attempts=2))
    await settle(rec, 2)
    with pytest.raises(WaitTimeout) as info:
        await rec.wait_messages(3, conversation=CONV, timeout=units(0.2))
    text = str(info.value)
    assert text.startswith("recorder 'bob' waited for 3 message(s) in d:alice:bob and ")
    assert "1 of 3 matched among 2 events; all seen:" in text
    assert "#1    live    message m1 seq 1 in d:alice:bob from alice: 'hi 1'" in text
    assert "#2    reconnected after 2 attempt(s)" in text
    await rec.stop()


async def test_a_timeout_says_what_the_oracle_makes_of_it() -> None:
    """A wait that runs out because the server lost a message names the loss, not only time."""
    client = QueueClient()
    oracle = Oracle()
    rec = Recorder("bob", client, oracle)  # type: ignore[arg-type]
    rec.start()
    for n in (1, 2):
        oracle.sent("alice", Ack(f"c{n}", f"m{n}", CONV, n, 1000.0 + n), recipients={"bob"})
    client.queue.put_nowait(message(2))  # m1 never comes
    await settle(rec, 1)
    with pytest.raises(WaitTimeout) as info:
        await rec.wait_messages(2, conversation=CONV, timeout=units(0.2))
    text = str(info.value)
    assert "The oracle, judging what every participant saw so far" in text
    assert "[loss] bob never received m1" in text
    clean = Recorder("bob", QueueClient(), Oracle())  # type: ignore[arg-type]
    clean.start()
    with pytest.raises(WaitTimeout) as info:
        await clean.wait_messages(1, timeout=units(0.1))
    assert "oracle" not in str(info.value)  # nothing wrong: nothing said
    await rec.stop()
    await clean.stop()


async def test_timeout_with_nothing_seen() -> None:
    rec = Recorder("bob", QueueClient())  # type: ignore[arg-type]
    rec.start()
    with pytest.raises(WaitTimeout, match=r"waited for the recall .* no events were seen\."):
        await rec.wait_for(lambda e: False, timeout=units(0.1), what="the recall")
    await rec.stop()


async def test_timeout_shows_only_the_last_events() -> None:
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    for n in range(1, 31):
        client.queue.put_nowait(message(n))
    await settle(rec, 30)
    with pytest.raises(WaitTimeout) as info:
        await rec.wait_messages(31, timeout=units(0.1))
    text = str(info.value)
    assert "; last seen:" in text
    assert "message m21 " in text
    assert "message m20 " not in text
    await rec.stop()


async def test_pump_failure_is_reraised_not_timed_out() -> None:
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    client.queue.put_nowait(message(1))
    failure = ConnectionLost("socket reset")

    async def fail_later() -> None:
        await asyncio.sleep(0)
        client.queue.put_nowait(failure)

    failing = asyncio.create_task(fail_later())
    async with asyncio.timeout(units(5)):  # a timeout here means the failure was swallowed
        with pytest.raises(ConnectionLost) as info:
            await rec.wait_messages(2, timeout=units(60))
    assert info.value is failure
    assert "raised in the event pump of recorder 'bob'" in info.value.__notes__
    with pytest.raises(ConnectionLost):  # and again for every later wait
        await rec.wait_for(lambda e: False, timeout=units(60))
    assert [m.message_id for m in rec.messages()] == ["m1"]
    await failing
    await rec.stop()


async def test_ended_stream_fails_waits_at_once() -> None:
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    client.queue.put_nowait(message(1))
    client.queue.put_nowait(END)
    async with asyncio.timeout(units(5)):
        with pytest.raises(WaitTimeout, match=r"and the stream ended: 1 of 2 matched"):
            await rec.wait_messages(2, timeout=units(60))
    await rec.stop()


async def test_waiting_on_a_recorder_never_started() -> None:
    rec = Recorder("bob", QueueClient())  # type: ignore[arg-type]
    with pytest.raises(WaitTimeout, match="the stream was never started"):
        await rec.wait_messages(1, timeout=units(60))


async def test_stop_keeps_events_and_start_resumes() -> None:
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    client.queue.put_nowait(message(1))
    await settle(rec, 1)
    await rec.stop()
    assert not rec.running
    assert len(rec.events) == 1
    client.queue.put_nowait(message(2))
    rec.start()
    got = await rec.wait_messages(2, timeout=units(5))
    assert [m.message_id for m in got] == ["m1", "m2"]
    await rec.stop()


async def test_attach_follows_a_new_client() -> None:
    old, new = QueueClient(), QueueClient()
    oracle = Oracle()
    rec = Recorder("bob", old, oracle)  # type: ignore[arg-type]
    rec.start()
    old.queue.put_nowait(message(1))
    await settle(rec, 1)
    rec.attach(new)  # type: ignore[arg-type]
    old.queue.put_nowait(message(9))  # the old client is no longer followed
    new.queue.put_nowait(message(2))
    got = await rec.wait_messages(2, timeout=units(5))
    assert [m.message_id for m in got] == ["m1", "m2"]
    assert rec.client is new
    await rec.stop()
    assert [m.message_id for m in rec.messages()] == ["m1", "m2"]


async def test_count_must_be_positive() -> None:
    rec = Recorder("bob", QueueClient())  # type: ignore[arg-type]
    with pytest.raises(HarnessError, match="count=0"):
        await rec.wait_for(lambda e: True, count=0)


async def test_wait_event_matches_the_event_then_its_message() -> None:
    """`offline=` is the event's own field; `message_id=`/`conversation=` are its message's."""
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    client.queue.put_nowait(message(1))
    client.queue.put_nowait(MessageRecalled(CONV, "m1", "alice"))
    client.queue.put_nowait(MessageReceived(message(2).message, offline=True))
    client.queue.put_nowait(message(3, "g:g1"))
    got = await rec.wait_event(MessageReceived, conversation="g:g1")
    assert got.message.message_id == "m3"
    assert (await rec.wait_event(MessageReceived, offline=True)).message.message_id == "m2"
    recall = await rec.wait_event(MessageRecalled, message_id="m1", by="alice")
    assert recall == MessageRecalled(CONV, "m1", "alice")
    # The first match wins: m2 and m3 have the same sender, but m1 came first.
    assert (await rec.wait_event(MessageReceived, sender="alice")).message.message_id == "m1"
    await rec.stop()


async def test_wait_event_waits_for_a_later_event() -> None:
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    client.queue.put_nowait(MembershipChanged("g1", "carol", "added", "alice"))
    waiting = asyncio.create_task(rec.wait_event(MembershipChanged, user="carol", change="left"))
    await settle(rec, 1)
    assert not waiting.done(), "an event with other fields matched"
    client.queue.put_nowait(MembershipChanged("g1", "carol", "left", "carol"))
    event = await asyncio.wait_for(waiting, units(5))
    assert event.by == "carol"
    await rec.stop()


async def test_wait_event_timeout_names_the_type_and_fields() -> None:
    client = QueueClient()
    rec = Recorder("bob", client)  # type: ignore[arg-type]
    rec.start()
    client.queue.put_nowait(message(1))
    await settle(rec, 1)
    with pytest.raises(WaitTimeout) as info:
        await rec.wait_event(MessageReceived, message_id="m9", timeout=units(0.1))
    assert "waited for MessageReceived(message_id='m9') and" in str(info.value)
    assert "0 of 1 matched among 1 events" in str(info.value)
    await rec.stop()


async def test_wait_event_refuses_a_field_the_type_lacks() -> None:
    """A typo fails at once, naming the known fields, instead of waiting out the timeout."""
    rec = Recorder("bob", QueueClient())  # type: ignore[arg-type]
    rec.start()
    with pytest.raises(HarnessError, match=r"MessageRecalled has no such field; known: .*by"):
        await rec.wait_event(MessageRecalled, messageid="m1")
    with pytest.raises(HarnessError, match="known: .*message_id.*offline"):
        await rec.wait_event(MessageReceived, up_to_seq=3)
    await rec.stop()
