"""5CAT results in SQLite: one `evals` row, its `gates` checks and every number in `eval_metrics`.

insert_eval works inside a transaction the caller holds (the telemetry writer's commit) and on
its own (autocommit connection): a SAVEPOINT makes the three inserts all-or-nothing either way.
SQLite cannot store NaN (it becomes NULL); we write None explicitly so that is never a surprise.
"""
from __future__ import annotations

import json
import math
import sqlite3
from typing import Any, Iterable, Mapping, Sequence

GATE_FIELDS = ("split", "gate", "metric", "value", "threshold", "op", "passed")
METRIC_FIELDS = ("split", "name", "value")


def insert_eval(conn: sqlite3.Connection, run_id: int, eval_row: Mapping[str, Any],
                gates: Iterable[Mapping[str, Any]], metrics: Iterable[Mapping[str, Any] | Sequence[Any]]) -> int:
    """Insert one evaluation; returns its evals.id. eval_row keys: columns of `evals` other than
    id/run_id; gates: dicts with GATE_FIELDS; metrics: dicts or (split, name, value) tuples."""
    allowed = _columns(conn, "evals") - {"id", "run_id"}
    unknown = sorted(set(eval_row) - allowed)
    if unknown:
        raise ValueError(f"evals: unknown column {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    cols = ["run_id", *eval_row]
    gate_rows = [tuple(_clean(g[f]) for f in GATE_FIELDS) for g in gates]
    metric_rows = [tuple(_clean(v) for v in _metric_tuple(m)) for m in metrics]
    conn.execute("SAVEPOINT insert_eval")
    try:
        cur = conn.execute(f"INSERT INTO evals ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           (run_id, *(_clean(v) for v in eval_row.values())))
        eval_id = int(cur.lastrowid)
        conn.executemany(f"INSERT INTO gates (eval_id, {', '.join(GATE_FIELDS)}) VALUES "
                         f"(?, {', '.join('?' * len(GATE_FIELDS))})", [(eval_id, *g) for g in gate_rows])
        conn.executemany("INSERT INTO eval_metrics (eval_id, split, name, value) VALUES (?, ?, ?, ?)",
                         [(eval_id, *m) for m in metric_rows])
    except BaseException:
        conn.execute("ROLLBACK TO insert_eval")
        conn.execute("RELEASE insert_eval")
        raise
    conn.execute("RELEASE insert_eval")
    return eval_id


def has_epoch_eval(conn: sqlite3.Connection, run_id: int, epoch: int) -> bool:
    """Is the end-of-epoch 5CAT of `epoch` in the database (written whole, in one transaction)?"""
    return conn.execute("SELECT 1 FROM evals WHERE run_id = ? AND epoch = ? AND trigger = 'epoch' LIMIT 1",
                        (run_id, epoch)).fetchone() is not None


def eval_progress(conn: sqlite3.Connection, run_id: int) -> dict | None:
    """Where the run's current 5CAT stands ({"done", "total", "stage", "trigger"}): its newest
    eval_progress event since the run's last state change; None before its first stage is done."""
    row = conn.execute("SELECT detail FROM events WHERE run_id = ? AND kind = 'eval_progress' AND id >"
                       " (SELECT COALESCE(MAX(id), 0) FROM events WHERE run_id = ? AND kind = 'state')"
                       " ORDER BY id DESC LIMIT 1", (run_id, run_id)).fetchone()
    try:
        return None if row is None else json.loads(row[0])
    except (TypeError, ValueError):          # a hand-edited row: no progress to tell
        return None


def latest_eval(conn: sqlite3.Connection, run_id: int) -> dict | None:
    """The newest evals row of a run (highest id), or None."""
    rows = _dicts(conn.execute("SELECT * FROM evals WHERE run_id = ? ORDER BY id DESC LIMIT 1", (run_id,)))
    return rows[0] if rows else None


def evals_for_run(conn: sqlite3.Connection, run_id: int) -> list[dict]:
    """All evals rows of a run, oldest first."""
    return _dicts(conn.execute("SELECT * FROM evals WHERE run_id = ? ORDER BY id", (run_id,)))


def gates_for_eval(conn: sqlite3.Connection, eval_id: int) -> list[dict]:
    """The gate checks of one evaluation in the order they were written."""
    return _dicts(conn.execute(f"SELECT {', '.join(GATE_FIELDS)} FROM gates WHERE eval_id = ? ORDER BY rowid",
                               (eval_id,)))


def eval_metrics(conn: sqlite3.Connection, eval_id: int, split: str | None = None) -> list[dict]:
    """Every number of one evaluation (optionally of one split), in the order written."""
    sql = "SELECT split, name, value FROM eval_metrics WHERE eval_id = ?"
    args: tuple = (eval_id,)
    if split is not None:
        sql, args = sql + " AND split = ?", (eval_id, split)
    return _dicts(conn.execute(sql + " ORDER BY rowid", args))


def _metric_tuple(m: Mapping[str, Any] | Sequence[Any]) -> tuple:
    if isinstance(m, Mapping):
        return tuple(m[f] for f in METRIC_FIELDS)
    split, name, value = m
    return split, name, value


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalars
        v = v.item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}


def _dicts(cur: sqlite3.Cursor) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]
