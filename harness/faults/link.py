"""A TCP proxy on loopback that injects network faults between one client and its endpoint.

Point a client at `link.url_for(endpoint_url)` (or `link.host`/`link.port`) and the link forwards
bytes both ways ("up" client->server, "down" server->client). Faults read like sentences::

    async with FaultLink("127.0.0.1", service_port) as link:
        with link.latency(ms=200, jitter_ms=50):
            ...
        with link.blackhole():
            ...
        await link.reset_now()

A fault starts when its method is called and ends when its `with` block ends, when `stop()` is
called, or after `duration_s`. Held bytes are never dropped: a blackholed or partitioned
connection keeps its data (and any FIN or RST behind it) and delivers it once the fault ends,
as TCP retransmission would. A link lives in one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import math
import random
import socket
import struct
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, ClassVar, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from harness.errors import ConfigError
from harness.faults.timeline import FaultRecord, FaultTimeline

log = logging.getLogger("harness.faults")

Direction = Literal["up", "down"]
DIRECTIONS = ("both", "up", "down")
_CHUNK = 65536
_MAX_HELD = 1 << 20  # bytes a direction may hold (delayed or blackholed) before it stops reading
_PACE_SLICES_PER_S = 50  # bandwidth pacing granularity: pieces of rate/50 bytes
_DEFAULT_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_number(
    where: str, name: str, value: object, *, minimum: float, strict: bool = False
) -> float:
    op = ">" if strict else ">="
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(
            f"{where}: {name}={value!r} is not a finite number; pass a number {op} {minimum:g}"
        )
    if value < minimum or (strict and value == minimum):
        raise ConfigError(
            f"{where}: {name}={value!r} is out of range; pass a number {op} {minimum:g}"
        )
    return float(value)


def _check_direction(where: str, direction: object) -> frozenset[Direction]:
    if direction == "both":
        return frozenset(("up", "down"))
    if direction == "up":
        return frozenset(("up",))
    if direction == "down":
        return frozenset(("down",))
    raise ConfigError(
        f"{where}: direction={direction!r} is not allowed; use one of: {', '.join(DIRECTIONS)}"
    )


def _check_duration(where: str, duration_s: object) -> float | None:
    if duration_s is None:
        return None
    return _check_number(where, "duration_s", duration_s, minimum=0, strict=True)


def _check_port(name: str, port: object, *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ConfigError(
            f"FaultLink {name}={port!r} is not a TCP port; pass an int in {low}..65535"
        )
    return port


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close a socket with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Fault:
    """A fault active on a link from its creation until `stop()` or the end of its `with` block."""

    kind: ClassVar[str] = "fault"

    def __init__(
        self,
        link: FaultLink,
        params: dict[str, Any],
        directions: frozenset[Direction] = frozenset(("up", "down")),
        duration_s: float | None = None,
    ) -> None:
        self.link = link
        self.directions = directions
        loop = asyncio.get_running_loop()
        self.record: FaultRecord = link.timeline.begin(self.kind, params, link=link.name)
        self._timer: asyncio.TimerHandle | None = None
        link._activate(self)
        if duration_s is not None:
            self._timer = loop.call_later(duration_s, self.stop)

    @property
    def active(self) -> bool:
        """True until the fault is stopped."""
        return self.record.active

    def applies(self, direction: Direction) -> bool:
        """Whether this fault acts on the given direction."""
        return direction in self.directions

    def stop(self) -> None:
        """End the fault now (idempotent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.record.active:
            self.link.timeline.end(self.record)
            self.link._deactivate(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        params = " ".join(f"{k}={v!r}" for k, v in self.record.params.items())
        return f"<{type(self).__name__} {params} ({state})>"


_Dirs = frozenset[Direction]


class Latency(Fault):
    """Delay every chunk by `ms` +/- `jitter_ms`; chunks of one direction never overtake."""

    kind = "latency"

    def __init__(
        self,
        link: FaultLink,
        ms: float,
        jitter_ms: float,
        direction: str,
        dirs: _Dirs,
        duration_s: float | None,
    ) -> None:
        self.ms = ms
        self.jitter_ms = jitter_ms
        params = {
            "ms": ms,
            "jitter_ms": jitter_ms,
            "direction": direction,
            "duration_s": duration_s,
        }
        super().__init__(link, params, dirs, duration_s)

    def sample_s(self) -> float:
        """One delay in seconds (never negative)."""
        jitter = random.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.ms + jitter) / 1000.0


class Bandwidth(Fault):
    """Cap the throughput of a direction, shared by all connections of the link."""

    kind = "bandwidth"

    def __init__(
        self,
        link: FaultLink,
        bytes_per_s: float,
        direction: str,
        dirs: _Dirs,
        duration_s: float | None,
    ) -> None:
        self.bytes_per_s = bytes_per_s
        params = {"bytes_per_s": bytes_per_s, "direction": direction, "duration_s": duration_s}
        super().__init__(link, params, dirs, duration_s)


class ResetAfter(Fault):
    """RST a connection once exactly `n_bytes` more have been forwarded in the direction(s)."""

    kind = "reset_after"

    def __init__(
        self, link: FaultLink, n_bytes: int, direction: str, dirs: _Dirs, repeat: bool
    ) -> None:
        self.n_bytes = n_bytes
        self.repeat = repeat
        self.counted: dict[int, int] = {}
        self.fired: list[int] = []  # ids of the connections it cut
        super().__init__(link, {"n_bytes": n_bytes, "direction": direction, "repeat": repeat}, dirs)

    def remaining(self, connection: int) -> int:
        """Bytes the connection may still forward before it is cut."""
        return self.n_bytes - self.counted.get(connection, 0)


class Blackhole(Fault):
    """Hold all bytes (and closes) without closing anything: the peers see a silent link."""

    kind = "blackhole"

    def __init__(
        self, link: FaultLink, direction: str, dirs: _Dirs, duration_s: float | None
    ) -> None:
        super().__init__(link, {"direction": direction, "duration_s": duration_s}, dirs, duration_s)


class Partition(Fault):
    """Refuse new connections with a RST and hold the bytes of existing ones."""

    kind = "partition"

    def __init__(self, link: FaultLink, duration_s: float | None) -> None:
        self.refused = 0
        super().__init__(link, {"duration_s": duration_s}, duration_s=duration_s)


class SlowClose(Fault):
    """Deliver a close (FIN) `delay_s` late."""

    kind = "slow_close"

    def __init__(
        self, link: FaultLink, delay_s: float, direction: str, dirs: _Dirs, duration_s: float | None
    ) -> None:
        self.delay_s = delay_s
        params = {"delay_s": delay_s, "direction": direction, "duration_s": duration_s}
        super().__init__(link, params, dirs, duration_s)


class LinkConnection:
    """One proxied client connection and its upstream twin."""

    def __init__(
        self,
        link: FaultLink,
        ident: int,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.link = link
        self.id = ident
        self.opened_at = time.time()
        self.opened_mono = time.monotonic()
        self.peer = client[1].get_extra_info("peername")
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed = False
        self.outcome: str | None = None  # "close" or "reset"
        self._client = client
        self._upstream = upstream
        self._last_deliver = {"up": 0.0, "down": 0.0}
        self._eof_done: set[str] = set()
        self._held = {"up": 0, "down": 0}
        self._drained = {"up": asyncio.Event(), "down": asyncio.Event()}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        pipes: tuple[tuple[Direction, asyncio.StreamReader, asyncio.StreamWriter], ...] = (
            ("up", self._client[0], self._upstream[1]),
            ("down", self._upstream[0], self._client[1]),
        )
        for direction, src, dst in pipes:
            queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
            self._tasks.append(asyncio.create_task(self._read(direction, src, queue)))
            self._tasks.append(asyncio.create_task(self._write(direction, dst, queue)))

    async def wait_closed(self) -> None:
        """Wait until all of this connection's pipe tasks have finished."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read(
        self,
        direction: Direction,
        src: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes | None]],
    ) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                delay = sum(f.sample_s() for f in self.link._faults_of(Latency, direction))
                # Order-preserving: a chunk is never delivered before the previous one.
                deliver = max(time.monotonic() + delay, self._last_deliver[direction])
                self._last_deliver[direction] = deliver
                queue.put_nowait((deliver, data or None))
                self._held[direction] += len(data)
                while self._held[direction] > _MAX_HELD:
                    self._drained[direction].clear()
                    await self._drained[direction].wait()
                if not data:
                    return
        except (ConnectionError, OSError) as exc:
            # A reset is a packet too: a blackhole or partition holds it like the bytes.
            await self.link._wait_open(direction)
            side = "client" if direction == "up" else "upstream"
            self.reset(f"{side} reset ({type(exc).__name__})")
        except Exception:
            log.exception("%s: #%s failed reading %s", self.link.name, self.id, direction)
            self.reset("link error")

    async def _write(
        self,
        direction: Direction,
        dst: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[float, bytes | None]],
    ) -> None:
        link = self.link
        try:
            while True:
                deliver, data = await queue.get()
                wait = deliver - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    await self._forward_eof(direction, dst)
                    return
                while data:
                    await link._wait_open(direction)
                    size = len(data)
                    rate = link._rate(direction)
                    if rate is not None:
                        size = min(size, max(1, int(rate / _PACE_SLICES_PER_S)))
                    cut: ResetAfter | None = None
                    for fault in link._faults_of(ResetAfter, direction):
                        if fault.remaining(self.id) <= size:
                            size, cut = fault.remaining(self.id), fault
                    if rate is not None and size:
                        await link._pace(direction, size, rate)
                    piece, data = data[:size], data[size:]
                    if piece:
                        dst.write(piece)
                        self._count(direction, len(piece))
                        await dst.drain()
                    if cut is not None:
                        self._cut(cut, direction)
                        return
                    self._release(direction, len(piece))
        except (ConnectionError, OSError) as exc:
            side = "upstream" if direction == "up" else "client"
            self.reset(f"{side} reset ({type(exc).__name__})")
        except Exception:
            log.exception("%s: #%s failed writing %s", self.link.name, self.id, direction)
            self.reset("link error")

    def held(self, direction: Direction) -> int:
        """Bytes read from one side and not yet delivered to the other (delayed or held)."""
        return self._held[direction]

    def _release(self, direction: Direction, n: int) -> None:
        self._held[direction] -= n
        if self._held[direction] <= _MAX_HELD:
            self._drained[direction].set()

    def _count(self, direction: Direction, n: int) -> None:
        if direction == "up":
            self.bytes_up += n
            self.link.bytes_up += n
        else:
            self.bytes_down += n
            self.link.bytes_down += n
        for fault in self.link._faults_of(ResetAfter, direction):
            fault.counted[self.id] = fault.counted.get(self.id, 0) + n

    def _cut(self, fault: ResetAfter, direction: Direction) -> None:
        fault.fired.append(self.id)
        self.reset(f"reset_after n_bytes={fault.n_bytes} direction={direction}")
        if not fault.repeat:
            fault.stop()

    async def _forward_eof(self, direction: Direction, dst: asyncio.StreamWriter) -> None:
        await self.link._wait_open(direction)
        delay = max((f.delay_s for f in self.link._faults_of(SlowClose, direction)), default=0.0)
        if delay:
            await asyncio.sleep(delay)
        if dst.can_write_eof():
            dst.write_eof()
        else:
            dst.close()
        self._eof_done.add(direction)
        if len(self._eof_done) == 2:
            self._finish("close", "both sides closed")

    def reset(self, reason: str) -> None:
        """Tear both sides down with a TCP RST and stop forwarding."""
        if self.closed:
            return
        _rst(self._client[1])
        _rst(self._upstream[1])
        self._finish("reset", reason)

    def close(self, reason: str) -> None:
        """Close both sides with a FIN and stop forwarding."""
        self._finish("close", reason)

    def _finish(self, outcome: str, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.outcome = outcome
        if outcome == "close":
            self._client[1].close()
            self._upstream[1].close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self.link._closed(self, outcome, reason)

    def __repr__(self) -> str:
        state = self.outcome or "open"
        return f"<LinkConnection #{self.id} {state} up={self.bytes_up} down={self.bytes_down}>"


class FaultLink:
    """A loopback TCP proxy between clients and one upstream endpoint, with injectable faults."""

    _names = itertools.count(1)

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        timeline: FaultTimeline | None = None,
        name: str | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        for param, host in (("upstream_host", upstream_host), ("listen_host", listen_host)):
            if not isinstance(host, str) or not _is_loopback(host):
                raise ConfigError(
                    f"FaultLink {param}={host!r} is not a loopback address; "
                    "use 127.0.0.1 (the fault link only runs on loopback)"
                )
        self.upstream_host = upstream_host
        self.upstream_port = _check_port("upstream_port", upstream_port, allow_zero=False)
        self.listen_host = listen_host
        self.listen_port = _check_port("listen_port", listen_port, allow_zero=True)
        self.connect_timeout_s = _check_number(
            "FaultLink", "connect_timeout_s", connect_timeout_s, minimum=0, strict=True
        )
        self.name = name or f"link{next(self._names)}"
        self.timeline = timeline if timeline is not None else FaultTimeline(self.name)
        self.bytes_up = 0
        self.bytes_down = 0
        self.connection_times: list[float] = []  # monotonic accept time of every connection
        self.all_connections: list[LinkConnection] = []
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._ids = itertools.count(1)
        self._faults: list[Fault] = []
        self._changed = asyncio.Event()
        self._next_free = {"up": 0.0, "down": 0.0}
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FaultLink:
        """Start listening; `port` is known afterwards."""
        if self._server is not None:
            return self
        self._server = await asyncio.start_server(
            self._on_client, self.listen_host, self.listen_port
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.debug(
            "%s listening on %s:%s -> %s:%s",
            self.name,
            self.listen_host,
            self._port,
            self.upstream_host,
            self.upstream_port,
        )
        return self

    async def stop(self) -> None:
        """Stop listening, end every fault, and close every connection (FIN)."""
        for fault in list(self._faults):
            fault.stop()
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            conn.close("link stopped")
        pending = [c.wait_closed() for c in self.all_connections]
        await asyncio.gather(*pending, *self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultLink:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return self.listen_host

    @property
    def port(self) -> int:
        """The port clients connect to (after `start`)."""
        if self._port is None:
            raise ConfigError(f"FaultLink {self.name!r} is not started; await link.start() first")
        return self._port

    def url_for(self, url: str) -> str:
        """`url` with its host:port replaced by the link's; it must point at the upstream port."""
        parts = urlsplit(url)
        # Name only scheme://host:port in errors: userinfo, path and query may hold tokens.
        where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            port = None
        if parts.hostname is None or port is None:
            raise ConfigError(
                f"url {where!r} has no host:port; pass e.g. 'ws://127.0.0.1:{self.upstream_port}/v2'"
            )
        if port != self.upstream_port or not _is_loopback(parts.hostname):
            raise ConfigError(
                f"url {where!r} does not point at this link's upstream "
                f"{self.upstream_host}:{self.upstream_port}; make a FaultLink for that endpoint"
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{host}:{self.port}" if userinfo else f"{host}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def connections(self) -> list[LinkConnection]:
        """Connections currently open through the link."""
        return [c for c in self.all_connections if not c.closed]

    @property
    def faults(self) -> list[Fault]:
        """Faults currently active."""
        return list(self._faults)

    def reconnect_intervals(self) -> list[float]:
        """Seconds between consecutive accepted connections (refused ones included)."""
        times = self.connection_times
        return [b - a for a, b in itertools.pairwise(times)]

    # -- faults --------------------------------------------------------------------------------

    def latency(
        self,
        ms: float,
        jitter_ms: float = 0,
        *,
        direction: str = "both",
        duration_s: float | None = None,
    ) -> Latency:
        """Delay each chunk by ms +/- jitter_ms, never reordering chunks of one direction."""
        w = "latency()"
        return Latency(
            self,
            _check_number(w, "ms", ms, minimum=0),
            _check_number(w, "jitter_ms", jitter_ms, minimum=0),
            direction,
            _check_direction(w, direction),
            _check_duration(w, duration_s),
        )

    def bandwidth(
        self, bytes_per_s: float, *, direction: str = "both", duration_s: float | None = None
    ) -> Bandwidth:
        """Cap throughput to bytes_per_s per direction (shared by all connections)."""
        w = "bandwidth()"
        return Bandwidth(
            self,
            _check_number(w, "bytes_per_s", bytes_per_s, minimum=0, strict=True),
            direction,
            _check_direction(w, direction),
            _check_duration(w, duration_s),
        )

    async def reset_now(self) -> FaultRecord:
        """RST every current connection (both sides) and wait until they are gone."""
        conns = self.connections
        record = self.timeline.instant(
            "reset_now", {"connections": [c.id for c in conns]}, link=self.name
        )
        for conn in conns:
            conn.reset("reset_now")
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
        return record

    def reset_after(
        self, n_bytes: int, *, direction: str = "both", repeat: bool = False
    ) -> ResetAfter:
        """RST a connection after exactly n_bytes more bytes; once, or every one with repeat."""
        w = "reset_after()"
        if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 0:
            raise ConfigError(f"{w}: n_bytes={n_bytes!r} is not allowed; pass an int >= 0")
        return ResetAfter(self, n_bytes, direction, _check_direction(w, direction), bool(repeat))

    def blackhole(self, *, direction: str = "both", duration_s: float | None = None) -> Blackhole:
        """Stop forwarding (bytes and closes are held, nothing is closed): a half-open peer."""
        w = "blackhole()"
        return Blackhole(
            self, direction, _check_direction(w, direction), _check_duration(w, duration_s)
        )

    def partition(self, *, duration_s: float | None = None) -> Partition:
        """Refuse new connections (accept then RST) and hold the traffic of existing ones."""
        return Partition(self, _check_duration("partition()", duration_s))

    def slow_close(
        self, delay_s: float, *, direction: str = "both", duration_s: float | None = None
    ) -> SlowClose:
        """Deliver each close (FIN) delay_s late."""
        w = "slow_close()"
        return SlowClose(
            self,
            _check_number(w, "delay_s", delay_s, minimum=0),
            direction,
            _check_direction(w, direction),
            _check_duration(w, duration_s),
        )

    def heal(self) -> None:
        """End every active fault."""
        for fault in list(self._faults):
            fault.stop()

    # -- internals -----------------------------------------------------------------------------

    def _activate(self, fault: Fault) -> None:
        self._faults.append(fault)
        self._signal()

    def _deactivate(self, fault: Fault) -> None:
        if fault in self._faults:
            self._faults.remove(fault)
        self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _faults_of(self, cls: type[Any], direction: Direction) -> Iterable[Any]:
        return [f for f in self._faults if isinstance(f, cls) and f.applies(direction)]

    def _held(self, direction: Direction) -> bool:
        return any(
            isinstance(f, (Blackhole, Partition)) and f.applies(direction) for f in self._faults
        )

    async def _wait_open(self, direction: Direction) -> None:
        while self._held(direction):
            await self._changed.wait()

    def _rate(self, direction: Direction) -> float | None:
        rates = [f.bytes_per_s for f in self._faults_of(Bandwidth, direction)]
        if not rates:
            self._next_free[direction] = 0.0
            return None
        return min(rates)

    async def _pace(self, direction: Direction, size: int, rate: float) -> None:
        now = time.monotonic()
        start = max(now, self._next_free[direction])
        self._next_free[direction] = start + size / rate
        await asyncio.sleep(self._next_free[direction] - now)

    def _closed(self, conn: LinkConnection, outcome: str, reason: str) -> None:
        self.timeline.connection(
            outcome,
            conn.id,
            link=self.name,
            reason=reason,
            bytes_up=conn.bytes_up,
            bytes_down=conn.bytes_down,
        )

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.connection_times.append(time.monotonic())
        ident = next(self._ids)
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if peer else "?"
        partitions = [f for f in self._faults if isinstance(f, Partition)]
        if partitions:
            partitions[0].refused += 1
            _rst(writer)
            self.timeline.connection(
                "refused", ident, link=self.name, client=client, reason="partition"
            )
            return
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            _rst(writer)
            self.timeline.connection(
                "refused",
                ident,
                link=self.name,
                client=client,
                reason=f"upstream unreachable ({type(exc).__name__})",
            )
            return
        conn = LinkConnection(self, ident, (reader, writer), upstream)
        self.all_connections.append(conn)
        self.timeline.connection("open", ident, link=self.name, client=client)
        conn.start()
        await conn.wait_closed()

    def __repr__(self) -> str:
        listen = f"{self.listen_host}:{self._port}" if self._port else "not started"
        kinds = ",".join(f.kind for f in self._faults) or "none"
        return (
            f"FaultLink({self.name} {listen} -> {self.upstream_host}:{self.upstream_port}, "
            f"{len(self.connections)} connections, faults: {kinds})"
        )
