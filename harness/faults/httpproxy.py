"""A loopback HTTP proxy in front of a Matrix homeserver that corrupts what clients are sent.

Point a Matrix client at `proxy.url` instead of the homeserver; requests and answers pass
through unchanged until a fault is switched on (at runtime, one at a time)::

    async with HttpProxy("http://127.0.0.1:8008") as proxy:
        with proxy.inject(SyncFault.DUPLICATE):
            ...  # every message a user is sent comes twice in its /sync timeline
        proxy.fault = SyncFault.DROP  # or switch without a block; None is clean again

What a fault touches is narrow, so the rest of a session still works: only `m.room.message`
events (of senders matching `senders`, default any), and only in what is sent to a user other
than their sender (a sender's own echo, which its send waits for, is never touched). Each
corruption is recorded in `proxy.injections`, naming the user, the room and the events.

This is the server side of a defect matrix for real HTTP endpoints: a server that loses,
repeats or reorders a timeline event, moves a read receipt back, answers a sync with malformed
JSON or sends an event type no client knows. The proxy binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import json
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

from harness.errors import ConfigError

log = logging.getLogger("harness.faults.httpproxy")

SYNC = re.compile(r"^/_matrix/client/(?:v3|r0)/sync$")
MESSAGES = re.compile(r"^/_matrix/client/(?:v3|r0)/rooms/([^/]+)/messages$")
LOGIN = re.compile(r"^/_matrix/client/(?:v3|r0)/(?:login|register)$")
UNKNOWN_TYPE = "im_harness.unknown_type"  # an event type no Matrix client knows
# Hop-by-hop headers and those the proxy recomputes: never forwarded.
_SKIP_REQUEST = frozenset({"host", "content-length", "transfer-encoding", "connection",
                           "accept-encoding", "keep-alive"})
_SKIP_RESPONSE = frozenset({"content-length", "content-encoding", "transfer-encoding",
                            "connection", "keep-alive"})


class SyncFault(enum.StrEnum):
    """What the proxy does wrong, as a server defect would."""

    DROP = "drop_event"  # a message never reaches a recipient (/sync and /messages)
    DUPLICATE = "duplicate_event"  # a message comes twice in a recipient's /sync timeline
    SWAP = "swap_events"  # two messages reach a recipient in the opposite order
    RECEIPT_BACK = "receipt_back"  # after each read receipt, one at the message before it
    MALFORMED_JSON = "malformed_json"  # a /sync answer bringing a message is cut short, once
    UNKNOWN_TYPE = "unknown_event_type"  # an event of an unknown type before each message


FAULTS: tuple[SyncFault, ...] = tuple(SyncFault)


@dataclass(frozen=True)
class Injection:
    """One corruption: which fault, in what was sent to whom, about which events."""

    fault: SyncFault
    user: str  # the Matrix id the corrupted answer was for
    room: str
    event_ids: tuple[str, ...]
    at: float  # time.monotonic()

    def __str__(self) -> str:
        return f"{self.fault} for {self.user} in {self.room}: {', '.join(self.event_ids)}"


@dataclass
class _Held:
    """A message a SWAP holds back until the next one to the same user and room passed."""

    event: dict[str, Any]
    since: float


def _check_upstream(upstream: str) -> str:
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"HttpProxy upstream={upstream!r} is not an HTTP URL; pass e.g. "
                          "'http://127.0.0.1:8008'")
    return upstream.rstrip("/")


class HttpProxy:
    """A loopback HTTP proxy to `upstream` that injects one `SyncFault` at a time."""

    def __init__(self, upstream: str, *, senders: str | None = None, hold_s: float = 1.0,
                 name: str = "proxy") -> None:
        self.upstream = _check_upstream(upstream)
        try:
            self._senders = re.compile(senders) if senders else None
        except re.error as exc:
            raise ConfigError(f"HttpProxy senders={senders!r} is not a regular expression "
                              f"({exc}); pass one that matches sender Matrix ids") from None
        if isinstance(hold_s, bool) or not isinstance(hold_s, (int, float)) or \
                not 0 < hold_s < math.inf:
            raise ConfigError(f"HttpProxy hold_s={hold_s!r} is not a positive number of "
                              "seconds; pass e.g. 1.0")
        self.hold_s = float(hold_s)  # how long a SWAP holds a message with no successor yet
        self.name = name
        self._fault: SyncFault | None = None
        self.injections: list[Injection] = []
        self._users: dict[str, str] = {}  # access token -> Matrix id
        self._order: dict[str, list[str]] = {}  # room -> message event ids, as first seen
        self._known: dict[str, set[str]] = {}  # room -> the same ids, as a set
        self._dropped: dict[str, set[str]] = {}  # user -> message ids dropped for them
        self._held: dict[tuple[str, str], _Held] = {}  # (user, room) -> a SWAP's held message
        self._corrupted: set[tuple[str, str]] = set()  # (user, event id) MALFORMED_JSON cut
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def __repr__(self) -> str:
        return f"<HttpProxy {self.name} {self.url if self.port else '(stopped)'} -> " \
               f"{self.upstream} fault={self.fault}>"

    @property
    def url(self) -> str:
        if self.port is None:
            raise ConfigError(f"{self.name}: not started; use `async with HttpProxy(...)`")
        return f"http://127.0.0.1:{self.port}"

    @property
    def fault(self) -> SyncFault | None:
        """The fault injected now (None: clean); set it to switch at runtime."""
        return self._fault

    @fault.setter
    def fault(self, fault: SyncFault | str | None) -> None:
        if fault is None:
            self._fault = None
            return
        try:
            self._fault = SyncFault(fault)
        except ValueError:
            raise ConfigError(f"{self.name}: fault {fault!r} is unknown; use one of "
                              f"{', '.join(FAULTS)}, or None for none") from None

    @contextlib.contextmanager
    def inject(self, fault: SyncFault | str) -> Iterator[Self]:
        """Switch `fault` on for the block (the proxy is clean again after it)."""
        self.fault = fault
        try:
            yield self
        finally:
            self.fault = None

    def of(self, fault: SyncFault) -> list[Injection]:
        """The injections of one fault so far."""
        return [i for i in self.injections if i.fault is fault]

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> Self:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True)
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- forwarding -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        path = request.path
        token = _token(request)
        user = await self._user(token) if token and (SYNC.match(path) or MESSAGES.match(
            path)) else None
        # The path as the client encoded it: decoded, a room alias's '#' would end the path.
        url = URL(self.upstream + request.raw_path, encoded=True)
        if SYNC.match(path) and user is not None:
            url = url.with_query(self._sync_query(user, list(request.query.items())))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST}
        body = await request.read()
        try:
            async with self._http.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False,
            ) as upstream:
                status, payload = upstream.status, await upstream.read()
                out_headers = {k: v for k, v in upstream.headers.items()
                               if k.lower() not in _SKIP_RESPONSE}
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"{self.name}: upstream failed: {exc}")
        if status == 200:
            payload = self._rewrite(path, user, payload)
        return web.Response(status=status, body=payload, headers=out_headers)

    async def _user(self, token: str) -> str | None:
        """The Matrix id of an access token: learnt from /login, else asked of the server."""
        known = self._users.get(token)
        if known is None and self._http is not None:
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                async with self._http.get(
                    f"{self.upstream}/_matrix/client/v3/account/whoami",
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp:
                    if resp.status == 200:
                        known = str((await resp.json())["user_id"])
                        self._users[token] = known
        return known

    def _sync_query(self, user: str, query: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A user with a held message long-polls briefly, so the hold ends on time."""
        if not any(u == user for u, _ in self._held):
            return query
        cap = str(int(self.hold_s * 1000))
        return [(k, v if k != "timeout" or int(v or 0) < int(cap) else cap) for k, v in query]

    def _rewrite(self, path: str, user: str | None, payload: bytes) -> bytes:
        if LOGIN.match(path):
            self._learn(payload)
            return payload
        sync, messages = SYNC.match(path), MESSAGES.match(path)
        if user is None or not (sync or messages):
            return payload
        try:
            data = json.loads(payload)
        except ValueError:
            return payload  # the server's own bad answer: passed on as it is
        if not isinstance(data, dict):
            return payload
        if sync:
            self._note_order(data)
            fault = self.fault
            if fault is SyncFault.MALFORMED_JSON:
                return self._malformed(user, data, payload)
            if fault is not None or self._held:
                self._corrupt_sync(fault, user, data)
        elif messages:
            self._corrupt_messages(user, data)
        return json.dumps(data).encode()

    def _learn(self, payload: bytes) -> None:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            answer = json.loads(payload)
            self._users[str(answer["access_token"])] = str(answer["user_id"])

    # -- what a fault does ------------------------------------------------------------------

    def _touched(self, user: str, event: Mapping[str, Any]) -> bool:
        """A message to `user` from someone else (a sender `senders` matches)."""
        if not isinstance(event, dict) or event.get("type") != "m.room.message":
            return False
        sender = str(event.get("sender", ""))
        if sender == user:
            return False
        return self._senders is None or bool(self._senders.search(sender))

    def _record(self, fault: SyncFault, user: str, room: str, *event_ids: str) -> None:
        injection = Injection(fault, user, room, tuple(event_ids), time.monotonic())
        self.injections.append(injection)
        log.info("%s: %s", self.name, injection)

    def _note_order(self, data: Mapping[str, Any]) -> None:
        """Each room's messages in the order the proxy first saw them (the server's order)."""
        for room_id, room in _rooms(data):
            order = self._order.setdefault(room_id, [])
            known = self._known.setdefault(room_id, set())
            for event in _timeline(room):
                event_id = event.get("event_id") if isinstance(event, dict) else None
                if event.get("type") == "m.room.message" and event_id and event_id not in known:
                    known.add(event_id)
                    order.append(event_id)

    def _corrupt_sync(self, fault: SyncFault | None, user: str, data: dict[str, Any]) -> None:
        rooms = dict(_rooms(data))
        for room_id, room in rooms.items():
            events = _timeline(room)
            if fault is SyncFault.DROP:
                self._drop(user, room_id, room, events)
            elif fault is SyncFault.DUPLICATE:
                self._duplicate(user, room_id, room, events)
            elif fault is SyncFault.UNKNOWN_TYPE:
                self._unknown(user, room_id, room, events)
            elif fault is SyncFault.RECEIPT_BACK:
                self._receipt_back(user, room_id, room)
            if fault is SyncFault.SWAP or (user, room_id) in self._held:
                self._swap(user, room_id, room, events, hold=fault is SyncFault.SWAP)
        for (who, room_id), held in list(self._held.items()):  # a hold in a room not in this
            if who == user and room_id not in rooms and \
                    time.monotonic() - held.since >= self.hold_s:
                joined = data.setdefault("rooms", {}).setdefault("join", {})
                joined[room_id] = {"timeline": {"events": [held.event]}}
                del self._held[(who, room_id)]

    def _drop(self, user: str, room_id: str, room: dict[str, Any],
              events: list[dict[str, Any]]) -> None:
        kept = [e for e in events if not self._touched(user, e)]
        gone = [str(e.get("event_id")) for e in events if self._touched(user, e)]
        if gone:
            room["timeline"]["events"] = kept
            self._dropped.setdefault(user, set()).update(gone)
            self._record(SyncFault.DROP, user, room_id, *gone)

    def _duplicate(self, user: str, room_id: str, room: dict[str, Any],
                   events: list[dict[str, Any]]) -> None:
        out: list[dict[str, Any]] = []
        for event in events:
            out.append(event)
            if self._touched(user, event):
                out.append(copy.deepcopy(event))
                self._record(SyncFault.DUPLICATE, user, room_id, str(event.get("event_id")))
        room["timeline"]["events"] = out

    def _unknown(self, user: str, room_id: str, room: dict[str, Any],
                 events: list[dict[str, Any]]) -> None:
        out: list[dict[str, Any]] = []
        for event in events:
            if self._touched(user, event):
                odd = copy.deepcopy(event)
                odd["type"] = UNKNOWN_TYPE
                odd["event_id"] = f"{event.get('event_id')}-unknown"
                out.append(odd)
                self._record(SyncFault.UNKNOWN_TYPE, user, room_id, odd["event_id"])
            out.append(event)
        room["timeline"]["events"] = out

    def _swap(self, user: str, room_id: str, room: dict[str, Any],
              events: list[dict[str, Any]], *, hold: bool) -> None:
        """Hold one message back and deliver it right after the next one (or, late, alone)."""
        out: list[dict[str, Any]] = []
        key = (user, room_id)
        for event in events:
            if not self._touched(user, event):
                out.append(event)
                continue
            held = self._held.pop(key, None)
            if held is not None:  # the pair: this one first, then the one held before it
                out += [event, held.event]
                self._record(SyncFault.SWAP, user, room_id, str(event.get("event_id")),
                             str(held.event.get("event_id")))
            elif hold:
                self._held[key] = _Held(event, time.monotonic())
            else:
                out.append(event)
        late = self._held.get(key)
        if late is not None and time.monotonic() - late.since >= self.hold_s:
            out.append(late.event)  # no successor came in time: delivered late, in place
            del self._held[key]
        if "timeline" in room:
            room["timeline"]["events"] = out
        elif out:
            room["timeline"] = {"events": out}

    def _receipt_back(self, user: str, room_id: str, room: dict[str, Any]) -> None:
        """After each read receipt of another reader, one of theirs at the message before."""
        ephemeral = (room.get("ephemeral") or {}).get("events")
        if not isinstance(ephemeral, list):
            return
        order = self._order.get(room_id, [])
        added: list[dict[str, Any]] = []
        for event in ephemeral:
            if not isinstance(event, dict) or event.get("type") != "m.receipt":
                continue
            for target, kinds in (event.get("content") or {}).items():
                if target not in order or order.index(target) == 0:
                    continue
                earlier = order[order.index(target) - 1]
                for reader, receipt in ((kinds or {}).get("m.read") or {}).items():
                    if reader == user:
                        continue
                    added.append({"type": "m.receipt", "content": {
                        earlier: {"m.read": {reader: dict(receipt or {})}}}})
                    self._record(SyncFault.RECEIPT_BACK, user, room_id, target, earlier)
        ephemeral.extend(added)

    def _malformed(self, user: str, data: dict[str, Any], payload: bytes) -> bytes:
        """A sync answer bringing a message `user` was never sent corrupted: cut short, once."""
        fresh = [(room_id, str(e.get("event_id"))) for room_id, room in _rooms(data)
                 for e in _timeline(room) if self._touched(user, e)
                 and (user, str(e.get("event_id"))) not in self._corrupted]
        if not fresh:
            return payload
        for room_id, event_id in fresh:
            self._corrupted.add((user, event_id))
            self._record(SyncFault.MALFORMED_JSON, user, room_id, event_id)
        return payload[: max(1, len(payload) // 2)]

    def _corrupt_messages(self, user: str, data: dict[str, Any]) -> None:
        """/messages agrees with /sync: what was dropped (or is held) for `user` is not there."""
        chunk = data.get("chunk")
        if not isinstance(chunk, list):
            return
        hidden = set(self._dropped.get(user, ()))
        hidden |= {str(h.event.get("event_id")) for (u, _), h in self._held.items() if u == user}
        if self.fault is SyncFault.DROP:
            hidden |= {str(e.get("event_id")) for e in chunk if self._touched(user, e)}
        if hidden:
            data["chunk"] = [e for e in chunk if not (
                isinstance(e, dict) and e.get("event_id") in hidden)]


def _token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer "):]
    return request.query.get("access_token")


def _rooms(data: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    rooms = data.get("rooms")
    if not isinstance(rooms, dict):
        return
    for section in ("join", "leave"):
        for room_id, room in (rooms.get(section) or {}).items():
            if isinstance(room, dict):
                yield room_id, room


def _timeline(room: dict[str, Any]) -> list[dict[str, Any]]:
    timeline = room.get("timeline")
    if not isinstance(timeline, dict) or not isinstance(timeline.get("events"), list):
        return []
    return [e for e in timeline["events"] if isinstance(e, dict)]
