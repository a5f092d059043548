"""The charts' step series: a min/max/sum-per-bin summary of a run's `steps`, refreshed
incrementally on the caller's read connection (store.reader's rules). Bin edges never move while
rows arrive: bins are [k·w, (k+1)·w) for a power-of-two width w that only doubles.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from typing import Sequence

from store.reader import NO_LIMIT, last_step

# The step metrics the TUI charts (a subset of schema.STEP_METRICS).
SERIES_COLUMNS: tuple[str, ...] = (
    "rho", "ratio", "neg_cos_rate", "pos", "neg", "lam", "mse", "l_dir", "l_floor", "l_norm", "total",
)
# A first read of a run longer than PREVIEW_MIN_STEPS is preceded by a preview: the same bins over
# PREVIEW_SAMPLES evenly spaced steps, found by index seeks (~0.05 s where reading all of a
# 1M-step run takes ~1 s), so the charts appear at once and fill in their true min/max after.
PREVIEW_MIN_STEPS = 50_000
PREVIEW_SAMPLES = 8192


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
