"""Releases of the service and the data they write: upgrade in place, refuse a rollback.

Each database remembers the release that last served it (`meta.release`). A newer release
migrates the data on start and remembers when (`meta.upgraded_at`): tokens minted before that
moment are accepted for the transition window, then refused. An older release refuses data a
newer one has migrated, with its own message (the rollback drill reports it).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from harness.reference import defects, store

RELEASES = (1, 2)
CURRENT = RELEASES[-1]
LEGACY = RELEASES[0]  # what a database without `meta.release` was written by


class ReleaseError(Exception):
    """This release cannot serve the database; the message says why and what to do."""


@dataclass(frozen=True)
class ReleaseState:
    """What the database says about releases, after `open_release`."""

    release: int  # the release serving it now
    upgraded_from: int | None = None  # the release before the last upgrade (None: never)
    upgraded_at: float | None = None  # wall-clock time of that upgrade
    migrated: bool = False  # whether this start did the upgrade


def _meta(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT key, value FROM meta").fetchall())


def _stored(db: sqlite3.Connection, release: int) -> tuple[int, bool, dict[str, str]]:
    meta = _meta(db)
    fresh = not meta and db.execute("SELECT count(*) FROM apps").fetchone()[0] == 0
    return (release if fresh else int(meta.get("release", LEGACY))), fresh, meta


def check_release(st: store.Store, release: int) -> int:
    """The release that wrote the database; `ReleaseError` when `release` cannot serve it."""
    stored, _, _ = _stored(st.connection, release)
    if stored > release:
        raise ReleaseError(
            f"the data was migrated by release {stored}; release {release} cannot read it "
            f"(no downgrade path: restore the backup taken before the upgrade, or start "
            f"release {stored} on it)"
        )
    return stored


def open_release(st: store.Store, release: int, *, now: float | None = None) -> ReleaseState:
    """Migrate the database of `st` to `release` when it is older (after `check_release`)."""
    db = st.connection
    stored, fresh, meta = _stored(db, release)
    check_release(st, release)
    if fresh or stored == release:
        db.execute(store.UPSERT_META, ("release", str(release)))
        return ReleaseState(release, _int(meta.get("upgraded_from")),
                            _float(meta.get("upgraded_at")))
    at = time.time() if now is None else now
    db.execute("BEGIN")
    try:
        if defects.on("history_lost_on_upgrade"):
            # The migration forgets one conversation's history (the first one, by id).
            db.execute("DELETE FROM messages WHERE conversation = "
                       "(SELECT MIN(conversation) FROM messages)")
        for key, value in (("release", release), ("upgraded_from", stored),
                           ("upgraded_at", repr(at))):
            db.execute(store.UPSERT_META, (key, str(value)))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return ReleaseState(release, stored, at, migrated=True)


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)
