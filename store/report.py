"""Every read `lvmd report / runs / compare / export` needs, over the post-run views.

Plain functions over a connection that return dicts and lists; no verdicts here (those are
lvmd/eval/verdict.py's), only numbers.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
from typing import Iterator

from store.db import StoreError, connect
from store.schema import MIGRATIONS, STEP_METRICS
from store.step_blocks import BLOCK_STEPS, block_series

# `lvmd export --table X`: the query of each table, filtered to one run, in time order.
EXPORT_QUERIES = {
    "steps": "SELECT * FROM steps WHERE run_id = ? ORDER BY step",
    "events": "SELECT * FROM events WHERE run_id = ? ORDER BY id",
    "epochs": "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch",
    # gates has no run_id: each check carries its evaluation's epoch and step
    "gates": "SELECT e.run_id, g.eval_id, e.epoch, e.step, e.trigger, g.split, g.gate, g.metric,"
             " g.value, g.threshold, g.op, g.passed"
             " FROM gates g JOIN evals e ON e.id = g.eval_id WHERE e.run_id = ? ORDER BY g.eval_id, g.rowid",
    "evals": "SELECT * FROM evals WHERE run_id = ? ORDER BY id",
    # eval_metrics, like gates, reaches its run through its evaluation
    "eval_metrics": "SELECT e.run_id, m.eval_id, e.epoch, e.step, e.trigger, m.split, m.name, m.value"
                    " FROM eval_metrics m JOIN evals e ON e.id = m.eval_id WHERE e.run_id = ?"
                    " ORDER BY m.eval_id, m.rowid",
    "commands": "SELECT * FROM commands WHERE run_id = ? ORDER BY id",
}
# What each exportable table holds (`lvmd export --help`).
EXPORT_HELP = {
    "steps": "per-step guardrail telemetry", "events": "skips, attenuations, checkpoints, state changes",
    "epochs": "per-epoch validation metrics", "gates": "5CAT gate checks with their eval's epoch and step",
    "evals": "one row per 5CAT evaluation (verdicts, timing)",
    "eval_metrics": "every 5CAT metric per split", "commands": "pause/resume/eval/stop commands and their fate",
}
# Names the 5CAT writer (lvmd/eval/fivecat.py) gives the retrieval metric and the validation split.
R_AT_5_METRIC = "r_at_5"
VAL_SPLIT = "VAL"
# A run this many 64-step blocks per chart bin long is binned from step_blocks: a bin then takes
# whole blocks (its edges move by < 64 steps) and reads 1/64 of the rows.
BLOCKS_PER_BIN = 4


def open_readonly(path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection with the views present. A file written by an older lvmd lacks
    them: it is migrated once through a writer connection (adds views only), then reopened."""
    conn = connect(path, readonly=True)
    if conn.execute("PRAGMA user_version").fetchone()[0] < len(MIGRATIONS):
        conn.close()
        try:
            connect(path).close()
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{path}: needs a schema upgrade (views) but cannot be written ({exc})") from None
        conn = connect(path, readonly=True)
    return conn


def run_table(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM v_run_summary ORDER BY run_id")]


def run_summary(conn: sqlite3.Connection, run_id: int) -> dict:
    return dict(conn.execute("SELECT * FROM v_run_summary WHERE run_id = ?", (run_id,)).fetchone())


def guardrail_stats(conn: sqlite3.Connection, run_id: int) -> dict:
    return dict(conn.execute("SELECT * FROM v_guardrail_checks WHERE run_id = ?", (run_id,)).fetchone())


def epoch_rows(conn: sqlite3.Connection, run_id: int) -> list[dict]:
    """The epochs rows joined with that epoch's step aggregates (ratio, pos, neg, skips)."""
    rows = conn.execute(
        "SELECT e.*, s.steps, s.skips, s.attenuations, s.ratio_mean, s.pos_mean, s.neg_mean"
        " FROM epochs e LEFT JOIN (SELECT * FROM v_epoch_steps WHERE run_id = ?) s ON s.epoch = e.epoch"
        " WHERE e.run_id = ? ORDER BY e.epoch", (run_id, run_id))
    return [dict(r) for r in rows]


def step_series(conn: sqlite3.Connection, run_id: int, columns: tuple[str, ...], bins: int = 60
                ) -> dict[str, list[float]]:
    """Per-bin means of step metrics over the whole run (at most `bins` points), for charts."""
    unknown = [c for c in columns if c not in STEP_METRICS]
    if unknown:
        raise ValueError(f"steps has no metric {unknown[0]!r}")
    if bins <= 0:
        return {c: [] for c in columns}
    # two subqueries: each is one index probe, MIN and MAX in one SELECT would read every row
    lo, hi = conn.execute("SELECT (SELECT MIN(step) FROM steps WHERE run_id = ?),"
                          " (SELECT MAX(step) FROM steps WHERE run_id = ?)", (run_id, run_id)).fetchone()
    if lo is None:
        return {c: [] for c in columns}
    if hi - lo + 1 >= bins * BLOCK_STEPS * BLOCKS_PER_BIN:  # a long run: from its 64-step sums
        rows = block_series(conn, run_id, columns, lo, hi, bins)
        return {c: [r[i + 1] for r in rows] for i, c in enumerate(columns)}
    means = ", ".join(f"AVG({c})" for c in columns)
    rows = conn.execute(
        f"SELECT CAST((step - ?) * ? / (? - ? + 1) AS INTEGER) AS bin, {means}"
        " FROM steps WHERE run_id = ? GROUP BY bin ORDER BY bin", (lo, bins, hi, lo, run_id)).fetchall()
    return {c: [r[i + 1] for r in rows] for i, c in enumerate(columns)}


def latest_eval(conn: sqlite3.Connection, run_id: int) -> dict | None:
    """The newest finished 5CAT of a run: its evals row, per-gate results and VAL R@5."""
    row = conn.execute("SELECT * FROM evals WHERE run_id = ? AND gates_passed IS NOT NULL"
                       " ORDER BY id DESC LIMIT 1", (run_id,)).fetchone()
    if row is None:
        return None
    gates = [dict(r) for r in conn.execute(
        "SELECT split, gate, checks, checks_passed, passed, failed_metrics FROM v_gates"
        " WHERE eval_id = ? ORDER BY gate, split", (row["id"],))]
    r5 = conn.execute("SELECT value FROM eval_metrics WHERE eval_id = ? AND split = ? AND name = ?",
                      (row["id"], VAL_SPLIT, R_AT_5_METRIC)).fetchone()
    return {**dict(row), "gates": gates, "val_r_at_5": None if r5 is None else r5[0]}


def throughput(conn: sqlite3.Connection, run: dict) -> dict:
    """World size and speed over the newest steps: steps/s and samples/s per rank (the
    configured batch_size is the global batch, split over world_size processes)."""
    from store.runs import step_rate

    world = run.get("world_size") or 1
    rate = step_rate(conn, run["id"])
    try:
        batch = json.loads(run["config_json"] or "{}").get("train", {}).get("batch_size")
    except ValueError:
        batch = None
    per_rank = rate * batch / world if rate and batch else None
    return {"world_size": world, "steps_per_s": rate, "samples_per_s_per_rank": per_rank}


def report_data(conn: sqlite3.Connection, run_id: int, *, bins: int = 60) -> dict:
    """Everything `lvmd report` shows for one run."""
    run = dict(conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
    return {
        "throughput": throughput(conn, run),
        "run": run,
        "summary": run_summary(conn, run_id),
        "guardrails": guardrail_stats(conn, run_id),
        "epochs": epoch_rows(conn, run_id),
        "series": step_series(conn, run_id, ("rho", "rho_pre", "pos", "neg", "ratio", "skip"), bins),
        "eval": latest_eval(conn, run_id),
    }


def export_rows(conn: sqlite3.Connection, run_id: int, table: str) -> tuple[list[str], Iterator[tuple]]:
    """Column names and a streaming row iterator of one table's rows of one run."""
    if table not in EXPORT_QUERIES:
        raise ValueError(f"cannot export {table!r}; choose one of {', '.join(EXPORT_QUERIES)}")
    cur = conn.execute(EXPORT_QUERIES[table], (run_id,))
    columns = [d[0] for d in cur.description]
    return columns, (tuple(_finite(v) for v in row) for row in cur)


def _finite(value):
    # NaN cannot round-trip through CSV/JSON consistently; SQLite itself stores it as NULL
    return None if isinstance(value, float) and not math.isfinite(value) else value
