"""The TUI's only write: one command row, on a connection opened for that insert and closed.

A short-lived connection (not the tail's read connection) keeps the TUI from ever holding the
write lock, and store.commands refuses unknown verbs and runs that have ended.
"""
from __future__ import annotations

from pathlib import Path

from store.commands import enqueue
from store.db import connect


def send_command(db_path: str | Path, run_id: int, verb: str) -> int:
    conn = connect(db_path)
    try:
        return enqueue(conn, run_id, verb, issued_by="tui")
    finally:
        conn.close()
