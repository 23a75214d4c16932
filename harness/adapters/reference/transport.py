"""The reference service's transport: one WebSocket link, and a client's connection on it.

`Link` is websockets' sans-I/O client on an asyncio transport. `Connection` is the part of a
`ReferenceClient` that owns the link: login from the cursor, request/answer matching, automatic
reconnect with backoff (resending unacknowledged sends), close and drop.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask
from websockets.uri import parse_uri

from harness.adapters.base import ClientState, StreamClient
from harness.adapters.reference import translate
from harness.adapters.reference.translate import KEEPALIVE_S, encode
from harness.backoff import Backoff
from harness.contract import Credentials
from harness.errors import ConnectionLost, IMError, IMTimeout, Unauthorized

if TYPE_CHECKING:
    from harness.adapters.reference.adapter import ReferenceAdapter

log = logging.getLogger("harness.adapters.reference")

MAX_FRAME = 4 * 2**20
CLOSE_TIMEOUT_S = 2.0


class _MaskKeys:
    """Masking keys for client frames, drawn from os.urandom a block at a time.

    RFC 6455 wants each key unpredictable, which a block of urandom output is; one system call
    per KEYS_PER_BLOCK frames instead of one per frame (every send's path).
    """

    __slots__ = ("_block", "_at")
    KEYS_PER_BLOCK = 1024

    def __init__(self) -> None:
        self._block = b""
        self._at = 0

    def __call__(self) -> bytes:
        at = self._at
        if at >= len(self._block):
            self._block, at = os.urandom(4 * self.KEYS_PER_BLOCK), 0
        self._at = at + 4
        return self._block[at:at + 4]


_mask_key = _MaskKeys()


class Link(asyncio.Protocol):
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
        self._fast = False  # frames are split here (see _split), not by the protocol
        self._buf = bytearray()  # the start of a frame not yet complete (fast path)

    @classmethod
    async def open(cls, url: str, *, open_timeout: float, ping_interval: float | None,
                   ping_timeout: float | None) -> Link:
        """Connect and complete the opening handshake within `open_timeout` seconds."""
        wsuri = parse_uri(url)
        loop = asyncio.get_running_loop()
        link: Link | None = None

        def factory() -> Link:
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
        if self._fast:
            self._split(data)
            return
        events = self._feed(data)
        if (self.protocol.state is State.OPEN and not self.protocol.reader.buffer
                and len(events) == 1 and isinstance(events[0], Response)):
            # The handshake ended with this segment, at a frame boundary (the server speaks
            # only after our login): from here on this link splits frames itself.
            self._fast = True
            # A fresh frame parser, as websockets swaps its own (`discard`): the handshake's
            # one keeps the response and its headers alive for the link's life (~1.7 KiB).
            parser = super(ClientProtocol, self.protocol).parse()
            next(parser)
            self.protocol.parser = parser

    def _feed(self, data: bytes) -> list[Any]:
        """Hand bytes to websockets' protocol and act on what it parsed (the general path)."""
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
        return events

    def _split(self, data: bytes) -> None:
        """Split the stream into whole frames; a final, unmasked text or binary frame is
        delivered here; every other frame (control, fragment, oversized, bad UTF-8) goes whole
        to websockets' protocol, which so always sees a frame boundary.

        The general path parses a frame in ~6 us; this one in ~1 us, and the load generator
        receives two frames per message.
        """
        buf = self._buf
        if buf:
            buf += data
            view = bytes(buf)
            buf.clear()
        else:
            view = data
        at, end = 0, len(view)
        text: str | bytes
        while end - at >= 2:
            b0, b1 = view[at], view[at + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if end - at < 4:
                    break
                length, head = int.from_bytes(view[at + 2:at + 4], "big"), 4
            elif length == 127:
                if end - at < 10:
                    break
                length, head = int.from_bytes(view[at + 2:at + 10], "big"), 10
            if b1 & 0x80:
                head += 4  # masked (a protocol error from a server: the protocol says so)
            stop = at + head + length
            if stop > end:
                if length > MAX_FRAME:  # never buffer what the protocol will refuse anyway
                    self._fast = False  # it holds part of a frame now: it keeps the stream
                    self._feed(view[at:])
                    return
                break
            opcode = b0 & 0x0F
            if (b0 & 0xF0) == 0x80 and not b1 & 0x80 and opcode in (1, 2) and \
                    length <= MAX_FRAME and not self._fragments:
                payload = view[at + head:stop]
                if opcode == 1:
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError:
                        self._slow(view[at:stop])
                        at = stop
                        continue
                else:
                    text = payload
                if self.on_frame is not None:
                    self.on_frame(text)
            else:
                self._slow(view[at:stop])
                if not self._fast:
                    if stop < end:
                        self._feed(view[stop:])
                    return
            at = stop
        if at < end:
            buf += view[at:]

    def _slow(self, frame: bytes) -> None:
        self._feed(frame)
        if self.protocol.state is not State.OPEN:
            self._fast = False  # closing: the protocol takes whatever still arrives

    def eof_received(self) -> None:
        if self._buf:  # a frame cut short: the protocol reports it as it would
            self.protocol.receive_data(bytes(self._buf))
            self._buf.clear()
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
            if self._text:
                try:
                    text: str | bytes = data.decode()
                except UnicodeDecodeError:
                    self.protocol.fail(1007, "invalid UTF-8 in a text message")
                    self._flush()
                    return
            else:
                text = data
            if self.on_frame is not None:
                self.on_frame(text)

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
        """Write one text message now; ConnectionClosed when the link is not open.

        The frame is built here (final, masked with a fresh key, as websockets would): the
        protocol keeps no state for a whole data frame, and this is every send's path.
        """
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            raise self._not_open()
        transport = self.transport
        if transport is None or protocol.expect_continuation_frame:
            protocol.send_text(text.encode())
            self._flush()
            return
        payload = text.encode()
        length = len(payload)
        if length < 126:
            head = bytes((0x81, 0x80 | length))
        elif length < 65536:
            head = bytes((0x81, 0xFE)) + length.to_bytes(2, "big")
        else:
            head = bytes((0x81, 0xFF)) + length.to_bytes(8, "big")
        key = _mask_key()
        transport.write(head + key + apply_mask(payload, key))

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
class PendingSend:
    frame: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]  # the answer frame
    request_ids: list[int] = field(default_factory=list)
    text: str = ""  # the frame's JSON after its opening brace, encoded at the first transmit


class Expired(Exception):
    """A send's own timer fired before its ack."""


def expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(Expired())



class Flag:
    """An asyncio.Event without its per-instance deque (idle clients hold two of these)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if self._waiters is not None:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise


# Unseeded clients share one generator: a Random each costs ~2.5 KiB per idle session.
_SHARED_RNG = random.Random()
_SHARED_PARTS = ("features", "limits")  # login-answer parts equal for every client of an app


class Connection(StreamClient):
    """A client's connection: login, requests and answers, reconnect and resend, close, drop."""

    def __init__(self, adapter: ReferenceAdapter, credentials: Credentials, protocol: str) -> None:
        super().__init__()
        self._adapter = adapter
        self._credentials = credentials
        self._protocol = protocol
        self._url = f"{adapter.settings.url.rstrip('/')}/{protocol}"
        self.send_timeout_s = adapter.send_timeout_for(protocol)
        self.cursor = adapter.cursors.get(credentials.user_id, 0)
        self.login_answer: dict[str, Any] = {}
        self.reconnect_attempts: list[float] = []  # time.monotonic() of each automatic attempt
        self.reconnect_delays: list[float] = []  # the jittered delay drawn before each attempt
        self.caught_up = Flag()
        self._ids = itertools.count(1)
        self._ws: Link | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._connected = Flag()
        self._requests: dict[int, asyncio.Future[Any]] = {}  # other ops, by request id
        self._send_ids: dict[int, asyncio.Future[Any]] = {}  # sends, by request id
        self._sends: dict[int, PendingSend] = {}
        self._send_keys = itertools.count()
        opts = adapter.options
        rng = _SHARED_RNG if opts.jitter_seed is None else random.Random(opts.jitter_seed)
        self._backoff = Backoff(opts.backoff_base_s, opts.backoff_cap_s, rng=rng)

    @property
    def user_id(self) -> str:
        return self._credentials.user_id

    @property
    def protocol(self) -> str:
        return self._protocol

    # -- connection lifecycle -------------------------------------------------------------

    async def _open(self, *, reconnected: int = 0) -> None:
        """Connect, log in from the cursor, start dispatching and resend unacked sends."""
        settings = self._adapter.settings
        ping = self._adapter.options.ping_interval_s
        if ping is None:
            ping = KEEPALIVE_S[self._protocol]
        try:
            ws = await Link.open(self._url, open_timeout=settings.connect_timeout_s,
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

        def lost(link: Link, reason: str) -> None:
            if not answered.done():
                answered.set_exception(link._not_open())

        ws.on_frame, ws.on_lost = collect, lost
        try:
            login = {"id": rid, "op": "login", "token": self._credentials.token,
                     "cursor": self.cursor, "app": settings.app_id}
            ws.send(encode(login))
            async with asyncio.timeout(settings.connect_timeout_s):
                frame = await answered
            if not frame.get("ok"):
                raise translate.error(frame, "login")
        except BaseException as exc:
            ws.abort()
            if isinstance(exc, ConnectionClosed | TimeoutError | ValueError):
                raise ConnectionLost(f"login to {self._url} failed: {type(exc).__name__}: {exc}")\
                    from exc
            raise
        self.login_answer = self._share_parts(frame)
        self._ws = ws
        self._status = ClientState.CONNECTED
        self.caught_up.clear()
        self._connected.set()
        if reconnected:
            self._reconnected(reconnected)
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

    def _share_parts(self, frame: dict[str, Any]) -> dict[str, Any]:
        """The login answer, its app-wide parts replaced by equal ones already held (memory)."""
        shared = self._adapter.login_parts
        for key in _SHARED_PARTS:
            value = frame.get(key)
            if value is None:
                continue
            known = shared.get(key)
            if known == value:
                frame[key] = known
            else:
                shared[key] = value
        return frame

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

    def _link_lost(self, ws: Link, reason: str) -> None:
        self._lost(ws, f"connection closed ({reason})")

    def _lost(self, ws: Link, reason: str) -> None:
        if ws is not self._ws:
            return
        self._ws = None
        self._connected.clear()
        self._fail_requests(ConnectionLost(f"{self}: {reason}; the outcome is unknown"))
        if self._status is not ClientState.CONNECTED:
            return  # drop() / close() / reconnect() did it on purpose
        self._status = ClientState.RECONNECTING
        self._disconnected(reason)
        self._reconnector = asyncio.create_task(self._reconnect_loop(),
                                                name=f"reconnect-{self.user_id}")

    async def _reconnect_loop(self) -> None:
        """Reconnect with exponential backoff and full jitter until it works or gives up."""
        limit = self._adapter.options.max_reconnect_attempts
        for attempt in itertools.count():
            if limit is not None and attempt >= limit:
                self._give_up(f"gave up after {attempt} reconnect attempts")
                return
            delay = self._backoff.delay(attempt)
            self.reconnect_delays.append(delay)
            await asyncio.sleep(delay)
            if self._status is not ClientState.RECONNECTING:
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
        self._status = ClientState.FAILED
        self._disconnected(reason)
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

    async def _shut_down(self, was: ClientState) -> None:
        """Log out and close cleanly; unacknowledged sends fail with ConnectionLost."""
        await self._stop_background()
        ws = self._ws
        if was is ClientState.CONNECTED and ws is not None:
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

    async def _abandon(self) -> None:
        """Abort the transport: no close handshake, no auto-reconnect."""
        await self._stop_background()
        ws = self._ws
        if ws is not None:
            ws.abort()
            await ws.wait_closed()
        self._ws = None
        self._connected.clear()
        self._fail_requests(ConnectionLost(f"{self}: dropped"))

    async def _resume(self) -> None:
        """Connect again and resume from the cursor; pending sends are resent."""
        self._status = ClientState.DROPPED  # an automatic reconnect stops here
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
            event = translate.event(frame)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: malformed %r event (%s): %s", self, kind, exc, frame)
            return
        if event is None:
            log.debug("%s: ignoring event %r", self, kind)
        else:
            self._emit(event)

    async def _call_on(self, ws: Link, op: str, params: Mapping[str, Any],
                       *, limit: float) -> dict[str, Any]:
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests[rid] = fut
        try:
            async with asyncio.timeout(limit):
                ws.send(encode({"id": rid, "op": op, **params}))
                await ws.drain()
                frame = await fut
        except ConnectionClosed as exc:
            raise ConnectionLost(f"{self}: {op}: connection lost ({exc})") from exc
        except TimeoutError:
            raise IMTimeout(f"{self}: {op}: no answer within {limit:.1f}s") from None
        finally:
            self._requests.pop(rid, None)
        if not frame.get("ok"):
            raise translate.error(frame, op)
        return frame

    async def _call(self, op: str, **params: Any) -> dict[str, Any]:
        limit = self.send_timeout_s
        if self._status is ClientState.RECONNECTING:
            try:
                async with asyncio.timeout(limit):
                    await self._connected.wait()
            except TimeoutError:
                raise IMTimeout(f"{self}: {op}: still reconnecting after {limit:.1f}s") from None
        ws = self._ws
        if self._status is not ClientState.CONNECTED or ws is None:
            raise ConnectionLost(f"{self}: {op}: not connected; call reconnect() first")
        return await self._call_on(ws, op, params, limit=limit)

    def _transmit(self, pending: PendingSend) -> None:
        ws = self._ws
        if ws is None:
            return  # sent after the next (re)connect
        rid = next(self._ids)
        pending.request_ids.append(rid)
        self._send_ids[rid] = pending.future
        if not pending.text:
            pending.text = encode(pending.frame)[1:]
        try:
            ws.send(f'{{"id":{rid},{pending.text}')  # == encode({"id": rid, **pending.frame})
        except ConnectionClosed:
            pass  # the reconnect resends it
