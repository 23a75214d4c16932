"""What suite modules share, on top of the pytest plugin's fixtures.

A framework layer (it imports pytest). A suite module, packaged or a team's own, imports only
`harness.contract`, `harness.errors`, `harness.timing` and this module, and takes everything
else from the plugin's fixtures; what it needs of the core is re-exported here.

Example::

    from harness.contract import MessageRecalled
    from harness.testkit import expect_event, settled

    async def test_recall_reaches_the_peer(im_user, oracle):
        alice, bob = await im_user("alice"), await im_user("bob")
        ack = await alice.send(bob, "oops")
        await alice.recall(ack)
        await expect_event(bob, MessageRecalled, message_id=ack.message_id, offline=False)
        await settled(oracle)
        oracle.assert_ok()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import pytest

from harness.contract import (
    Credentials,
    EndpointInfo,
    EndpointSettings,
    IMClient,
    MessageReceived,
    ServerRule,
)
from harness.errors import HarnessError
from harness.faults import FaultLink
from harness.faults.endpoint import linked_endpoint
from harness.faults.world import WorldContext, WorldMachine
from harness.journey import JourneyRecord, Step, UpgradePair, differences, info_dict
from harness.oracle import Oracle
from harness.properties import profile_name, run_machine
from harness.retry import Attempt, send_with_retry
from harness.session import Endpoint, User, describe, new_user, unique_id
from harness.timing import WaitTimeout, units, until

E = TypeVar("E")

LinkFactory = Callable[..., Awaitable[FaultLink]]
"""The `fault_link` fixture: ``link = await fault_link(endpoint=None, name=None)``."""


# --- what an endpoint declares ------------------------------------------------------------


def burst_size(endpoint: Endpoint, wanted: int = 20) -> int:
    """`wanted`, capped by the tier's send burst so a burst is never rate limited."""
    burst = endpoint.info.limits.send_burst
    return wanted if burst is None else max(1, min(wanted, burst))


def require_protocols(endpoint: Endpoint, *wanted: str) -> None:
    """Skip unless `endpoint` accepts every protocol version in `wanted`."""
    offered = endpoint.info.protocols
    for protocol in wanted:
        if protocol not in offered:
            pytest.skip(
                f"endpoint {endpoint.name!r} ({describe(endpoint.info)}) does not offer protocol "
                f"{protocol!r} (offers: {', '.join(sorted(offered))})"
            )


def require_server_enforces(endpoint: Endpoint, rule: ServerRule, what: str) -> None:
    """Skip where the server leaves `rule` to the adapter: a pass would not test the server."""
    if rule in endpoint.info.client_enforced:
        pytest.skip(
            f"endpoint {endpoint.name!r} ({describe(endpoint.info)}) declares no server-side check "
            f"that {what} ({rule.value}); its adapter refuses it itself"
        )


# --- waits ---------------------------------------------------------------------------------


async def expect_event(
    user: User,
    cls: type[E],
    /,
    *,
    offline: bool | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - a wait helper; scaled by units()
    **fields: Any,
) -> E:
    """The first event of type `cls` at `user` whose fields equal `fields`; fails on timeout.

    Fields match as in `Recorder.wait_event` (the event's own, else its message's); the
    timeout defaults to `units(5)`. With
    `offline=`, the event found must also have (or not have) come as an offline catch-up:
    that is asserted, not matched, so a wrong flag fails with its own message.
    """
    event = await user.recorder.wait_event(cls, timeout=timeout, **fields)
    if offline is not None:
        got = getattr(event, "offline", None)
        assert got is offline, f"{cls.__name__} at {user.id} has offline={got}, want {offline}"
    return event


async def sentinel(sender: User, receiver: User) -> None:
    """Send a 1:1 message and wait for it: a user's inbox is ordered, so earlier entries are in."""
    ack = await sender.send(receiver, "sentinel")
    await expect_event(receiver, MessageReceived, message_id=ack.message_id)


async def settled(oracle: Oracle, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
    """Wait until every acked copy has been seen, so a following `assert_ok` judges no race.

    Bounded: after `timeout` (default `units(5)`) it returns anyway and `oracle.assert_ok()`
    reports what is missing.
    """
    with contextlib.suppress(WaitTimeout):
        await until(
            lambda: not oracle.missing(),
            timeout=units(5) if timeout is None else timeout,
            what="every acked copy",
        )


async def app_connections(endpoint: Endpoint) -> int:
    """The live connections the service counts for `endpoint`'s app (through its admin handle)."""
    if endpoint.admin is None:
        raise HarnessError(
            f"endpoint {endpoint.name!r} has no admin handle to count connections with; "
            "mark the test @pytest.mark.needs_admin"
        )
    counters = await endpoint.admin.counters()
    return int(counters["connections_by_app"].get(endpoint.settings.app_id, 0))


async def wait_connections(
    endpoint: Endpoint,
    count: int,
    *,
    timeout: float,  # noqa: ASYNC109 - a wait helper
    what: str = "",
) -> None:
    """Wait until the service counts `count` live connections of `endpoint`'s app."""

    async def reached() -> bool:
        return await app_connections(endpoint) == count

    await until(
        reached, timeout=timeout, what=what or f"{count} connection(s) of app "
        f"{endpoint.settings.app_id!r}"
    )


# --- clients and credentials ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def client_through_link(
    fault_link: LinkFactory, endpoint: Endpoint, **options: Any
) -> AsyncIterator[tuple[FaultLink, IMClient, EndpointInfo]]:
    """A fresh user of `endpoint`'s app, logged in through a new link of the `fault_link` fixture.

    The link records on the test's fault timeline. `options` are added to the adapter's
    options (e.g. `send_timeout_s`). Yields `(link, client, info)`; the link, the client and the
    extra adapter are closed afterwards. Skips (via the fixture) when no link can be made.

    Example::

        async with client_through_link(fault_link, endpoint, send_timeout_s=1) as (link, c, _):
            with link.blackhole():
                ...
    """
    link = await fault_link(endpoint)
    linked = await linked_endpoint(endpoint, link, **options)
    client = None
    try:
        creds = await linked.adapter.provision_user(unique_id("linked"))
        client = await linked.adapter.connect(creds)
        yield link, client, linked.info
    finally:
        await link.stop()
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.drop(), units(5))
        await linked.aclose()


async def mint_credentials(endpoint: Endpoint, user_id: str, *, ttl_s: float) -> Credentials:
    """Credentials for `user_id` in `endpoint`'s app, minted by its admin handle for `ttl_s` s.

    `endpoint` is an app the harness made (`await endpoint.with_app()`), so the handle holds
    its key. Skips, with the reason, when the endpoint's admin handle cannot mint users.
    """
    mint = getattr(endpoint.admin, "mint_user", None)
    if mint is None:
        what = "has no admin handle" if endpoint.admin is None else (
            f"has an admin handle ({type(endpoint.admin).__name__}) that cannot mint users"
        )
        pytest.skip(f"endpoint {endpoint.name!r} ({describe(endpoint.info)}) {what}")
    if endpoint.app is None:
        raise HarnessError(
            f"endpoint {endpoint.name!r}: the harness holds no handle of its app; mint on an "
            "app made for the test: `app = await endpoint.with_app()`"
        )
    credentials: Credentials = await mint(endpoint.app, user_id, ttl_s=ttl_s)
    return credentials


# --- the upgrade journey ---------------------------------------------------------------------


class StepSkipped(Exception):
    """Raised by `Journey.skip` inside a step: the step does not apply here (the reason says)."""


class Journey:
    """The `upgrade_journey` fixture: a private server pair, its named steps, its record.

    A step that fails is recorded with its message and the journey goes on (later steps still
    tell what held); `finish()` then fails the test naming every failed step.

    Example::

        async def test_journey(upgrade_journey, oracle):
            old = await upgrade_journey.open()
            ...
            await upgrade_journey.upgrade()
            async with upgrade_journey.step("history readable after"):
                assert ...
            upgrade_journey.finish()
    """

    def __init__(self, pair: UpgradePair, record: JourneyRecord) -> None:
        self.pair, self.record = pair, record
        self._opened: list[Endpoint] = []

    @property
    def upgraded_at(self) -> float | None:
        return self.pair.upgraded_at

    async def open(self) -> Endpoint:
        """The pair's endpoint as it is now (before the upgrade: old; after: new)."""
        endpoint = await self.pair.open()
        self._opened.append(endpoint)
        if self.pair.upgraded_at is None:
            self.record.infos.setdefault("before", info_dict(endpoint.info))
        else:  # the latest view after the upgrade: features activate after a lag
            self.record.infos["after"] = info_dict(endpoint.info)
        return endpoint

    async def upgrade(self) -> EndpointSettings:
        """Upgrade the server in place (in a worker thread: clients keep running meanwhile)."""
        before = self.pair.describe()
        settings = await asyncio.to_thread(self.pair.upgrade)
        self.record.server = f"{before} -> {self.pair.describe()}"
        return settings

    async def rollback(self) -> tuple[str, bool]:
        """Drill the rollback; the fact is recorded (it is a fact, not a failure)."""
        fact, accepted = await asyncio.to_thread(self.pair.rollback)
        self.record.rollback = fact
        return fact, accepted

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[Step]:
        """Run one named step; an assertion or IM error inside marks it failed, not the test."""
        step = Step(name)
        self.record.steps.append(step)
        started = time.monotonic()
        try:
            yield step
        except StepSkipped as why:
            step.status, step.detail = "skipped", str(why)
        except (AssertionError, HarnessError, TimeoutError) as exc:
            step.status = "failed"
            step.detail = " ".join(str(exc).split())[:500] or type(exc).__name__
        finally:
            step.seconds = round(time.monotonic() - started, 3)

    def skip(self, reason: str) -> NoReturn:
        """Skip the current step with `reason` (the journey goes on)."""
        raise StepSkipped(reason)

    def observed(self, difference: str) -> None:
        """Note a difference the journey saw between old and new (shown in what changed)."""
        self.record.differences.append(difference)

    def finish(self) -> None:
        """Fail naming each failed step; note what the reported defaults changed."""
        infos = self.record.infos
        if "before" in infos and "after" in infos:
            self.record.differences[:0] = differences(infos["before"], infos["after"])
        failed = self.record.failed()
        assert not failed, "upgrade journey failed at: " + "; ".join(
            f"{s.name}: {s.detail}" for s in failed)

    async def aclose(self) -> None:
        opened, self._opened = self._opened, []
        for endpoint in opened:
            with contextlib.suppress(Exception):
                await endpoint.aclose()


__all__ = [
    "Attempt",
    "Endpoint",
    "Journey",
    "JourneyRecord",
    "StepSkipped",
    "UpgradePair",
    "LinkFactory",
    "Oracle",
    "User",
    "WorldContext",
    "WorldMachine",
    "app_connections",
    "burst_size",
    "client_through_link",
    "describe",
    "expect_event",
    "mint_credentials",
    "new_user",
    "profile_name",
    "require_protocols",
    "require_server_enforces",
    "run_machine",
    "send_with_retry",
    "sentinel",
    "settled",
    "wait_connections",
]
