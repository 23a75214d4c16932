"""Delivery and fan-out: inbox entries, live frames, offline replay, webhook push."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import aiohttp

from harness.reference import defects, store
from harness.reference.state import AppState, UserState, World

if TYPE_CHECKING:
    from harness.reference.frontend import Conn

# Events an old (v1) client never sees, live or replayed.
V2_ONLY_EVENTS = ("recall", "receipt")


class Fanout:
    """One op's inbox entries: positions taken now, stored with its writes, sent on commit."""

    def __init__(self, app: AppState, ops: list[store.Op]) -> None:
        self.app = app
        self.ops = ops
        self.entries: list[tuple[UserState, int, str, str]] = []

    def add(self, user: UserState, kind: str, rest: str) -> None:
        """Give `user` the next inbox position for event `kind` (fields `rest`)."""
        user.alloc += 1
        self.ops.append((store.INSERT_INBOX, (self.app.app_id, user.user_id, user.alloc, kind,
                                              rest)))
        self.entries.append((user, user.alloc, kind, rest))


class Delivery:
    """Puts committed entries into inboxes and onto live connections; pushes to the webhook."""

    def __init__(self, world: World, db: store.Store) -> None:
        self.world = world
        self.db = db
        self.http: aiohttp.ClientSession | None = None
        self._bg: set[asyncio.Future[Any]] = set()
        # live frames held back by the slow_delivery defect, in order: (due, conn, frame)
        self._late: deque[tuple[float, Conn, str]] = deque()

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()

    async def close(self) -> None:
        for task in list(self._bg):
            task.cancel()
        if self.http is not None:
            await self.http.close()

    def commit(self, fanout: Fanout) -> asyncio.Future[None]:
        """Write the operation's changes; deliver its entries once they are committed."""
        return self.db.write(fanout.ops, lambda: self.deliver(fanout))

    def deliver(self, fanout: Fanout, push: dict[str, Any] | None = None) -> None:
        """Append committed entries to the inboxes and send them live (or push a message)."""
        counters = self.world.counters
        for user, pos, kind, rest in fanout.entries:
            user.inbox.append((kind, rest))
            if not user.conns:
                if push is not None and kind == "message":
                    self._push(fanout.app, user.user_id, push)
                continue
            frame = f'{{"ev":"{kind}","pos":{pos},"offline":false,{rest}}}'
            if kind == "message":
                counters["deliveries"] += len(user.conns)
            for conn in user.conns:
                if conn.protocol == "v1" and kind in V2_ONLY_EVENTS:
                    continue
                self._live(conn, frame)

    def _live(self, conn: Conn, frame: str) -> None:
        """Send a live frame now, or late under slow_delivery (never ahead of a held one)."""
        if not self._late and not defects.on("slow_delivery"):
            conn.push(frame)
            return
        loop = asyncio.get_running_loop()
        delay = defects.SLOW_DELIVERY_S if defects.on("slow_delivery") else 0.0
        if not self._late:
            loop.call_later(delay, self._release)
        self._late.append((loop.time() + delay, conn, frame))

    def _release(self) -> None:
        loop = asyncio.get_running_loop()
        while self._late and self._late[0][0] <= loop.time():
            _, conn, frame = self._late.popleft()
            conn.push(frame)
        if self._late:
            loop.call_at(self._late[0][0], self._release)

    def replay(self, conn: Conn, user: UserState, start: int, head: int) -> None:
        """Send inbox entries start+1..head as offline events, then `caught_up`."""
        for pos in range(start + 1, head + 1):
            kind, rest = user.inbox[pos - 1]
            if conn.protocol == "v1" and kind in V2_ONLY_EVENTS:
                continue
            if kind == "message":
                self.world.counters["deliveries"] += 1
            conn.push(f'{{"ev":"{kind}","pos":{pos},"offline":true,{rest}}}')
        conn.push(f'{{"ev":"caught_up","pos":{head}}}')

    def _push(self, app: AppState, to: str, payload: dict[str, Any]) -> None:
        if not app.webhook or self.http is None:
            return
        if defects.on("no_push"):
            return
        self._background(self._post_push(app.webhook, {"app": app.app_id, "to": to, **payload}))

    def _background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _post_push(self, url: str, payload: dict[str, Any]) -> None:
        assert self.http is not None
        try:
            timeout = aiohttp.ClientTimeout(total=2)
            async with self.http.post(url, json=payload, timeout=timeout) as resp:
                ok = resp.status < 300
        except (aiohttp.ClientError, TimeoutError, ValueError):
            ok = False
        self.world.counters["pushes" if ok else "push_failures"] += 1
