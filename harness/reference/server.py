"""The reference IM service core: state, operations, and the WebSocket front end."""

from __future__ import annotations

import asyncio
import http
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from websockets.asyncio.server import Request, Response, ServerConnection
from websockets.exceptions import ConnectionClosed

from harness.reference import defects, store, tokens
from harness.reference.state import (
    AppState,
    Conversation,
    Group,
    UserState,
    compact,
    dm_conversation,
    rest_of,
)
from harness.reference.tiers import limits_dict

log = logging.getLogger("harness.reference")

ID_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
HARD_MAX_FRAME = 4 * 1024 * 1024
PATHS = {"/v1": "v1", "/v2": "v2"}


class OpError(Exception):
    """An operation failed with a wire error code."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def wire(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            # rounded up: "retry after 0.0" would invite a retry that is refused again
            err["retry_after"] = max(0.001, math.ceil(self.retry_after * 1000) / 1000)
        return err


@dataclass
class Config:
    """The service's settings from the command line."""

    keepalive_v1: float = 30.0
    keepalive_v2: float = 15.0
    propagation_delay: float = 0.0
    recall_window: float = 120.0
    max_frame_bytes: int = 1024 * 1024
    late_flush_s: float = 1.0  # ack_before_persist: how late writes are flushed


class Conn:
    """One WebSocket connection; frames go out in order through `push`."""

    __slots__ = ("ws", "protocol", "app", "user", "out", "sender", "keepalive", "closing",
                 "ending", "logging_in")

    def __init__(self, ws: ServerConnection, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.app: AppState | None = None
        self.user: UserState | None = None
        self.out: list[str] = []
        self.sender: asyncio.Task[None] | None = None
        self.keepalive: asyncio.Task[None] | None = None
        self.closing = False  # aborted: drop further frames
        self.ending = False  # logged out: send what is queued, then close
        self.logging_in = False

    def push(self, frame: str) -> None:
        """Queue a frame; one short-lived task drains the queue in order."""
        if self.closing:
            return
        self.out.append(frame)
        if self.sender is None:
            self.sender = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.out:
                frames, self.out = self.out, []
                for frame in frames:
                    await self.ws.send(frame)
        except ConnectionClosed:
            self.out.clear()
        finally:
            self.sender = None

    async def flush(self) -> None:
        while self.sender is not None:
            await asyncio.shield(self.sender)


def _int(msg: dict[str, Any], key: str, default: int | None = None, *, minimum: int = 0) -> Any:
    value = msg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise OpError("bad_request", f"{key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _str(msg: dict[str, Any], key: str, *, ident: bool = False) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or (ident and not ID_RE.match(value)):
        what = "an id of letters, digits, _.@- (1-64 chars)" if ident else "a string"
        raise OpError("bad_request", f"{key!r} must be {what}")
    return value


class Service:
    """All apps and their state, the operations, the writer and the push client."""

    def __init__(self, db: store.Store, config: Config) -> None:
        self.db = db
        self.config = config
        self.apps: dict[str, AppState] = {}
        self.next_message = 1
        self.next_group = 1
        self.next_app = 1
        self.counters = {"messages": 0, "deliveries": 0, "pushes": 0, "push_failures": 0}
        self.http: aiohttp.ClientSession | None = None
        self._bg: set[asyncio.Future[Any]] = set()
        self.conns: set[Conn] = set()
        self.ops: dict[str, Callable[[Conn, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "send": self.op_send,
            "history": self.op_history,
            "recall": self.op_recall,
            "read": self.op_read,
            "ping": self.op_ping,
            "logout": self.op_logout,
            "group.create": self.op_group_create,
            "group.info": self.op_group_info,
            "group.add": self.op_group_add,
            "group.remove": self.op_group_remove,
            "group.leave": self.op_group_leave,
            "group.role": self.op_group_role,
            "group.mute": self.op_group_mute,
            "group.mute_all": self.op_group_mute_all,
        }

    # ---- loading -------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the in-memory state from SQLite."""
        rows = self.db.load()
        for _app_id, data in rows["apps"]:
            app = AppState.from_data(data)
            self.apps[app.app_id] = app
            self.next_app = max(self.next_app, _num(app.app_id, "app") + 1)
        for app_id, user_id in rows["users"]:
            self.apps[app_id].users[user_id] = UserState(user_id)
        for app_id, group_id, data in rows["groups"]:
            group = Group.from_data(data)
            app = self.apps[app_id]
            app.groups[group_id] = group
            app.convs[f"g:{group_id}"] = Conversation(f"g:{group_id}", group_id)
            self.next_group = max(self.next_group, _num(group_id, "g") + 1)
        for row in rows["messages"]:
            app_id, conv_id, seq, mid, sender, client_id, kind, body, custom, ts, grp, rec = row
            app = self.apps[app_id]
            conv = app.convs.get(conv_id)
            if conv is None:
                conv = app.convs[conv_id] = Conversation(conv_id, grp)
            msg = _message(mid, conv_id, seq, sender, client_id, kind, body,
                           json.loads(custom) if custom else None, ts, grp, bool(rec))
            conv.messages.append(msg)
            conv.by_id[mid] = seq
            app.dedup[(sender, client_id)] = _ack(msg)
            self.next_message = max(self.next_message, _num(mid, "m") + 1)
            self.counters["messages"] += 1
        for app_id, user_id, _pos, kind, rest in rows["inbox"]:
            user = self.apps[app_id].users[user_id]
            user.inbox.append((kind, rest))
            user.alloc = len(user.inbox)
        for app_id, conv_id, user_id, seq in rows["reads"]:
            conv = self.apps[app_id].convs.get(conv_id)
            if conv is not None:
                conv.reads[user_id] = seq

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()

    async def close(self) -> None:
        for task in list(self._bg):
            task.cancel()
        if self.http is not None:
            await self.http.close()

    def _background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # ---- apps and users (used by the HTTP API) -------------------------------------------

    async def create_app(self, app: AppState) -> None:
        self.apps[app.app_id] = app
        await self.db.write([(store.UPSERT_APP, (app.app_id, app.data()))])

    def new_app_id(self) -> str:
        while f"app{self.next_app}" in self.apps:
            self.next_app += 1
        self.next_app += 1
        return f"app{self.next_app - 1}"

    async def save_app(self, app: AppState) -> None:
        await self.db.write([(store.UPSERT_APP, (app.app_id, app.data()))])

    async def ensure_user(self, app: AppState, user_id: str) -> UserState:
        user = app.users.get(user_id)
        if user is None:
            user = app.users[user_id] = UserState(user_id)
            await self.db.write([(store.INSERT_USER, (app.app_id, user_id))])
        return user

    def counters_snapshot(self) -> dict[str, Any]:
        by_app = {a.app_id: a.conn_count for a in self.apps.values() if a.conn_count}
        return {"connections": sum(by_app.values()), "connections_by_app": by_app,
                **self.counters}

    # ---- inbox and delivery --------------------------------------------------------------

    def _alloc(self, app: AppState, user: UserState, kind: str, rest: str,
               ops: list[store.Op], out: list[tuple[UserState, int, str, str]]) -> None:
        user.alloc += 1
        ops.append((store.INSERT_INBOX, (app.app_id, user.user_id, user.alloc, kind, rest)))
        out.append((user, user.alloc, kind, rest))

    def _deliver_all(self, app: AppState, entries: list[tuple[UserState, int, str, str]],
                     push: dict[str, Any] | None = None) -> None:
        for user, pos, kind, rest in entries:
            user.inbox.append((kind, rest))
            if not user.conns:
                if push is not None and kind == "message":
                    self._push(app, user.user_id, push)
                continue
            frame = f'{{"ev":"{kind}","pos":{pos},"offline":false,{rest}}}'
            if kind == "message":
                self.counters["deliveries"] += len(user.conns)
            for conn in user.conns:
                if conn.protocol == "v1" and kind in ("recall", "receipt"):
                    continue
                conn.push(frame)

    def _push(self, app: AppState, to: str, payload: dict[str, Any]) -> None:
        if not app.webhook or self.http is None:
            return
        if defects.on("no_push"):
            return
        self._background(self._post_push(app.webhook, {"app": app.app_id, "to": to, **payload}))

    async def _post_push(self, url: str, payload: dict[str, Any]) -> None:
        assert self.http is not None
        try:
            timeout = aiohttp.ClientTimeout(total=2)
            async with self.http.post(url, json=payload, timeout=timeout) as resp:
                ok = resp.status < 300
        except (aiohttp.ClientError, TimeoutError, ValueError):
            ok = False
        self.counters["pushes" if ok else "push_failures"] += 1

    async def _commit(self, ops: list[store.Op], on_commit: Callable[[], None] | None) -> None:
        await self.db.write(ops, on_commit)

    # ---- the WebSocket front end ---------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path not in PATHS:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "unknown path; use /v1 or /v2\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        protocol = PATHS[ws.request.path.split("?", 1)[0]] if ws.request else "v2"
        conn = Conn(ws, protocol)
        self.conns.add(conn)
        conn.keepalive = asyncio.create_task(self._keepalive(conn))
        try:
            async for raw in ws:
                self._on_frame(conn, raw)
                if conn.ending:
                    break
        except ConnectionClosed:
            pass
        finally:
            conn.keepalive.cancel()
            self._unregister(conn)
            self.conns.discard(conn)
        if conn.ending:
            await conn.flush()
            await ws.close()

    def _unregister(self, conn: Conn) -> None:
        if conn.app is not None and conn.user is not None and conn in conn.user.conns:
            conn.user.conns.discard(conn)
            conn.app.conn_count -= 1

    async def _keepalive(self, conn: Conn) -> None:
        interval = self.config.keepalive_v1 if conn.protocol == "v1" else self.config.keepalive_v2
        while True:
            await asyncio.sleep(interval)
            try:
                pong = await conn.ws.ping()
            except ConnectionClosed:
                return
            try:
                await asyncio.wait_for(pong, interval)
            except TimeoutError:
                if defects.on("keepalive_dead"):
                    continue
                log.info("keepalive: no pong within %.2fs, closing the connection", interval)
                conn.closing = True
                self._unregister(conn)
                if conn.ws.transport is not None:
                    conn.ws.transport.abort()
                return
            except ConnectionClosed:
                return

    def _on_frame(self, conn: Conn, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            conn.push(_error(None, OpError("bad_request", "binary frames are not supported")))
            return
        limit = self.config.max_frame_bytes
        if len(raw) > limit or (len(raw) * 4 > limit and len(raw.encode()) > limit):
            conn.push(_error(None, OpError("too_large", f"frame exceeds {limit} bytes")))
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            conn.push(_error(None, OpError("bad_request", "frame is not valid JSON")))
            return
        if not isinstance(msg, dict):
            conn.push(_error(None, OpError("bad_request", "frame must be a JSON object")))
            return
        rid = msg.get("id")
        if not (isinstance(rid, int) and not isinstance(rid, bool)):
            rid = None
        op = msg.get("op")
        if op == "login":
            task = asyncio.ensure_future(self._run(conn, rid, self.op_login, msg))
        else:
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                what = "missing 'op'" if op is None else f"unknown op {op!r}"
                conn.push(_error(rid, OpError("bad_request", what)))
                return
            if conn.user is None:
                conn.push(_error(rid, OpError("unauthorized", "log in first (op 'login')")))
                return
            if op == "logout":
                self._unregister(conn)
                conn.push(compact({"re": rid, "ok": True}))
                conn.ending = True
                return
            task = asyncio.ensure_future(self._run(conn, rid, handler, msg))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _run(self, conn: Conn, rid: int | None,
                   handler: Callable[[Conn, dict[str, Any]], Awaitable[dict[str, Any]]],
                   msg: dict[str, Any]) -> None:
        try:
            result = await handler(conn, msg)
        except OpError as err:
            conn.push(_error(rid, err))
            if err.code == "limit_reached" and msg.get("op") == "login":
                await conn.flush()
                await conn.ws.close(1008, "connection limit reached")
            return
        except (ConnectionClosed, _Sent):
            return
        except Exception:
            log.exception("internal error in op %r", msg.get("op"))
            conn.push(_error(rid, OpError("internal", "internal error; see the service log")))
            return
        conn.push(compact({"re": rid, "ok": True, **result}))

    # ---- operations ----------------------------------------------------------------------

    async def op_login(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        if conn.user is not None or conn.logging_in:
            raise OpError("bad_request", "already logged in on this connection")
        conn.logging_in = True
        try:
            await self._login(conn, msg)
        finally:
            conn.logging_in = False
        raise _Sent()

    async def _login(self, conn: Conn, msg: dict[str, Any]) -> None:
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            raise OpError("unauthorized", "missing token")
        try:
            claims = tokens.claims(token)
        except tokens.TokenError as err:
            raise OpError("unauthorized", str(err)) from None
        app_id = msg.get("app") or claims["app"]
        app = self.apps.get(app_id) if isinstance(app_id, str) else None
        if app is None:
            raise OpError("unauthorized", "token of an unknown app")
        try:
            user_id = tokens.verify(token, app.app_id, app.app_key)
        except tokens.TokenError as err:
            foreign = self._cross_app_user(token, claims) if defects.on("cross_app_token") else None
            if foreign is None:
                raise OpError("unauthorized", str(err)) from None
            user_id = foreign
        if not ID_RE.match(user_id):
            raise OpError("unauthorized", "token names an invalid user id")
        cursor = _int(msg, "cursor", None)
        limits = app.limits(self.config.recall_window)
        if limits.max_connections is not None and app.conn_count >= limits.max_connections:
            raise OpError("limit_reached",
                          f"app {app.app_id} has {app.conn_count} connections, "
                          f"the tier allows {limits.max_connections}")
        user = await self.ensure_user(app, user_id)
        if conn.ws.state.name != "OPEN" or conn.closing:
            raise ConnectionClosed(None, None)
        # From here on nothing awaits: the replay snapshot and live registration are atomic.
        conn.app, conn.user = app, user
        user.conns.add(conn)
        app.conn_count += 1
        head = len(user.inbox)
        start = head if cursor is None else min(cursor, head)
        if defects.on("duplicate_on_reconnect") and cursor:
            start = max(0, start - 1)
        keepalive = self.config.keepalive_v1 if conn.protocol == "v1" else self.config.keepalive_v2
        conn.push(compact({
            "re": msg.get("id"), "ok": True, "user": user_id, "app": app.app_id,
            "protocol": conn.protocol, "tier": app.tier, "keepalive_s": keepalive,
            "features": app.feature_list(), "limits": limits_dict(limits), "cursor": head,
        }))
        for pos in range(start + 1, head + 1):
            kind, rest = user.inbox[pos - 1]
            if conn.protocol == "v1" and kind in ("recall", "receipt"):
                continue
            if kind == "message":
                self.counters["deliveries"] += 1
            conn.push(f'{{"ev":"{kind}","pos":{pos},"offline":true,{rest}}}')
        conn.push(f'{{"ev":"caught_up","pos":{head}}}')
        log.debug("login app=%s user=%s protocol=%s", app.app_id, user_id, conn.protocol)

    def _cross_app_user(self, token: str, claims: dict[str, Any]) -> str | None:
        for other in self.apps.values():
            if tokens.signed_by(token, other.app_key) and claims["exp"] > time.time():
                return str(claims["sub"])
        return None

    async def op_ping(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        return {"ts": time.time()}

    async def op_logout(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        self._unregister(conn)  # normally answered in `_on_frame`, which then closes
        return {}

    async def op_send(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, sender = _who(conn)
        to = msg.get("to")
        if not isinstance(to, dict) or (("user" in to) == ("group" in to)):
            raise OpError("bad_request", "'to' must be {\"user\": id} or {\"group\": id}")
        kind = msg.get("kind", "text")
        if kind not in ("text", "custom"):
            raise OpError("bad_request", f"'kind' must be 'text' or 'custom', got {kind!r}")
        body = msg.get("body", "")
        if body is None:
            body = ""
        if not isinstance(body, str):
            raise OpError("bad_request", "'body' must be a string")
        custom = msg.get("custom")
        if kind == "custom" and not isinstance(custom, dict):
            raise OpError("bad_request", "a custom message needs 'custom' as a JSON object")
        if kind == "text":
            custom = None
        client_id = msg.get("client_id")
        if client_id is None:
            client_id = f"srv-{self.next_message}"
        elif not isinstance(client_id, str) or not 0 < len(client_id) <= 128:
            raise OpError("bad_request", "'client_id' must be a string of 1-128 chars")
        key = (sender.user_id, client_id)
        prior: Any = app.dedup.get(key)
        if prior is not None:
            if isinstance(prior, asyncio.Future):
                prior = await asyncio.shield(prior)
            return {**prior, "duplicate": True}
        limits = app.limits(self.config.recall_window)
        size = len((compact(custom) if kind == "custom" else body).encode())
        if limits.max_message_bytes is not None and size > limits.max_message_bytes:
            raise OpError("too_large", f"message is {size} bytes; the tier allows "
                                       f"{limits.max_message_bytes}")
        group: Group | None = None
        if "user" in to:
            peer_id = to["user"]
            if not isinstance(peer_id, str) or peer_id not in app.users:
                raise OpError("not_found", f"no user {peer_id!r} in this app")
            if peer_id == sender.user_id:
                raise OpError("bad_request", "cannot send a message to yourself")
            conv_id = dm_conversation(sender.user_id, peer_id)
            recipients = [app.users[peer_id]]
        else:
            gid = to["group"]
            group = app.groups.get(gid) if isinstance(gid, str) else None
            if group is None:
                raise OpError("not_found", f"no group {gid!r}")
            role = group.members.get(sender.user_id)
            if role is None and not defects.on("nonmember_post"):
                raise OpError("forbidden", f"not a member of group {gid}")
            if sender.user_id in group.muted:
                raise OpError("forbidden", f"you are muted in group {gid}")
            if group.muted_all and role not in ("owner", "admin"):
                raise OpError("forbidden", f"group {gid} is muted for members")
            conv_id = f"g:{gid}"
            recipients = [app.users[m] for m in group.members if m != sender.user_id]
        self._take_token(sender, limits.send_rate_per_user, limits.send_burst)
        conv = app.convs.get(conv_id)
        if conv is None:
            conv = app.convs[conv_id] = Conversation(conv_id, group.group_id if group else None)
        mid = f"m{self.next_message}"
        self.next_message += 1
        seq = conv.last_seq + 1
        ts = round(time.time(), 6)
        gid_ = group.group_id if group else None
        message = _message(mid, conv_id, seq, sender.user_id, client_id, kind, body, custom,
                           ts, gid_, False)
        conv.messages.append(message)
        conv.by_id[mid] = seq
        self.counters["messages"] += 1
        ops: list[store.Op] = [(store.INSERT_MESSAGE, (
            app.app_id, conv_id, seq, mid, sender.user_id, client_id, kind, body,
            compact(custom) if custom is not None else None, ts, gid_, 0))]
        rest = '"message":' + compact(message)
        entries: list[tuple[UserState, int, str, str]] = []
        for user in recipients:
            if defects.on("drop_delivery") and defects.chance():
                continue
            if group is not None:
                held = app.held.pop((user.user_id, conv_id), None)
                if held is None and defects.on("reorder_fanout") and defects.chance():
                    app.held[(user.user_id, conv_id)] = ("message", rest)
                    continue
                self._alloc(app, user, "message", rest, ops, entries)
                if held is not None:
                    self._alloc(app, user, held[0], held[1], ops, entries)
            else:
                self._alloc(app, user, "message", rest, ops, entries)
        ack = _ack(message)
        push = {"message_id": mid, "conversation": conv_id, "sender": sender.user_id,
                "seq": seq, "ts": ts, "preview": (body if kind == "text" else compact(custom))[:32]}
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        app.dedup[key] = fut

        def committed() -> None:
            app.dedup[key] = ack
            if not fut.done():
                fut.set_result(ack)
            self._deliver_all(app, entries, push)

        write = self.db.write(ops, committed)
        if defects.on("ack_before_persist"):
            self.db.flush_delay_s = self.config.late_flush_s
            return ack
        self.db.flush_delay_s = 0.0
        await write
        return ack

    def _take_token(self, user: UserState, rate: float | None, burst: int | None) -> None:
        if rate is None or burst is None or rate <= 0:
            return
        now = time.monotonic()
        if user.tokens is None:
            user.tokens = float(burst)
        else:
            user.tokens = min(float(burst), user.tokens + (now - user.tokens_at) * rate)
        user.tokens_at = now
        if user.tokens < 1.0:
            raise OpError("rate_limited", f"send rate above {rate:g}/s (burst {burst})",
                          retry_after=(1.0 - user.tokens) / rate)
        user.tokens -= 1.0

    def _conversation_for(self, app: AppState, user_id: str, conv_id: Any) -> tuple[
            Conversation | None, list[str], Group | None]:
        """The conversation, its current participants, and its group; checks membership."""
        if not isinstance(conv_id, str):
            raise OpError("bad_request", "'conversation' must be a string")
        if conv_id.startswith("d:"):
            parts = conv_id.split(":")
            if len(parts) != 3:
                raise OpError("not_found", f"no conversation {conv_id!r}")
            participants = parts[1:]
            if user_id not in participants:
                raise OpError("forbidden", f"not a participant of {conv_id}")
            return app.convs.get(conv_id), participants, None
        if conv_id.startswith("g:"):
            group = app.groups.get(conv_id[2:])
            if group is None:
                raise OpError("not_found", f"no conversation {conv_id!r}")
            if user_id not in group.members:
                raise OpError("forbidden", f"not a member of group {group.group_id}")
            return app.convs.get(conv_id), list(group.members), group
        raise OpError("not_found", f"no conversation {conv_id!r}")

    async def op_history(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        conv_id = msg.get("conversation")
        conv, _, _ = self._conversation_for(app, user.user_id, conv_id)
        before = _int(msg, "before", None)
        after = _int(msg, "after", None)
        limit = _int(msg, "limit", 50, minimum=1)
        if limit > 100:
            raise OpError("bad_request", f"'limit' must be 1..100, got {limit}")
        if before is not None and after is not None:
            raise OpError("bad_request", "give at most one of 'before' and 'after'")
        messages = conv.messages if conv is not None else []
        retention = app.limits(self.config.recall_window).history_retention_s
        oldest_ts = time.time() - retention if retention is not None else None
        if after is not None:
            window = [m for m in messages[after:] if oldest_ts is None or m["ts"] >= oldest_ts]
            page, has_more = window[:limit], len(window) > limit
        else:
            end = len(messages) if before is None else max(0, min(before - 1, len(messages)))
            if before is not None and defects.on("history_overlap"):
                end = min(end + 1, len(messages))
            window = [m for m in messages[:end] if oldest_ts is None or m["ts"] >= oldest_ts]
            page, has_more = window[-limit:], len(window) > limit
        return {"conversation": conv_id, "messages": page, "has_more": has_more}

    async def op_recall(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        if conn.protocol == "v1":
            raise OpError("unsupported", "recall is not part of protocol v1")
        why = app.feature_error("recall")
        if why:
            raise OpError("feature_disabled", why)
        conv, participants, group = self._conversation_for(app, user.user_id,
                                                           msg.get("conversation"))
        mid = msg.get("message_id")
        seq = conv.by_id.get(mid) if conv is not None and isinstance(mid, str) else None
        if conv is None or seq is None:
            raise OpError("not_found", f"no message {mid!r} in this conversation")
        message = conv.messages[seq - 1]
        if message["sender"] != user.user_id and not (group and group.is_manager(user.user_id)):
            raise OpError("forbidden", "only the sender or a group owner/admin may recall")
        if message["recalled"]:
            return {}
        window = app.limits(self.config.recall_window).recall_window_s or 0.0
        if time.time() - message["ts"] > window:
            raise OpError("recall_window_expired", f"the recall window is {window:g}s")
        message["recalled"] = True
        message["body"] = ""
        ops: list[store.Op] = [(store.RECALL_MESSAGE, (app.app_id, conv.conv_id, seq))]
        rest = rest_of({"conversation": conv.conv_id, "message_id": mid, "by": user.user_id})
        entries: list[tuple[UserState, int, str, str]] = []
        for pid in participants:
            target = app.users.get(pid)
            if target is None or pid == user.user_id:
                continue
            if defects.on("recall_not_offline") and not target.conns:
                continue
            self._alloc(app, target, "recall", rest, ops, entries)
        await self.db.write(ops, lambda: self._deliver_all(app, entries))
        return {}

    async def op_read(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        if conn.protocol == "v1":
            raise OpError("unsupported", "read receipts are not part of protocol v1")
        why = app.feature_error("receipts")
        if why:
            raise OpError("feature_disabled", why)
        conv, participants, _ = self._conversation_for(app, user.user_id,
                                                       msg.get("conversation"))
        seq = _int(msg, "seq", None)
        if seq is None:
            raise OpError("bad_request", "'seq' is required")
        last = conv.last_seq if conv is not None else 0
        if seq > last:
            raise OpError("bad_request", f"seq {seq} is beyond the last seq {last}")
        assert conv is not None or seq == 0
        if conv is None:
            return {"seq": 0}
        old = conv.reads.get(user.user_id, 0)
        new = seq if defects.on("read_cursor_back") else max(old, seq)
        if new == old:
            return {"seq": new}
        conv.reads[user.user_id] = new
        ops: list[store.Op] = [(store.UPSERT_READ, (app.app_id, conv.conv_id, user.user_id, new))]
        rest = rest_of({"conversation": conv.conv_id, "reader": user.user_id, "seq": new})
        entries: list[tuple[UserState, int, str, str]] = []
        for pid in participants:
            target = app.users.get(pid)
            if target is not None and pid != user.user_id:
                self._alloc(app, target, "receipt", rest, ops, entries)
        await self.db.write(ops, lambda: self._deliver_all(app, entries))
        return {"seq": new}

    # ---- groups --------------------------------------------------------------------------

    def _group(self, app: AppState, msg: dict[str, Any], user_id: str) -> Group:
        gid = msg.get("group")
        group = app.groups.get(gid) if isinstance(gid, str) else None
        if group is None:
            raise OpError("not_found", f"no group {gid!r}")
        if user_id not in group.members:
            raise OpError("forbidden", f"not a member of group {gid}")
        return group

    async def _group_event(self, app: AppState, group: Group, kind: str, event: dict[str, Any],
                           extra: str | None = None) -> None:
        ops: list[store.Op] = [(store.UPSERT_GROUP, (app.app_id, group.group_id, group.data()))]
        rest = rest_of(event)
        entries: list[tuple[UserState, int, str, str]] = []
        targets = list(group.members)
        if extra is not None and extra not in group.members:
            targets.append(extra)
        for uid in targets:
            self._alloc(app, app.users[uid], kind, rest, ops, entries)
        await self.db.write(ops, lambda: self._deliver_all(app, entries))

    def _member_limit(self, app: AppState, count: int) -> None:
        cap = app.limits(self.config.recall_window).max_group_members
        if cap is not None and count > cap:
            raise OpError("limit_reached", f"a group of {count} members exceeds the tier's "
                                           f"{cap}")

    async def op_group_create(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        name = msg.get("name") or "group"
        members = msg.get("members") or []
        if not isinstance(name, str) or not isinstance(members, list):
            raise OpError("bad_request", "'name' must be a string and 'members' a list of ids")
        invited: list[str] = []
        for m in members:
            if not isinstance(m, str) or m not in app.users:
                raise OpError("not_found", f"no user {m!r} in this app")
            if m != user.user_id and m not in invited:
                invited.append(m)
        self._member_limit(app, 1 + len(invited))
        gid = f"g{self.next_group}"
        self.next_group += 1
        group = Group(gid, name, {user.user_id: "owner", **{m: "member" for m in invited}})
        app.groups[gid] = group
        app.convs[f"g:{gid}"] = Conversation(f"g:{gid}", gid)
        ops: list[store.Op] = [(store.UPSERT_GROUP, (app.app_id, gid, group.data()))]
        entries: list[tuple[UserState, int, str, str]] = []
        for m in invited:
            rest = rest_of({"group": gid, "user": m, "change": "added", "by": user.user_id,
                            "role": "member"})
            self._alloc(app, app.users[m], "membership", rest, ops, entries)
        await self.db.write(ops, lambda: self._deliver_all(app, entries))
        return {"group": group.wire()}

    async def op_group_info(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        return {"group": self._group(app, msg, user.user_id).wire()}

    def _target(self, app: AppState, msg: dict[str, Any]) -> str:
        target = msg.get("user")
        if not isinstance(target, str) or target not in app.users:
            raise OpError("not_found", f"no user {target!r} in this app")
        return target

    def _need_manager(self, group: Group, user_id: str) -> None:
        if not group.is_manager(user_id):
            raise OpError("forbidden",
                          f"only the owner or an admin of {group.group_id} may do this")

    async def op_group_add(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        group = self._group(app, msg, user.user_id)
        self._need_manager(group, user.user_id)
        target = self._target(app, msg)
        if target in group.members:
            return {"group": group.wire()}
        self._member_limit(app, len(group.members) + 1)
        group.members[target] = "member"
        await self._group_event(app, group, "membership", {
            "group": group.group_id, "user": target, "change": "added", "by": user.user_id,
            "role": "member"})
        return {"group": group.wire()}

    async def op_group_remove(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        group = self._group(app, msg, user.user_id)
        self._need_manager(group, user.user_id)
        target = self._target(app, msg)
        role = group.members.get(target)
        if role is None:
            raise OpError("not_found", f"{target} is not a member of {group.group_id}")
        if role == "owner":
            raise OpError("forbidden", "the owner cannot be removed")
        if role == "admin" and group.members[user.user_id] != "owner":
            raise OpError("forbidden", "only the owner may remove an admin")
        del group.members[target]
        group.muted.discard(target)
        await self._group_event(app, group, "membership", {
            "group": group.group_id, "user": target, "change": "removed", "by": user.user_id,
            "role": None}, extra=target)
        return {"group": group.wire()}

    async def op_group_leave(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        group = self._group(app, msg, user.user_id)
        if group.members[user.user_id] == "owner":
            raise OpError("forbidden", "the owner cannot leave the group")
        del group.members[user.user_id]
        group.muted.discard(user.user_id)
        await self._group_event(app, group, "membership", {
            "group": group.group_id, "user": user.user_id, "change": "left",
            "by": user.user_id, "role": None}, extra=user.user_id)
        return {"group": group.wire()}

    async def op_group_role(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        group = self._group(app, msg, user.user_id)
        if group.members[user.user_id] != "owner":
            raise OpError("forbidden", "only the owner may change roles")
        target = self._target(app, msg)
        role = msg.get("role")
        if role not in ("admin", "member"):
            raise OpError("bad_request", f"'role' must be 'admin' or 'member', got {role!r}")
        if target not in group.members:
            raise OpError("not_found", f"{target} is not a member of {group.group_id}")
        if group.members[target] == "owner":
            raise OpError("forbidden", "the owner's role cannot change")
        group.members[target] = role
        await self._group_event(app, group, "membership", {
            "group": group.group_id, "user": target, "change": "role", "by": user.user_id,
            "role": role})
        return {"group": group.wire()}

    async def op_group_mute(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        group = self._group(app, msg, user.user_id)
        self._need_manager(group, user.user_id)
        target = self._target(app, msg)
        muted = msg.get("muted", True)
        if not isinstance(muted, bool):
            raise OpError("bad_request", "'muted' must be true or false")
        if target not in group.members:
            raise OpError("not_found", f"{target} is not a member of {group.group_id}")
        if group.members[target] == "owner":
            raise OpError("forbidden", "the owner cannot be muted")
        (group.muted.add if muted else group.muted.discard)(target)
        await self._group_event(app, group, "mute", {
            "group": group.group_id, "user": target, "muted": muted, "by": user.user_id})
        return {"group": group.wire()}

    async def op_group_mute_all(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        app, user = _who(conn)
        group = self._group(app, msg, user.user_id)
        self._need_manager(group, user.user_id)
        muted = msg.get("muted", True)
        if not isinstance(muted, bool):
            raise OpError("bad_request", "'muted' must be true or false")
        group.muted_all = muted
        await self._group_event(app, group, "mute", {
            "group": group.group_id, "user": None, "muted": muted, "by": user.user_id})
        return {"group": group.wire()}


class _Sent(Exception):
    """Raised by an op that already pushed its own response frames."""


def _who(conn: Conn) -> tuple[AppState, UserState]:
    if conn.app is None or conn.user is None:
        raise OpError("unauthorized", "log in first (op 'login')")
    return conn.app, conn.user


def _num(ident: str, prefix: str) -> int:
    tail = ident[len(prefix):] if ident.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else 0


def _message(mid: str, conv: str, seq: int, sender: str, client_id: str, kind: str, body: str,
             custom: Any, ts: float, group: str | None, recalled: bool) -> dict[str, Any]:
    return {"message_id": mid, "conversation": conv, "seq": seq, "sender": sender,
            "client_id": client_id, "kind": kind, "body": "" if recalled else body,
            "custom": custom, "ts": ts, "group": group, "recalled": recalled}


def _ack(message: dict[str, Any]) -> dict[str, Any]:
    return {"message_id": message["message_id"], "conversation": message["conversation"],
            "seq": message["seq"], "ts": message["ts"], "duplicate": False}


def _error(rid: int | None, err: OpError) -> str:
    return compact({"re": rid, "ok": False, "error": err.wire()})
