"""Rows of `data_hashes`: the sha256 of each data file lvmd has hashed, with the file's stat at
the time, so a start or resume re-hashes only a file that changed (lvmd/data/hashes.py decides)."""
from __future__ import annotations

import sqlite3

from store.db import optional_table_rows

STAT_FIELDS = ("dev", "ino", "size", "mtime_ns", "ctime_ns")


def cached_hash(conn: sqlite3.Connection, path: str) -> dict | None:
    """The last record for `path` (its stat fields, sha256 and hashed_ns), or None. A file written
    before the table existed (a read-only reader does not migrate) has none."""
    rows = optional_table_rows(conn, "SELECT * FROM data_hashes WHERE path = ?", (path,))
    return rows[0] if rows else None


def record_hash(conn: sqlite3.Connection, path: str, stat: dict, sha256: str, hashed_ns: int) -> None:
    """Keep `sha256` for `path` as it was at `stat` (hashing began at hashed_ns), replacing the last."""
    with conn:
        conn.execute(f"INSERT OR REPLACE INTO data_hashes (path, {', '.join(STAT_FIELDS)}, sha256, hashed_ns)"
                     f" VALUES (?, {', '.join('?' * len(STAT_FIELDS))}, ?, ?)",
                     (path, *(stat[f] for f in STAT_FIELDS), sha256, hashed_ns))
