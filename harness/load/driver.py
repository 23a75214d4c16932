"""The load engine: scenario units on an opened `Endpoint`, open-model schedules, metrics, oracle.

Everything here runs in one asyncio loop (no gevent, no locust): the locust user only starts and
cancels units through the bridge. Sends fire on a fixed schedule without waiting for earlier
acks, and every latency is timed from the intended send time. Peers of a unit live in the same
process, so one monotonic clock times send -> delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from harness.contract import Credentials, IMClient, MessageReceived, Target
from harness.errors import ConnectionLost, IMError, IMTimeout, LimitReached
from harness.load.health import LoopProbe
from harness.load.metrics import LoadMetrics
from harness.load.phases import PhaseMode, Phases, first_at, mode_of
from harness.load.scenarios import ScenarioPlan, scenarios
from harness.oracle import Oracle
from harness.session import Endpoint, describe, unique_id
from harness.timing import WaitTimeout, until

# emit(name, response_time_ms, exception or None): what the locust layer turns into request events
Emit = Callable[[str, float, BaseException | None], None]
BEHIND_SLACK_S = 0.05  # an operation started this much after its intended time is behind schedule
SETUP_RETRY_S = 1.0
VIOLATION_EXAMPLES = 3  # explanations per kind kept for the summary
_KIND_COUNTER = {"loss": "loss", "duplicate": "duplicates", "order": "reordered",
                 "group_order": "reordered", "causal_order": "reordered"}


# The phase mode of the unit running in this task (set by LoadRun.unit from its scenario).
_MODE: contextvars.ContextVar[PhaseMode] = contextvars.ContextVar("phase_mode",
                                                                  default=PhaseMode.SPREAD)


EARLY_S = 0.0005  # a timer firing more than this before its instant is re-armed (uvloop: ms)


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded for the request events."""
    return round(seconds * 1000.0, 3)


class LoadRun:
    """One process's load: units, their clients, metrics and the oracle that judges delivery."""

    def __init__(self, endpoint: Endpoint, plan: ScenarioPlan, *, emit: Emit | None = None,
                 slack_s: float = BEHIND_SLACK_S, process: int = 0, processes: int = 1) -> None:
        self.endpoint = endpoint
        self.plan = plan
        self.metrics = LoadMetrics()
        self.metrics.sources = 1
        self.oracle = Oracle()
        self.emit: Emit = emit or (lambda name, ms, exc: None)
        self.slack_s = slack_s
        self.sending = True
        # client id -> intended send time (a float, so the collector never scans the entries)
        self.intended: dict[str, float] = {}
        self.clients: list[IMClient] = []
        self.cohorts = {"v1": 0, "v2": 0}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._units = itertools.count()
        self.state: dict[str, Any] = {}  # per-run state a scenario keeps (e.g. a counter)
        self.probe = LoopProbe()  # generator health: loop lag and CPU while sends are scheduled
        self._loop: asyncio.AbstractEventLoop | None = None  # the run's loop, once it schedules
        self._counts = self.metrics.counts  # the hot path counts here directly
        # each sender's phase, per mode (see harness.load.phases)
        self._phases = {mode: Phases(mode, process=process, processes=processes)
                        for mode in PhaseMode}

    def __repr__(self) -> str:
        return f"<LoadRun {self.plan.label} on {self.endpoint.name}: {self.metrics!r}>"

    # -- building blocks ---------------------------------------------------------------------

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        # the loop the schedules run on (get_running_loop costs a getpid() per call in 3.11)
        task = (self._loop or asyncio.get_running_loop()).create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def behind(self, intended: float) -> None:
        if time.monotonic() - intended > self.slack_s:
            self.metrics.count("behind_schedule")

    async def provision(self, name: str) -> Credentials:
        return await self.endpoint.adapter.provision_user(unique_id(name))

    async def connect(self, creds: Credentials, *, protocol: str | None = None,
                      intended: float | None = None) -> IMClient:
        """Log in, time it (from `intended` when given), and pump its events into the oracle."""
        start = time.monotonic() if intended is None else intended
        try:
            client = await self.endpoint.adapter.connect(creds, protocol=protocol)
        except IMError as exc:
            self._connect_failed(exc, start)
            raise
        elapsed = time.monotonic() - start
        self.metrics.count("connects")
        self.metrics.record("connect", elapsed)
        self.emit("connect", ms(elapsed), None)
        self.clients.append(client)
        self.watch(creds.user_id, client)
        return client

    def _connect_failed(self, exc: IMError, start: float) -> None:
        self.metrics.count("connect_failures")
        self.metrics.error(exc)
        if isinstance(exc, LimitReached):
            self.metrics.count("limit_reached")
            cap = self.endpoint.info.limits.max_connections
            self.metrics.note(
                f"endpoint {self.endpoint.name!r} ({describe(self.endpoint.info)}) refused "
                f"connections at its tier's connection cap (LimitReached, max_connections="
                f"{'?' if cap is None else format(cap, 'g')}): those connect failures are the cap, "
                "not noise"
            )
        self.emit("connect", ms(time.monotonic() - start), exc)

    def watch(self, user_id: str, client: IMClient) -> None:
        """Pump a client's events: oracle first, then delivery latency for our own sends."""
        task = asyncio.ensure_future(self._pump(user_id, client))
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)

    async def _pump(self, user_id: str, client: IMClient) -> None:
        observe, counts, intended_at = self.oracle.observe, self._counts, self.intended
        record, monotonic = self.metrics.record, time.monotonic
        async for event in client.events():
            if not isinstance(event, MessageReceived):
                observe(user_id, event)
                continue
            arrived = monotonic()  # before the oracle's work: a delivery's latency is the wire's
            observe(user_id, event)
            counts["deliveries"] += 1
            if event.offline:
                counts["offline_deliveries"] += 1
                continue  # its latency includes the time the receiver was away
            intended = intended_at.get(event.message.client_id)
            if intended is not None:
                latency = arrived - intended
                record("delivery", latency)
                self.emit("delivery", ms(latency), None)

    def send(self, sender: str, client: IMClient, target: Target, recipients: Sequence[str],
             intended: float, seq: int) -> None:
        """Fire one scheduled send without waiting for it (open model)."""
        counts = self._counts
        if time.monotonic() - intended > self.slack_s:
            counts["behind_schedule"] += 1
        counts["sends"] += 1
        client_id = f"{sender}:{seq}"
        self.intended[client_id] = intended
        self.background(self._send(sender, client, target, recipients, intended, client_id))

    async def _send(self, sender: str, client: IMClient, target: Target,
                    recipients: Sequence[str], intended: float, client_id: str) -> None:
        try:
            ack = await client.send(target, client_id, client_id=client_id)
        except (ConnectionLost, IMTimeout) as exc:
            self.oracle.sent_unacked(sender, client_id)
            self._send_failed(exc, intended)
            return
        except asyncio.CancelledError:
            # Still unacknowledged when the run ended: a failed send, not a silent one.
            self.oracle.sent_unacked(sender, client_id)
            self.metrics.count("send_errors")
            self.metrics.errors["NoAckBeforeEnd"] += 1
            raise
        except IMError as exc:
            self.intended.pop(client_id, None)
            self._send_failed(exc, intended)
            return
        elapsed = time.monotonic() - intended
        self.oracle.sent(sender, ack, recipients=recipients)
        self._counts["acks"] += 1
        self.metrics.record("send_ack", elapsed)
        self.emit("send_ack", ms(elapsed), None)

    def _send_failed(self, exc: IMError, intended: float) -> None:
        self.metrics.count("send_errors")
        self.metrics.error(exc)
        self.emit("send_ack", ms(time.monotonic() - intended), exc)

    async def schedule(self, rate: float, op: Callable[[float, int], Any]) -> None:
        """Call `op(intended, n)` at `rate` per second on a fixed schedule until stopped.

        This schedule is one sender: its intended times lie on its own phase's grid (see
        `harness.load.phases`; the scenario's `lockstep` parameter chooses the mode). Sends are
        fired from timer callbacks, not a sleeping coroutine; an `op` that returns a coroutine
        is awaited before the next tick is armed.
        """
        self.probe.start()
        if rate <= 0:
            await asyncio.Event().wait()  # nothing scheduled: wait to be cancelled
        interval = 1.0 / rate
        phase = self._phases[_MODE.get()].next()
        loop = self._loop = asyncio.get_running_loop()
        start = first_at(time.monotonic(), interval, phase)
        done: asyncio.Future[None] = loop.create_future()
        handle: list[asyncio.TimerHandle | None] = [None]
        n = 0

        def arm() -> None:
            handle[0] = loop.call_later(start + n * interval - time.monotonic(), tick)

        def tick() -> None:
            nonlocal n
            if not self.sending:
                if not done.done():
                    done.set_result(None)
                return
            intended = start + n * interval
            if intended - time.monotonic() > EARLY_S:
                arm()  # latency is timed from the intended time: do not fire well before it
                return
            result = op(intended, n)
            n += 1
            if asyncio.iscoroutine(result):
                task = loop.create_task(result)
                task.add_done_callback(resumed)
                return
            arm()

        def resumed(task: asyncio.Task[Any]) -> None:
            if done.done():
                return
            if task.cancelled():
                done.cancel()
            elif task.exception() is not None:
                done.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                arm()

        arm()
        try:
            await done
        finally:
            if handle[0] is not None:
                handle[0].cancel()

    async def setup(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run a unit's setup, retrying on endpoint errors (counted) until it works or we stop."""
        while self.sending:
            try:
                return await make()
            except IMError:
                await asyncio.sleep(SETUP_RETRY_S)
        return None

    # -- scenario units ----------------------------------------------------------------------

    async def unit(self, scenario: str) -> None:
        """Run one unit of the registered `scenario` until cancelled or stopped."""
        self.probe.start()  # from the first unit's setup on: a generator too busy to connect too
        params = self.plan.params[scenario]
        _MODE.set(mode_of(params))  # this task's context: its schedules follow the scenario
        await scenarios.get(scenario).unit(self, params, next(self._units))

    async def pair(self, name: str, protocols: tuple[str | None, str | None] = (None, None)
                   ) -> tuple[tuple[str, IMClient], tuple[str, IMClient]]:
        """Two new users, both connected: ((user_id, client), (user_id, client))."""
        a, b = await asyncio.gather(self.provision(f"{name}-a"), self.provision(f"{name}-b"))
        ca = await self.connect(a, protocol=protocols[0])
        try:
            cb = await self.connect(b, protocol=protocols[1])
        except IMError:
            await self.close_client(ca)
            raise
        return (a.user_id, ca), (b.user_id, cb)

    async def chat(self, rate: float, ends: tuple[tuple[str, IMClient], tuple[str, IMClient]]
                   ) -> None:
        """Both ends of a pair send to each other at `rate` per second each."""
        (a, ca), (b, cb) = ends
        to_a, to_b = Target.to_user(a), Target.to_user(b)
        ab, ba = (b,), (a,)
        send = self.send

        def op(intended: float, n: int) -> None:
            send(a, ca, to_b, ab, intended, n)
            send(b, cb, to_a, ba, intended, n)

        # One schedule (one phase) for the pair: both ends fire together. Two schedules would
        # double the generator's timer wake-ups, its main cost at low rates.
        await self.schedule(rate, op)

    async def hold_and_close(self, client: IMClient, hold: float) -> None:
        await asyncio.sleep(hold)
        await self.close_client(client)

    async def reconnect(self, client: IMClient, intended: float) -> None:
        """Reconnect a dropped client, timed from `intended` like a connect."""
        try:
            await client.reconnect()
        except IMError as exc:
            self._connect_failed(exc, intended)
            return
        elapsed = time.monotonic() - intended
        self.metrics.count("connects")
        self.metrics.record("connect", elapsed)
        self.emit("connect", ms(elapsed), None)

    # -- the end -----------------------------------------------------------------------------

    async def close_client(self, client: IMClient) -> None:
        with contextlib.suppress(Exception):
            await client.close()

    async def finish(self, drain_s: float) -> dict[str, Any]:
        """Stop sending, wait up to `drain_s` for acks and deliveries, judge, close, encode."""
        self.sending = False
        deadline = time.monotonic() + drain_s
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(WaitTimeout):
            await until(lambda: not self.oracle.missing(),
                        timeout=max(0.0, deadline - time.monotonic()), interval=0.05,
                        what="in-flight deliveries")
        self.judge()
        clients, self.clients = self.clients, []
        closing = asyncio.gather(*(self.close_client(c) for c in clients))
        try:
            await asyncio.wait_for(closing, timeout=max(1.0, drain_s))
        except TimeoutError:
            pass
        for pump in list(self._pumps):
            pump.cancel()
        payload = self.metrics.encode()
        payload["cohorts"] = dict(self.cohorts)
        payload["health"] = self.probe.stop()
        payload["schedule"] = self.schedule_parts()
        return payload

    def schedule_parts(self) -> list[dict[str, Any]]:
        """Each mode's phases handed out so far (`phases.summarize` merges them)."""
        return [p.encode() for p in self._phases.values() if p.assigned]

    def judge(self) -> None:
        """Fold the oracle's verdict into the counters (with a few explanations as notes)."""
        shown: dict[str, int] = {}
        for violation in self.oracle.violations(complete=True):
            counter = _KIND_COUNTER.get(violation.kind, "other_violations")
            self.metrics.count(counter)
            shown[violation.kind] = shown.get(violation.kind, 0) + 1
            if shown[violation.kind] <= VIOLATION_EXAMPLES:
                self.metrics.note(f"[{violation.kind}] {violation.explanation}")
