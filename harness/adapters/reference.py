"""Adapter for the embedded reference IM service (wire format: harness/reference/PROTOCOL.md).

Options (`EndpointSettings.options`): `api_url` (required, the service's HTTP API),
`backoff_base_s` / `backoff_cap_s` (auto-reconnect backoff, default 0.5 s / 10 s),
`jitter_seed` (seed of the backoff jitter), `max_reconnect_attempts` (default: unlimited),
`ping_interval_s` (client pings; default: the protocol's keepalive), `token_ttl_s`,
`send_timeout_s` (overrides the per-protocol default).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import aiohttp
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from harness.contract import (
    Ack,
    Capability,
    Credentials,
    Disconnected,
    EndpointInfo,
    EndpointSettings,
    Event,
    GroupInfo,
    HistoryPage,
    MembershipChanged,
    Message,
    MessageRecalled,
    MessageReceived,
    MuteChanged,
    ReceiptUpdated,
    Reconnected,
    Target,
    TierLimits,
)
from harness.errors import (
    ConfigError,
    ConnectionLost,
    IMError,
    IMTimeout,
    Unauthorized,
    error_from_wire,
)
from harness.reference.admin import AppHandle, mint_credentials
from harness.registry import adapters

log = logging.getLogger(__name__)

PROTOCOLS = ("v1", "v2")
KEEPALIVE_S = {"v1": 30.0, "v2": 15.0}
SEND_TIMEOUT_S = {"v1": 10.0, "v2": 5.0}
_SETTINGS_SEND_TIMEOUT_DEFAULT = next(
    f.default for f in fields(EndpointSettings) if f.name == "send_timeout_s"
)
_V2_ONLY = frozenset({Capability.RECALL, Capability.RECEIPTS, Capability.GROUP_RECEIPTS})
_LIMIT_FIELDS = frozenset(f.name for f in fields(TierLimits))
_END = object()
MAX_FRAME = 4 * 2**20
CLOSE_TIMEOUT_S = 2.0
_encode = json.JSONEncoder(separators=(",", ":")).encode  # compact: fewer bytes per frame


def capabilities_from(features: Sequence[str], protocol: str) -> frozenset[Capability]:
    """Capabilities from a login answer's enabled features, less what the protocol lacks."""
    caps = set()
    for name in features:
        try:
            caps.add(Capability(name))
        except ValueError:
            continue  # a service feature the contract has no name for
    caps.discard(Capability.TIER_ADMIN)  # the harness adds it when it holds an admin client
    if protocol != "v2":
        caps -= _V2_ONLY
    return frozenset(caps)


def limits_from(raw: Mapping[str, Any] | None) -> TierLimits:
    return TierLimits(**{k: v for k, v in (raw or {}).items() if k in _LIMIT_FIELDS})


def _message(raw: Mapping[str, Any]) -> Message:
    return Message(
        message_id=str(raw["message_id"]),
        conversation=str(raw["conversation"]),
        seq=int(raw["seq"]),
        sender=str(raw["sender"]),
        client_id=str(raw.get("client_id") or ""),
        kind=raw.get("kind", "text"),
        body=str(raw.get("body") or ""),
        server_ts=float(raw.get("ts") or 0.0),
        group=raw.get("group"),
        recalled=bool(raw.get("recalled", False)),
        custom=raw.get("custom"),
    )


def _group(raw: Mapping[str, Any]) -> GroupInfo:
    return GroupInfo(
        group_id=str(raw["group_id"]),
        name=str(raw.get("name", "")),
        members=dict(raw.get("members") or {}),
        muted_all=bool(raw.get("muted_all", False)),
        muted=frozenset(raw.get("muted") or ()),
    )


def _event(frame: Mapping[str, Any]) -> Event | None:
    """The contract event for a wire event frame; None for unknown or internal ones."""
    kind = frame.get("ev")
    offline = bool(frame.get("offline", False))
    if kind == "message":
        return MessageReceived(_message(frame["message"]), offline=offline)
    if kind == "recall":
        return MessageRecalled(frame["conversation"], frame["message_id"], frame["by"], offline)
    if kind == "receipt":
        return ReceiptUpdated(frame["conversation"], frame["reader"], int(frame["seq"]), offline)
    if kind == "membership":
        return MembershipChanged(frame["group"], frame["user"], frame["change"], frame["by"],
                                 frame.get("role"))
    if kind == "mute":
        return MuteChanged(frame["group"], frame.get("user"), bool(frame["muted"]), frame["by"])
    return None


class _Link(asyncio.Protocol):
    """One WebSocket connection: websockets' sans-I/O client on an asyncio transport.

    Frames are handed to `on_frame` as they are parsed, with no reader task, no per-frame
    futures and no send lock: a load generator pays this cost for every message. Keepalive:
    a ping every `ping_interval` s; no pong within `ping_timeout` s fails the connection.
    """

    def __init__(self, uri: str, *, ping_interval: float | None, ping_timeout: float | None
                 ) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.protocol = ClientProtocol(parse_uri(uri), max_size=MAX_FRAME)
        self.on_frame: Any = None  # (str | bytes) -> None
        self.on_lost: Any = None  # (link, reason) -> None
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._ping_data: bytes | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._pong_timer: asyncio.TimerHandle | None = None
        self._fragments: list[bytes] = []
        self._text = True  # the message being received is text (not binary)
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, url: str, *, open_timeout: float, ping_interval: float | None,
                   ping_timeout: float | None) -> _Link:
        """Connect and complete the opening handshake within `open_timeout` seconds."""
        wsuri = parse_uri(url)
        loop = asyncio.get_running_loop()
        link: _Link | None = None

        def factory() -> _Link:
            nonlocal link
            link = cls(url, ping_interval=ping_interval, ping_timeout=ping_timeout)
            return link

        try:
            async with asyncio.timeout(open_timeout):
                await loop.create_connection(
                    factory, wsuri.host, wsuri.port, ssl=True if wsuri.secure else None,
                    server_hostname=wsuri.host if wsuri.secure else None)
                assert link is not None
                await link.opened
        except BaseException:
            if link is not None:
                link.abort()
            raise
        return link

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        events = self.protocol.events_received()
        self._flush()
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Response):
                self._handshake_done()
        if self.protocol.close_expected():
            self._later(CLOSE_TIMEOUT_S, self.abort)  # the server should close the TCP link

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self.protocol.events_received()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent; the state is CLOSED from here on
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._pong_timer is not None:
            self._pong_timer.cancel()
        if not self.opened.done():
            self.opened.set_exception(self.protocol.handshake_exc or ConnectionError(
                "connection closed during the opening handshake"))
            self.opened.exception()  # retrieved: open() may have given up already
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self.closed.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self, str(self.protocol.close_exc))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- frames -------------------------------------------------------------------------

    def _handshake_done(self) -> None:
        if self.opened.done():
            return
        if self.protocol.handshake_exc is not None:
            self.opened.set_exception(self.protocol.handshake_exc)
            self.opened.exception()
            self.abort()
            return
        self.opened.set_result(None)
        if self._ping_interval:
            self._later(self._ping_interval, self._ping)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            if frame.data == self._ping_data and self._pong_timer is not None:
                self._pong_timer.cancel()
                self._pong_timer = None
                self._ping_data = None
            return
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
            if opcode is not Opcode.CONT:
                self._text = opcode is Opcode.TEXT
            data = bytes(frame.data)
            if not frame.fin or self._fragments:
                self._fragments.append(data)
                if not frame.fin:
                    return
                data = b"".join(self._fragments)
                self._fragments.clear()
            if self.on_frame is not None:
                self.on_frame(data.decode() if self._text else data)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()

    def _later(self, delay: float, fn: Any) -> None:
        now = self.loop.time()
        self._timers = [t for t in self._timers if t.when() > now and not t.cancelled()]
        self._timers.append(self.loop.call_later(delay, fn))

    def _ping(self) -> None:
        if self.protocol.state is not State.OPEN:
            return
        if self._ping_data is None:
            self._ping_data = os.urandom(4)
            self.protocol.send_ping(self._ping_data)
            self._flush()
            if self._ping_timeout:
                self._pong_timer = self.loop.call_later(self._ping_timeout, self._no_pong)
        self._later(self._ping_interval or 0.0, self._ping)

    def _no_pong(self) -> None:
        self._pong_timer = None
        if self.protocol.state is State.OPEN:
            self.protocol.fail(1011, "keepalive ping timeout")
            self._flush()
        self.abort()

    # -- the client's side --------------------------------------------------------------

    def _not_open(self) -> ConnectionClosed:
        protocol = self.protocol
        if protocol.state is State.CLOSED:
            return protocol.close_exc
        return ConnectionClosed(protocol.close_rcvd, protocol.close_sent,
                                protocol.close_rcvd_then_sent)

    def send(self, text: str) -> None:
        """Write one text message now; ConnectionClosed when the link is not open."""
        if self.protocol.state is not State.OPEN:
            raise self._not_open()
        self.protocol.send_text(text.encode())
        self._flush()

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self._paused and not self.closed.done():
            if self._drained is None or self._drained.done():
                self._drained = self.loop.create_future()
            await self._drained

    async def close(self) -> None:
        """The closing handshake, then the TCP link; aborted after CLOSE_TIMEOUT_S."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._flush()
        if not self.closed.done():
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.shield(self.closed)
            except TimeoutError:
                self.abort()
        await asyncio.shield(self.closed)

    def abort(self) -> None:
        """Drop the TCP link at once (no closing handshake)."""
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self.closed)


@dataclass(slots=True)
class _PendingSend:
    frame: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]  # the answer frame
    request_ids: list[int] = field(default_factory=list)


class _Expired(Exception):
    """A send's own timer fired before its ack."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_Expired())


class ReferenceClient:
    """One logged-in WebSocket connection to the reference service (an `IMClient`)."""

    def __init__(self, adapter: ReferenceAdapter, credentials: Credentials, protocol: str) -> None:
        self._adapter = adapter
        self._credentials = credentials
        self._protocol = protocol
        self._url = f"{adapter.settings.url.rstrip('/')}/{protocol}"
        self.send_timeout_s = adapter.send_timeout_for(protocol)
        self.cursor = adapter.cursors.get(credentials.user_id, 0)
        self.login_answer: dict[str, Any] = {}
        self.reconnect_attempts: list[float] = []  # time.monotonic() of each automatic attempt
        self.reconnect_delays: list[float] = []  # the jittered delay drawn before each attempt
        self.caught_up = asyncio.Event()
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._ws: _Link | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._state = "new"  # connected | reconnecting | dropped | closed | failed
        self._requests: dict[int, asyncio.Future[Any]] = {}  # other ops, by request id
        self._send_ids: dict[int, asyncio.Future[Any]] = {}  # sends, by request id
        self._sends: dict[int, _PendingSend] = {}
        self._send_keys = itertools.count()
        self._rng = random.Random(adapter.options.get("jitter_seed"))

    def __repr__(self) -> str:
        return f"ReferenceClient(user={self.user_id!r}, {self._protocol}, {self._state})"

    @property
    def user_id(self) -> str:
        return self._credentials.user_id

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    @property
    def state(self) -> str:
        """new, connected, reconnecting (automatically), dropped, closed or failed."""
        return self._state

    @property
    def unacked(self) -> list[str]:
        """Client ids of the sends still waiting for their ack (resent after a reconnect)."""
        return [p.frame["client_id"] for p in self._sends.values() if not p.future.done()]

    # -- connection lifecycle -------------------------------------------------------------

    async def _open(self, *, reconnected: int = 0) -> None:
        """Connect, log in from the cursor, start dispatching and resend unacked sends."""
        settings = self._adapter.settings
        ping = self._adapter.options.get("ping_interval_s", KEEPALIVE_S[self._protocol])
        try:
            ws = await _Link.open(self._url, open_timeout=settings.connect_timeout_s,
                                  ping_interval=ping, ping_timeout=ping)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {self._url}: {type(exc).__name__}: {exc}",
                                 ) from exc
        rid = next(self._ids)
        frames: list[Any] = []  # everything but the login answer, in arrival order
        answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def collect(raw: str | bytes) -> None:
            if answered.done():
                frames.append(raw)
                return
            try:
                frame = json.loads(raw)
            except ValueError as exc:
                answered.set_exception(exc)
                return
            if isinstance(frame, dict) and frame.get("re") == rid:
                answered.set_result(frame)
            else:
                frames.append(frame)

        def lost(link: _Link, reason: str) -> None:
            if not answered.done():
                answered.set_exception(link._not_open())

        ws.on_frame, ws.on_lost = collect, lost
        try:
            login = {"id": rid, "op": "login", "token": self._credentials.token,
                     "cursor": self.cursor, "app": settings.app_id}
            ws.send(_encode(login))
            async with asyncio.timeout(settings.connect_timeout_s):
                frame = await answered
            if not frame.get("ok"):
                raise self._error(frame, "login")
        except BaseException as exc:
            ws.abort()
            if isinstance(exc, ConnectionClosed | TimeoutError | ValueError):
                raise ConnectionLost(f"login to {self._url} failed: {type(exc).__name__}: {exc}")\
                    from exc
            raise
        self.login_answer = frame
        self._ws = ws
        self._state = "connected"
        self.caught_up.clear()
        self._connected.set()
        if reconnected:
            self._events.put_nowait(Reconnected(attempts=reconnected))
        ws.on_frame, ws.on_lost = self._receive, self._link_lost
        for early in frames:
            if isinstance(early, str | bytes):
                self._receive(early)  # arrived after the answer: still raw
            elif isinstance(early, dict):
                self._dispatch(early)
        if ws.closed.done():
            self._link_lost(ws, str(ws.protocol.close_exc))
            return
        for pending in list(self._sends.values()):
            if not pending.future.done():
                self._transmit(pending)

    def _receive(self, raw: str | bytes) -> None:
        """One text message from the link: parse and dispatch (a failure drops the link)."""
        try:
            frame = json.loads(raw)
        except ValueError:
            log.warning("%s: ignoring a frame that is not JSON", self)
            return
        if not isinstance(frame, dict):
            return
        try:
            self._dispatch(frame)
        except Exception as exc:  # dispatching must never die silently
            log.exception("%s: reader failed", self)
            ws = self._ws
            if ws is not None:
                self._lost(ws, f"reader failed: {type(exc).__name__}: {exc}")
                ws.abort()

    def _link_lost(self, ws: _Link, reason: str) -> None:
        self._lost(ws, f"connection closed ({reason})")

    def _lost(self, ws: _Link, reason: str) -> None:
        if ws is not self._ws:
            return
        self._ws = None
        self._connected.clear()
        self._fail_requests(ConnectionLost(f"{self}: {reason}; the outcome is unknown"))
        if self._state != "connected":
            return  # drop() / close() / reconnect() did it on purpose
        self._state = "reconnecting"
        self._events.put_nowait(Disconnected(reason=reason))
        self._reconnector = asyncio.create_task(self._reconnect_loop(),
                                                name=f"reconnect-{self.user_id}")

    async def _reconnect_loop(self) -> None:
        """Reconnect with exponential backoff and full jitter until it works or gives up."""
        opts = self._adapter.options
        base = float(opts.get("backoff_base_s", 0.5))
        cap = float(opts.get("backoff_cap_s", 10.0))
        limit = opts.get("max_reconnect_attempts")
        for attempt in itertools.count():
            if limit is not None and attempt >= int(limit):
                self._give_up(f"gave up after {attempt} reconnect attempts")
                return
            delay = self._rng.uniform(0.0, min(cap, base * 2**attempt))
            self.reconnect_delays.append(delay)
            await asyncio.sleep(delay)
            if self._state != "reconnecting":
                return
            self.reconnect_attempts.append(time.monotonic())
            try:
                await self._open(reconnected=attempt + 1)
            except Unauthorized as exc:
                self._give_up(f"reconnect refused: {exc}")
                return
            except IMError as exc:
                log.debug("%s: reconnect attempt %d failed: %s", self, attempt + 1, exc)
                continue
            return

    def _give_up(self, reason: str) -> None:
        self._state = "failed"
        self._events.put_nowait(Disconnected(reason=reason))
        self._fail_sends(ConnectionLost(f"{self}: {reason}"))

    def _fail_requests(self, exc: IMError) -> None:
        """Fail the ops in flight; sends stay pending for the resend after a reconnect."""
        self._send_ids.clear()
        requests, self._requests = self._requests, {}
        for fut in requests.values():
            if not fut.done():
                fut.set_exception(exc)

    def _fail_sends(self, exc: IMError) -> None:
        for pending in self._sends.values():
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def _stop_background(self) -> None:
        task, self._reconnector = self._reconnector, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _start(self) -> None:
        await self._open()

    async def close(self) -> None:
        """Log out and close cleanly; unacknowledged sends fail with ConnectionLost."""
        previous, self._state = self._state, "closed"
        await self._stop_background()
        ws = self._ws
        if previous == "connected" and ws is not None:
            with contextlib.suppress(IMError):
                await self._call_on(ws, "logout", {}, limit=min(2.0, self.send_timeout_s))
            with contextlib.suppress(Exception):
                await ws.close()
        if ws is not None:
            ws.abort()
            await ws.wait_closed()
        self._ws = None
        self._connected.clear()
        self._fail_requests(ConnectionLost(f"{self}: closed"))
        self._fail_sends(ConnectionLost(f"{self}: closed before the send was acknowledged"))

    async def drop(self) -> None:
        """Vanish abruptly: abort the transport, no close handshake, no auto-reconnect."""
        self._state = "dropped"
        await self._stop_background()
        ws = self._ws
        if ws is not None:
            ws.abort()
            await ws.wait_closed()
        self._ws = None
        self._connected.clear()
        self._fail_requests(ConnectionLost(f"{self}: dropped"))
        self._events.put_nowait(Disconnected(reason="dropped"))

    async def reconnect(self) -> None:
        """Connect again and resume from the cursor; pending sends are resent."""
        if self._state == "connected":
            await self.drop()
        self._state = "dropped"
        await self._stop_background()
        await self._open(reconnected=1)

    async def wait_caught_up(self, within: float | None = None) -> None:
        """Wait until the server has replayed everything after the login cursor."""
        try:
            async with asyncio.timeout(within or self.send_timeout_s):
                await self.caught_up.wait()
        except TimeoutError:
            raise IMTimeout(f"{self}: no caught_up within the timeout") from None

    # -- frames ---------------------------------------------------------------------------

    @staticmethod
    def _error(frame: Mapping[str, Any], op: str) -> IMError:
        err = frame.get("error") or {}
        code = str(err.get("code") or "error")
        details = {"retry_after": err["retry_after"]} if "retry_after" in err else {}
        return error_from_wire(code, str(err.get("message") or f"{op} failed"), **details)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        if "re" in frame:
            rid = frame["re"]
            fut = None
            if isinstance(rid, int):
                fut = self._requests.pop(rid, None) or self._send_ids.pop(rid, None)
            if fut is None:
                log.warning("%s: response to unknown request %r: %s", self, rid,
                            frame.get("error"))
            elif not fut.done():
                fut.set_result(frame)
            return
        kind = frame.get("ev")
        if kind == "caught_up":
            self.caught_up.set()
            return
        pos = frame.get("pos")
        if isinstance(pos, int) and pos > self.cursor:
            self.cursor = pos
            self._adapter.note_cursor(self.user_id, pos)
        try:
            event = _event(frame)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: malformed %r event (%s): %s", self, kind, exc, frame)
            return
        if event is None:
            log.debug("%s: ignoring event %r", self, kind)
        else:
            self._events.put_nowait(event)

    async def _call_on(self, ws: _Link, op: str, params: Mapping[str, Any],
                       *, limit: float) -> dict[str, Any]:
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests[rid] = fut
        try:
            async with asyncio.timeout(limit):
                ws.send(_encode({"id": rid, "op": op, **params}))
                await ws.drain()
                frame = await fut
        except ConnectionClosed as exc:
            raise ConnectionLost(f"{self}: {op}: connection lost ({exc})") from exc
        except TimeoutError:
            raise IMTimeout(f"{self}: {op}: no answer within {limit:.1f}s") from None
        finally:
            self._requests.pop(rid, None)
        if not frame.get("ok"):
            raise self._error(frame, op)
        return frame

    async def _call(self, op: str, **params: Any) -> dict[str, Any]:
        limit = self.send_timeout_s
        if self._state == "reconnecting":
            try:
                async with asyncio.timeout(limit):
                    await self._connected.wait()
            except TimeoutError:
                raise IMTimeout(f"{self}: {op}: still reconnecting after {limit:.1f}s") from None
        ws = self._ws
        if self._state != "connected" or ws is None:
            raise ConnectionLost(f"{self}: {op}: not connected; call reconnect() first")
        return await self._call_on(ws, op, params, limit=limit)

    def _transmit(self, pending: _PendingSend) -> None:
        ws = self._ws
        if ws is None:
            return  # sent after the next (re)connect
        rid = next(self._ids)
        pending.request_ids.append(rid)
        self._send_ids[rid] = pending.future
        try:
            ws.send(_encode({"id": rid, **pending.frame}))
        except ConnectionClosed:
            pass  # the reconnect resends it

    # -- IMClient operations --------------------------------------------------------------

    async def send(
        self,
        to: Target,
        body: str = "",
        *,
        custom: Mapping[str, Any] | None = None,
        client_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the contract's signature
    ) -> Ack:
        """Send; kept and resent with the same client id across reconnects until acked."""
        if self._state in ("dropped", "closed", "failed", "new"):
            raise ConnectionLost(f"{self}: send: not connected; call reconnect() first")
        cid = client_id or f"c-{uuid.uuid4().hex}"
        target = {"user": to.user} if to.user is not None else {"group": to.group}
        frame = {"op": "send", "to": target, "kind": "custom" if custom is not None else "text",
                 "body": body, "custom": dict(custom) if custom is not None else None,
                 "client_id": cid}
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = _PendingSend(frame, future)
        key = next(self._send_keys)
        self._sends[key] = pending
        limit = self.send_timeout_s if timeout is None else timeout
        # A timer on the future, not asyncio.timeout(): cheaper on the load generator's hot path.
        timer = loop.call_later(limit, _expire, future)
        try:
            self._transmit(pending)
            ws = self._ws
            if ws is not None and ws._paused:
                await ws.drain()
            try:
                answer = await future
            except _Expired:
                raise IMTimeout(f"{self}: send {cid}: no ack within {limit:.1f}s") from None
        finally:
            timer.cancel()
            del self._sends[key]
            for rid in pending.request_ids:
                self._send_ids.pop(rid, None)
        if not answer.get("ok"):
            raise self._error(answer, "send")
        return Ack(
            client_id=cid,
            message_id=str(answer["message_id"]),
            conversation=str(answer["conversation"]),
            seq=int(answer["seq"]),
            server_ts=float(answer["ts"]),
            duplicate=bool(answer.get("duplicate", False)),
        )

    async def events(self) -> AsyncIterator[Event]:
        """Events in arrival order; ends only when the adapter is closed."""
        while True:
            item = await self._events.get()
            if item is _END:
                self._events.put_nowait(_END)  # a later events() call ends too
                return
            yield item

    def _finish(self) -> None:
        self._events.put_nowait(_END)

    async def create_group(self, name: str, members: Sequence[str] = ()) -> GroupInfo:
        answer = await self._call("group.create", name=name, members=list(members))
        return _group(answer["group"])

    async def group_info(self, group: str) -> GroupInfo:
        return _group((await self._call("group.info", group=group))["group"])

    async def add_member(self, group: str, user: str) -> None:
        await self._call("group.add", group=group, user=user)

    async def remove_member(self, group: str, user: str) -> None:
        await self._call("group.remove", group=group, user=user)

    async def leave(self, group: str) -> None:
        await self._call("group.leave", group=group)

    async def set_role(self, group: str, user: str, role: str) -> None:
        await self._call("group.role", group=group, user=user, role=role)

    async def mute(self, group: str, user: str, muted: bool = True) -> None:
        await self._call("group.mute", group=group, user=user, muted=muted)

    async def mute_all(self, group: str, muted: bool = True) -> None:
        await self._call("group.mute_all", group=group, muted=muted)

    async def recall(self, conversation: str, message_id: str) -> None:
        await self._call("recall", conversation=conversation, message_id=message_id)

    async def mark_read(self, conversation: str, up_to_seq: int) -> None:
        await self._call("read", conversation=conversation, seq=up_to_seq)

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        answer = await self._call("history", conversation=conversation, before=before,
                                  after=after, limit=limit)
        return HistoryPage(
            conversation=str(answer.get("conversation", conversation)),
            messages=tuple(_message(m) for m in answer.get("messages", ())),
            has_more=bool(answer.get("has_more", False)),
        )


@adapters.register("reference")
class ReferenceAdapter:
    """The reference service through its WebSocket protocol (v1 or v2) and app server API."""

    name: ClassVar[str] = "reference"

    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self.options: Mapping[str, Any] = settings.options
        where = f"endpoint {settings.name!r} (adapter 'reference')"
        self.protocol = settings.protocol or "v2"
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"{where}: protocol {settings.protocol!r} is unknown; use v1 or v2")
        if not settings.url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{where}: url {settings.url!r} is not a WebSocket URL; "
                              f"use the service's ws://127.0.0.1:PORT")
        api_url = self.options.get("api_url")
        if not api_url:
            raise ConfigError(f"{where}: options.api_url is missing; set it to the service's "
                              f"HTTP API URL, e.g. http://127.0.0.1:PORT")
        if not settings.app_id:
            raise ConfigError(f"{where}: app_id is empty; set it to the app the tests run in")
        app_key = settings.secrets.get("app_key")
        if not app_key:
            raise ConfigError(f"{where}: secret 'app_key' is missing; provide the app's key "
                              f"(e.g. through an environment variable)")
        for key in ("backoff_base_s", "backoff_cap_s"):
            value = self.options.get(key)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"{where}: options.{key}={value!r} must be a number >= 0")
        self.api_url = str(api_url).rstrip("/")
        self._app = AppHandle(settings.app_id, app_key)
        self._http: aiohttp.ClientSession | None = None
        self._clients: list[ReferenceClient] = []
        self.cursors: dict[str, int] = {}  # user -> last inbox pos any of its clients processed
        self._info: EndpointInfo | None = None

    def __repr__(self) -> str:
        return f"ReferenceAdapter({self.settings.name!r}, {self.settings.url!r}, {self.protocol})"

    @classmethod
    async def open(cls, settings: EndpointSettings) -> ReferenceAdapter:
        """Validate the settings and learn the app's capabilities with a probe login."""
        adapter = cls(settings)
        try:
            await adapter.refresh_info()
        except BaseException:
            await adapter.aclose()
            raise
        return adapter

    @property
    def info(self) -> EndpointInfo:
        if self._info is None:
            raise ConfigError(f"{self!r}: info is known after open(); use ReferenceAdapter.open")
        return self._info

    def send_timeout_for(self, protocol: str) -> float:
        """The send timeout: options.send_timeout_s, settings' if set, else the protocol's."""
        override = self.options.get("send_timeout_s")
        if override is not None:
            return float(override)
        if self.settings.send_timeout_s != _SETTINGS_SEND_TIMEOUT_DEFAULT:
            return float(self.settings.send_timeout_s)
        return SEND_TIMEOUT_S[protocol]

    def info_from_login(self, answer: Mapping[str, Any]) -> EndpointInfo:
        protocol = str(answer.get("protocol") or self.protocol)
        return EndpointInfo(
            name=self.settings.name,
            adapter=self.name,
            url=self.settings.url,
            protocol=protocol,
            tier=str(answer.get("tier") or self.settings.tier),
            capabilities=capabilities_from(answer.get("features") or (), protocol),
            limits=limits_from(answer.get("limits")),
            keepalive_s=float(answer.get("keepalive_s") or KEEPALIVE_S[protocol]),
            send_timeout_s=self.send_timeout_for(protocol),
            protocols=frozenset(PROTOCOLS),
        )

    async def refresh_info(self) -> EndpointInfo:
        """Log a probe user in and rebuild `info` from the answer (after a tier change)."""
        creds = await self.provision_user(f"probe-{uuid.uuid4().hex[:12]}")
        client = ReferenceClient(self, creds, self.protocol)
        await client._start()
        try:
            self._info = self.info_from_login(client.login_answer)
        finally:
            await client.close()
        return self._info

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def provision_user(self, user_id: str | None = None) -> Credentials:
        ttl = float(self.options.get("token_ttl_s", 3600))
        return await mint_credentials(self._session(), self.api_url, self._app, user_id, ttl)

    async def connect(
        self, credentials: Credentials, *, protocol: str | None = None
    ) -> ReferenceClient:
        proto = protocol or self.protocol
        if proto not in PROTOCOLS:
            raise ConfigError(f"{self!r}: protocol {proto!r} is unknown; use v1 or v2")
        client = ReferenceClient(self, credentials, proto)
        await client._start()
        self._clients.append(client)
        return client

    def note_cursor(self, user_id: str, pos: int) -> None:
        if pos > self.cursors.get(user_id, 0):
            self.cursors[user_id] = pos

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
            client._finish()
        if self._http is not None:
            await self._http.close()
            self._http = None

