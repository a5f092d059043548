"""One run's rows from a cursor on, oldest first: the reads of a mirror that copies a run
elsewhere (`lvmd export --tensorboard`, with `--follow` while the run trains).

Each table has its own cursor (the last step, epoch, eval id and event id copied), so rows that
arrive between two reads are neither lost nor copied twice. Lists are fetched whole, in chunks
for `steps`: a follower never holds a half-read statement that would pin an old snapshot and
keep the trainer's WAL from being checkpointed.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Sequence

from store.schema import STEP_COLUMNS

STEP_CHUNK = 4096          # step rows per read: bounded memory on a run of millions of steps
# The step columns a mirror copies, in schema order (run_id is the cursor's, not a value).
STEP_FIELDS: tuple[str, ...] = tuple(c for c in STEP_COLUMNS if c != "run_id")


@dataclass
class Cursor:
    """What a mirror has copied so far."""
    step: int = -1
    epoch: int = -1
    eval_id: int = 0
    event_id: int = 0


def steps_after(conn: sqlite3.Connection, run_id: int, after_step: int, limit: int = STEP_CHUNK) -> list[sqlite3.Row]:
    """Up to `limit` step rows with step > after_step, columns in STEP_FIELDS order (one range
    of the (run_id, step) index)."""
    return conn.execute(f"SELECT {', '.join(STEP_FIELDS)} FROM steps WHERE run_id = ? AND step > ?"
                        " ORDER BY step LIMIT ?", (run_id, after_step, limit)).fetchall()


def epochs_after(conn: sqlite3.Connection, run_id: int, after_epoch: int) -> list[dict]:
    """The epochs rows with epoch > after_epoch (validation metrics at each epoch's end)."""
    return [dict(r) for r in conn.execute("SELECT * FROM epochs WHERE run_id = ? AND epoch > ? ORDER BY epoch",
                                          (run_id, after_epoch)).fetchall()]


def finished_evals_after(conn: sqlite3.Connection, run_id: int, after_id: int) -> list[dict]:
    """Finished 5CAT evaluations (id > after_id), each with its gates and metrics: an eval is
    written whole in one transaction, so a finished one never grows afterwards."""
    evals = [dict(r) for r in conn.execute(
        "SELECT * FROM evals WHERE run_id = ? AND id > ? AND gates_passed IS NOT NULL ORDER BY id",
        (run_id, after_id)).fetchall()]
    by_id = {e["id"]: e for e in evals}
    for e in evals:
        e["gates"], e["metrics"] = [], []
    if by_id:
        marks = ", ".join("?" * len(by_id))
        for r in conn.execute(f"SELECT eval_id, split, gate, metric, value, passed FROM gates"
                              f" WHERE eval_id IN ({marks}) ORDER BY rowid", tuple(by_id)).fetchall():
            by_id[r["eval_id"]]["gates"].append(dict(r))
        for r in conn.execute(f"SELECT eval_id, split, name, value FROM eval_metrics"
                              f" WHERE eval_id IN ({marks}) ORDER BY rowid", tuple(by_id)).fetchall():
            by_id[r["eval_id"]]["metrics"].append(dict(r))
    return evals


def events_after(conn: sqlite3.Connection, run_id: int, after_id: int, kinds: Sequence[str]) -> list[dict]:
    """Events of the given kinds with id > after_id, oldest first."""
    marks = ", ".join("?" * len(kinds))
    return [dict(r) for r in conn.execute(
        f"SELECT id, step, epoch, t, kind, detail FROM events WHERE run_id = ? AND id > ? AND kind IN ({marks})"
        " ORDER BY id", (run_id, after_id, *kinds)).fetchall()]

