"""The command queue: the TUI and CLI enqueue, the daemon claims, acks and completes.

States: pending → acked (the daemon took it at a named step) → done | failed.
"""
from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
import time
from typing import Any

from store.schema import COMMAND_VERBS, TERMINAL_STATES


class CommandError(ValueError):
    pass


def enqueue(conn: sqlite3.Connection, run_id: int, verb: str, args: dict | None = None, *,
            issued_by: str = "cli") -> int:
    """Insert a pending command; refuses unknown verbs and runs that have ended."""
    if verb not in COMMAND_VERBS:
        raise CommandError(f"unknown command {verb!r}; choose one of {', '.join(COMMAND_VERBS)}")
    row = conn.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise CommandError(f"no run {run_id} in this database")
    if row["state"] in TERMINAL_STATES:
        raise CommandError(f"run {run_id} is {row['state']}; it takes no commands{next_step(run_id, row['state'])}")
    cur = conn.execute(
        "INSERT INTO commands (run_id, verb, args, issued_at, issued_by, user, host, pid, state)"
        " VALUES (?,?,?,?,?,?,?,?, 'pending')",
        (run_id, verb, json.dumps(args or {}), time.time(), issued_by, _user(), socket.gethostname(), os.getpid()))
    return int(cur.lastrowid)


def next_step(run_id: int, state: str) -> str:
    """What a person can do with a run that has ended, as the tail of an error line."""
    if state in ("stopped", "crashed"):
        return f"; `lvmd resume {run_id}` continues it from its last checkpoint"
    if state == "failed":
        return f"; `lvmd status {run_id}` says why"
    return f"; `lvmd report {run_id}` gives its verdict"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


def pending(conn: sqlite3.Connection, run_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute(
        "SELECT * FROM commands WHERE run_id = ? AND state = 'pending' ORDER BY id", (run_id,))]


def has_pending(conn: sqlite3.Connection, run_id: int) -> bool:
    """The daemon's cheap look (an index probe) before it claims anything."""
    # fetchall: a long-lived reader must not keep a half-read statement (it pins a snapshot)
    return bool(conn.execute("SELECT 1 FROM commands WHERE run_id = ? AND state = 'pending' LIMIT 1",
                             (run_id,)).fetchall())


def claim_next(conn: sqlite3.Connection, run_id: int, step: int) -> dict | None:
    """Ack the oldest pending command of a run at `step` and return it (None if there is none).
    One at a time, so each is done before the next is looked at (a pause, then a resume)."""
    for cmd in pending(conn, run_id):
        if ack(conn, cmd["id"], step):
            return {**cmd, "state": "acked", "acked_step": step}
    return None


def ack(conn: sqlite3.Connection, command_id: int, step: int) -> bool:
    """Claim a pending command at `step`; False if someone else already took it."""
    cur = conn.execute("UPDATE commands SET state = 'acked', acked_at = ?, acked_step = ?"
                       " WHERE id = ? AND state = 'pending'", (time.time(), step, command_id))
    return cur.rowcount == 1


def complete(conn: sqlite3.Connection, command_id: int, *, ok: bool = True, result: Any = None) -> None:
    conn.execute("UPDATE commands SET state = ?, done_at = ?, result = ? WHERE id = ?",
                 ("done" if ok else "failed", time.time(), json.dumps(result, default=str), command_id))


def get(conn: sqlite3.Connection, command_id: int) -> dict:
    row = conn.execute("SELECT * FROM commands WHERE id = ?", (command_id,)).fetchone()
    if row is None:
        raise CommandError(f"no command {command_id}")
    return dict(row)


def fail_open(conn: sqlite3.Connection, run_id: int, reason: str) -> int:
    """Mark every pending/acked command of a run failed (the run ended before doing them)."""
    cur = conn.execute("UPDATE commands SET state = 'failed', done_at = ?, result = ?"
                       " WHERE run_id = ? AND state IN ('pending', 'acked')",
                       (time.time(), json.dumps({"error": reason}), run_id))
    return cur.rowcount
