"""The upgrade journey: old -> new in place, on the same data, with clients in the field.

One private server (started from the old endpoint's request) is written to, upgraded in place to
the new endpoint's request while v1 clients keep sending, then checked step by step: what was
written before reads the same after, live clients lost and duplicated nothing, existing features
keep working while the new ones activate (the lag is measured against its bound), old tokens
work for the transition window and then get `Unauthorized`, v1 clients converse with v2, and the
rollback is drilled. Each step is named in the record (`im-journey.json`) and in a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import pytest

from harness.contract import (
    Ack,
    Capability,
    GroupInfo,
    MessageReceived,
    ReceiptUpdated,
    Reconnected,
)
from harness.errors import FeatureDisabled, IMError, Unauthorized
from harness.testkit import (
    Endpoint,
    Journey,
    Oracle,
    User,
    expect_event,
    new_user,
    send_with_retry,
    sentinel,
    settled,
)
from harness.timing import units

pytestmark = pytest.mark.slow

LIVE_SEND_INTERVAL_UNITS = 0.05


async def _history_ids(user: User, conversation: str, page: int = 3) -> list[str]:
    """Every message id of `conversation`, oldest first, read in pages of `page` (newest first)."""
    ids: list[str] = []
    before: int | None = None
    for _ in range(1000):
        got = await user.client.history(conversation, before=before, limit=page)
        ids[:0] = [m.message_id for m in got.messages]
        if not got.has_more or not got.messages:
            return ids
        before = got.messages[0].seq
    raise AssertionError(f"history of {conversation} did not end after 1000 pages")


class LiveSender:
    """A v1 client that keeps sending to a peer, across the upgrade, timing every ack."""

    def __init__(self, user: User, peer: User) -> None:
        self.user, self.peer = user, peer
        self.acks: list[Ack] = []
        self.acked_at: list[float] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                ack = await send_with_retry(self.user, self.peer, f"live {n}", attempts=10,
                                            base=units(0.05), cap=units(1))
            except IMError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            self.acks.append(ack)
            self.acked_at.append(time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), units(LIVE_SEND_INTERVAL_UNITS))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, units(30))

    def max_gap(self) -> float:
        times = self.acked_at
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


async def _poll(probe: Callable[[], Awaitable[None]], *, within: float) -> float | None:
    """Seconds until `probe` first succeeds (FeatureDisabled means not yet), None past `within`."""
    start = time.monotonic()
    while time.monotonic() - start <= within:
        try:
            await probe()
        except FeatureDisabled:
            await asyncio.sleep(units(0.05))
            continue
        return time.monotonic() - start
    return None


async def test_upgrade_journey(upgrade_journey: Journey, oracle: Oracle) -> None:
    journey = upgrade_journey
    old = await journey.open()

    # ---- written on old --------------------------------------------------------------------
    alice, bob, carol = [await new_user(old, oracle, n) for n in ("alice", "bob", "carol")]
    dave = await new_user(old, oracle, "dave")
    # Minted on old, never connected there: they log in for the first time after the upgrade.
    henry = await new_user(old, oracle, "henry", connect=False)
    ivan = await new_user(old, oracle, "ivan", connect=False)
    eve, frank = await new_user(old, oracle, "eve"), await new_user(old, oracle, "frank")
    dm = [await alice.send(bob, f"dm {i}") for i in range(5)]
    dm.append(await bob.send(alice, "dm reply"))
    group: GroupInfo | None = None
    roles = {alice.id: "owner", bob.id: "member", carol.id: "member"}
    in_group: list[Ack] = []
    if old.supports(Capability.GROUPS):
        group = await alice.client.create_group("journey", [bob.id, carol.id])
        if old.supports(Capability.ROLES):
            await alice.client.set_role(group.group_id, bob.id, "admin")
            roles[bob.id] = "admin"
        in_group = [await u.send(group, f"group {u.id}") for u in (alice, bob, carol)]
    recalled: Ack | None = None
    if old.supports(Capability.RECALL):
        recalled = dm[1]
        await alice.recall(recalled)
    read_seq: int | None = None
    if old.supports(Capability.RECEIPTS):
        read_seq = dm[-2].seq
        await bob.client.mark_read(dm[0].conversation, read_seq)
        await expect_event(alice, ReceiptUpdated, up_to_seq=read_seq)
    hello = await alice.send(dave, "dave is online")
    await expect_event(dave, MessageReceived, message_id=hello.message_id)
    await dave.drop()
    queued = [await alice.send(dave, f"while dave is offline {i}") for i in range(3)]
    before_acks = {"dm": [a.message_id for a in dm], "group": [a.message_id for a in in_group],
                   "offline": [hello.message_id, *[q.message_id for q in queued]]}

    # ---- the upgrade, with v1 clients sending ----------------------------------------------
    senders = [LiveSender(eve, frank), LiveSender(frank, eve)]
    for s in senders:
        s.start()
    await until_acks(senders, 3)
    await journey.upgrade()
    terms = journey.pair.terms()
    new = await journey.open()

    async with journey.step("old credentials accepted within the transition window"):
        henry_v2 = User(new, henry.credentials, oracle)
        await henry_v2.connect()
        await dave.reconnect()

    promised = terms.promised
    bound = journey.pair.activation_bound()
    # Measured from the upgrade, concurrently with the steps below (not after them).
    activation = asyncio.create_task(_activation(journey, _probes(henry_v2, alice), bound))
    async with journey.step("clients in the field reconnect on their own, with backoff"):
        async def back_online(user: User) -> None:  # bounded past the clients' own backoff cap
            await user.recorder.wait_event(Reconnected, timeout=units(30))
            journey.record.gaps.setdefault(user.id, {})["back_after_s"] = round(
                time.monotonic() - (journey.upgraded_at or 0.0), 3)

        await asyncio.gather(*(back_online(u) for u in (alice, bob, carol, eve, frank)))

    async with journey.step("existing features keep working while the new ones activate"):
        # As an SDK would: a send the just-restarted server did not answer in time is resent
        # (same client id, so never twice); the step's seconds show how long it took.
        ack = await send_with_retry(henry_v2, alice, "existing: chat after the upgrade",
                                    attempts=3, base=units(0.2), cap=units(2))
        await expect_event(alice, MessageReceived, message_id=ack.message_id)
        if group is not None:
            group_ack = await send_with_retry(bob, group, "existing: a v1 client's group chat",
                                              attempts=3, base=units(0.2), cap=units(2))
            await expect_event(carol, MessageReceived, message_id=group_ack.message_id)
    await until_acks(senders, 3)

    async with journey.step("activation lag of each newly promised feature within its bound"):
        late = await activation
        if not promised:
            journey.skip("the upgrade promises no new feature")
        assert not late, "; ".join(late)

    async with journey.step("live continuity: no acknowledged message lost or duplicated"):
        for s in senders:
            await s.stop()
        for s in senders:
            journey.record.gaps.setdefault(s.user.id, {}).update({
                "max_ack_gap_s": round(s.max_gap(), 3), "acks": len(s.acks),
                "reconnects": [e.attempts for e in s.user.recorder.of_type(Reconnected)],
            })
        assert not [e for s in senders for e in s.errors], [e for s in senders for e in s.errors]
        await settled(oracle)
        oracle.assert_ok()

    async with journey.step("written before -> readable after: history pages"):
        assert await _history_ids(alice, dm[0].conversation) == before_acks["dm"]
        for name, conversation, acked in (
            ("alice-bob", dm[0].conversation, before_acks["dm"]),
            *([("the group", in_group[0].conversation, before_acks["group"])] if in_group else []),
            ("alice-dave", queued[0].conversation, before_acks["offline"]),
        ):
            ids = await _history_ids(alice, conversation)
            assert ids[: len(acked)] == acked, (
                f"history of {name} begins {ids[: len(acked)]}; {len(acked)} messages were "
                f"acked before the upgrade: {acked}")
        live = senders[0].acks + senders[1].acks
        ids = await _history_ids(eve, live[0].conversation, page=50)
        assert ids == [a.message_id for a in sorted(live, key=lambda a: a.seq)], (
            f"the live conversation reads {len(ids)} messages, {len(live)} were acked")

    async with journey.step("written before -> readable after: groups, members and roles"):
        if group is None:
            journey.skip(f"endpoint {journey.record.old!r} offers no groups: none was written")
        info = await alice.client.group_info(group.group_id)
        assert dict(info.members) == roles, f"members now {dict(info.members)}, before {roles}"

    async with journey.step("written before -> readable after: recalled messages stay recalled"):
        if recalled is None:
            journey.skip(f"endpoint {journey.record.old!r} offers no recall: nothing recalled "
                         "before the upgrade")
        page = await alice.client.history(recalled.conversation, limit=50)
        state = {m.message_id: m.recalled for m in page.messages}
        assert state.get(recalled.message_id) is True, "the recalled message reads unrecalled"

    async with journey.step("written before -> readable after: read cursors"):
        if read_seq is None:
            journey.skip(f"endpoint {journey.record.old!r} offers no read receipts: no cursor "
                         "written before the upgrade")
        seen = len(alice.recorder.of_type(ReceiptUpdated))
        await bob.client.mark_read(dm[0].conversation, read_seq - 1)
        await sentinel(bob, alice)
        back = [e.up_to_seq for e in alice.recorder.of_type(ReceiptUpdated)[seen:]
                if e.up_to_seq < read_seq]
        assert not back, f"bob's read cursor (seq {read_seq}) moved back to {back}"

    async with journey.step("offline queue delivered exactly once after the upgrade"):
        for q in queued:
            await expect_event(dave, MessageReceived, message_id=q.message_id)
        await sentinel(alice, dave)
        counts = {q.message_id: sum(1 for m in dave.recorder.messages()
                                    if m.message_id == q.message_id) for q in queued}
        assert set(counts.values()) == {1}, f"copies per queued message: {counts}"

    async with journey.step("v1 clients converse with v2 clients after the upgrade"):
        grace = await new_user(new, oracle, "grace")
        to_v1 = await grace.send(eve, "v2 to v1")
        await expect_event(eve, MessageReceived, message_id=to_v1.message_id)
        to_v2 = await eve.send(grace, "v1 to v2")
        await expect_event(grace, MessageReceived, message_id=to_v2.message_id)

    async with journey.step("old credentials refused with Unauthorized after the window"):
        window = terms.token_window_s
        if window is None:
            journey.skip("the server states no end to the transition window (old tokens keep "
                         "working)")
        refused_after = await _refused_after(new, ivan, oracle, journey, window)
        journey.record.lags["old_token_refused"] = {"seconds": round(refused_after, 3),
                                                    "window_s": window}
        journey.observed(f"tokens minted before the upgrade: refused {refused_after:.1f}s "
                         f"after it (window {window:g}s)")

    await journey.open()  # what the upgraded endpoint reports now, its features active
    async with journey.step("rollback drill"):
        fact, accepted = await journey.rollback()
        if accepted:
            rolled_back = await journey.open()
            reader = await new_user(rolled_back, oracle, "after-rollback")
            ack = await reader.send(alice, "after the rollback")
            assert ack.message_id, fact

    await settled(oracle)
    journey.finish()


async def _activation(journey: Journey, probes: dict[str, Callable[[], Awaitable[None]]],
                      bound: float | None) -> list[str]:
    """Poll each promised feature until it first works; record the lags; what came too late."""
    late: list[str] = []
    upgraded = journey.upgraded_at
    assert upgraded is not None
    for feature in journey.pair.terms().promised:
        assert bound is not None
        probe = probes.get(feature)
        if probe is None:
            journey.record.lags[feature] = {"seconds": None, "bound_s": bound,
                                            "note": "no probe for this feature"}
            continue
        try:
            took = await _poll(probe, within=max(bound - (time.monotonic() - upgraded), 0.0))
        except IMError as exc:
            late.append(f"{feature}: {type(exc).__name__}: {exc}")
            continue
        lag = None if took is None else time.monotonic() - upgraded
        journey.record.lags[feature] = {
            "seconds": None if lag is None else round(lag, 3), "bound_s": round(bound, 3),
            "promised_s": journey.pair.terms().activation_lag_s}
        if lag is None:
            late.append(f"{feature} still FeatureDisabled {bound:.2f}s after the upgrade "
                        f"(bound {bound:.2f}s)")
        else:
            journey.observed(f"{feature}: FeatureDisabled until {lag:.1f}s after the upgrade")
            if lag > bound:
                late.append(f"{feature} first worked {lag:.2f}s after the upgrade "
                            f"(bound {bound:.2f}s)")
    return late


def _probes(user: User, peer: User) -> dict[str, Callable[[], Awaitable[None]]]:
    """How to try each feature an upgrade may promise, once."""
    state: dict[str, Ack] = {}

    async def recall() -> None:
        if "recall" not in state:
            state["recall"] = await user.send(peer, "to be recalled once recall is active")
        await user.recall(state["recall"])

    async def receipts() -> None:
        if "read" not in state:  # the user's own message: the probe waits for no other client
            state["read"] = await user.send(peer, "read up to here once receipts are active")
        await user.client.mark_read(state["read"].conversation, state["read"].seq)

    return {"recall": recall, "receipts": receipts}


async def _refused_after(endpoint: Endpoint, holder: User, oracle: Oracle, journey: Journey,
                         window: float) -> float:
    """Seconds from the upgrade until a pre-upgrade token is refused; asserts the window."""
    assert journey.upgraded_at is not None
    limit = window + units(5)
    while True:
        since = time.monotonic() - journey.upgraded_at
        probe = User(endpoint, holder.credentials, oracle)
        try:
            await probe.connect()
        except Unauthorized:
            return since
        await probe.close()
        assert since <= limit, (f"a token minted before the upgrade still works {since:.1f}s "
                                f"after it (window {window:.1f}s)")
        await asyncio.sleep(units(0.1))


async def until_acks(senders: list[LiveSender], n: int) -> None:
    """Wait until each sender has `n` more acks (bounded)."""
    base = [len(s.acks) for s in senders]
    deadline = time.monotonic() + units(20)
    while any(len(s.acks) < b + n and not s.errors for s, b in zip(senders, base, strict=True)):
        assert time.monotonic() < deadline, "live senders made no progress"
        await asyncio.sleep(units(0.05))
