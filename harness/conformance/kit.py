"""The conformance kit's machinery: clause results, the clause registry, and the run.

A clause is a small async function that takes a `Context` (one opened endpoint, helpers to
make users) and either returns (PASS, with what it checked), raises `NotApplicable` (the
endpoint cannot show this clause: the reason says why) or raises `ClauseFailed` (the adapter
broke the contract: the reason names the operation, what came back and what was expected).
Clauses register by name in `CLAUSES`, in the order they run. Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.config import HarnessConfig
from harness.contract import (
    Capability,
    Credentials,
    EndpointInfo,
    IMClient,
)
from harness.errors import ConfigError, HarnessError, IMError
from harness.recorder import Recorder
from harness.session import Endpoint, HarnessSession, describe, run_sync, unique_id
from harness.timing import units

DEFAULT_TIMEOUT_UNITS = 20.0  # per clause; a slow CI machine scales it with IM_HARNESS_TIME_SCALE


class Outcome(enum.StrEnum):
    """What one clause found."""

    PASS = "pass"
    FAIL = "fail"
    NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class ClauseResult:
    """One clause's outcome on one endpoint, with the reason a reader acts on."""

    clause: str
    outcome: Outcome
    reason: str
    duration_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAIL


class NotApplicable(HarnessError):
    """The endpoint cannot show this clause (a capability or limit it does not have)."""


class ClauseFailed(HarnessError):
    """The adapter broke the clause; the message says what it did and what was expected."""


ClauseFn = Callable[["Context"], Awaitable[str | None]]


@dataclass(frozen=True)
class Clause:
    """A named contract clause: an async check, bounded by `timeout_units` time units."""

    name: str
    fn: ClauseFn
    doc: str
    timeout_units: float = DEFAULT_TIMEOUT_UNITS


CLAUSES: list[Clause] = []  # the registry, in running order


def clause(name: str, *, timeout_units: float = DEFAULT_TIMEOUT_UNITS
           ) -> Callable[[ClauseFn], ClauseFn]:
    """Register an async clause under `name` (unique).

    Example::

        @clause("errors.not_found")
        async def not_found(ctx: Context) -> str:
            ...
            return "send to an unknown user raised NotFound"
    """

    def deco(fn: ClauseFn) -> ClauseFn:
        if any(c.name == name for c in CLAUSES):
            raise HarnessError(f"conformance clause {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        CLAUSES.append(Clause(name, fn, doc, timeout_units))
        return fn

    return deco


def clause_names() -> list[str]:
    """Every registered clause name, in running order."""
    _load_clauses()
    return [c.name for c in CLAUSES]


def _load_clauses() -> None:
    import harness.conformance.clauses  # noqa: F401 - registers the clauses on import


# --- what a clause works with -------------------------------------------------------------


@dataclass(eq=False)
class Peer:
    """A provisioned test user of one clause, with its client and the events it received."""

    credentials: Credentials
    client: IMClient | None = None
    recorder: Recorder | None = None

    @property
    def id(self) -> str:
        return self.credentials.user_id

    @property
    def c(self) -> IMClient:
        if self.client is None:
            raise HarnessError(f"user {self.id!r} is not connected")
        return self.client

    @property
    def rec(self) -> Recorder:
        if self.recorder is None:
            raise HarnessError(f"user {self.id!r} is not connected")
        return self.recorder


@dataclass(eq=False)
class Context:
    """One clause's view of the endpoint; the clients it opens are closed after the clause."""

    endpoint: Endpoint
    _peers: list[Peer] = field(default_factory=list)
    _cleanups: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    @property
    def info(self) -> EndpointInfo:
        return self.endpoint.info

    def where(self) -> str:
        return f"endpoint {self.endpoint.name!r} ({describe(self.info)})"

    def declares(self, capability: Capability) -> bool:
        return capability in self.info.capabilities

    def need(self, *capabilities: Capability) -> None:
        """Raise `NotApplicable` unless the endpoint declares every one of `capabilities`."""
        for cap in capabilities:
            if not self.declares(cap):
                raise NotApplicable(f"the endpoint declares no {cap.value!r} capability")

    async def user(self, name: str = "user", *, connect: bool = True,
                   protocol: str | None = None) -> Peer:
        """Provision `name-xxxxxxxx` and (by default) connect it with its events recorded."""
        credentials = await setup(
            f"provision_user({name!r})",
            self.endpoint.adapter.provision_user(unique_id(name)),
        )
        peer = Peer(credentials)
        self._peers.append(peer)
        if connect:
            await self.connect(peer, protocol=protocol)
        return peer

    async def connect(self, peer: Peer, *, protocol: str | None = None) -> Peer:
        client = await setup(
            f"connect({peer.id!r})",
            self.endpoint.adapter.connect(peer.credentials, protocol=protocol),
        )
        peer.client = client
        peer.recorder = Recorder(peer.id, client)
        peer.recorder.start()
        return peer

    def on_exit(self, fn: Callable[[], Awaitable[Any]]) -> None:
        """Run `fn` when the clause ends (after its clients are closed)."""
        self._cleanups.append(fn)

    async def aclose(self) -> None:
        for peer in self._peers:
            if peer.client is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(units(5)):
                        await peer.client.close()
            if peer.recorder is not None:
                with contextlib.suppress(Exception):
                    await peer.recorder.stop()
        for fn in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(units(5)):
                    await fn()


def _name(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}({text!r})" if text else type(exc).__name__


async def setup(what: str, aw: Awaitable[Any]) -> Any:
    """Await a step the clause needs before it can check anything; a failure fails the clause."""
    try:
        return await aw
    except (NotApplicable, ClauseFailed):
        raise
    except IMError as exc:
        raise ClauseFailed(f"{what} raised {_name(exc)}") from exc


async def step(what: str, aw: Awaitable[Any]) -> Any:
    """Await an operation under test; an error fails the clause, naming the operation."""
    return await setup(what, aw)


async def expect_error(what: str, aw: Awaitable[Any], *expected: type[IMError]) -> IMError:
    """Await `aw`, which must raise one of `expected`; anything else fails the clause."""
    names = " or ".join(cls.__name__ for cls in expected)
    try:
        result = await aw
    except expected as exc:
        return exc
    except IMError as exc:
        raise ClauseFailed(f"{what} raised {_name(exc)}; expected {names}") from exc
    raise ClauseFailed(f"{what} succeeded (returned {_short(result)}); expected {names}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check(condition: object, message: str) -> None:
    """Fail the clause with `message` unless `condition` holds."""
    if not condition:
        raise ClauseFailed(message)


# --- running ------------------------------------------------------------------------------


async def _run_one(entry: Clause, endpoint: Endpoint) -> ClauseResult:
    ctx = Context(endpoint)
    limit = units(entry.timeout_units)
    started = time.monotonic()
    try:
        try:
            async with asyncio.timeout(limit):
                note = await entry.fn(ctx)
        finally:
            await ctx.aclose()
    except NotApplicable as exc:
        outcome, reason = Outcome.NOT_APPLICABLE, str(exc)
    except ClauseFailed as exc:
        outcome, reason = Outcome.FAIL, str(exc)
    except TimeoutError:
        outcome, reason = Outcome.FAIL, f"did not finish within {limit:.1f}s ({entry.doc})"
    except AssertionError as exc:  # WaitTimeout from a recorder: the event never came
        outcome, reason = Outcome.FAIL, " ".join(str(exc).split())[:600]
    except IMError as exc:
        outcome, reason = Outcome.FAIL, f"an operation raised {_name(exc)} unexpectedly"
    except Exception as exc:  # a bug in the adapter (or the clause) must not stop the others
        outcome, reason = Outcome.FAIL, f"crashed: {_name(exc)}"
    else:
        outcome, reason = Outcome.PASS, note or entry.doc
    return ClauseResult(entry.name, outcome, reason, time.monotonic() - started)


def select(names: Iterable[str] | None) -> list[Clause]:
    """The clauses to run: all, or those named (in registry order); unknown names refused."""
    _load_clauses()
    if names is None:
        return list(CLAUSES)
    wanted = list(names)
    known = {c.name for c in CLAUSES}
    for name in wanted:
        if name not in known:
            raise ConfigError(
                f"conformance clause {name!r} is not known; known: {', '.join(sorted(known))}"
            )
    return [c for c in CLAUSES if c.name in wanted]


async def check_endpoint(hs: HarnessSession, name: str,
                         clauses: Sequence[Clause] | None = None) -> list[ClauseResult]:
    """Run the clauses against endpoint `name` of a started session, each on a fresh open."""
    results = []
    for entry in clauses if clauses is not None else select(None):
        endpoint = await hs.open(name)
        try:
            results.append(await _run_one(entry, endpoint))
        finally:
            with contextlib.suppress(Exception):
                await endpoint.aclose()
    return results


def run_conformance(config: HarnessConfig, endpoint: str, *,
                    clauses: Iterable[str] | None = None) -> list[ClauseResult]:
    """Run the adapter contract's clauses against one configured endpoint.

    Bad input (unknown endpoint or clause, unset secret, endpoint unreachable) raises
    `ConfigError`; every clause otherwise yields a `ClauseResult`.

    Example::

        results = run_conformance(HarnessConfig(), "new")
        assert not [r for r in results if r.failed]
    """
    chosen = select(clauses)
    hs = HarnessSession(config, [endpoint])
    hs.start()
    try:
        return run_sync(check_endpoint(hs, endpoint, chosen))
    finally:
        hs.stop()
