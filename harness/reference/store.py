"""SQLite durability with a group-commit writer; the service keeps its hot state in memory.

Writes are queued as SQL statements; one writer task commits whatever accumulated in a single
transaction (on a worker thread), then runs each write's `on_commit` in order and resolves its
future. Acks wait for that future, so an acked write survives `kill -9`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

Op = tuple[str, tuple[Any, ...]]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS apps (app_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (app_id TEXT, user_id TEXT, PRIMARY KEY (app_id, user_id));
CREATE TABLE IF NOT EXISTS groups_ (app_id TEXT, group_id TEXT, data TEXT NOT NULL,
    PRIMARY KEY (app_id, group_id));
CREATE TABLE IF NOT EXISTS messages (app_id TEXT, conversation TEXT, seq INTEGER,
    message_id TEXT, sender TEXT, client_id TEXT, kind TEXT, body TEXT, custom TEXT,
    ts REAL, grp TEXT, recalled INTEGER, PRIMARY KEY (app_id, conversation, seq));
CREATE TABLE IF NOT EXISTS inbox (app_id TEXT, user_id TEXT, pos INTEGER, kind TEXT,
    rest TEXT, PRIMARY KEY (app_id, user_id, pos));
CREATE TABLE IF NOT EXISTS reads (app_id TEXT, conversation TEXT, user_id TEXT, seq INTEGER,
    PRIMARY KEY (app_id, conversation, user_id));
"""

INSERT_MESSAGE = "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
INSERT_INBOX = "INSERT INTO inbox VALUES (?,?,?,?,?)"
UPSERT_APP = "INSERT OR REPLACE INTO apps VALUES (?,?)"
INSERT_USER = "INSERT OR IGNORE INTO users VALUES (?,?)"
UPSERT_GROUP = "INSERT OR REPLACE INTO groups_ VALUES (?,?,?)"
UPSERT_READ = "INSERT OR REPLACE INTO reads VALUES (?,?,?,?)"
UPSERT_META = "INSERT OR REPLACE INTO meta VALUES (?,?)"
RECALL_MESSAGE = (
    "UPDATE messages SET recalled=1, body='' WHERE app_id=? AND conversation=? AND seq=?"
)


def _columns(db: sqlite3.Connection) -> dict[str, list[str]]:
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {t: [c[1] for c in db.execute(f"PRAGMA table_info({t})")] for t in names}


def _check_schema(db: sqlite3.Connection) -> None:
    """`DatabaseError` when a table of ours exists with other columns (another program's file)."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(SCHEMA)
        ours = _columns(mem)
    finally:
        mem.close()
    for table, found in _columns(db).items():
        if table in ours and found != ours[table]:
            raise sqlite3.DatabaseError(
                f"table {table} has columns ({', '.join(found)}), this service's has "
                f"({', '.join(ours[table])})")


@dataclass
class _Write:
    ops: list[Op]
    on_commit: Callable[[], None] | None
    future: asyncio.Future[None]
    queued_at: float = field(default_factory=time.monotonic)


class Store:
    """One SQLite file; `load()` at start, `write()` for every change."""

    def __init__(self, path: str, *, batch_window_s: float = 0.002, max_batch: int = 2000) -> None:
        self.path = path
        self.batch_window_s = batch_window_s
        self.max_batch = max_batch
        self.flush_delay_s = 0.0  # > 0 only for the ack_before_persist defect
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            _check_schema(self._db)  # before anything is written to a file of another kind
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except BaseException:
            self._db.close()
            raise
        self._queue: deque[_Write] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._closing = False

    @property
    def connection(self) -> sqlite3.Connection:
        """The database, for what runs before the writer starts (the release migration)."""
        return self._db

    def load(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table's rows, in the order the service rebuilds its state."""
        q = self._db.execute
        return {
            "meta": q("SELECT key, value FROM meta").fetchall(),
            "apps": q("SELECT app_id, data FROM apps").fetchall(),
            "users": q("SELECT app_id, user_id FROM users").fetchall(),
            "groups": q("SELECT app_id, group_id, data FROM groups_").fetchall(),
            "messages": q(
                "SELECT * FROM messages ORDER BY app_id, conversation, seq"
            ).fetchall(),
            "inbox": q(
                "SELECT app_id, user_id, pos, kind, rest FROM inbox ORDER BY app_id, user_id, pos"
            ).fetchall(),
            "reads": q("SELECT app_id, conversation, user_id, seq FROM reads").fetchall(),
        }

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._writer(), name="sqlite-writer")

    def write(
        self, ops: Iterable[Op], on_commit: Callable[[], None] | None = None
    ) -> asyncio.Future[None]:
        """Queue `ops` for the next commit; the future resolves after commit and `on_commit`."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(list(ops), on_commit, fut))
        assert self._wakeup is not None
        self._wakeup.set()
        return fut

    def _commit(self, batch: list[_Write]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for item in batch:
                for sql, params in item.ops:
                    db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def _writer(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.flush_delay_s > 0 and not self._closing:
                await asyncio.sleep(self.flush_delay_s)
            elif self.batch_window_s > 0 and len(self._queue) < self.max_batch:
                await asyncio.sleep(self.batch_window_s)
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
            try:
                await loop.run_in_executor(self._pool, self._commit, batch)
            except Exception as exc:  # noqa: BLE001 - reported to every waiter
                print(f"harness.reference: sqlite commit failed: {exc!r}", file=sys.stderr)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item in batch:
                if item.on_commit is not None:
                    try:
                        item.on_commit()
                    except Exception as exc:  # noqa: BLE001 - one bad callback must not stop the writer
                        print(f"harness.reference: on_commit failed: {exc!r}", file=sys.stderr)
                if not item.future.done():
                    item.future.set_result(None)

    def abandon(self) -> None:
        """Close a store that never started (its database proved unusable)."""
        self._pool.shutdown(wait=False)
        self._db.close()

    async def close(self) -> None:
        """Flush every queued write, stop the writer and close the database."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._pool.shutdown(wait=True)
        self._db.close()
