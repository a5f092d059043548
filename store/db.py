"""The only place that opens SQLite connections.

Every connection gets WAL, a busy timeout and foreign keys; writers also run the migrations.
Files the daemon creates are readable by their owner only (DESIGN rule 10).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # sqlite_utils costs ~0.2 s to import; a current file never needs it
    import sqlite_utils

BUSY_TIMEOUT_MS = 10_000


class StoreError(Exception):
    """A problem with the database file, reported in one line."""


def connect(path: str | os.PathLike, *, readonly: bool = False) -> sqlite3.Connection:
    """A raw sqlite3 connection in autocommit mode (we open transactions explicitly).

    readonly=True opens with mode=ro so a reader can never take the write lock; the file
    must exist. A writer creates the file (0600) and applies the migrations.
    """
    path = Path(path)
    if readonly:
        if not path.exists():
            raise StoreError(f"{path}: no such database")
        uri = f"file:{path.resolve()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # create it owner-only before SQLite does, so it never exists world-readable
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: not an lvmd database ({exc})") from None
    if not readonly:
        from store.schema import migrate

        migrate(conn, path)
    else:
        _check_version(conn, path)
    return conn


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    from store.schema import MIGRATIONS

    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not an lvmd database ({exc})") from None
    if version == 0:
        raise StoreError(f"{path}: not an lvmd database (no schema)")
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path}: schema version {version} is newer than this lvmd ({len(MIGRATIONS)}); upgrade lvmd"
        )


def open_db(path: str | os.PathLike, *, readonly: bool = False) -> sqlite_utils.Database:
    """sqlite_utils.Database over `connect()`, for the query-friendly side of the store."""
    import sqlite_utils

    return sqlite_utils.Database(connect(path, readonly=readonly))
