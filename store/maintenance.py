"""`lvmd backup` and `lvmd check`: a consistent copy of a live database through SQLite's online
backup API, and the integrity and schema checks of a file. Copying x.db with cp while a daemon
writes it (or without its -wal) gives a torn or stale file; deleting a -wal or -shm by hand
loses commits and can make the file unreadable. These are the safe ways."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from store.db import StoreError, check_path, connect, store_error
from store.runs import database_id
from store.schema import MIGRATIONS, migrate


def backup(src: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Copy the database at `src` to the new file `out` (created owner-only with O_EXCL and
    O_NOFOLLOW: an existing file, link or device is never written). One backup step under one
    read transaction, so the copy is the database as of one commit while the daemon keeps
    writing. On any failure the half-made `out` is removed. Returns what was copied."""
    src, out = Path(src), Path(out)
    if not out.parent.is_dir():
        raise StoreError(f"{out}: {out.parent} is not a directory")
    source = connect(src, readonly=True)
    try:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise StoreError(f"{out}: already exists; lvmd backup never overwrites a file") from None
        except OSError as exc:
            raise StoreError(f"{out}: cannot create it ({exc.strerror})") from None
        os.close(fd)
        try:
            dest = sqlite3.connect(str(out), isolation_level=None)
            try:
                source.backup(dest)
                pages = dest.execute("PRAGMA page_count").fetchone()[0]
                dest.execute("PRAGMA journal_mode=WAL")     # as lvmd opens it; the copy has no -wal of its own yet
            finally:
                dest.close()
            with open(out, "rb") as fh:
                os.fsync(fh.fileno())
        except BaseException as exc:
            for path in (out, Path(f"{out}-wal"), Path(f"{out}-shm")):
                path.unlink(missing_ok=True)
            if isinstance(exc, sqlite3.Error):
                raise store_error(out, exc) from None
            raise
        return {"db_id": database_id(source), "pages": pages, "bytes": out.stat().st_size,
                "runs": source.execute("SELECT count(*) FROM runs").fetchone()[0]}
    finally:
        source.close()


def check(path: str | os.PathLike) -> list[tuple[str, bool, str]]:
    """(check, ok, detail) for the file at `path`, read-only: SQLite's integrity_check and
    foreign_key_check, the schema version, every table, view, index and trigger the migrations
    make, and the database id."""
    path = Path(path)
    check_path(path, create=False)
    conn = connect(path, readonly=True)          # refuses a newer schema and non-lvmd files
    try:
        out = []
        try:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        out.append(("integrity", problems == ["ok"], "ok" if problems == ["ok"] else "; ".join(problems[:5])))
        keys = conn.execute("PRAGMA foreign_key_check").fetchall()
        out.append(("foreign keys", not keys, "ok" if not keys else f"{len(keys)} rows point at nothing "
                    f"(first: table {keys[0][0]}, rowid {keys[0][1]} → {keys[0][2]})"))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        current = version == len(MIGRATIONS)
        out.append(("schema version", True, f"{version} of {len(MIGRATIONS)}"
                    + ("" if current else " (older: the next lvmd that writes it migrates it)")))
        if current:
            want, have = _expected_objects(), _objects(conn)
            missing = sorted(f"{kind} {name}" for kind, name in want - have)
            out.append(("schema objects", not missing, f"{len(want)} present" if not missing
                        else "missing: " + ", ".join(missing[:8])))
        db_id = database_id(conn)
        out.append(("database id", bool(db_id) or version < 8, db_id or "none (a file from before schema 8)"))
        return out
    except sqlite3.Error as exc:
        raise store_error(path, exc) from None
    finally:
        conn.close()


def _objects(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in conn.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}


def _expected_objects() -> set[tuple[str, str]]:
    """What the migrations make, built in memory."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(mem)
        return _objects(mem)
    finally:
        mem.close()
