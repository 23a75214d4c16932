"""The fault link over real loopback sockets: each fault really happens and is recorded."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosedError, InvalidMessage

from harness.errors import ConfigError
from harness.faults import FaultLink, FaultTimeline
from harness.timing import units, until


class Sink:
    """A TCP server that records what each connection sent and how it ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.ended: list[str] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.received.extend(data)
            self.ended.append("eof")
        except ConnectionResetError:
            self.ended.append("reset")
        writer.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        return
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def sink() -> AsyncIterator[tuple[Sink, int]]:
    s = Sink()
    server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
    yield s, server.sockets[0].getsockname()[1]
    server.close()


async def _ws_echo(conn: ServerConnection) -> None:
    async for message in conn:
        await conn.send(message)


@pytest.fixture
async def ws_url() -> AsyncIterator[str]:
    async with ws_serve(_ws_echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v2"


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> float:
    start = time.monotonic()
    writer.write(data)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(data)), units(5))
    assert got == data
    return time.monotonic() - start


async def _read_all(reader: asyncio.StreamReader, into: bytearray) -> None:
    while data := await asyncio.wait_for(reader.read(65536), units(5)):
        into.extend(data)


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"upstream_host": "10.1.2.3"}, "upstream_host='10.1.2.3'"),
        ({"upstream_host": "example.com"}, "upstream_host='example.com'"),
        ({"listen_host": "0.0.0.0"}, "listen_host='0.0.0.0'"),
        ({"upstream_port": 0}, "upstream_port=0"),
        ({"listen_port": 70000}, "listen_port=70000"),
    ],
)
def test_refuses_non_loopback_and_bad_ports(kwargs: dict[str, object], named: str) -> None:
    args: dict[str, object] = {"upstream_host": "127.0.0.1", "upstream_port": 1234, **kwargs}
    host, port = args.pop("upstream_host"), args.pop("upstream_port")
    with pytest.raises(ConfigError, match=named) as info:
        FaultLink(host, port, **args)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("call", "named", "allowed"),
    [
        (lambda link: link.latency(ms=-1), "ms=-1", ">= 0"),
        (lambda link: link.latency(ms=10, jitter_ms=-5), "jitter_ms=-5", ">= 0"),
        (lambda link: link.latency(ms=10, direction="sideways"), "direction='sideways'", "up"),
        (lambda link: link.latency(ms=float("nan")), "ms=nan", "finite"),
        (lambda link: link.latency(ms=True), "ms=True", "number"),
        (lambda link: link.bandwidth(bytes_per_s=0), "bytes_per_s=0", "> 0"),
        (lambda link: link.bandwidth(bytes_per_s=10, direction="x"), "direction='x'", "both"),
        (lambda link: link.reset_after(-3), "n_bytes=-3", ">= 0"),
        (lambda link: link.reset_after(2.5), "n_bytes=2.5", "int"),
        (lambda link: link.reset_after(10, direction="left"), "direction='left'", "down"),
        (lambda link: link.blackhole(direction=""), "direction=''", "both, up, down"),
        (lambda link: link.blackhole(duration_s=0), "duration_s=0", "> 0"),
        (lambda link: link.partition(duration_s=-1), "duration_s=-1", "> 0"),
        (lambda link: link.slow_close(delay_s=-0.5), "delay_s=-0.5", ">= 0"),
    ],
)
async def test_bad_fault_parameters_name_the_parameter(call, named: str, allowed: str) -> None:
    async with FaultLink("127.0.0.1", 1234) as link:
        with pytest.raises(ConfigError) as info:
            call(link)
        message = str(info.value)
        assert named in message
        assert allowed in message
        assert link.faults == []
        assert link.timeline.faults == []


async def test_url_for_rewrites_host_and_port_only() -> None:
    link = FaultLink("127.0.0.1", 4321)
    with pytest.raises(ConfigError, match="not started"):
        link.url_for("ws://127.0.0.1:4321/v2")
    async with link:
        url = link.url_for("ws://127.0.0.1:4321/v2?token=s3cret")
        assert url == f"ws://127.0.0.1:{link.port}/v2?token=s3cret"
        assert link.url_for("http://localhost:4321") == f"http://127.0.0.1:{link.port}"
        with pytest.raises(ConfigError, match="does not point at") as info:
            link.url_for("ws://127.0.0.1:9999/v2?token=s3cret")
        assert "s3cret" not in str(info.value)


# -- forwarding ----------------------------------------------------------------------------------


async def test_forwards_both_ways_counts_bytes_and_records_connections(echo_port: int) -> None:
    async with FaultLink("127.0.0.1", echo_port, name="old") as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        await _roundtrip(reader, writer, b"hello" * 1000)
        assert len(link.connections) == 1
        conn = link.connections[0]
        assert (conn.bytes_up, conn.bytes_down) == (5000, 5000)
        assert (link.bytes_up, link.bytes_down) == (5000, 5000)
        writer.close()
        await until(lambda: not link.connections, timeout=units(5), what="connection closed")
        kinds = [(e.kind, e.connection, e.link) for e in link.timeline.events]
        assert kinds == [("open", 1, "old"), ("close", 1, "old")]
        assert link.timeline.events[-1].details["bytes_up"] == 5000


async def test_stop_closes_live_connections(echo_port: int) -> None:
    link = await FaultLink("127.0.0.1", echo_port).start()
    reader, writer = await asyncio.open_connection(link.host, link.port)
    await _roundtrip(reader, writer, b"x")
    await link.stop()
    assert await asyncio.wait_for(reader.read(), units(5)) == b""
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(link.host, link.port)
    writer.close()


async def test_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    async with FaultLink("127.0.0.1", dead_port) as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), units(5))
        writer.close()
        (event,) = link.timeline.events
        assert event.kind == "refused"
        assert "upstream unreachable" in event.details["reason"]


# -- latency and bandwidth -----------------------------------------------------------------------


async def test_latency_adds_at_least_the_delay_each_way(echo_port: int) -> None:
    async with FaultLink("127.0.0.1", echo_port) as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        await _roundtrip(reader, writer, b"warm-up")
        with link.latency(ms=150):
            both = await _roundtrip(reader, writer, b"ping")
        with link.latency(ms=150, direction="down"):
            down_only = await _roundtrip(reader, writer, b"ping")
        writer.close()
    assert both >= 0.300
    assert 0.150 <= down_only
    (first, second) = link.timeline.of_kind("latency")
    assert first.params == {"ms": 150, "jitter_ms": 0, "direction": "both", "duration_s": None}
    assert first.duration_s is not None
    assert first.duration_s >= 0.300
    assert second.params["direction"] == "down"


async def test_latency_with_jitter_never_reorders_chunks(echo_port: int) -> None:
    count = 120
    async with FaultLink("127.0.0.1", echo_port) as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        with link.latency(ms=20, jitter_ms=20):
            for i in range(count):
                writer.write(b"%05d;" % i)
                await writer.drain()
                await asyncio.sleep(0.002)  # separate chunks, so the link delays each on its own
            echoed = await asyncio.wait_for(reader.readexactly(6 * count), units(10))
        writer.close()
    numbers = [int(rec) for rec in echoed.decode().split(";") if rec]
    assert numbers == list(range(count))


async def test_bandwidth_caps_throughput(sink: tuple[Sink, int]) -> None:
    server, port = sink
    size, rate = 40_000, 40_000
    async with FaultLink("127.0.0.1", port) as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        with link.bandwidth(bytes_per_s=rate, direction="up"):
            start = time.monotonic()
            writer.write(b"b" * size)
            await until(lambda: len(server.received) >= size, timeout=units(10), what="capped")
            capped = time.monotonic() - start
        start = time.monotonic()
        writer.write(b"f" * size)
        await until(lambda: len(server.received) >= 2 * size, timeout=units(5), what="uncapped")
        free = time.monotonic() - start
        writer.close()
    assert capped >= 0.9 * size / rate, f"{size} bytes at {rate} B/s took only {capped:.3f}s"
    assert free < capped / 2
    assert link.timeline.of_kind("bandwidth")[0].params["bytes_per_s"] == rate


# -- resets --------------------------------------------------------------------------------------


async def test_reset_now_resets_raw_and_websocket_clients(echo_port: int, ws_url: str) -> None:
    ws_port = int(ws_url.rsplit(":", 1)[1].split("/")[0])
    async with (
        FaultLink("127.0.0.1", echo_port) as raw_link,
        FaultLink("127.0.0.1", ws_port) as ws_link,
    ):
        reader, writer = await asyncio.open_connection(raw_link.host, raw_link.port)
        await _roundtrip(reader, writer, b"before")
        async with ws_connect(ws_link.url_for(ws_url), ping_interval=None) as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), units(5)) == "before"

            record = await ws_link.reset_now()
            with pytest.raises(ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), units(5))
            assert info.value.rcvd is None  # no close frame: the TCP connection was reset
            assert record.params == {"connections": [1]}
            assert ws_link.connections == []

        await raw_link.reset_now()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), units(5))
        writer.close()
    assert [e.kind for e in ws_link.timeline.events] == ["open", "reset"]
    assert ws_link.timeline.events[1].details["reason"] == "reset_now"


async def test_reset_after_cuts_the_upstream_after_exactly_n_bytes(
    sink: tuple[Sink, int],
) -> None:
    server, port = sink
    async with FaultLink("127.0.0.1", port) as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        writer.write(b"w" * 100)  # forwarded before the fault: not counted
        await until(lambda: len(server.received) == 100, timeout=units(5), what="warm-up")
        with link.reset_after(3000, direction="up") as fault:
            writer.write(b"x" * 10_000)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), units(5))
            await until(lambda: server.ended, timeout=units(5), what="server saw the end")
        writer.close()
    assert len(server.received) == 3100
    assert server.ended == ["reset"]
    assert fault.fired == [1]
    assert not fault.active  # one-shot: ended when it fired
    reset = link.timeline.events[-1]
    assert (reset.kind, reset.details["bytes_up"]) == ("reset", 3100)
    assert "n_bytes=3000 direction=up" in reset.details["reason"]


async def test_reset_after_cuts_the_client_after_exactly_n_bytes(echo_port: int) -> None:
    async with FaultLink("127.0.0.1", echo_port) as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        await _roundtrip(reader, writer, b"w" * 100)
        got = bytearray()
        with link.reset_after(3000, direction="down", repeat=True) as fault:
            writer.write(b"x" * 10_000)
            with pytest.raises(ConnectionResetError):
                await _read_all(reader, got)
            writer.close()
            assert fault.active  # repeat: it cuts every connection until it ends
            reader, writer = await asyncio.open_connection(link.host, link.port)
            writer.write(b"y" * 5000)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.readexactly(5000), units(5))
            writer.close()
    assert len(got) == 3000
    assert fault.fired == [1, 2]
    assert [c.bytes_down for c in link.all_connections] == [3100, 3000]
    assert [e.kind for e in link.timeline.events] == ["open", "reset", "open", "reset"]


# -- blackhole, partition, slow close -------------------------------------------------------------


async def test_blackhole_hangs_requests_but_keeps_the_socket_open(echo_port: int) -> None:
    async with FaultLink("127.0.0.1", echo_port) as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        await _roundtrip(reader, writer, b"before")
        up_before = link.bytes_up
        with link.blackhole():
            writer.write(b"ping")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(4), units(0.3))
            assert link.bytes_up == up_before  # nothing reached the server
            assert not writer.is_closing()
            assert not reader.at_eof()
            assert len(link.connections) == 1
            assert [e.kind for e in link.timeline.events] == ["open"]
        # Held, not dropped: the request completes once the blackhole ends.
        assert await asyncio.wait_for(reader.readexactly(4), units(5)) == b"ping"
        writer.close()


async def test_blackhole_holds_a_peer_reset_until_it_ends() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(keep, "127.0.0.1", 0)
    try:
        async with FaultLink("127.0.0.1", server.sockets[0].getsockname()[1]) as link:
            reader, writer = await asyncio.open_connection(link.host, link.port)
            await until(lambda: accepted, timeout=units(5), what="upstream accepted")
            with link.blackhole(direction="down"):
                sock = accepted[0].get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                accepted[0].transport.abort()  # the server crashes: it sends a RST
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(reader.read(), units(0.3))
                assert len(link.connections) == 1
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), units(5))
            writer.close()
    finally:
        server.close()
    assert "upstream reset" in link.timeline.events[-1].details["reason"]


def _socket_buffers_max() -> int:
    """What the kernel may buffer on one loopback connection (both ends' autotuned maxima)."""
    total = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, ValueError, IndexError):
            total += 8 << 20
    return total


async def test_blackhole_holds_a_bounded_amount_and_pushes_back(sink: tuple[Sink, int]) -> None:
    server, port = sink
    # More than the link holds (1 MiB) plus all the kernel can buffer, so the writer must stall.
    size = max(8 << 20, _socket_buffers_max() + (4 << 20))
    async with FaultLink("127.0.0.1", port) as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        with link.blackhole():
            writer.write(b"z" * size)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(writer.drain(), units(0.5))
            (conn,) = link.connections
            assert 0 < conn.held("up") <= (1 << 20) + 65536
            assert server.received == b""
        await until(lambda: len(server.received) == size, timeout=units(10), what="all bytes")
        assert conn.held("up") == 0
        writer.close()


async def test_blackhole_is_detected_by_websocket_keepalive(ws_url: str) -> None:
    ws_port = int(ws_url.rsplit(":", 1)[1].split("/")[0])
    async with FaultLink("127.0.0.1", ws_port) as link:
        async with ws_connect(
            link.url_for(ws_url), ping_interval=0.1, ping_timeout=0.2, close_timeout=0.2
        ) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), units(5)) == "hi"
            with link.blackhole():
                with pytest.raises(ConnectionClosedError) as info:
                    await asyncio.wait_for(ws.recv(), units(5))
                assert info.value.sent is not None
                assert info.value.sent.code == 1011  # keepalive ping timeout


async def test_partition_refuses_new_connections_until_it_ends(ws_url: str) -> None:
    ws_port = int(ws_url.rsplit(":", 1)[1].split("/")[0])
    async with FaultLink("127.0.0.1", ws_port) as link:
        url = link.url_for(ws_url)
        async with ws_connect(url, ping_interval=None) as existing:
            with link.partition() as part:
                with pytest.raises((InvalidMessage, ConnectionResetError)):
                    await ws_connect(url, open_timeout=units(5))
                await existing.send("held")
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(existing.recv(), units(0.3))
                assert part.refused == 1
            assert await asyncio.wait_for(existing.recv(), units(5)) == "held"
            async with ws_connect(url, ping_interval=None) as fresh:
                await fresh.send("after")
                assert await asyncio.wait_for(fresh.recv(), units(5)) == "after"
    kinds = [e.kind for e in link.timeline.events]
    assert kinds.count("refused") == 1
    assert kinds.count("open") == 2
    assert len(link.connection_times) == 3
    assert link.timeline.of_kind("partition")[0].duration_s is not None


async def test_partition_with_duration_heals_by_itself(echo_port: int) -> None:
    async with FaultLink("127.0.0.1", echo_port) as link:
        fault = link.partition(duration_s=units(0.2))
        reader, writer = await asyncio.open_connection(link.host, link.port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), units(5))
        writer.close()
        await until(lambda: not fault.active, timeout=units(5), what="partition healed")
        reader, writer = await asyncio.open_connection(link.host, link.port)
        await _roundtrip(reader, writer, b"again")
        writer.close()
    duration = link.timeline.of_kind("partition")[0].duration_s
    assert duration is not None
    assert duration >= units(0.2)


async def test_slow_close_delays_the_close() -> None:
    async def greet_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with FaultLink("127.0.0.1", port) as link:
            with link.slow_close(delay_s=0.4):
                reader, writer = await asyncio.open_connection(link.host, link.port)
                assert await asyncio.wait_for(reader.readexactly(3), units(5)) == b"bye"
                got_bye = time.monotonic()
                assert await asyncio.wait_for(reader.read(), units(5)) == b""
                closed_after = time.monotonic() - got_bye
                writer.close()
    finally:
        server.close()
    assert closed_after >= 0.35
    assert link.timeline.of_kind("slow_close")[0].params["delay_s"] == 0.4


# -- retry intervals and the timeline ------------------------------------------------------------


async def test_connection_times_give_reconnect_intervals(echo_port: int) -> None:
    pause = 0.1
    async with FaultLink("127.0.0.1", echo_port) as link:
        for _ in range(3):
            reader, writer = await asyncio.open_connection(link.host, link.port)
            await _roundtrip(reader, writer, b"x")
            writer.close()
            await asyncio.sleep(pause)  # the "client's" backoff being measured
    intervals = link.reconnect_intervals()
    assert len(intervals) == 2
    assert all(i >= pause for i in intervals)


async def test_timeline_serialises_every_fault_to_json_and_text(echo_port: int) -> None:
    timeline = FaultTimeline("suite")
    async with FaultLink("127.0.0.1", echo_port, timeline=timeline, name="new") as link:
        reader, writer = await asyncio.open_connection(link.host, link.port)
        with link.latency(ms=1, jitter_ms=1):
            await _roundtrip(reader, writer, b"a")
        with link.bandwidth(bytes_per_s=1e6), link.slow_close(0.01), link.blackhole(direction="up"):
            pass
        async with link.partition():
            pass
        ra = link.reset_after(10**9)
        await link.reset_now()
        writer.close()
    assert not ra.active  # stopping the link ended it
    kinds = [f.kind for f in timeline.faults]
    assert kinds == [
        "latency",
        "bandwidth",
        "slow_close",
        "blackhole",
        "partition",
        "reset_after",
        "reset_now",
    ]
    for record in timeline.faults:
        assert record.ended_mono is not None
        assert record.ended_mono >= record.started_mono
        assert record.ended_at is not None
        assert record.started_at <= record.ended_at
    data = json.loads(timeline.to_json())
    assert data["name"] == "suite"
    entries = data["entries"]
    assert [e["kind"] for e in entries if e["type"] == "fault"] == kinds
    assert [e["kind"] for e in entries if e["type"] == "connection"] == ["open", "reset"]
    monos = [e["started_mono"] if e["type"] == "fault" else e["mono"] for e in entries]
    assert monos == sorted(monos)
    text = timeline.to_text()
    for kind in kinds:
        assert kind in text
    assert "open #1" in text
    assert "reset #1" in text
    assert "bytes_per_s=1e+06" in text
