"""Rows of the `runs` table: create, read, state changes. Plain functions over a connection."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from typing import Any

from store.schema import RUN_STATES


class UnknownRun(LookupError):
    pass


def create_run(conn: sqlite3.Connection, *, name: str, preset: str, compat: str,
               config: dict, data: dict, out_dir: str = "", total_epochs: int = 0,
               total_steps: int = 0, lvmd_version: str = "", state: str = "starting") -> int:
    now = time.time()
    cur = conn.execute(
        "INSERT INTO runs (name, preset, compat, state, config_json, data_json, out_dir, host, pid,"
        " created_at, updated_at, heartbeat_at, epoch, step, total_epochs, total_steps, lvmd_version)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,0,?,?,?)",
        (name, preset, compat, state, json.dumps(config, sort_keys=True), json.dumps(data, sort_keys=True),
         out_dir, socket.gethostname(), os.getpid(), now, now, now, total_epochs, total_steps, lvmd_version),
    )
    return int(cur.lastrowid)


def update_run(conn: sqlite3.Connection, run_id: int, **fields: Any) -> None:
    if "state" in fields and fields["state"] not in RUN_STATES:
        raise ValueError(f"runs.state: {fields['state']!r} is not one of {', '.join(RUN_STATES)}")
    fields.setdefault("updated_at", time.time())
    cols = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))


def get_run(conn: sqlite3.Connection, run_id: int) -> dict:
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise UnknownRun(f"no run {run_id} in this database")
    return dict(row)


def list_runs(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY id")]


def resolve_run(conn: sqlite3.Connection, ref: str | int | None) -> dict:
    """A run by id, by unique name, or (ref None) the newest run."""
    if ref is None:
        row = conn.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise UnknownRun("no runs in this database yet")
        return dict(row)
    text = str(ref)
    if text.isdigit():
        return get_run(conn, int(text))
    rows = conn.execute("SELECT * FROM runs WHERE name = ? ORDER BY id", (text,)).fetchall()
    if not rows:
        raise UnknownRun(f"no run named {text!r} in this database")
    if len(rows) > 1:
        ids = ", ".join(str(r["id"]) for r in rows)
        raise UnknownRun(f"run name {text!r} is ambiguous (ids {ids}); use the id")
    return dict(rows[0])


def truncate_after(conn: sqlite3.Connection, run_id: int, step: int, epoch: int) -> dict[str, int]:
    """Before a resume from a checkpoint at (step, epoch): remove what the dead process wrote
    after it, so the resumed run continues with no gap and no duplicate rows. State and
    crash events stay (they are history); step-derived rows go."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        removed = {
            "steps": conn.execute("DELETE FROM steps WHERE run_id = ? AND step > ?", (run_id, step)).rowcount,
            "events": conn.execute("DELETE FROM events WHERE run_id = ? AND step > ? AND kind IN "
                                   "('skip', 'attenuate', 'checkpoint', 'collapse_warning')",
                                   (run_id, step)).rowcount,
            "epochs": conn.execute("DELETE FROM epochs WHERE run_id = ? AND epoch >= ?", (run_id, epoch)).rowcount,
        }
        evals = [r[0] for r in conn.execute("SELECT id FROM evals WHERE run_id = ? AND step > ?", (run_id, step))]
        for table in ("gates", "eval_metrics"):
            conn.executemany(f"DELETE FROM {table} WHERE eval_id = ?", [(e,) for e in evals])
        conn.executemany("DELETE FROM evals WHERE id = ?", [(e,) for e in evals])
        removed["evals"] = len(evals)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return removed


def insert_event(conn: sqlite3.Connection, run_id: int, kind: str, detail: dict | None = None, *,
                 step: int | None = None, epoch: int | None = None) -> None:
    conn.execute("INSERT INTO events (run_id, step, epoch, t, kind, detail) VALUES (?,?,?,?,?,?)",
                 (run_id, step, epoch, time.time(), kind,
                  json.dumps(detail, sort_keys=True, default=str) if detail else None))
