"""Rows of `compile_probes`: the answer of train.compile=auto's probe (lvmd/train/compiling.py),
kept per database under the hash of what the timing depends on (model, sizes, batch, device and
CPU, precision, threads, torch version, host), so a resume or the next run with the same key
skips the probe (a compile and timed steps: 20-90 s on a 2-core CPU).

A row only chooses between two things lvmd does anyway (compile or not); it never names code to
run. Still, it is data: a row whose fields are not what a probe writes is ignored (re-probed)."""
from __future__ import annotations

import math
import sqlite3
import time

from store.db import optional_table_rows

OUTCOMES = ("timed", "short", "failed")   # both sides timed | the run too short to try | compile failed


def stored_probe(conn: sqlite3.Connection, key_hash: str) -> dict | None:
    """The kept answer for key_hash, or None (none, a file from before the table, or a malformed row)."""
    rows = optional_table_rows(conn, "SELECT * FROM compile_probes WHERE key_hash = ?", (key_hash,))
    return rows[0] if rows and _well_formed(rows[0]) else None


def keep_probe(conn: sqlite3.Connection, key_hash: str, key_json: str, *, outcome: str, compiled: bool,
               why: str, eager_ms: float | None, compiled_ms: float | None, compile_s: float | None,
               run_id: int | None) -> None:
    """Keep a probe's answer, replacing the last one for the same key."""
    conn.execute("INSERT OR REPLACE INTO compile_probes (key_hash, key_json, outcome, compiled, why, eager_ms,"
                 " compiled_ms, compile_s, run_id, probed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (key_hash, key_json, outcome, int(compiled), why, eager_ms, compiled_ms, compile_s, run_id,
                  time.time()))


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _well_formed(row: dict) -> bool:
    if row.get("outcome") not in OUTCOMES or row.get("compiled") not in (0, 1) or not isinstance(row.get("why"), str):
        return False
    if row["outcome"] == "timed":
        return _positive(row.get("eager_ms")) and _positive(row.get("compiled_ms"))
    if row["outcome"] == "short":
        return row["compiled"] == 0 and _positive(row.get("eager_ms"))
    return row["compiled"] == 0
