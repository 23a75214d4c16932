"""What every adapter shares: a client's event stream and lifecycle, an adapter's bookkeeping.

`StreamClient` is the half of an `IMClient` that does not depend on the wire: the event queue
behind `events()`, `Disconnected` / `Reconnected`, and the close / drop / reconnect steps around
the transport-specific hooks. `AdapterBase` opens, keeps and closes an adapter's clients and its
HTTP session, and validates `[endpoints.X.options]` through the adapter's `Options` model.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import types
import typing
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from harness.contract import Disconnected, EndpointSettings, Event, Reconnected
from harness.errors import ConfigError

# Option types shared by the adapters' `Options` models: numbers as TOML writes them (no
# strings, no booleans), seconds never negative.
Seconds = Annotated[float, Field(strict=True, ge=0)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0)]
Count = Annotated[int, Field(strict=True, ge=0)]

_M = TypeVar("_M", bound=BaseModel)
_END = object()  # the queue's end marker: the adapter was closed
_NO_EVENTS: collections.deque[Any] = collections.deque(maxlen=0)  # shared, always empty


class OptionsModel(BaseModel):
    """Base of an adapter's `Options`: every key known, values immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffOptions(OptionsModel):
    """The keys of the one backoff policy (`harness.backoff.Backoff`) an adapter retries with."""

    backoff_base_s: Seconds = Field(
        0.5, description="retry and reconnect backoff: the first delay's upper bound in "
        "seconds, doubling per attempt, full jitter")
    backoff_cap_s: Seconds = Field(
        10.0, description="retry and reconnect backoff: the largest delay in seconds")
    jitter_seed: int | str | None = Field(
        None, description="seed of the backoff jitter, for reproducible delays; unset: random")


class ClientState(enum.StrEnum):
    """Where a client is in its life."""

    NEW = "new"  # not connected yet
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # lost the connection, reconnecting on its own
    DROPPED = "dropped"  # drop(), or a first connection that failed: reconnect() resumes
    CLOSED = "closed"  # close(), or the server refused the client for good
    FAILED = "failed"  # gave up reconnecting on its own


class StreamClient:
    """An IMClient's event stream and lifecycle; subclasses supply the three transport hooks."""

    def __init__(self) -> None:
        # A deque and the readers' wake-up futures, not an asyncio.Queue: its three deques
        # cost ~2 KiB per idle client, and its put/get twice the CPU per event.
        self._queue: collections.deque[Any] = _NO_EVENTS  # its own deque from the first event
        self._readers: list[asyncio.Future[None]] | None = None  # events() calls waiting
        self._status = ClientState.NEW

    # -- the event stream -----------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._queue is _NO_EVENTS:
            self._queue = collections.deque()  # an empty deque is ~0.6 KiB per idle client
        self._queue.append(event)
        readers = self._readers
        if readers:
            for reader in readers:
                if not reader.done():
                    reader.set_result(None)
            readers.clear()

    def _disconnected(self, reason: str) -> None:
        self._emit(Disconnected(reason=reason))

    def _reconnected(self, attempts: int) -> None:
        self._emit(Reconnected(attempts=attempts))

    async def events(self) -> AsyncIterator[Event]:
        """Events in arrival order; ends only when the adapter is closed."""
        while True:
            while not self._queue:
                reader = asyncio.get_running_loop().create_future()
                if self._readers is None:
                    self._readers = []
                self._readers.append(reader)
                try:
                    await reader
                except BaseException:  # cancelled while waiting
                    with contextlib.suppress(ValueError):
                        self._readers.remove(reader)
                    raise
            queue = self._queue
            item = queue.popleft()
            if item is _END:
                queue.appendleft(_END)  # a later events() call ends too
                return
            yield item

    def _finish(self) -> None:
        """End every `events()` iterator (the adapter is closing)."""
        self._emit(_END)  # type: ignore[arg-type]

    # -- the lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Log out and close cleanly; the server knows the client is gone at once."""
        if self._status is ClientState.CLOSED:
            return
        was, self._status = self._status, ClientState.CLOSED
        await self._shut_down(was)

    async def drop(self) -> None:
        """Vanish abruptly (no close handshake, no logout, no automatic reconnect)."""
        self._status = ClientState.DROPPED
        await self._abandon()
        self._disconnected("dropped")

    async def reconnect(self) -> None:
        """Connect again after `drop`/`close` and resume from the client's cursor."""
        if self._status is ClientState.CONNECTED:
            await self.drop()
        await self._resume()

    async def _shut_down(self, was: ClientState) -> None:
        """Log out (when `was` connected) and release the transport; status is CLOSED."""
        raise NotImplementedError

    async def _abandon(self) -> None:
        """Stop at once without a word to the server; status is DROPPED."""
        raise NotImplementedError

    async def _resume(self) -> None:
        """Connect again from the client's cursor (the client is not connected)."""
        raise NotImplementedError


_C = TypeVar("_C", bound=StreamClient)


class AdapterBase(Generic[_C]):
    """An adapter's clients and HTTP session; `open()` closes what it made when it fails."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]

    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self._http: aiohttp.ClientSession | None = None
        self._clients: list[_C] = []

    @classmethod
    async def open(cls, settings: EndpointSettings) -> Self:
        """Validate the settings, then check that the endpoint answers (`_ready`)."""
        adapter = cls(settings)
        try:
            await adapter._ready()
        except BaseException:
            await adapter.aclose()
            raise
        return adapter

    async def _ready(self) -> None:
        """What `open()` checks once the adapter is built (a probe login, a version call)."""

    def _new_http(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = self._new_http()
        return self._http

    async def aclose(self) -> None:
        """Close every client (ending their event streams) and the HTTP session."""
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
            client._finish()
        if self._http is not None:
            await self._http.close()
            self._http = None


def options_from(model: type[_M], options: Mapping[str, Any], where: str) -> _M:
    """`options` validated by `model`; a bad value is a ConfigError naming the key and the fix.

    Keys the model does not know are left out here: rejecting them is the configuration's job
    (it validates `[endpoints.X.options]` with the same model), and the harness may add keys
    meant for an embedded server.
    """
    known = {k: v for k, v in options.items() if k in model.model_fields}
    try:
        return model.model_validate(known)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        raise ConfigError(
            f"{where}: options.{key}={err.get('input')!r} {_expected(model, key)}"
        ) from None


def _expected(model: type[BaseModel], key: str) -> str:
    """'must be a number >= 0, e.g. backoff_base_s = 0.5 (what the option does)'."""
    field = model.model_fields.get(key)
    if field is None:
        return "is not allowed"
    what = " or ".join(dict.fromkeys(_describe(field.annotation, field.metadata)))
    example = f", e.g. {key} = {field.default!r}" if field.default is not None else ""
    about = f" ({field.description})" if field.description else ""
    return f"must be {what}{example}{about}"


def _describe(annotation: Any, metadata: list[Any]) -> list[str]:
    """Each accepted kind of value in words: 'a number >= 0', 'a string', ..."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [d for arg in typing.get_args(annotation) if arg is not type(None)
                for d in _describe(arg, [])]
    if origin is Annotated:
        base, *extra = typing.get_args(annotation)
        rules = [r for x in extra for r in (x.metadata if isinstance(x, FieldInfo) else [x])]
        return _describe(base, [*metadata, *rules])
    names = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    what = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    for rule in metadata:  # annotated_types' Ge / Gt, as pydantic keeps them
        if getattr(rule, "ge", None) is not None:
            what += f" >= {rule.ge:g}"
        elif getattr(rule, "gt", None) is not None:
            what += f" > {rule.gt:g}"
    return [what]


__all__ = [
    "AdapterBase",
    "ClientState",
    "Count",
    "OptionsModel",
    "PositiveSeconds",
    "Seconds",
    "StreamClient",
    "options_from",
]
