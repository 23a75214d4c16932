"""The reference adapter's WebSocket link splits frames itself after the handshake: whatever the
TCP segmentation, text and binary messages arrive whole and in order, fragmented messages are
joined, pings are answered, and invalid UTF-8 fails the connection (close code 1007).

A real TCP server on 127.0.0.1 speaks raw WebSocket bytes, in the chunks each test chooses.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from harness.adapters.reference.transport import Link, _MaskKeys
from harness.timing import units, until

KEYS_PER_BLOCK = _MaskKeys.KEYS_PER_BLOCK

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A server frame (unmasked)."""
    head = bytes(((0x80 if fin else 0) | opcode,))
    n = len(payload)
    if n < 126:
        head += bytes((n,))
    elif n < 65536:
        head += bytes((126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((127,)) + n.to_bytes(8, "big")
    return head + payload


def unmask(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each masked client frame in `data`."""
    out, at = [], 0
    while at + 2 <= len(data):
        opcode, n = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if n == 126:
            n, at = int.from_bytes(data[at:at + 2], "big"), at + 2
        elif n == 127:
            n, at = int.from_bytes(data[at:at + 8], "big"), at + 8
        key, at = data[at:at + 4], at + 4
        out.append((opcode, bytes(b ^ key[i % 4] for i, b in enumerate(data[at:at + n]))))
        at += n
    return out


@asynccontextmanager
async def server(script: Callable[[asyncio.StreamWriter], object],
                 got: bytearray) -> AsyncIterator[str]:
    """A WebSocket server that answers the handshake, then runs `script(writer)`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        await writer.drain()
        await script(writer)  # type: ignore[misc]
        while data := await reader.read(65536):
            got.extend(data)

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/v2"
    finally:
        srv.close()


async def _open(url: str) -> tuple[Link, list[str | bytes]]:
    link = await Link.open(url, open_timeout=units(5), ping_interval=None, ping_timeout=None)
    received: list[str | bytes] = []
    link.on_frame = received.append
    return link, received


async def test_messages_arrive_whole_whatever_the_segmentation() -> None:
    big = ("x" * 70_000).encode()
    stream = (frame(1, b'{"n":1}') + frame(1, "héllo".encode()) + frame(2, b"\x00\x01")
              + frame(1, big) + frame(1, b"a", fin=False) + frame(9, b"pi")  # ping inside
              + frame(0, b"b", fin=False) + frame(0, b"c") + frame(1, b"end"))

    async def trickle(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)  # after the client's handshake is done
        for i in range(0, 200, 1):  # the head byte by byte
            writer.write(stream[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        for i in range(200, len(stream), 997):
            writer.write(stream[i:i + 997])
            await writer.drain()

    got = bytearray()
    async with server(trickle, got) as url:
        link, received = await _open(url)
        await until(lambda: len(received) >= 6, timeout=units(5), what="six messages")
        assert received == ['{"n":1}', "héllo", b"\x00\x01", big.decode(), "abc", "end"]
        link.send('{"op":"x"}')
        await until(lambda: len(unmask(bytes(got))) >= 2, timeout=units(5), what="pong + text")
        assert unmask(bytes(got))[:2] == [(10, b"pi"), (1, b'{"op":"x"}')]
        await link.close()


async def test_invalid_utf8_fails_the_connection_with_1007() -> None:
    async def bad(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(frame(1, b"ok") + frame(1, b"\xff\xfe"))
        await writer.drain()

    got = bytearray()
    async with server(bad, got) as url:
        link, received = await _open(url)
        await until(lambda: bool(got), timeout=units(5), what="the client's close frame")
        assert received == ["ok"]
        [(opcode, payload)] = unmask(bytes(got))[:1]
        assert opcode == 8  # close
        assert int.from_bytes(payload[:2], "big") == 1007  # invalid data
        link.abort()


def masking_keys(data: bytes) -> list[bytes]:
    """The masking key of each client frame in `data`."""
    keys, at = [], 0
    while at + 2 <= len(data):
        n = data[at + 1] & 0x7F
        at += 2
        if n == 126:
            n, at = int.from_bytes(data[at:at + 2], "big"), at + 2
        elif n == 127:
            n, at = int.from_bytes(data[at:at + 8], "big"), at + 8
        keys.append(data[at:at + 4])
        at += 4 + n
    return keys


async def test_every_frame_gets_its_own_masking_key_across_key_blocks() -> None:
    async def quiet(writer: asyncio.StreamWriter) -> None:
        return None

    count = 2 * KEYS_PER_BLOCK + KEYS_PER_BLOCK // 2  # keys come from urandom a block at a time
    got = bytearray()
    async with server(quiet, got) as url:
        link, _ = await _open(url)
        for i in range(count):
            link.send(f'{{"n":{i}}}')
        await until(lambda: len(masking_keys(bytes(got))) >= count, timeout=units(10),
                    what=f"{count} frames")
        keys = masking_keys(bytes(got))[:count]
        assert [p for _, p in unmask(bytes(got))][:3] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        # random 4-byte keys: two equal among 2,560 has a chance of ~1 in 1,300
        assert len(set(keys)) >= count - 2, "masking keys repeat"
        link.abort()
