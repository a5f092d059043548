"""The TUI's reads: all of its SQL, shaped for a tailer that must stay cheap on long runs.

Every function takes the caller's connection (the TUI keeps ONE read connection open: opening
connections touches the -wal file the TUI watches). Reads that may grow use a rowid cursor so
only new rows are fetched; lists are fully fetched (fetchall) so no half-read cursor pins an
old snapshot. The charts' downsampled step series is store.series.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from store.sweeps import has_sweeps

# A run in these states is expected to heartbeat; silence longer than STALE_AFTER_S means trouble.
HEARTBEAT_STATES = ("running", "paused", "evaluating")
STALE_AFTER_S = 10.0
NO_LIMIT = 2**62  # "no step limit" as an int, so the same SQL serves live and replay views


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection committed: the cheap "anything new?" check."""
    return conn.execute("PRAGMA data_version").fetchone()[0]


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One short read transaction, so several reads see the same committed state."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


# -- runs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSummary:
    id: int
    name: str
    preset: str | None
    state: str
    epoch: int | None
    step: int | None
    total_epochs: int | None
    total_steps: int | None
    heartbeat_at: float | None
    gates_passed: int | None  # of the latest finished eval
    gates_total: int | None
    # from the epochs table: the newest epoch's validation numbers, and over all epochs
    last_margin: float | None = None
    val_cos: float | None = None
    r_at_5: float | None = None
    skip_rate: float | None = None   # skipped steps / steps (v_run_summary's: the trainer's skip flag)
    rho_max: float | None = None     # highest ρ of any step
    margins: tuple[float, ...] = ()  # val margin per finished epoch (the runs screen's sparkline)
    # a sweep's member (lvmd sweep): its sweep, configuration label and seed; None otherwise
    sweep_id: int | None = None
    sweep_config: str | None = None
    sweep_seed: int | None = None
    # where its daemon runs: a silent run's lock can be probed on this host (tui.liveness)
    host: str | None = None
    out_dir: str | None = None

    def heartbeat_age(self, now: float) -> float | None:
        return None if self.heartbeat_at is None else max(0.0, now - self.heartbeat_at)

    def is_stale(self, now: float) -> bool:
        return is_stale(self.state, self.heartbeat_at, now)


def is_stale(state: str, heartbeat_at: float | None, now: float) -> bool:
    """A run that should be heartbeating but has been silent: its daemon is probably gone."""
    return state in HEARTBEAT_STATES and (heartbeat_at is None or now - heartbeat_at > STALE_AFTER_S)


def run_summaries(conn: sqlite3.Connection) -> list[RunSummary]:
    """Every run, newest first, with its latest finished eval's gate count, its newest epoch's
    numbers, and its skip rate and max ρ over all its steps (as `lvmd runs` counts them)."""
    sweep = "r.sweep_id, r.sweep_config, r.sweep_seed" if has_sweeps(conn) else "NULL, NULL, NULL"
    rows = conn.execute(
        f"SELECT {sweep}, r.host, r.out_dir, r.id, r.name, r.preset, r.state, r.epoch, r.step, r.total_epochs,"
        " r.total_steps, r.heartbeat_at, e.gates_passed, e.gates_total, last.val_margin, last.val_cos, last.r_at_5,"
        f" {_step_totals(conn)}"
        " FROM runs r LEFT JOIN evals e ON e.id ="
        "  (SELECT MAX(id) FROM evals WHERE run_id = r.id AND gates_passed IS NOT NULL)"
        " LEFT JOIN epochs last ON last.run_id = r.id AND last.epoch ="
        "  (SELECT MAX(epoch) FROM epochs WHERE run_id = r.id)"
        " ORDER BY r.id DESC").fetchall()
    margins: dict[int, list[float]] = {}
    for run_id, margin in conn.execute("SELECT run_id, val_margin FROM epochs WHERE val_margin IS NOT NULL"
                                       " ORDER BY run_id, epoch"):
        margins.setdefault(run_id, []).append(margin)
    return [RunSummary(*row[5:], margins=tuple(margins.get(row[5], ())), sweep_id=row[0], sweep_config=row[1],
                       sweep_seed=row[2], host=row[3], out_dir=row[4]) for row in rows]


def _step_totals(conn: sqlite3.Connection) -> str:
    """Skip rate and max ρ per run `r`, as v_run_summary has them: from the 64-step sums where the
    file has them (migration 9; the TUI never migrates an older file), else from the steps."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'step_blocks'").fetchone():
        return ("(SELECT SUM(b.sum_skip) / SUM(b.steps) FROM step_blocks b WHERE b.run_id = r.id),"
                " (SELECT MAX(b.rho_max) FROM step_blocks b WHERE b.run_id = r.id)")
    return "(SELECT AVG(s.skip) FROM steps s WHERE s.run_id = r.id), (SELECT MAX(s.rho) FROM steps s WHERE s.run_id = r.id)"


def run_row(conn: sqlite3.Connection, run_id: int) -> dict | None:
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return None if row is None else dict(row)


# -- rows that only grow: rowid cursors ---------------------------------------------------------
def events_after(conn: sqlite3.Connection, run_id: int, after_id: int) -> list[dict]:
    """Events with id > after_id, oldest first. `+run_id` keeps SQLite on the rowid range
    instead of scanning the run's whole (run_id, kind) index."""
    return [dict(r) for r in conn.execute(
        "SELECT id, step, epoch, t, kind, detail FROM events WHERE id > ? AND +run_id = ? ORDER BY id",
        (after_id, run_id))]


def events_count(conn: sqlite3.Connection, run_id: int, upto_id: int) -> int:
    """How many events of the run have id <= upto_id: fewer than a tailer holds means some were
    deleted (a resume removes the events after its checkpoint), so it must re-read."""
    return conn.execute("SELECT COUNT(*) FROM events WHERE run_id = ? AND id <= ?", (run_id, upto_id)).fetchone()[0]


def evals_count(conn: sqlite3.Connection, run_id: int, upto_id: int) -> int:
    """As events_count, for the finished evals evals_after returns."""
    return conn.execute("SELECT COUNT(*) FROM evals WHERE run_id = ? AND id <= ? AND gates_passed IS NOT NULL",
                        (run_id, upto_id)).fetchone()[0]


def evals_after(conn: sqlite3.Connection, run_id: int, after_id: int) -> list[dict]:
    """Finished evals with id > after_id (an eval is written whole, with its gates)."""
    return [dict(r) for r in conn.execute(
        "SELECT * FROM evals WHERE id > ? AND +run_id = ? AND gates_passed IS NOT NULL ORDER BY id",
        (after_id, run_id))]


def gates_of(conn: sqlite3.Connection, eval_ids: Sequence[int]) -> dict[int, list[dict]]:
    """The gate rows of each eval, in insertion order."""
    found: dict[int, list[dict]] = {i: [] for i in eval_ids}
    if eval_ids:
        marks = ", ".join("?" * len(eval_ids))
        for r in conn.execute(f"SELECT * FROM gates WHERE eval_id IN ({marks}) ORDER BY rowid", tuple(eval_ids)):
            found[r["eval_id"]].append(dict(r))
    return found


def eval_metrics_of(conn: sqlite3.Connection, eval_ids: Sequence[int]) -> dict[int, dict[tuple[str, str], float]]:
    """Every 5CAT number of each eval, by (split, name) (NULL values left out: not finite)."""
    found: dict[int, dict[tuple[str, str], float]] = {i: {} for i in eval_ids}
    if eval_ids:
        marks = ", ".join("?" * len(eval_ids))
        for r in conn.execute(f"SELECT eval_id, split, name, value FROM eval_metrics WHERE eval_id IN ({marks})"
                              " AND value IS NOT NULL", tuple(eval_ids)):
            found[r[0]][(r[1], r[2])] = r[3]
    return found


def first_step_time(conn: sqlite3.Connection, run_id: int) -> float | None:
    """When the run took its first step (one index seek): where its wall-time axis starts."""
    row = conn.execute("SELECT t FROM steps WHERE run_id = ? ORDER BY step LIMIT 1", (run_id,)).fetchone()
    return None if row is None else row[0]


def schema_version(conn: sqlite3.Connection) -> int:
    """PRAGMA user_version: a reader compares it with the migrations it knows (a newer lvmd
    may have changed the file under a long-lived reader)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


# -- small tables read whole --------------------------------------------------------------------
def epochs_of(conn: sqlite3.Connection, run_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))]


def recent_commands(conn: sqlite3.Connection, run_id: int, limit: int = 20) -> list[dict]:
    """Newest first; re-read each time because the daemon updates their state in place."""
    return [dict(r) for r in conn.execute(
        "SELECT * FROM commands WHERE run_id = ? ORDER BY id DESC LIMIT ?", (run_id, limit))]


def latest_steps(conn: sqlite3.Connection, run_id: int, limit: int, step_limit: int = NO_LIMIT) -> list[dict]:
    """The last `limit` step rows at or below step_limit, newest first (for values and rate)."""
    return [dict(r) for r in conn.execute(
        "SELECT * FROM steps WHERE run_id = ? AND step <= ? ORDER BY step DESC LIMIT ?",
        (run_id, step_limit, limit))]


def last_step(conn: sqlite3.Connection, run_id: int, step_limit: int = NO_LIMIT) -> int | None:
    """The run's newest step at or below step_limit (one index lookup)."""
    row = conn.execute("SELECT MAX(step) FROM steps WHERE run_id = ? AND step <= ?", (run_id, step_limit)).fetchone()
    return None if row[0] is None else int(row[0])


def epoch_end_step(conn: sqlite3.Connection, run_id: int, epoch: int) -> int | None:
    """The last step of `epoch`: the epochs row's step, else the steps themselves (a scan)."""
    row = conn.execute("SELECT step FROM epochs WHERE run_id = ? AND epoch = ?", (run_id, epoch)).fetchone()
    if row is not None and row[0] is not None:
        return int(row[0])
    row = conn.execute("SELECT MAX(step) FROM steps WHERE run_id = ? AND epoch <= ?", (run_id, epoch)).fetchone()
    return None if row[0] is None else int(row[0])
