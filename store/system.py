"""Rows of `system_samples`: the daemon's machine (CPU, memory, GPUs) every few seconds."""
from __future__ import annotations

import sqlite3
from typing import Sequence

from store.db import optional_table_rows

SAMPLE_COLUMNS = ("device", "name", "util", "mem_used", "mem_total", "temp_c")
KEEP_SAMPLES_S = 3600.0  # older samples of a run are dropped as new ones come: the table stays small


def insert_samples(conn: sqlite3.Connection, run_id: int, t: float, rows: Sequence[dict]) -> None:
    """One sample (a row per device) in its own transaction, trimming the run's old samples."""
    with conn:
        conn.executemany(
            "INSERT INTO system_samples (run_id, t, device, name, util, mem_used, mem_total, temp_c)"
            " VALUES (?,?,?,?,?,?,?,?)", [(run_id, t, *(r.get(c) for c in SAMPLE_COLUMNS)) for r in rows])
        conn.execute("DELETE FROM system_samples WHERE run_id = ? AND t < ?", (run_id, t - KEEP_SAMPLES_S))


def latest_samples(conn: sqlite3.Connection, run_id: int) -> list[dict]:
    """The newest sample of the run, a row per device (empty before the first, and on a file
    written before the table existed, which a read-only reader does not migrate)."""
    return optional_table_rows(
        conn, "SELECT * FROM system_samples WHERE run_id = ? AND t = (SELECT MAX(t) FROM system_samples WHERE run_id = ?)"
              " ORDER BY device", (run_id, run_id))


def samples_after(conn: sqlite3.Connection, run_id: int, after_rowid: int) -> list[dict]:
    """The run's samples with rowid > after_rowid, oldest first, each with its rowid (a cursor:
    a live TUI reads only what is new). Empty on a file from before the table existed."""
    return optional_table_rows(conn, "SELECT rowid AS rowid, * FROM system_samples WHERE rowid > ? AND +run_id = ?"
                                     " ORDER BY rowid", (after_rowid, run_id))
