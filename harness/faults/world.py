"""A small IM world for stateful property tests, on any endpoint.

One example is 3-5 fresh users (every protocol version the endpoint offers, side by side) and
1-2 groups, on a fresh app when the server has an admin API; every user reaches the endpoint
through its own `FaultLink` when it is on loopback. Hypothesis drives the rules of
`WorldMachine` (send, group send, recall, mark read, disconnect, reconnect, a network fault,
a server restart); the oracle judges after every step, and `teardown` settles the world and
judges loss, recall and history once everything had its chance to arrive.

A rule runs only where the endpoint can take it: restarts need a server the harness started,
network faults a loopback TCP endpoint, recall and read marks the capability.
`WorldContext.disabled()` names every rule that is off and why, so a test can say so.

The machine owns one event loop per example and runs each rule in it; whoever sets
`WorldMachine.context` (from an opened endpoint: `WorldContext.for_endpoint`) owns the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from harness.backoff import Backoff
from harness.contract import (
    Ack,
    Capability,
    EndpointInfo,
    EndpointSettings,
    GroupInfo,
    MessageReceived,
    Target,
)
from harness.errors import BadRequest, ConnectionLost, HarnessError, IMTimeout, NotFound
from harness.faults.link import FaultLink
from harness.faults.timeline import FaultTimeline
from harness.oracle import Oracle
from harness.servers import AdminHandle, EmbeddedServer
from harness.timing import units

if TYPE_CHECKING:
    from harness.session import Endpoint

T = TypeVar("T")
UNKNOWN_OUTCOME = (IMTimeout, ConnectionLost)  # a send or recall that may or may not have happened
MAX_USERS = 5
RECALL_WINDOW_S = 120.0
FAULTS = ("reset", "latency", "blackhole", "partition")
RECONNECT_BACKOFF = Backoff(0.1, 1.6, jitter="none")  # after every fault was healed
SETTLE_SENTINELS = 2  # per user: one is enough, two survive a dropped delivery of one


@dataclass
class WorldContext:
    """What every example shares: the endpoint's settings and info, and its server if any."""

    settings: EndpointSettings
    info: EndpointInfo
    server: EmbeddedServer | None = None  # restarts only when the harness started the server
    proxiable: bool = True  # users behind fault links: a TCP endpoint on loopback
    max_restarts: int = 1  # server restarts per example
    fault_s: float = 0.3  # how long a blackhole or partition lasts
    timeline: FaultTimeline = field(default_factory=lambda: FaultTimeline("properties"))

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint, **kw: Any) -> WorldContext:
        """The context of an opened endpoint: its server only if the harness started it."""
        from harness.faults.endpoint import proxy_problem

        return cls(settings=endpoint.settings, info=endpoint.info, server=endpoint.server,
                   proxiable=proxy_problem(endpoint) is None, **kw)

    @property
    def has_apps(self) -> bool:
        """Whether each example gets a fresh app (the server has an admin API)."""
        return self.server is not None and self.server.app() is not None

    def can(self, capability: Capability) -> bool:
        return self.info.supports(capability)

    def disabled(self) -> dict[str, str]:
        """Rule name -> why it cannot run on this endpoint (empty: every rule runs)."""
        off: dict[str, str] = {}
        where = f"endpoint {self.settings.name!r}"
        if self.server is None:
            off["restart_service"] = f"{where} is not started by the harness (no restarts)"
        if not self.proxiable:
            off["inject_fault"] = f"{where} is not a TCP endpoint on loopback (no fault link)"
        for rule_name, cap in (("recall", Capability.RECALL), ("mark_read", Capability.RECEIPTS),
                               ("send_to_group", Capability.GROUPS)):
            if not self._offers(cap):
                off[rule_name] = f"{where} does not offer capability {cap.value!r}"
        return off

    def _offers(self, capability: Capability) -> bool:
        # A fresh app on a server with an admin API has recall and receipts switched on.
        switched_on = capability in (Capability.RECALL, Capability.RECEIPTS) and self.has_apps
        return switched_on or self.can(capability)


@dataclass
class _Member:
    """One user of the world: its link, endpoint, User and what the model knows about it."""

    index: int
    protocol: str | None  # None: the endpoint's one protocol
    link: FaultLink | None  # None: the endpoint is not behind fault links
    user: Any  # harness.session.User
    endpoint: Any  # harness.session.Endpoint
    connected: bool = True

    @property
    def id(self) -> str:
        return str(self.user.id)

    @property
    def label(self) -> str:
        return f"u{self.index}" + (f" ({self.protocol})" if self.protocol else "")

    def offers(self, capability: Capability) -> bool:
        """Whether this user's connection and the endpoint both offer `capability`."""
        client = self.user.client
        return capability in client.capabilities and self.endpoint.info.supports(capability)


@dataclass
class _Sent:
    sender: int
    ack: Ack
    at: float  # monotonic
    recalled: bool = False


class World:
    """The live objects of one example; every method runs in the machine's event loop."""

    def __init__(self, context: WorldContext) -> None:
        self.context = context
        self.oracle = Oracle(strict_order=False)  # per-sender order; group order checked apart
        self.members: list[_Member] = []
        self.groups: list[tuple[GroupInfo, list[int]]] = []
        self.sent: list[_Sent] = []
        self.unknown: list[tuple[int, Any, str, str]] = []  # sender, to, body, client id
        self.conversations: dict[str, set[int]] = {}  # conversation -> participant indexes
        self.last_seq: dict[str, int] = {}  # conversation -> highest acked seq
        self.restarts = 0
        self.admin: AdminHandle | None = None
        self.settings: EndpointSettings | None = None
        self._probe: Any = None

    async def build(self, protocols: list[str | None], groups: list[list[int]]) -> None:
        from harness.session import User, open_endpoint, unique_id

        base = self.context.settings
        options = {**base.options, "backoff_base_s": 0.05, "backoff_cap_s": 0.4,
                   "jitter_seed": 1}
        if self.context.has_apps:
            assert self.context.server is not None
            self.admin = self.context.server.admin()
            if self.admin is None:
                raise HarnessError(f"{self.context.server!r} has apps but no admin API")
            app = await self.admin.create_app(
                tier="pro", features={"recall": True, "receipts": True},
                recall_window_s=RECALL_WINDOW_S,
            )
            self.settings = dataclasses.replace(
                base, app_id=app.app_id, tier="pro", protocol="v2",
                secrets={**base.secrets, "app_key": app.app_key},
                options={**options, "send_timeout_s": units(3)},
            )
        else:
            # No app of its own: fresh users on the endpoint as configured, its own timeouts.
            self.settings = dataclasses.replace(base, options=options)
        port = urlsplit(self.settings.url).port
        settings = self.settings

        async def join(index: int, protocol: str | None) -> _Member:
            link: FaultLink | None = None
            url = settings.url
            if self.context.proxiable:
                assert port is not None
                link = await FaultLink(
                    "127.0.0.1", port, timeline=self.context.timeline, name=f"u{index}"
                ).start()
                url = link.url_for(settings.url)
            endpoint = await open_endpoint(dataclasses.replace(settings, url=url))
            creds = await endpoint.adapter.provision_user(unique_id(f"u{index}"))
            member = _Member(index, protocol, link, User(endpoint, creds, self.oracle), endpoint)
            self.members.append(member)
            await member.user.connect(protocol)
            return member

        # Concurrently: a service with slow writes (a seeded defect) must not stall every example.
        joined = await asyncio.gather(*(join(i, p) for i, p in enumerate(protocols)))
        self.members = sorted(joined, key=lambda m: m.index)
        if not groups:
            return

        async def create(number: int, members: list[int]) -> tuple[GroupInfo, list[int]]:
            owner, *rest = members
            info = await self.members[owner].user.client.create_group(
                f"g{number}", [self.members[i].id for i in rest]
            )
            return info, members

        self.groups = list(await asyncio.gather(*(create(n, m) for n, m in enumerate(groups))))

    # -- model queries (deterministic: they decide which rules may run) -------------------------

    def connected(self) -> list[int]:
        return [m.index for m in self.members if m.connected]

    def recall_window_s(self) -> float:
        if self.context.has_apps:
            return RECALL_WINDOW_S
        window = self.context.info.limits.recall_window_s
        return float("inf") if window is None else float(window)

    def recallable(self) -> list[_Sent]:
        now = time.monotonic()
        window = self.recall_window_s()
        return [
            s for s in self.sent
            if not s.recalled
            and self.members[s.sender].connected
            and self.members[s.sender].offers(Capability.RECALL)
            and now - s.at < window / 2
        ]

    def seen_seq(self, reader: int, conversation: str) -> int:
        """The highest seq the reader has in a conversation: its own sends and what arrived."""
        own = [s.ack.seq for s in self.sent
               if s.sender == reader and s.ack.conversation == conversation]
        member = self.members[reader]
        got = [m.seq for m in member.user.recorder.messages(conversation)]
        return max([0, *own, *got])

    def readable(self, reader: int) -> list[str]:
        """The reader's conversations it has messages in, the most recently active first."""
        recent = [s.ack.conversation for s in reversed(self.sent)]
        convs = {
            conv for conv, people in self.conversations.items()
            if reader in people and self.seen_seq(reader, conv) > 0
        }
        return sorted(convs, key=recent.index)

    # -- actions --------------------------------------------------------------------------------

    async def send(self, sender: int, to: Any, body: str, recipients: set[int]) -> None:
        user = self.members[sender].user
        client_id = f"c-{len(self.sent)}-{len(self.unknown)}-{time.monotonic_ns()}"
        try:
            ack = await user.send(to, body, client_id=client_id)
        except UNKNOWN_OUTCOME:
            self.unknown.append((sender, to, body, client_id))
            return
        self._acked(sender, ack, recipients)

    def _acked(self, sender: int, ack: Ack, recipients: set[int]) -> None:
        self.sent.append(_Sent(sender, ack, time.monotonic()))
        self.conversations.setdefault(ack.conversation, set()).update(recipients | {sender})
        self.last_seq[ack.conversation] = max(self.last_seq.get(ack.conversation, 0), ack.seq)

    async def recall(self, sent: _Sent) -> None:
        sent.recalled = True  # recalled or maybe recalled: never try again
        user = self.members[sent.sender].user
        try:
            await user.recall(sent.ack)
        except UNKNOWN_OUTCOME:
            return
        except NotFound as exc:
            raise AssertionError(
                f"u{sent.sender} could not recall its acked message {sent.ack.message_id} "
                f"(seq {sent.ack.seq} in {sent.ack.conversation}): {exc}; an acked message "
                "must exist"
            ) from None

    async def mark_read(self, reader: int, conversation: str, seq: int) -> None:
        client = self.members[reader].user.client
        try:
            await client.mark_read(conversation, seq)
        except UNKNOWN_OUTCOME:
            return
        except BadRequest as exc:
            raise AssertionError(
                f"u{reader} could not mark {conversation} read up to seq {seq}, a seq it has: "
                f"{exc}; the service lost an acknowledged message"
            ) from None

    async def disconnect(self, index: int, how: str) -> None:
        member = self.members[index]
        member.connected = False
        await (member.user.close() if how == "close" else member.user.drop())

    async def reconnect(self, index: int) -> None:
        member = self.members[index]
        try:
            await member.user.reconnect()
        except UNKNOWN_OUTCOME:
            return  # still away (e.g. its link is partitioned): the model says so
        member.connected = True

    async def fault(self, index: int, kind: str) -> None:
        link = self.members[index].link
        assert link is not None, "inject_fault runs only where users are behind fault links"
        duration = self.context.fault_s
        if kind == "reset":
            await link.reset_now()
        elif kind == "latency":
            link.latency(ms=40, jitter_ms=40, duration_s=duration * 2)
        elif kind == "blackhole":
            link.blackhole(duration_s=duration)
        else:
            link.partition(duration_s=duration)
            await link.reset_now()

    async def restart(self, kill: bool) -> None:
        server = self.context.server
        assert server is not None, "restart_service runs only where the harness started the server"
        before = server.settings.url
        self.restarts += 1
        record = self.context.timeline.begin("server_restart", {"kill": kill}, link="service")
        try:
            after = (await asyncio.to_thread(server.restart, kill=kill)).url
        finally:
            self.context.timeline.end(record)
        if after != before:
            raise HarnessError(
                f"the server came back at {after}, not {before}; another process took the port "
                "meanwhile, so the world's links are cut (rerun the test)"
            )

    # -- the end of an example ------------------------------------------------------------------

    async def settle(self) -> None:
        """Heal, reconnect everyone, learn unknown outcomes, then wait until all is delivered."""
        from harness.session import new_user

        for member in self.members:
            if member.link is not None:
                member.link.heal()
        for member in self.members:
            await self._reconnect_for_good(member)
        for sender, to, body, client_id in self.unknown:
            # The same client id: the service answers with the original message if it has one.
            ack = await self.members[sender].user.send(to, body, client_id=client_id)
            self._acked(sender, ack, self._recipients(sender, to))
        self.unknown.clear()
        assert self.settings is not None
        endpoint = self.members[0].endpoint
        probe_endpoint = dataclasses.replace(endpoint, adapter=endpoint.adapter)
        self._probe = await new_user(probe_endpoint, Oracle(), "probe")
        # A user's inbox is ordered: once a later sentinel is in, everything before it is too.
        for member in self.members:
            for n in range(SETTLE_SENTINELS):
                await self._probe.client.send(Target.to_user(member.id), f"sentinel {n}")
        await asyncio.gather(*(self._sentinel_seen(m) for m in self.members))

    async def _reconnect_for_good(self, member: _Member) -> None:
        for attempt in range(5):
            try:
                await member.user.reconnect()
                member.connected = True
                return
            except UNKNOWN_OUTCOME:
                await RECONNECT_BACKOFF.sleep(attempt)
        raise AssertionError(f"u{member.index} cannot reconnect after every fault was healed")

    def _recipients(self, sender: int, to: Any) -> set[int]:
        if isinstance(to, GroupInfo):
            return {i for g, people in self.groups if g.group_id == to.group_id for i in people}
        return {m.index for m in self.members if m.user is to}

    async def _sentinel_seen(self, member: _Member) -> None:
        probe = self._probe.id

        def seen(event: Any) -> bool:
            return isinstance(event, MessageReceived) and event.message.sender == probe

        try:
            await member.user.recorder.wait_for(seen, timeout=self.settle_s(),
                                                what="a settle sentinel")
        except AssertionError:
            raise AssertionError(
                f"{member.label} received none of the {SETTLE_SENTINELS} sentinels sent to it "
                f"in {self.settle_s():g}s after the world settled; its deliveries are lost or "
                "stuck"
            ) from None

    def settle_s(self) -> float:
        """How long a settled world waits for a delivery: 3 units, or two of the endpoint's
        send timeouts where those are longer (a real server's first message to a new peer)."""
        if self.context.has_apps:
            return units(3)
        return max(units(3), 2 * self.context.settings.send_timeout_s)

    async def read_history(self) -> None:
        """Page every conversation forwards for each participant and show it to the oracle."""
        for conv, people in sorted(self.conversations.items()):
            if not self.last_seq.get(conv):
                continue
            for index in sorted(people):
                client = self.members[index].user.client
                after = 0
                for _ in range(100):
                    page = await client.history(conv, after=after, limit=50)
                    self.oracle.observe_history(self.members[index].id, page, after=after)
                    if not page.has_more or not page.messages:
                        break
                    after = page.messages[-1].seq

    async def aclose(self) -> None:
        for member in self.members:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(member.user.close(), units(2))
        if self._probe is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._probe.close(), units(2))
        for member in self.members:
            if member.link is not None:
                await member.link.stop()
            with contextlib.suppress(Exception):
                await member.endpoint.aclose()
        if self.admin is not None:
            await self.admin.aclose()


_users = st.integers(min_value=0, max_value=MAX_USERS - 1)
_groups = st.lists(
    st.sets(st.integers(min_value=0, max_value=MAX_USERS - 1), min_size=3, max_size=MAX_USERS),
    min_size=1, max_size=2,
)


class WorldMachine(RuleBasedStateMachine):
    """Conversations keep their guarantees whatever the users, the network and the server do."""

    context: ClassVar[WorldContext | None] = None  # set by the test before running
    step_timeout_s: ClassVar[float] = 15.0  # in time units

    def __init__(self) -> None:
        super().__init__()
        if self.context is None:
            raise HarnessError("WorldMachine.context is not set; the test must set it first")
        self.loop = asyncio.new_event_loop()
        self.world = World(self.context)
        self.disabled = self.context.disabled()
        self.failed = False
        self.steps = 0

    def _run(self, coro: Coroutine[Any, Any, T], *, bounded: bool = True) -> T:
        """Run one step in the example's loop; `bounded=False` for a step that bounds itself
        (a restart: cancelling its wait would leave the server starting in a thread)."""
        self.steps += 1
        try:
            if not bounded:
                return self.loop.run_until_complete(coro)
            return self.loop.run_until_complete(
                asyncio.wait_for(coro, units(self.step_timeout_s))
            )
        except BaseException:
            self.failed = True
            raise

    def _user(self, pick: int) -> int:
        return pick % len(self.world.members)

    def _pick_connected(self, pick: int) -> int:
        connected = self.world.connected()
        return connected[pick % len(connected)]

    # -- rules ----------------------------------------------------------------------------------

    @initialize(users=st.integers(min_value=3, max_value=MAX_USERS),
                extra=st.lists(st.booleans(), min_size=2, max_size=2),
                groups=_groups)
    def build(self, users: int, extra: list[bool], groups: list[set[int]]) -> None:
        # u0 and u2 speak the newest protocol, u1 the oldest: where an endpoint offers several,
        # they always meet, and receipts have a reader. The rest: `extra` picks newest or oldest.
        protocols = self._protocols([True, False, True, *extra][:users])
        members = [sorted({i % users for i in g}) for g in groups]
        members = [m for m in members if len(m) >= 3] or [list(range(users))]
        if "send_to_group" in self.disabled:
            members = []
        self._run(self.world.build(protocols, members))

    def _protocols(self, newest: list[bool]) -> list[str | None]:
        offered = sorted(self.context.info.protocols) if self.context else []
        if len(offered) < 2:
            return [None] * len(newest)  # the endpoint's one protocol
        return [offered[-1] if pick else offered[0] for pick in newest]

    def _has_connected(self) -> bool:
        return bool(self.world.connected())

    @precondition(_has_connected)
    @rule(sender=_users, to=_users, count=st.integers(min_value=1, max_value=3))
    def send(self, sender: int, to: int, count: int) -> None:
        """A connected user sends a few 1:1 messages in a row to another user (maybe away)."""
        s = self._pick_connected(sender)
        t = self._user(to)
        if t == s:
            t = (t + 1) % len(self.world.members)
        peer = self.world.members[t].user
        for n in range(count):
            self._run(self.world.send(s, peer, f"step {self.steps}.{n}: u{s} to u{t}", {t}))

    @precondition(lambda self: bool(self.world.groups) and self._has_connected())
    @rule(group=st.integers(min_value=0, max_value=1), sender=_users,
          count=st.integers(min_value=1, max_value=3))
    def send_to_group(self, group: int, sender: int, count: int) -> None:
        """A connected member posts a few messages in a row to one of its groups."""
        info, people = self.world.groups[group % len(self.world.groups)]
        candidates = [i for i in people if self.world.members[i].connected]
        if not candidates:
            return
        s = candidates[sender % len(candidates)]
        for n in range(count):
            body = f"step {self.steps}.{n}: u{s} to {info.name}"
            self._run(self.world.send(s, info, body, set(people) - {s}))

    @precondition(lambda self: bool(self.world.recallable()))
    @rule(pick=st.integers(min_value=0, max_value=1000))
    def recall(self, pick: int) -> None:
        """A sender whose connection offers recall recalls one of its messages in the window."""
        choices = self.world.recallable()
        self._run(self.world.recall(choices[pick % len(choices)]))

    def _readers(self) -> list[int]:
        return [
            m.index for m in self.world.members
            if m.connected and m.offers(Capability.RECEIPTS) and self.world.readable(m.index)
        ]

    @precondition(lambda self: bool(self._readers()))
    @rule(reader=_users, conversation=st.integers(min_value=0, max_value=10),
          behind=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=3))
    def mark_read(self, reader: int, conversation: int, behind: list[int]) -> None:
        """A user's read marks for one conversation, as a scrolling view (or two devices) sends
        them: each `behind` messages before the last it has, not necessarily in order."""
        readers = self._readers()
        r = readers[reader % len(readers)]
        convs = self.world.readable(r)
        conv = convs[conversation % len(convs)]
        last = self.world.seen_seq(r, conv)
        for b in behind:
            self._run(self.world.mark_read(r, conv, max(1, last - b)))

    @precondition(_has_connected)
    @rule(user=_users, how=st.sampled_from(["close", "drop"]))
    def disconnect(self, user: int, how: str) -> None:
        """A connected user logs out or vanishes abruptly."""
        self._run(self.world.disconnect(self._pick_connected(user), how))

    @precondition(lambda self: len(self.world.connected()) < len(self.world.members))
    @rule(user=_users)
    def reconnect(self, user: int) -> None:
        """An away user comes back and resumes from its cursor."""
        away = [m.index for m in self.world.members if not m.connected]
        self._run(self.world.reconnect(away[user % len(away)]))

    @precondition(lambda self: "inject_fault" not in self.disabled and self._has_connected())
    @rule(user=_users, kind=st.sampled_from(FAULTS))
    def inject_fault(self, user: int, kind: str) -> None:
        """The network misbehaves between one user and the service."""
        self._run(self.world.fault(self._pick_connected(user), kind))

    @precondition(lambda self: "restart_service" not in self.disabled
                  and self.world.restarts < self.world.context.max_restarts)
    @rule(kill=st.booleans())
    def restart_service(self, kill: bool) -> None:
        """The server crashes (kill -9) or stops, and comes back on the same data."""
        self._run(self.world.restart(kill), bounded=False)  # the server's start timeout bounds it

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def nothing_duplicated_reordered_or_moved_back(self) -> None:
        """No duplicate, per-sender and group order kept, read receipts never move back."""
        if self.world.members:
            self.world.oracle.assert_ok(complete=False)

    def teardown(self) -> None:
        try:
            if self.world.members and not self.failed:
                self._run(self._final_check())
        finally:
            try:
                self.loop.run_until_complete(self.world.aclose())
            finally:
                self.loop.close()

    async def _final_check(self) -> None:
        """No acked message lost, recalls reach everyone, history equals what was delivered."""
        await self.world.settle()
        self.world.oracle.assert_ok(complete=True)
        await self.world.read_history()
        self.world.oracle.assert_ok(complete=True)


__all__ = ["FAULTS", "World", "WorldContext", "WorldMachine"]
