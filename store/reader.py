"""The TUI's reads: all of its SQL, shaped for a tailer that must stay cheap on long runs.

Every function takes the caller's connection (the TUI keeps ONE read connection open: opening
connections touches the -wal file the TUI watches). Reads that may grow use a rowid cursor so
only new rows are fetched; lists are fully fetched (fetchall) so no half-read cursor pins an
old snapshot. StepSeries keeps a min/max/sum-per-bin summary of `steps` whose bin edges never
move while rows arrive: bins are [k·w, (k+1)·w) for a power-of-two width w that only doubles.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

from store.sweeps import has_sweeps

# The step metrics the TUI charts (a subset of schema.STEP_METRICS).
SERIES_COLUMNS: tuple[str, ...] = (
    "rho", "ratio", "neg_cos_rate", "pos", "neg", "lam", "mse", "l_dir", "l_floor", "l_norm", "total",
)
# A run in these states is expected to heartbeat; silence longer than STALE_AFTER_S means trouble.
HEARTBEAT_STATES = ("running", "paused", "evaluating")
STALE_AFTER_S = 10.0
NO_LIMIT = 2**62  # "no step limit" as an int, so the same SQL serves live and replay views
# A first read of a run longer than PREVIEW_MIN_STEPS is preceded by a preview: the same bins over
# PREVIEW_SAMPLES evenly spaced steps, found by index seeks (~0.05 s where reading all of a
# 1M-step run takes ~1 s), so the charts appear at once and fill in their true min/max after.
PREVIEW_MIN_STEPS = 50_000
PREVIEW_SAMPLES = 8192


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


# -- the downsampled step series ----------------------------------------------------------------
@dataclass(frozen=True)
class SeriesBin:
    index: int                   # covers steps [index·width, (index+1)·width)
    count: int                   # step rows in the bin
    skips: int                   # of which G5 skipped the directional term
    epoch: int | None            # the highest epoch in the bin
    lo: tuple[float | None, ...]  # per-column minimum, in StepSeries.columns order
    hi: tuple[float | None, ...]  # per-column maximum
    sums: tuple[float, ...]       # per-column sum: means merge exactly when bins do

    def merged(self, other: "SeriesBin", index: int) -> "SeriesBin":
        return SeriesBin(index, self.count + other.count, self.skips + other.skips,
                         _pick(max, self.epoch, other.epoch),
                         tuple(_pick(min, a, b) for a, b in zip(self.lo, other.lo)),
                         tuple(_pick(max, a, b) for a, b in zip(self.hi, other.hi)),
                         tuple(a + b for a, b in zip(self.sums, other.sums)))


def _pick(fn, a, b):
    return b if a is None else a if b is None else fn(a, b)


class StepSeries:
    """min, max and sum per bin of a run's step metrics, refreshed incrementally.

    refresh() reads only rows whose rowid is past the cursor and re-aggregates from the bin of
    the lowest new step, so replaced steps (a resume rewrites the steps after its checkpoint)
    land in the right bins. If the row under the cursor vanished or changed (rows deleted, or
    their rowids reused), the summary is rebuilt from scratch. When the run outgrows
    `target_bins` the width doubles and neighbouring bins merge exactly: no edge ever moves.

    set_window(step_from, span) zooms: only bins from step_from on are kept, and the width is
    the one that fits `span` steps (not the run) in target_bins, so a window sliding with the
    newest step drops bins on the left and never re-reads or changes width.
    """

    # `+run_id` keeps SQLite on the rowid range: the (run_id, step) index would visit every row of the run
    NEW_ROWS_SQL = ("SELECT MIN(CASE WHEN step <= ? THEN step END), MAX(rowid) FROM steps"
                    " WHERE rowid > ? AND +run_id = ?")

    def __init__(self, run_id: int, *, target_bins: int, step_limit: int | None = None,
                 columns: tuple[str, ...] = SERIES_COLUMNS):
        self.run_id = run_id
        self.columns = columns
        self.target_bins = max(2, int(target_bins))
        self.step_limit = NO_LIMIT if step_limit is None else int(step_limit)
        self.step_from = 0                # window start (0 and span None: the whole run)
        self.span: int | None = None      # steps the window is binned for
        self._reread_window = False       # the window grew to the left: read its new bins
        self.width = 1
        self.last_step: int | None = None
        self._bins: dict[int, SeriesBin] = {}
        # rowid, step, t of the newest steps row of ANY run seen: rowids are table-wide
        self._cursor: tuple[int, int, float] | None = None
        self._needs_fit = False
        self._started = False
        aggregates = ", ".join(f"MIN({c}), MAX({c}), TOTAL({c})" for c in columns)
        # one indexed range query per bin: GROUP BY step/w would sort every row in a temp b-tree
        self._bin_sql = (f"SELECT COUNT(*), TOTAL(skip), MAX(epoch), {aggregates} FROM steps"
                         " WHERE run_id = ? AND step >= ? AND step < ? AND step <= ?")
        self._preview_sql = (
            "WITH RECURSIVE sample(s) AS (SELECT ? UNION ALL SELECT s + ? FROM sample WHERE s + ? <= ?)"
            f" SELECT s / ? AS k, COUNT(*), TOTAL(skip), MAX(epoch), {aggregates}"
            " FROM sample JOIN steps ON steps.run_id = ? AND steps.step = sample.s GROUP BY k ORDER BY k")

    def snapshot(self) -> "SeriesSnapshot":
        """An immutable copy to hand to another thread."""
        return SeriesSnapshot(self.columns, self.width, self.last_step,
                              tuple(self._bins[k] for k in sorted(self._bins)),
                              step_from=self.step_from // self.width * self.width)

    def set_window(self, step_from: int = 0, span: int | None = None) -> None:
        """Keep only steps from step_from on (whole bins: the first one may start a little
        earlier), binned to fit `span` steps in target_bins; (0, None): the whole run."""
        step_from, span = max(0, int(step_from)), (None if not span else max(1, int(span)))
        if (step_from, span) == (self.step_from, self.span):
            return
        self._reread_window = self._reread_window or step_from < self.step_from
        self.step_from, self.span = step_from, span
        self._needs_fit = True

    def refresh(self, conn: sqlite3.Connection) -> bool:
        """Fold in what changed since the last call; True if the summary changed."""
        self._started = True
        if self._cursor is not None and not self._cursor_row_intact(conn):
            self._reset()
        first_new = self._advance_cursor(conn)
        if first_new is None and not self._needs_fit:
            return False
        before = (self.width, self.last_step, len(self._bins))
        starts = [self._fit_width(conn), None if first_new is None else first_new // self.width]
        starts = [k for k in starts if k is not None]
        if starts:
            self._aggregate_from(conn, min(starts))
        return bool(starts) or before != (self.width, self.last_step, len(self._bins))

    @property
    def started(self) -> bool:
        """Has refresh() run at least once?"""
        return self._started

    def preview(self, conn: sqlite3.Connection) -> "SeriesSnapshot | None":
        """Before the first refresh() of a long run: its bins from a sample of steps (marked by
        sample_stride > 1; min/max may miss spikes). None when refresh() alone is quick."""
        if self.started or self.step_from:  # a window is quick to read: it spans few bins of steps
            return None
        # two subqueries, one index probe each (MIN and MAX in one SELECT read every row of the run)
        first, last = conn.execute("SELECT (SELECT MIN(step) FROM steps WHERE run_id = ? AND step <= ?),"
                                   " (SELECT MAX(step) FROM steps WHERE run_id = ? AND step <= ?)",
                                   (self.run_id, self.step_limit) * 2).fetchone()
        if last is None or last - first < PREVIEW_MIN_STEPS:
            return None
        width, stride = self._width_for(last), (last - first) // PREVIEW_SAMPLES
        rows = conn.execute(self._preview_sql, (first, stride, stride, last, width, self.run_id)).fetchall()
        return SeriesSnapshot(self.columns, width, last, tuple(_bin(r[0], r[1:]) for r in rows), sample_stride=stride)

    def retarget(self, target_bins: int) -> None:
        """The chart changed size: the next refresh() re-bins to fit."""
        if max(2, int(target_bins)) != self.target_bins:
            self.target_bins = max(2, int(target_bins))
            self._needs_fit = True

    # -- internals ---------------------------------------------------------------------------
    def _cursor_row_intact(self, conn: sqlite3.Connection) -> bool:
        rowid, step, t = self._cursor
        row = conn.execute("SELECT step, t FROM steps WHERE rowid = ?", (rowid,)).fetchone()
        return row is not None and (row[0], row[1]) == (step, t)

    def _advance_cursor(self, conn: sqlite3.Connection) -> int | None:
        """Move the cursor past the rows committed since; the lowest new step in view, if any."""
        if self._cursor is None:  # first read: both answers come from an index, no scan
            newest_rowid = conn.execute("SELECT MAX(rowid) FROM steps").fetchone()[0]
            first_new = conn.execute("SELECT MIN(step) FROM steps WHERE run_id = ? AND step <= ?",
                                     (self.run_id, self.step_limit)).fetchone()[0]
        else:
            first_new, newest_rowid = conn.execute(
                self.NEW_ROWS_SQL, (self.step_limit, self._cursor[0], self.run_id)).fetchone()
        if newest_rowid is not None:
            step, t = conn.execute("SELECT step, t FROM steps WHERE rowid = ?", (newest_rowid,)).fetchone()
            self._cursor = (newest_rowid, step, t)
        return first_new

    def _reset(self) -> None:
        self._bins.clear()
        self._cursor = None
        self.width = 1
        self.last_step = None

    def _fit_width(self, conn: sqlite3.Connection) -> int | None:
        """Take the smallest power-of-two width that fits the run (or the window) in target_bins.
        Coarser bins are merged from the ones held; finer ones, and bins a window newly covers,
        must be read again: returns the bin to re-read from (0: the window's first), else None."""
        self._needs_fit = False
        self.last_step = last_step(conn, self.run_id, self.step_limit)
        if self.last_step is None:
            self._bins.clear()
            return None
        width = self._width_for(self.last_step)
        reread = None
        if width < self.width:
            self._bins.clear()
            self.width = width
            reread = 0
        while self.width < width:
            merged: dict[int, SeriesBin] = {}
            for k in sorted(self._bins):
                b, half = self._bins[k], k // 2
                merged[half] = merged[half].merged(b, half) if half in merged else replace(b, index=half)
            self._bins = merged
            self.width *= 2
        first = self.step_from // self.width
        for k in [k for k in self._bins if k < first]:  # slid out of the window
            del self._bins[k]
        if self._reread_window:
            self._reread_window = False
            reread = 0
        return reread

    def _width_for(self, last_step: int) -> int:
        """The smallest power of two that fits the run (or the window's span, with a bin to
        spare for where the window starts inside its first bin) in target_bins."""
        width = 1
        if self.span is None:
            while last_step // width + 1 > self.target_bins:
                width *= 2
        else:
            while self.span // width + 2 > self.target_bins:
                width *= 2
        return width

    def _aggregate_from(self, conn: sqlite3.Connection, start_bin: int) -> None:
        """Recompute every bin from start_bin to the end (bins past the last step go away)."""
        for k in [k for k in self._bins if k >= start_bin]:
            del self._bins[k]
        if self.last_step is None:
            return
        for k in range(max(start_bin, self.step_from // self.width), self.last_step // self.width + 1):
            row = conn.execute(self._bin_sql, (self.run_id, k * self.width, (k + 1) * self.width,
                                               self.step_limit)).fetchone()
            if row[0]:
                self._bins[k] = _bin(k, row)


def _bin(index: int, row: Sequence) -> SeriesBin:
    """A SeriesBin from (COUNT, TOTAL(skip), MAX(epoch), then MIN, MAX, TOTAL per column)."""
    values = tuple(row[3:])
    return SeriesBin(index, row[0], int(row[1]), row[2], values[0::3], values[1::3], values[2::3])


@dataclass(frozen=True)
class SeriesSnapshot:
    columns: tuple[str, ...]
    width: int
    last_step: int | None
    bins: tuple[SeriesBin, ...]
    sample_stride: int = 1  # > 1: a preview from every sample_stride-th step, not every row
    step_from: int = 0      # the first step the bins cover (> 0: a zoomed window)

    def span(self, b: SeriesBin) -> tuple[int, int]:
        """First and last step a bin can hold, clipped to the newest step."""
        last = (b.index + 1) * self.width - 1
        return b.index * self.width, last if self.last_step is None else min(last, self.last_step)

    def trace(self, column: str) -> list[tuple[int, int, float, float, float]]:
        """(first step, last step, min, max, mean) per bin that has a value for `column`."""
        i = self.columns.index(column)
        return [(*self.span(b), b.lo[i], b.hi[i], b.sums[i] / b.count) for b in self.bins if b.lo[i] is not None]

    @property
    def count(self) -> int:
        return sum(b.count for b in self.bins)

    @property
    def skips(self) -> int:
        return sum(b.skips for b in self.bins)
