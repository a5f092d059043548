"""The only place that opens SQLite connections.

Every connection gets WAL, a busy timeout and foreign keys; writers also run the migrations.
Files the daemon creates are readable by their owner only (DESIGN rule 10).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator
from urllib.parse import quote

from store.paths import create_new, not_regular

if TYPE_CHECKING:  # sqlite_utils costs ~0.2 s to import; a current file never needs it
    import sqlite_utils

BUSY_TIMEOUT_MS = 10_000

# What an SQLite error means for the user, by its code (Python's sqlite_errorname); the
# prefix of an extended code (SQLITE_READONLY_DBMOVED) finds its family.
_MEANINGS = {
    "SQLITE_FULL": "the disk is full; free some space and retry",
    "SQLITE_READONLY": "read-only: lvmd cannot write it",
    "SQLITE_CANTOPEN": "cannot open it",
    "SQLITE_PERM": "permission denied",
    "SQLITE_AUTH": "permission denied",
    "SQLITE_NOTADB": "not an lvmd database (not an SQLite file)",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_IOERR": "an I/O error on the file",
    "SQLITE_BUSY": "busy: another process holds its lock",
    "SQLITE_LOCKED": "busy: another process holds its lock",
}


class StoreError(Exception):
    """A problem with the database file, reported in one line."""


# Databases this process must not open again: the file at the path is no longer the one its
# writer opened (store.writer.DatabaseWatch), and connections kept open on purpose (park).
_LOST: dict[str, str] = {}
_PARKED: list[sqlite3.Connection] = []


def mark_lost(path: str | os.PathLike, reason: str) -> None:
    """From now on connect(path) in this process refuses with `reason`: whatever is at the path
    is not the database this process was writing (a final state must not land in another file)."""
    _LOST[os.path.abspath(path)] = reason


def lost_reason(path: str | os.PathLike) -> str | None:
    return _LOST.get(os.path.abspath(path))


def park(conn: sqlite3.Connection) -> None:
    """Keep `conn` open until the process ends instead of closing it: after its database was
    moved or its -wal deleted, SQLite's close would delete the -wal and -shm BY PATH, which may
    now belong to another database. A process that parked a connection must end with os._exit
    (lvmd.cli.main does), so no finaliser closes it either."""
    _PARKED.append(conn)


def parked() -> bool:
    return bool(_PARKED)


class MissingDatabase(StoreError):
    """The database file a reader was pointed at does not exist (the CLI adds how to name one)."""


def meaning(exc: sqlite3.Error) -> str | None:
    """What an SQLite error says about the file or the disk (None: not about them, e.g. a bug)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return next((text for code, text in _MEANINGS.items() if name.startswith(code)), None)


def describe(path: str | os.PathLike, exc: sqlite3.Error) -> str:
    """One line for an SQLite error on the database at `path`: the file, what it means, SQLite's words."""
    meaning_ = meaning(exc)
    words = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{path}: {meaning_} ({words})" if meaning_ else f"{path}: {words}"


def store_error(path: str | os.PathLike, exc: sqlite3.Error) -> StoreError:
    return StoreError(describe(path, exc))


def optional_table_rows(conn: sqlite3.Connection, sql: str, params: tuple = ()) -> list[dict]:
    """The rows of a query on a table a later migration added: none on a file written before the
    table existed (a read-only reader does not migrate it)."""
    try:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


@contextmanager
def transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """One write transaction. On an error it is rolled back only if it is still open: SQLite
    itself ends a transaction that hit SQLITE_FULL or an I/O error, and a second ROLLBACK would
    replace the real error with "cannot rollback - no transaction is active"."""
    conn.execute(begin)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass            # the original error is the one worth reporting
        raise


def check_path(path: Path, *, create: bool) -> None:
    """Refuse, in one line, a database path that cannot be one: a directory, a FIFO or device
    node (SQLite would hang on the one and leave a `-journal` beside the other), a path under a
    file, a file we may not read (or, to create, a folder we may not write)."""
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a database file")
    why = not_regular(path)
    if why is not None:
        raise StoreError(f"{why}; a database is a regular file")
    if os.path.islink(path) and not path.exists():
        raise StoreError(f"{path}: is a symlink to nothing ({os.readlink(path)}); name the database file itself")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"{path}: {parent} is not a directory")
            break
    if path.exists():
        # access(), never open()+close(): closing any descriptor of the file drops every POSIX
        # lock this process holds on it, including those of its open SQLite connections
        if not os.access(path, os.R_OK):
            raise StoreError(f"{path}: cannot read the database (permission denied)")
    elif not create:
        raise MissingDatabase(f"{path}: no such database")


def connect(path: str | os.PathLike, *, readonly: bool = False) -> sqlite3.Connection:
    """A raw sqlite3 connection in autocommit mode (we open transactions explicitly).

    readonly=True opens with mode=ro so a reader can never take the write lock and needs no
    write permission; the file must exist. A writer creates the file (0600) and applies the
    migrations. Every failure is a one-line StoreError naming the file.
    """
    path = Path(path)
    if lost_reason(path) is not None:
        raise StoreError(f"{lost_reason(path)}; this process will not open it again")
    check_path(path, create=not readonly)
    try:
        conn = _open_readonly(path) if readonly else _open_writer(path)
    except sqlite3.Error as exc:
        raise store_error(path, exc) from None
    try:
        if not readonly:
            from store.schema import check_ours

            check_ours(conn, path)        # before WAL mode: never change another program's file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if not readonly:
            from store.schema import migrate

            migrate(conn, path)
        else:
            _check_version(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            raise StoreError(f"{path}: not an lvmd database ({exc})") from None
        raise store_error(path, exc) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _open_writer(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # create it owner-only before SQLite does, so it never exists world-readable; O_EXCL |
            # O_NOFOLLOW: never through whatever appeared there meanwhile
            os.close(create_new(path, 0o600))
    except FileExistsError:
        pass                      # another process made it a moment ago: SQLite opens that one
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the database ({exc.strerror})") from None
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    return _configure(conn)


def _open_readonly(path: Path) -> sqlite3.Connection:
    """mode=ro. A WAL database whose -shm cannot be made (a folder we may not write, a full
    disk) is opened immutable instead when it has no -wal to read: then the file itself holds
    every commit, and a writer would have to make the -wal first."""
    base = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = _configure(sqlite3.connect(base, uri=True, isolation_level=None, check_same_thread=False,
                                      timeout=BUSY_TIMEOUT_MS / 1000))
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        return conn
    except sqlite3.OperationalError as exc:
        wal = Path(f"{path}-wal")
        if not getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN",
                                                                 "SQLITE_IOERR")) \
                or (wal.exists() and wal.stat().st_size):
            conn.close()
            raise
    conn.close()
    return _configure(sqlite3.connect(f"{base}&immutable=1", uri=True, isolation_level=None,
                                      check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000))


def _configure(conn: sqlite3.Connection) -> sqlite3.Connection:
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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
