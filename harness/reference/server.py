"""The reference IM service assembled: state, delivery, the ops and the WebSocket front end."""

from __future__ import annotations

from typing import Any

from harness.reference import store
from harness.reference.common import Config, OpHandler
from harness.reference.delivery import Delivery
from harness.reference.frontend import Conn, Frontend
from harness.reference.groups import GroupOps
from harness.reference.messages import MessageOps
from harness.reference.state import AppState, UserState, World

__all__ = ["Config", "Service"]


class Service:
    """All apps and their state, the ops, the front end, the writer and the push client."""

    def __init__(self, db: store.Store, config: Config) -> None:
        self.db = db
        self.config = config
        self.world = World()
        self.apps: dict[str, AppState] = self.world.apps
        self.delivery = Delivery(self.world, db)
        self.frontend = Frontend(self.world, config, self.delivery, self.ensure_user)
        self.messages = MessageOps(self.world, config, db, self.delivery)
        self.groups = GroupOps(self.world, config, self.delivery)
        self.ops: dict[str, OpHandler] = self.frontend.ops  # one table: additions reach the front
        self.ops.update(self.messages.handlers())
        self.ops.update(self.groups.handlers())
        self.handle = self.frontend.handle  # the websockets handler
        self.process_request = self.frontend.process_request

    @property
    def conns(self) -> set[Conn]:
        """The open WebSocket connections."""
        return self.frontend.conns

    def load(self) -> None:
        """Rebuild the in-memory state from SQLite."""
        self.world.load(self.db.load())

    async def start(self) -> None:
        await self.delivery.start()

    async def close(self) -> None:
        self.frontend.close()
        await self.delivery.close()

    # ---- apps and users (used by the HTTP API and at login) ------------------------------

    async def create_app(self, app: AppState) -> None:
        self.apps[app.app_id] = app
        await self.db.write([(store.UPSERT_APP, (app.app_id, app.data()))])

    def new_app_id(self) -> str:
        world = self.world
        while f"app{world.next_app}" in self.apps:
            world.next_app += 1
        world.next_app += 1
        return f"app{world.next_app - 1}"

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
                **self.world.counters}
