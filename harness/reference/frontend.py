"""The WebSocket front end: connections, frame parsing and dispatch, keepalive, sessions."""

from __future__ import annotations

import asyncio
import http
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Request, Response, ServerConnection
from websockets.exceptions import ConnectionClosed

from harness.reference import defects, strictjson, tokens
from harness.reference.common import (
    ID_RE,
    Config,
    OpError,
    OpHandler,
    Sent,
    error_frame,
    read_int,
)
from harness.reference.delivery import Delivery
from harness.reference.state import AppState, UserState, World, compact
from harness.reference.tiers import limits_dict

log = logging.getLogger("harness.reference")

HARD_MAX_FRAME = 4 * 1024 * 1024
PATHS = {"/v1": "v1", "/v2": "v2"}


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

    def session(self) -> tuple[AppState, UserState]:
        """The app and user logged in here; `unauthorized` before login."""
        if self.app is None or self.user is None:
            raise OpError("unauthorized", "log in first (op 'login')")
        return self.app, self.user

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


class Frontend:
    """Accepts connections, parses and dispatches frames, logs users in, keeps peers alive."""

    def __init__(self, world: World, config: Config, delivery: Delivery,
                 ensure_user: Callable[[AppState, str], Awaitable[UserState]]) -> None:
        self.world = world
        self.config = config
        self.delivery = delivery
        self.ensure_user = ensure_user
        self.conns: set[Conn] = set()
        self._bg: set[asyncio.Future[Any]] = set()
        # op name -> handler; the service adds the message and group ops
        self.ops: dict[str, OpHandler] = {"ping": self.op_ping, "logout": self.op_logout}

    def close(self) -> None:
        """Cancel the ops still running."""
        for task in list(self._bg):
            task.cancel()

    # ---- connections ---------------------------------------------------------------------

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
        interval = self.config.keepalive(conn.protocol)
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

    # ---- frames --------------------------------------------------------------------------

    def _on_frame(self, conn: Conn, raw: str | bytes) -> None:
        try:
            self._dispatch(conn, raw)
        except Exception:  # a malformed frame must never cost the connection (PROTOCOL.md)
            log.exception("internal error on a frame")
            conn.push(error_frame(None, OpError("internal", "internal error; see the service log")))

    def _dispatch(self, conn: Conn, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            conn.push(error_frame(None, OpError("bad_request", "binary frames are not supported; "
                                                "send JSON as a text frame")))
            return
        limit = self.config.max_frame_bytes
        if len(raw) > limit or (len(raw) * 4 > limit and len(raw.encode()) > limit):
            conn.push(error_frame(None, OpError("too_large", f"frame exceeds {limit} bytes")))
            return
        try:
            msg = strictjson.loads(raw)
        except strictjson.JsonInputError as err:
            conn.push(error_frame(None, OpError("bad_request", f"bad frame: {err}")))
            return
        if not isinstance(msg, dict):
            conn.push(error_frame(None, OpError(
                "bad_request", f"frame must be a JSON object, got {_json_type(msg)}")))
            return
        rid = msg.get("id")
        if not _is_id(rid):
            # Without its id the client could not tell which request failed: do not run it.
            conn.push(error_frame(None, OpError(
                "bad_request", f"'id' must be an integer within +-{strictjson.SAFE_INT}, got "
                               f"{_shown(rid) if 'id' in msg else 'none'}; the op was not run")))
            return
        op = msg.get("op")
        if op == "login":
            task = asyncio.ensure_future(self._run(conn, rid, self.op_login, msg))
        else:
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                what = "missing 'op'" if op is None else f"unknown op {_shown(op)}"
                conn.push(error_frame(rid, OpError("bad_request", what)))
                return
            if conn.user is None:
                conn.push(error_frame(rid, OpError("unauthorized", "log in first (op 'login')")))
                return
            if op == "logout":
                self._unregister(conn)
                conn.push(compact({"re": rid, "ok": True}))
                conn.ending = True
                return
            task = asyncio.ensure_future(self._run(conn, rid, handler, msg))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _run(self, conn: Conn, rid: int | None, handler: OpHandler,
                   msg: dict[str, Any]) -> None:
        try:
            result = await handler(conn, msg)
        except OpError as err:
            conn.push(error_frame(rid, err))
            if err.code == "limit_reached" and msg.get("op") == "login":
                await conn.flush()
                await conn.ws.close(1008, "connection limit reached")
            return
        except (ConnectionClosed, Sent):
            return
        except Exception:
            log.exception("internal error in op %r", msg.get("op"))
            conn.push(error_frame(rid, OpError("internal", "internal error; see the service log")))
            return
        conn.push(compact({"re": rid, "ok": True, **result}))

    # ---- sessions ------------------------------------------------------------------------

    async def op_login(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        if conn.user is not None or conn.logging_in:
            raise OpError("bad_request", "already logged in on this connection")
        conn.logging_in = True
        try:
            await self._login(conn, msg)
        finally:
            conn.logging_in = False
        raise Sent()

    async def _login(self, conn: Conn, msg: dict[str, Any]) -> None:
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            raise OpError("unauthorized", "missing token")
        try:
            claims = tokens.claims(token)
        except tokens.TokenError as err:
            raise OpError("unauthorized", str(err)) from None
        app_id = msg.get("app") or claims["app"]
        app = self.world.apps.get(app_id) if isinstance(app_id, str) else None
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
        expired = self.config.transition_error(tokens.issued_at(claims), time.time())
        if expired:
            raise OpError("unauthorized", expired)
        cursor = read_int(msg, "cursor", None)
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
        conn.push(compact({
            "re": msg["id"], "ok": True, "user": user_id, "app": app.app_id,
            "protocol": conn.protocol, "tier": app.tier,
            "keepalive_s": self.config.keepalive(conn.protocol),
            "features": app.feature_list(), "limits": limits_dict(limits), "cursor": head,
        }))
        self.delivery.replay(conn, user, start, head)
        log.debug("login app=%s user=%s protocol=%s", app.app_id, user_id, conn.protocol)

    def _cross_app_user(self, token: str, claims: dict[str, Any]) -> str | None:
        for other in self.world.apps.values():
            if tokens.signed_by(token, other.app_key) and claims["exp"] > time.time():
                return str(claims["sub"])
        return None

    async def op_ping(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        return {"ts": time.time()}

    async def op_logout(self, conn: Conn, msg: dict[str, Any]) -> dict[str, Any]:
        self._unregister(conn)  # normally answered in `_on_frame`, which then closes
        return {}


def _is_id(value: Any) -> bool:
    """A request id: an integer every JSON reader holds exactly (not a bool)."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and -strictjson.SAFE_INT <= value <= strictjson.SAFE_INT)


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _shown(value: Any, limit: int = 40) -> str:
    """`value` for an error message, cut short: a client's junk is not echoed in full."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
