"""Adapter for a Matrix homeserver (tested against Synapse) over the client-server API.

Plain aiohttp, no Matrix SDK: the harness keeps one HTTP client for every adapter and needs
no end-to-end crypto stack (test rooms are unencrypted). How the contract maps onto Matrix:

- user ids are localparts ("alice-1a2b3c4d"); users on other servers keep their full MXID.
  `Credentials.token` is the password; every client logs in as its own device.
- 1:1 = a direct room per pair, found race-free through a room alias derived from the pair;
  groups = rooms whose power levels give owner 100, admin 50, member 0; invites are
  accepted by the invitee's client as soon as its sync sees them.
- membership is the server's, with two contract rules the adapter applies itself: a former
  member's `group_info`/`history` is Forbidden (Matrix still shows what they saw), and in a 1:1
  room only the sender recalls (a Matrix peer with power may redact the other's messages).
  `info.client_enforced` declares both, so suites that test a server's enforcement skip them.
  An invited user's client joins before it sends, recalls or reads.
- recall = redaction, read receipts = `m.read` receipts, mute = power levels (a member at
  -1, or `events_default` 50 for mute-all), offline = `/sync` with the client's since token:
  everything in the first sync after (re)connecting is marked `offline=True`.
- seq: Matrix has no per-room sequence number. The adapter numbers the `m.room.message`
  events of a room 1, 2, ... in the order its client sees them: from the room's creation
  (backfilled with `/messages` when the client first meets the room), then `/sync` order.
  On one homeserver both orders are the room's timeline order, so clients of the same server
  agree, but the number is derived by the adapter, not issued by the server.
- idempotent send: `PUT .../send/m.room.message/{client_id}`; Synapse deduplicates a
  transaction id per device, and a client keeps its device across drop/reconnect. A send whose
  request fails on the network is retried, like a Matrix SDK does, with the same transaction id
  (exponential backoff, full jitter) until its send timeout; an ack is `duplicate` when the
  event it names was already known to this client before that request went out.
- connection: HTTP, no persistent connection (`info.keepalive_s` is None). The `/sync`
  long-poll reconnects with the same backoff after a network error and resumes from its since
  token; it reports `Disconnected` at the first failure and `Reconnected` when a sync works.

Options (`EndpointSettings.options`): `server_name` (else learned at the first login),
`sync_timeout_s` (long-poll, default 20), `send_timeout_s` (overrides the settings' one),
`room_version` (for rooms the adapter creates; default the server's), `send_rate_per_user` /
`send_burst` (the server's limits, for `info.limits`), `backoff_base_s` / `backoff_cap_s`
(retry and reconnect backoff, default 0.5 s / 10 s), `jitter_seed` (seed of the jitter).
Secrets: `registration_shared_secret` (register through the admin API; without it, open
registration with a dummy auth stage is used).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import aiohttp

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
    ServerRule,
    Target,
    TierLimits,
)
from harness.errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    Forbidden,
    IMError,
    IMTimeout,
    LimitReached,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unsupported,
)
from harness.registry import adapters

CAPABILITIES = frozenset({
    Capability.CHAT, Capability.CUSTOM, Capability.GROUPS, Capability.ROLES, Capability.MUTE,
    Capability.RECALL, Capability.RECEIPTS, Capability.GROUP_RECEIPTS, Capability.OFFLINE,
    Capability.HISTORY, Capability.IDEMPOTENT_SEND,
})  # no PUSH: no pusher is wired to a webhook; no TIER_ADMIN: Matrix has no tiers
# Contract rules Matrix leaves open, refused by this adapter itself (see the module docstring).
CLIENT_ENFORCED = frozenset({ServerRule.PEER_RECALL_1TO1, ServerRule.FORMER_MEMBER_READS})
MAX_EVENT_BYTES = 65536  # Synapse's limit on a whole event (envelope included), not the body
# The body limit the adapter declares and enforces: the event limit minus room for the envelope.
# Measured envelope of a 1:1 text message (14-character localparts, 34-character client id):
# 706 bytes on Synapse 1.141.0, 674 on 1.163.2; the rest allows 255-character ids and
# client ids, and a few more prev_events. Characters that JSON escapes (quotes, backslashes,
# control characters) take more room in the event, so such bodies meet the event limit sooner.
MAX_BODY_BYTES = 64000
ROLE_LEVELS = {"owner": 100, "admin": 50, "member": 0}
MUTED_LEVEL = -1
MUTE_ALL_LEVEL = 50  # events_default while everyone but admins and owners is muted
CLIENT_ID_KEY = "im_harness.client_id"
CUSTOM_KEY = "im_harness.custom"
KIND_KEY = "im_harness.kind"
PAIR_KEY = "im_harness.pair"
PAGE = 100
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 10.0
_END = object()
_R = TypeVar("_R")

_ERRCODES: dict[str, type[IMError]] = {
    "M_FORBIDDEN": Forbidden,
    "M_GUEST_ACCESS_FORBIDDEN": Forbidden,
    "M_UNKNOWN_TOKEN": Unauthorized,
    "M_MISSING_TOKEN": Unauthorized,
    "M_USER_DEACTIVATED": Unauthorized,
    "M_NOT_FOUND": NotFound,
    "M_TOO_LARGE": TooLarge,
    "M_UNRECOGNIZED": Unsupported,
    "M_UNSUPPORTED_ROOM_VERSION": Unsupported,
    "M_INCOMPATIBLE_ROOM_VERSION": Unsupported,
    "M_RESOURCE_LIMIT_EXCEEDED": LimitReached,
    "M_BAD_JSON": BadRequest,
    "M_NOT_JSON": BadRequest,
    "M_INVALID_PARAM": BadRequest,
    "M_MISSING_PARAM": BadRequest,
    "M_INVALID_USERNAME": BadRequest,
    "M_USER_IN_USE": BadRequest,
    "M_ROOM_IN_USE": BadRequest,
}
_BY_STATUS: dict[int, type[IMError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 413: TooLarge,
}


def map_error(status: int, body: Mapping[str, Any], what: str) -> IMError:
    """The contract's typed error for a Matrix error answer."""
    errcode = str(body.get("errcode") or "")
    text = f"{what}: {errcode or status} {body.get('error') or ''}".rstrip()
    if errcode == "M_LIMIT_EXCEEDED" or status == 429:
        retry_ms = body.get("retry_after_ms") or 0
        return RateLimited(text, retry_after=float(retry_ms) / 1000.0, errcode=errcode)
    cls = _ERRCODES.get(errcode) or _BY_STATUS.get(status) or IMError
    return cls(text, errcode=errcode, status=status)


class _Secret(str):
    """An access token that reprs as hidden (tracebacks print call arguments)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<hidden>'"


def _http_session() -> aiohttp.ClientSession:
    """An HTTP session whose failed requests reach the adapter, which owns every retry."""
    http = aiohttp.ClientSession()
    # aiohttp silently repeats a failed idempotent request once, at once, on a new connection:
    # that would double every attempt, defeat the backoff and hide the failure from `/sync`.
    if hasattr(http, "_retry_connection"):
        http._retry_connection = False
    return http


def _redacts(event: Mapping[str, Any]) -> str | None:
    # Room versions before 11 carry `redacts` at the top level, 11 and later in the content.
    return event.get("redacts") or (event.get("content") or {}).get("redacts")


def _custom_of(content: Mapping[str, Any]) -> dict[str, Any] | None:
    """The structured payload of a custom message (a JSON string; an object from older events)."""
    custom = content.get(CUSTOM_KEY)
    if isinstance(custom, str):
        with contextlib.suppress(ValueError):
            custom = json.loads(custom)
    return dict(custom) if isinstance(custom, Mapping) else None


def _is_redacted(event: Mapping[str, Any]) -> bool:
    return "redacted_because" in (event.get("unsigned") or {})


@dataclass
class _Room:
    """What one client knows of one room, in timeline order."""

    kind: str | None = None  # "direct" / "group" / None (a room the harness did not make)
    pair: tuple[str, ...] = ()
    name: str = ""
    creators: frozenset[str] = frozenset()  # room v12+: creators outrank every power level
    power: dict[str, Any] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)  # mxid -> membership
    seen: set[str] = field(default_factory=set)
    position: dict[str, int] = field(default_factory=dict)  # event id -> messages up to it
    messages: list[str] = field(default_factory=list)  # seq - 1 -> event id
    read: dict[str, int] = field(default_factory=dict)  # reader -> highest seq reported


@dataclass
class _UserState:
    """A user's client-side storage: the sync cursor, rooms and sent transactions."""

    since: str | None = None
    rooms: dict[str, _Room] = field(default_factory=dict)
    direct: dict[str, str] = field(default_factory=dict)  # peer mxid -> room id
    sent: dict[str, str] = field(default_factory=dict)  # client id (txn id) -> event id
    device_id: str = field(default_factory=lambda: "IMH" + secrets.token_hex(5).upper())


class MatrixClient:
    """One logged-in device of one Matrix user, with a `/sync` long-poll in the background."""

    def __init__(self, adapter: MatrixAdapter, credentials: Credentials, state: _UserState):
        self._adapter = adapter
        self._credentials = credentials
        self._state = state
        # Before any login the server name may be unknown; a bare localpart logs in as well.
        self._mxid = adapter.mxid(credentials.user_id) if adapter.server_name or \
            credentials.user_id.startswith("@") else credentials.user_id
        self._token: str | None = None
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._http: aiohttp.ClientSession | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._waiters: dict[str, asyncio.Future[tuple[int, float]]] = {}
        self._caught_up = asyncio.Event()
        self._status = "new"
        self._rng = random.Random(adapter.options.get("jitter_seed"))
        self.reconnect_attempts: list[float] = []  # time.monotonic() of each /sync retry
        self.reconnect_delays: list[float] = []  # the jittered delay drawn before each one
        self.send_retries: list[float] = []  # time.monotonic() of each repeated send request
        self.send_retry_delays: list[float] = []  # the jittered delay drawn before each one

    def __repr__(self) -> str:
        return f"MatrixClient({self.user_id!r}, {self._status})"

    @property
    def user_id(self) -> str:
        return self._credentials.user_id

    @property
    def protocol(self) -> str:
        return self._adapter.info.protocol

    # -- HTTP -----------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
        params: Mapping[str, str] | None = None, within: float | None = None,
    ) -> dict[str, Any]:
        if self._http is None or self._token is None:
            raise ConnectionLost(f"{self!r}: not connected; call reconnect() first")
        return await self._adapter.request(
            self._http, method, path, body, params=params, token=self._token, within=within
        )

    async def _login(self) -> None:
        if self._http is None or self._http.closed:
            self._http = _http_session()
        try:
            answer = await self._login_request()
        except (Forbidden, BadRequest) as exc:  # a wrong or empty password: refused either way
            raise Unauthorized(f"{self!r}: login refused: {exc}") from None
        self._token = _Secret(answer["access_token"])
        self._adapter.learn_server_name(answer["user_id"])
        self._mxid = answer["user_id"]

    async def _login_request(self) -> dict[str, Any]:
        assert self._http is not None
        return await self._adapter.request(self._http, "POST", "/login", {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self._mxid},
            "password": self._credentials.token,
            "device_id": self._state.device_id,
            "initial_device_display_name": "im-harness",
        })

    def _backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
        base, cap = self._adapter.backoff_base_s, self._adapter.backoff_cap_s
        return self._rng.uniform(0.0, min(cap, base * 2 ** min(attempt, 60)))

    async def _start(self, *, reconnected: bool) -> None:
        self._caught_up.clear()
        self._status = "connected"
        self._sync_task = asyncio.create_task(
            self._sync_loop(reconnected=reconnected), name=f"matrix-sync {self.user_id}"
        )
        waiter = asyncio.ensure_future(self._caught_up.wait())
        done, _ = await asyncio.wait(
            {waiter, self._sync_task}, timeout=self._adapter.settings.connect_timeout_s * 4,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if waiter not in done:
            waiter.cancel()
            failed = self._sync_task
            await self._stop_sync()
            self._status = "dropped"  # a later reconnect() starts over
            if failed in done:
                failed.result()  # raises the loop's error
            raise IMTimeout(f"{self!r}: the first sync did not complete in time")

    # -- sync -----------------------------------------------------------------------------

    async def _sync_loop(self, *, reconnected: bool) -> None:
        catching_up = True
        failures = 1 if reconnected else 0  # a reconnect() says Reconnected before what it missed
        poll = float(self._adapter.options.get("sync_timeout_s", 20))
        filt = json.dumps({
            "room": {"timeline": {"limit": 50}, "state": {"lazy_load_members": False}},
            "presence": {"types": []},
            "account_data": {"types": []},
        })
        while True:
            params = {"filter": filt, "timeout": "0" if catching_up else str(int(poll * 1000))}
            if self._state.since:
                params["since"] = self._state.since
            try:
                data = await self._call("GET", "/sync", params=params, within=poll + 10)
                if failures:
                    self._events.put_nowait(Reconnected(attempts=failures))
                    failures = 0
                # A batch whose follow-up requests fail is fetched again: the since token
                # moves only after the whole batch is applied, and applying is idempotent.
                joined = await self._process(data, offline=catching_up)
            except (ConnectionLost, IMTimeout) as exc:
                if not self._caught_up.is_set():
                    raise
                if not failures:
                    self._events.put_nowait(Disconnected(reason=str(exc)))
                delay = self._backoff_s(failures)
                failures += 1
                self.reconnect_delays.append(delay)
                await asyncio.sleep(delay)
                self.reconnect_attempts.append(time.monotonic())
                continue
            except Unauthorized as exc:
                self._events.put_nowait(Disconnected(reason=str(exc)))
                self._status = "closed"
                return
            self._state.since = data["next_batch"]
            # Rooms joined from invites during catch-up bring their backlog in the next batch.
            catching_up = catching_up and joined
            if not catching_up:
                self._caught_up.set()

    async def _process(self, data: Mapping[str, Any], *, offline: bool) -> bool:
        """Apply one sync batch; True when it accepted invites."""
        rooms = data.get("rooms") or {}
        joined = False
        for room_id in rooms.get("invite") or {}:
            try:
                await self._call("POST", f"/join/{quote(room_id)}", {})
                joined = True
            except ConnectionLost:
                raise  # the batch is fetched and the invite accepted again
            except IMError:  # a room that vanished meanwhile
                pass
        for room_id, room in (rooms.get("join") or {}).items():
            await self._process_room(room_id, room, offline=offline)
        for room_id, left in (rooms.get("leave") or {}).items():
            await self._process_room(room_id, left, offline=offline)
        return joined

    async def _process_room(self, room_id: str, data: Mapping[str, Any], *, offline: bool) -> None:
        timeline = data.get("timeline") or {}
        events = list(timeline.get("events") or [])
        room = self._state.rooms.get(room_id)
        if room is None:
            # Known only once its backfill arrived, so a failed backfill is redone in full.
            events = await self._room_from_start(room_id) + events
            room = self._state.rooms[room_id] = _Room()
        elif timeline.get("limited") and timeline.get("prev_batch"):
            events = await self._fill_gap(room_id, room, timeline["prev_batch"]) + events
        for event in events:
            self._apply(room_id, room, event, offline=offline)
        for ephemeral in (data.get("ephemeral") or {}).get("events") or []:
            if ephemeral.get("type") == "m.receipt":
                self._receipts(room_id, room, ephemeral.get("content") or {}, offline=offline)

    async def _room_from_start(self, room_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params = {"dir": "f", "limit": str(PAGE)}
            if token:
                params["from"] = token
            page = await self._call("GET", f"/rooms/{quote(room_id)}/messages", params=params)
            chunk = page.get("chunk") or []
            out.extend(chunk)
            token = page.get("end")
            if not chunk or not token:
                return out

    async def _fill_gap(self, room_id: str, room: _Room, token: str) -> list[dict[str, Any]]:
        missed: list[dict[str, Any]] = []
        next_token: str | None = token
        while next_token:
            params = {"dir": "b", "limit": str(PAGE), "from": next_token}
            page = await self._call("GET", f"/rooms/{quote(room_id)}/messages", params=params)
            chunk = page.get("chunk") or []
            for event in chunk:
                if event.get("event_id") in room.seen:
                    return list(reversed(missed))
                missed.append(event)
            next_token = page.get("end") if chunk else None
        return list(reversed(missed))

    def _emit(self, event: Event) -> None:
        self._events.put_nowait(event)

    def _apply(self, room_id: str, room: _Room, event: Mapping[str, Any], *, offline: bool) -> None:
        event_id = event.get("event_id", "")
        if event_id in room.seen:
            return
        room.seen.add(event_id)
        kind, sender = event.get("type"), event.get("sender", "")
        content = event.get("content") or {}
        mine = sender == self._mxid
        if kind == "m.room.message":
            room.messages.append(event_id)
            seq = len(room.messages)
            room.position[event_id] = seq
            ts = float(event.get("origin_server_ts", 0)) / 1000.0
            waiter = self._waiters.pop(event_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result((seq, ts))
            txn = (event.get("unsigned") or {}).get("transaction_id")
            if mine and txn:  # our device's transaction: a resend of it gets this event back
                self._state.sent.setdefault(str(txn), event_id)
            if not mine:
                self._emit(MessageReceived(self._message(room_id, room, event, seq), offline))
            return
        room.position[event_id] = len(room.messages)
        if kind == "m.room.redaction":
            target = _redacts(event)
            if target in room.position and not mine:
                self._emit(MessageRecalled(room_id, target, self._adapter.local(sender), offline))
        elif kind == "m.room.create":
            room.kind = content.get(KIND_KEY)
            room.pair = tuple(content.get(PAIR_KEY) or ())
            if room.kind == "direct":
                for peer in room.pair:
                    if peer != self._mxid:
                        self._state.direct.setdefault(peer, room_id)
            if _creators_outrank(str(content.get("room_version", "1"))):
                room.creators = frozenset({sender, *(content.get("additional_creators") or ())})
        elif kind == "m.room.name":
            room.name = str(content.get("name") or "")
        elif kind == "m.room.member":
            self._member_changed(room_id, room, event)
        elif kind == "m.room.power_levels":
            self._power_changed(room_id, room, content, self._adapter.local(sender))

    def _member_changed(self, room_id: str, room: _Room, event: Mapping[str, Any]) -> None:
        user, sender = event.get("state_key", ""), event.get("sender", "")
        new = (event.get("content") or {}).get("membership", "")
        old = room.members.get(user)
        room.members[user] = new
        if room.kind != "group" or old == new:
            return
        local, by = self._adapter.local(user), self._adapter.local(sender)
        if new == "invite" or (new == "join" and old not in ("invite", None)):
            self._emit(MembershipChanged(room_id, local, "added", by))
        elif new in ("leave", "ban") and old in ("join", "invite"):
            if user == sender:
                self._emit(MembershipChanged(room_id, local, "left", by))
            else:
                self._emit(MembershipChanged(room_id, local, "removed", by))

    def _power_changed(self, room_id: str, room: _Room, new: Mapping[str, Any], by: str) -> None:
        old, room.power = room.power, dict(new)
        if not old or room.kind != "group":
            return
        if _message_level(old) != _message_level(new):
            muted = _message_level(new) > 0
            self._emit(MuteChanged(room_id, None, muted, by))
        old_users, new_users = old.get("users") or {}, new.get("users") or {}
        for user in sorted(set(old_users) | set(new_users)):
            before = int(old_users.get(user, old.get("users_default", 0)))
            after = int(new_users.get(user, new.get("users_default", 0)))
            if before == after:
                continue
            local = self._adapter.local(user)
            if (before <= MUTED_LEVEL) != (after <= MUTED_LEVEL):
                self._emit(MuteChanged(room_id, local, after <= MUTED_LEVEL, by))
            if _role(before) != _role(after) and MUTED_LEVEL not in (before, after):
                self._emit(MembershipChanged(room_id, local, "role", by, role=_role(after)))

    def _receipts(self, room_id: str, room: _Room, content: Mapping[str, Any], *,
                  offline: bool) -> None:
        for event_id, kinds in content.items():
            for reader in (kinds.get("m.read") or {}):
                seq = room.position.get(event_id)
                if reader == self._mxid or not seq or seq <= room.read.get(reader, 0):
                    continue
                room.read[reader] = seq
                self._emit(ReceiptUpdated(room_id, self._adapter.local(reader), seq, offline))

    def _message(self, room_id: str, room: _Room, event: Mapping[str, Any], seq: int) -> Message:
        content = event.get("content") or {}
        custom = _custom_of(content)
        client_id = content.get(CLIENT_ID_KEY) or (event.get("unsigned") or {}).get(
            "transaction_id") or event["event_id"]
        return Message(
            message_id=event["event_id"],
            conversation=room_id,
            seq=seq,
            sender=self._adapter.local(event.get("sender", "")),
            client_id=str(client_id),
            kind="custom" if custom is not None else "text",
            body=str(content.get("body") or ""),
            server_ts=float(event.get("origin_server_ts", 0)) / 1000.0,
            group=room_id if room.kind == "group" else None,
            recalled=_is_redacted(event),
            custom=custom,
        )

    # -- the contract ---------------------------------------------------------------------

    async def send(
        self, to: Target, body: str = "", *, custom: Mapping[str, Any] | None = None,
        client_id: str | None = None, timeout: float | None = None,  # noqa: ASYNC109 - contract
    ) -> Ack:
        if self._status != "connected":
            raise ConnectionLost(f"{self!r}: not connected; call reconnect() first")
        limit = timeout if timeout is not None else self._adapter.send_timeout_s
        client_id = client_id or uuid.uuid4().hex
        size = len(body.encode())
        if size > MAX_BODY_BYTES:
            raise TooLarge(f"{self!r}: a body of {size} bytes is over the {MAX_BODY_BYTES}-byte "
                           f"limit (the event, envelope included, may be {MAX_EVENT_BYTES})")
        content: dict[str, Any] = {"msgtype": "m.text", "body": body, CLIENT_ID_KEY: client_id}
        if custom is not None:
            try:
                encoded = json.dumps(dict(custom), ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"{self!r}: custom payload is not JSON: {exc}") from None
            # A string, not an object: Matrix's canonical JSON refuses floats inside events.
            content.update(msgtype="im_harness.custom", body=body or encoded,
                           **{CUSTOM_KEY: encoded})
        retries_before = len(self.send_retries)

        async def attempt() -> tuple[str, dict[str, Any], str | None]:
            known = self._state.sent.get(client_id)  # an event this request would repeat
            room_id = await self._room_for(to)
            path = f"/rooms/{quote(room_id)}/send/m.room.message/{quote(client_id, safe='')}"
            try:
                answer = await self._call("PUT", path, content, within=limit)
            except Forbidden:
                if not await self._accept_invite(room_id):
                    raise
                answer = await self._call("PUT", path, content, within=limit)
            return room_id, answer, known

        try:
            async with asyncio.timeout(limit):
                room_id, answer, known = await self._repeat(attempt)
                event_id = answer["event_id"]
                # Honest only one way: the event existed before the request that got this ack.
                duplicate = known == event_id
                self._state.sent[client_id] = event_id
                seq, ts = await self._seen(room_id, event_id)
        except TimeoutError:
            retried = len(self.send_retries) - retries_before
            raise IMTimeout(f"{self!r}: send {client_id!r} not acknowledged in {limit}s "
                            f"({retried} retries after network errors)") from None
        return Ack(client_id, event_id, room_id, seq, ts, duplicate)

    async def _repeat(self, request: Callable[[], Awaitable[_R]]) -> _R:
        """An idempotent request, repeated after network errors with backoff until cancelled."""
        tries = 0
        while True:
            try:
                return await request()
            except ConnectionLost:
                if self._status != "connected":
                    raise  # dropped or closed on purpose: the caller reconnects
                delay = self._backoff_s(tries)
                tries += 1
                self.send_retry_delays.append(delay)
                await asyncio.sleep(delay)
                self.send_retries.append(time.monotonic())

    async def _seen(self, room_id: str, event_id: str) -> tuple[int, float]:
        """Wait for the sync loop to place our own event in the room's order."""
        room = self._state.rooms.get(room_id)
        if room is not None and event_id in room.position:
            seq = room.position[event_id]
            path = f"/rooms/{quote(room_id)}/event/{quote(event_id)}"
            event = await self._repeat(lambda: self._call("GET", path))
            return seq, float(event.get("origin_server_ts", 0)) / 1000.0
        fut = self._waiters.get(event_id)
        if fut is None:
            fut = self._waiters[event_id] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(fut)

    async def _membership(self, room_id: str) -> str:
        """This user's membership in a room as the server has it ("" when it has none)."""
        path = f"/rooms/{quote(room_id)}/state/m.room.member/{quote(self._mxid)}"
        try:
            return str((await self._call("GET", path)).get("membership") or "")
        except (Forbidden, NotFound):
            return ""

    async def _accept_invite(self, room_id: str) -> bool:
        """Join a room this user is invited to but has not joined yet (the sync may lag).

        An invitee may not read the room's state, so the join is simply tried: the harness's
        rooms are invite-only, and the server refuses anyone without a pending invite.
        """
        known = self._state.rooms.get(room_id)
        if known is not None and known.members.get(self._mxid) in ("join", "leave", "ban"):
            return False
        try:
            await self._call("POST", f"/join/{quote(room_id)}", {})
        except (Forbidden, NotFound):
            return False
        return True

    async def _require_member(self, room_id: str, what: str) -> None:
        """Forbidden unless this user is in the room now (joining it when only invited).

        Matrix lets a former member read the room as it was when they left; the contract's
        view is that removed members read nothing, so the adapter refuses on their behalf.
        """
        membership = await self._membership(room_id)
        if membership == "join" or (
            membership in ("", "invite") and await self._accept_invite(room_id)
        ):
            return
        raise Forbidden(f"{self!r}: {what}: not a member of {room_id!r} "
                        f"(membership {membership or 'none'})")

    async def _kind(self, room_id: str) -> str | None:
        """"direct" / "group" / None, from the room's creation content."""
        known = self._state.rooms.get(room_id)
        if known is not None and known.kind:
            return known.kind
        create = await self._call("GET", f"/rooms/{quote(room_id)}/state/m.room.create/")
        return create.get(KIND_KEY)

    async def _room_for(self, to: Target) -> str:
        if to.group is not None:
            return to.group
        assert to.user is not None
        peer = self._adapter.mxid(to.user)
        known = self._state.direct.get(peer)
        if known:
            return known
        # Concurrent first sends to one peer create one room, not one each.
        async with self._room_locks.setdefault(peer, asyncio.Lock()):
            known = self._state.direct.get(peer)
            if known:
                return known
            return await self._create_direct(peer)

    async def _create_direct(self, peer: str) -> str:
        pair = sorted({self._mxid, peer})
        alias = "imh-dm-" + hashlib.sha256("\n".join(pair).encode()).hexdigest()[:24]
        body: dict[str, Any] = {
            "preset": "trusted_private_chat",
            "is_direct": True,
            "invite": [peer] if peer != self._mxid else [],
            "room_alias_name": alias,
            "creation_content": {KIND_KEY: "direct", PAIR_KEY: pair},
            "initial_state": [_shared_history()],
        }
        self._adapter.room_version_into(body)
        try:
            room_id = (await self._call("POST", "/createRoom", body))["room_id"]
        except IMError as exc:
            # Both peers creating at once: the loser gets M_ROOM_IN_USE, or in a narrower race
            # M_UNKNOWN "Room alias ... already exists".
            if exc.details.get("errcode") != "M_ROOM_IN_USE" and "already exists" not in str(exc):
                raise
            full = f"#{alias}:{self._adapter.server_name}"
            room_id = (await self._call("GET", f"/directory/room/{quote(full)}"))["room_id"]
            await self._call("POST", f"/join/{quote(room_id)}", {})
        self._state.direct[peer] = room_id
        return room_id

    async def events(self) -> AsyncIterator[Event]:
        """Events in arrival order; ends when the adapter is closed."""
        while True:
            item = await self._events.get()
            if item is _END:
                self._events.put_nowait(_END)
                return
            yield item

    async def create_group(self, name: str, members: Sequence[str] = ()) -> GroupInfo:
        invite = [self._adapter.mxid(m) for m in members if self._adapter.mxid(m) != self._mxid]
        body: dict[str, Any] = {
            "preset": "private_chat",
            "name": name,
            "invite": invite,
            "creation_content": {KIND_KEY: "group"},
            "initial_state": [_shared_history()],
            "power_level_content_override": {
                "users_default": 0, "events_default": 0, "state_default": 50,
                "invite": 50, "kick": 50, "ban": 50, "redact": 50,
            },
        }
        self._adapter.room_version_into(body)
        room_id = (await self._call("POST", "/createRoom", body))["room_id"]
        return await self.group_info(room_id)

    async def group_info(self, group: str) -> GroupInfo:
        await self._require_member(group, "group_info")
        state = await self._call("GET", f"/rooms/{quote(group)}/state")
        power: Mapping[str, Any] = {}
        creators: frozenset[str] = frozenset()
        name = ""
        members: list[str] = []
        events: list[dict[str, Any]] = state if isinstance(state, list) else []
        for ev in events:
            kind, content = ev.get("type"), ev.get("content") or {}
            if kind == "m.room.power_levels":
                power = content
            elif kind == "m.room.name":
                name = str(content.get("name") or "")
            elif kind == "m.room.create" and _creators_outrank(str(content.get("room_version"))):
                creators = frozenset({ev["sender"], *(content.get("additional_creators") or ())})
            elif kind == "m.room.member" and content.get("membership") in ("join", "invite"):
                members.append(ev["state_key"])
        users = power.get("users") or {}
        default = int(power.get("users_default", 0))
        roles = {
            self._adapter.local(m): "owner" if m in creators
            else _role(int(users.get(m, default)))
            for m in members
        }
        muted = frozenset(
            self._adapter.local(m) for m in members
            if m not in creators and int(users.get(m, default)) <= MUTED_LEVEL
        )
        return GroupInfo(group, name, roles, muted_all=_message_level(power) > 0, muted=muted)

    async def add_member(self, group: str, user: str) -> None:
        await self._call("POST", f"/rooms/{quote(group)}/invite",
                         {"user_id": self._adapter.mxid(user)})

    async def remove_member(self, group: str, user: str) -> None:
        await self._call("POST", f"/rooms/{quote(group)}/kick",
                         {"user_id": self._adapter.mxid(user)})

    async def leave(self, group: str) -> None:
        info = await self.group_info(group)
        owners = [m for m, role in info.members.items() if role == "owner"]
        if owners == [self.user_id]:
            # Matrix lets anyone leave; the contract's owner hands the group over first.
            raise Forbidden(f"{self!r}: the owner cannot leave {group!r}; make another owner")
        await self._call("POST", f"/rooms/{quote(group)}/leave", {})

    async def _edit_power(self, group: str, edit: Any) -> None:
        path = f"/rooms/{quote(group)}/state/m.room.power_levels/"
        power = await self._call("GET", path)
        edit(power)
        await self._call("PUT", path, power)

    async def set_role(self, group: str, user: str, role: str) -> None:
        if role not in ROLE_LEVELS:
            raise BadRequest(f"role {role!r} is unknown; use one of {sorted(ROLE_LEVELS)}")
        mxid = self._adapter.mxid(user)

        def edit(power: dict[str, Any]) -> None:
            power.setdefault("users", {})[mxid] = ROLE_LEVELS[role]

        await self._edit_power(group, edit)

    async def mute(self, group: str, user: str, muted: bool = True) -> None:
        mxid = self._adapter.mxid(user)

        def edit(power: dict[str, Any]) -> None:
            users = power.setdefault("users", {})
            if muted:
                users[mxid] = MUTED_LEVEL
            elif users.get(mxid) == MUTED_LEVEL:
                del users[mxid]

        await self._edit_power(group, edit)

    async def mute_all(self, group: str, muted: bool = True) -> None:
        def edit(power: dict[str, Any]) -> None:
            power["events_default"] = MUTE_ALL_LEVEL if muted else 0

        await self._edit_power(group, edit)

    async def recall(self, conversation: str, message_id: str) -> None:
        room, event = quote(conversation), quote(message_id)
        known = self._state.rooms.get(conversation)
        if known is None or known.members.get(self._mxid) != "join":
            await self._accept_invite(conversation)
        # Matrix accepts redactions of unknown event ids; the contract wants NotFound.
        found = await self._call("GET", f"/rooms/{room}/event/{event}")
        if found.get("sender") != self._mxid and await self._kind(conversation) == "direct":
            # Redaction is moderation in Matrix: a DM peer with power (both, with the
            # trusted_private_chat preset; the creator, from room version 12) may redact the
            # other's messages. The contract's 1:1 recall is the sender's only.
            raise Forbidden(f"{self!r}: only the sender recalls a 1:1 message")
        await self._call("PUT", f"/rooms/{room}/redact/{event}/{uuid.uuid4().hex}", {})

    async def mark_read(self, conversation: str, up_to_seq: int) -> None:
        room = self._state.rooms.get(conversation)
        if room is None or not 1 <= up_to_seq <= len(room.messages):
            raise NotFound(f"{self!r}: no message with seq {up_to_seq} in {conversation!r}")
        event_id = room.messages[up_to_seq - 1]
        await self._call(
            "POST", f"/rooms/{quote(conversation)}/receipt/m.read/{quote(event_id)}", {}
        )

    async def history(
        self, conversation: str, *, before: int | None = None, after: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        await self._require_member(conversation, "history")
        # The whole room is read from its start, so seq numbers match the live ones (O(room)).
        room = _Room()
        events = await self._room_from_start(conversation)
        messages: list[Message] = []
        for event in events:
            if event.get("type") == "m.room.create":
                room.kind = (event.get("content") or {}).get(KIND_KEY)
            elif event.get("type") == "m.room.message":
                messages.append(self._message(conversation, room, event, len(messages) + 1))
        if after is not None:
            picked = [m for m in messages if m.seq > after]
            page, more = picked[:limit], len(picked) > limit
        else:
            picked = [m for m in messages if before is None or m.seq < before]
            page, more = picked[-limit:] if limit else [], len(picked) > limit
        return HistoryPage(conversation, tuple(page), more)

    async def _stop_sync(self) -> None:
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"{self!r}: disconnected before the echo"))
        self._waiters.clear()

    async def close(self) -> None:
        """Log out (the device's token dies) and stop syncing."""
        if self._status == "closed":
            return
        await self._stop_sync()
        if self._token is not None and self._http is not None:
            with contextlib.suppress(IMError):
                await self._call("POST", "/logout", {}, within=5)
        self._token = None
        if self._http is not None:
            await self._http.close()
        self._status = "closed"

    async def drop(self) -> None:
        """Stop syncing and abandon the HTTP connections without logging out."""
        await self._stop_sync()
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._status = "dropped"
        self._events.put_nowait(Disconnected(reason="dropped"))

    async def reconnect(self) -> None:
        """Resume from the since token; what arrived meanwhile comes marked offline."""
        if self._status == "connected":
            await self.drop()
        if self._http is None or self._http.closed:
            self._http = _http_session()
        if self._token is None:
            await self._login()
        await self._start(reconnected=True)

    def _finish(self) -> None:
        self._events.put_nowait(_END)


def _shared_history() -> dict[str, Any]:
    return {"type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": "shared"}}


def _creators_outrank(room_version: str) -> bool:
    try:
        return int(room_version) >= 12
    except ValueError:
        return False


def _message_level(power: Mapping[str, Any]) -> int:
    events = power.get("events") or {}
    return int(events.get("m.room.message", power.get("events_default", 0)))


def _role(level: int) -> str:
    if level >= ROLE_LEVELS["owner"]:
        return "owner"
    if level >= ROLE_LEVELS["admin"]:
        return "admin"
    return "member"


@adapters.register("matrix")
class MatrixAdapter:
    """A Matrix homeserver through the client-server API (v3)."""

    name: ClassVar[str] = "matrix"

    def __init__(self, settings: EndpointSettings) -> None:
        where = f"endpoint {settings.name!r} (adapter 'matrix')"
        if not settings.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url {settings.url!r} is not an HTTP URL; use the "
                              f"homeserver's base URL, e.g. http://127.0.0.1:8008")
        self.settings = settings
        self.options: Mapping[str, Any] = settings.options
        self.base_url = settings.url.rstrip("/")
        self.server_name: str | None = self.options.get("server_name")
        self._http: aiohttp.ClientSession | None = None
        self._users: dict[str, _UserState] = {}
        self.send_timeout_s = float(self.options.get("send_timeout_s", settings.send_timeout_s))
        for key in ("backoff_base_s", "backoff_cap_s"):
            value = self.options.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
            ):
                raise ConfigError(f"{where}: options.{key}={value!r} must be a number >= 0 "
                                  f"(seconds), e.g. {key} = 0.5")
        self.backoff_base_s = float(self.options.get("backoff_base_s", BACKOFF_BASE_S))
        self.backoff_cap_s = float(self.options.get("backoff_cap_s", BACKOFF_CAP_S))
        self._clients: list[MatrixClient] = []
        self._info = EndpointInfo(
            name=settings.name,
            adapter="matrix",
            url=settings.url,
            protocol=settings.protocol or "matrix-v3",
            tier=settings.tier or "default",
            capabilities=CAPABILITIES,
            limits=TierLimits(
                send_rate_per_user=self.options.get("send_rate_per_user"),
                send_burst=self.options.get("send_burst"),
                max_message_bytes=MAX_BODY_BYTES,
                recall_window_s=None,
            ),
            send_timeout_s=self.send_timeout_s,
            client_enforced=CLIENT_ENFORCED,
        )

    def __repr__(self) -> str:
        return f"MatrixAdapter({self.settings.name!r}, {self.base_url!r})"

    @classmethod
    async def open(cls, settings: EndpointSettings) -> MatrixAdapter:
        """Validate the settings and check that the homeserver answers."""
        adapter = cls(settings)
        try:
            versions = await adapter.request(adapter._session(), "GET", "/versions", prefix="")
            if "v1.1" not in versions.get("versions", []) and not any(
                v.startswith("v1.") for v in versions.get("versions", [])
            ):
                raise Unsupported(f"{adapter!r}: the server offers no client-server API v1.x")
        except BaseException:
            await adapter.aclose()
            raise
        return adapter

    @property
    def info(self) -> EndpointInfo:
        return self._info

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = _http_session()
        return self._http

    async def request(
        self, http: aiohttp.ClientSession, method: str, path: str,
        body: Mapping[str, Any] | None = None, *, params: Mapping[str, str] | None = None,
        token: str | None = None, within: float | None = None, prefix: str = "/v3",
    ) -> Any:
        """One client-server API call; Matrix errors become the contract's typed errors."""
        __tracebackhide__ = True  # pytest: its arguments include tokens and passwords
        url = f"{self.base_url}/_matrix/client{prefix}{path}"
        if path.startswith("/_synapse/"):
            url = f"{self.base_url}{path}"
        headers = {"Authorization": f"Bearer {token}"} if token else None
        what = f"{method} {path.split('?')[0]}"
        limit = within if within is not None else self.settings.connect_timeout_s * 2
        try:
            async with asyncio.timeout(limit):
                async with http.request(
                    method, url, json=body, params=params, headers=headers
                ) as resp:
                    try:
                        data = await resp.json(content_type=None)
                    except (json.JSONDecodeError, aiohttp.ContentTypeError):
                        data = {}
                    if resp.status >= 400:
                        raise map_error(resp.status, data if isinstance(data, dict) else {}, what)
                    return data
        except TimeoutError:
            raise IMTimeout(f"{what}: no answer within {limit:.1f}s") from None
        except aiohttp.ClientError as exc:
            raise ConnectionLost(f"{what}: {type(exc).__name__}: {exc}") from None

    def learn_server_name(self, mxid: str) -> None:
        if self.server_name is None and ":" in mxid:
            self.server_name = mxid.split(":", 1)[1]

    def mxid(self, user: str) -> str:
        """The full Matrix id of a contract user id."""
        if user.startswith("@"):
            return user
        if self.server_name is None:
            raise ConfigError(f"{self!r}: server_name is unknown; set options.server_name")
        return f"@{user}:{self.server_name}"

    def local(self, mxid: str) -> str:
        """The contract user id of a Matrix id: the localpart for users of this server."""
        if self.server_name and mxid.startswith("@") and mxid.endswith(f":{self.server_name}"):
            return mxid[1:-len(self.server_name) - 1]
        return mxid

    def room_version_into(self, body: dict[str, Any]) -> None:
        version = self.options.get("room_version")
        if version:
            body["room_version"] = str(version)

    async def provision_user(self, user_id: str | None = None) -> Credentials:
        """Register a user with a random password (via the shared secret when there is one)."""
        localpart = user_id or f"imh-{secrets.token_hex(4)}"
        if localpart.startswith("@"):
            localpart = localpart[1:].split(":", 1)[0]
        password = secrets.token_urlsafe(18)
        http = self._session()
        shared = self.settings.secrets.get("registration_shared_secret")
        if shared:
            path = "/_synapse/admin/v1/register"
            nonce = (await self.request(http, "GET", path))["nonce"]
            mac = hmac.new(shared.encode(), digestmod=hashlib.sha1)
            mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                     b"notadmin"]))
            answer = await self.request(http, "POST", path, {
                "nonce": nonce, "username": localpart, "password": password,
                "admin": False, "mac": mac.hexdigest(),
            })
        else:
            answer = await self.request(http, "POST", "/register", {
                "username": localpart, "password": password,
                "auth": {"type": "m.login.dummy"}, "inhibit_login": True,
            })
        self.learn_server_name(answer["user_id"])
        return Credentials(self.local(answer["user_id"]), password)

    async def connect(
        self, credentials: Credentials, *, protocol: str | None = None
    ) -> MatrixClient:
        """Log in as a device that resumes the user's stored sync cursor, then sync once."""
        if protocol not in (None, self._info.protocol):
            raise Unsupported(f"{self!r}: only protocol {self._info.protocol!r} is offered, "
                              f"not {protocol!r}")
        if self.server_name is None and credentials.user_id.startswith("@"):
            self.learn_server_name(credentials.user_id)
        stored = self._users.get(credentials.user_id)
        state = copy.deepcopy(stored) if stored is not None else _UserState()
        if any(c.user_id == credentials.user_id and c._status != "closed" for c in self._clients):
            state.device_id = _UserState().device_id  # a second live device of the same user
        self._users[credentials.user_id] = state
        client = MatrixClient(self, credentials, state)
        try:
            await client._login()
            await client._start(reconnected=False)
        except BaseException:
            await client.close()
            raise
        self._clients.append(client)
        return client

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
            client._finish()
        if self._http is not None:
            await self._http.close()
            self._http = None
