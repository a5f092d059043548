"""DbTail: follows the database on ONE long-lived read connection and posts snapshots.

Wake-ups come from watchfiles seeing the `-wal` file change (a WAL commit touches only that
file, never the .db) or from a slow fallback timer; `PRAGMA data_version` then decides whether
anything was committed, and store.reader's rowid cursors read only the new rows. Each wake
reads inside one short transaction. The UI never touches this connection: it describes what it
wants to see in a TailView and receives immutable TailUpdate messages.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import watchfiles
from textual.message import Message

from store import reader, series as step_series
from store.db import StoreError, connect
from store.runs import active_rate
from store.schema import MIGRATIONS
from store.sweeps import baseline_config, epoch_band, sweep_progress
from store.system import KEEP_SAMPLES_S, samples_after
from tui.metrics import DEFAULT_SPECS, step_columns

log = logging.getLogger(__name__)

FALLBACK_S = 1.5      # poll this often even if the file watcher never fires (NFS, inotify limits)
RATE_WINDOW = 64      # newest step rows used for steps/s


@dataclass(frozen=True)
class TailView:
    """What the UI wants followed. Changing it wakes the tail at once."""
    run_id: int | None = None
    baseline_id: int | None = None
    overlay_ids: tuple[int, ...] = ()  # more runs drawn over the run's charts (marked on the runs screen)
    replay_epoch: int | None = None  # show the run as it was at the end of this epoch
    target_bins: int = 128           # series bins: about the chart's width in braille dots
    zoom: int = 0                    # step charts show the newest 4^-zoom of the run's steps
    # the `steps` columns the series sums per bin: what the charts draw (tui.metrics.step_columns)
    step_columns: tuple[str, ...] = step_columns(DEFAULT_SPECS.values())


@dataclass(frozen=True)
class SeedBand:
    """The open run's sweep configuration over its seeds, per epoch (store.sweeps.epoch_band rows:
    epoch, mean, lo, hi, n): what its epoch charts draw as a mean line over a min–max band."""
    sweep_id: int
    config: str
    val_margin: tuple[Mapping, ...]
    val_cos: tuple[Mapping, ...]

    @property
    def seeds(self) -> int:
        """How many seeds the band holds (those that finished an epoch)."""
        return max((b["n"] for b in (*self.val_margin, *self.val_cos)), default=0)


@dataclass(frozen=True)
class RunSnapshot:
    """Everything the run screen draws, as committed at one instant (and cut at the replay epoch)."""
    run: dict
    series: step_series.SeriesSnapshot
    latest: dict | None              # newest step row in view
    steps_per_s: float | None
    events: tuple[dict, ...]
    epochs: tuple[dict, ...]
    evals: tuple[dict, ...]
    gates: Mapping[int, tuple[dict, ...]]  # eval id -> its gate rows
    commands: tuple[dict, ...]       # newest first
    step_limit: int | None           # replay bound (None: live)
    last_epoch: int | None           # newest finished epoch, whatever the replay bound
    system: tuple[dict, ...] = ()    # the daemon's newest machine sample, a row per device
    system_history: tuple[dict, ...] = ()  # every sample kept (store.system: the last hour), oldest first
    eval_metrics: Mapping[int, Mapping[tuple[str, str], float]] = field(default_factory=dict)  # eval id -> 5CAT numbers
    t0: float | None = None          # when the run took its first step: the wall-time axis starts there
    band: SeedBand | None = None     # a sweep member's configuration over its seeds (None: not in a sweep)
    baseline_band: SeedBand | None = None  # the same for the configuration `lvmd compare` holds it against

    @property
    def run_id(self) -> int:
        return self.run["id"]


class TailUpdate(Message):
    """A fresh picture of the database, for `view`."""

    def __init__(self, view: TailView, runs: tuple[reader.RunSummary, ...],
                 run: RunSnapshot | None, baseline: RunSnapshot | None,
                 overlays: tuple[RunSnapshot, ...] = (), sweeps: tuple[Mapping, ...] = ()) -> None:
        super().__init__()
        self.view, self.runs, self.run, self.baseline = view, runs, run, baseline
        self.overlays = overlays
        self.sweeps = sweeps  # store.sweeps.sweep_progress, a read-only mapping per sweep (none: ())


class TailFailed(Message):
    """A read failed (said once per distinct error); `fatal`: the tail stopped reading for good
    (the file is not one this lvmd may read, such as a newer lvmd's schema)."""

    def __init__(self, error: str, *, fatal: bool = False) -> None:
        super().__init__()
        self.error = error
        self.fatal = fatal


@dataclass
class _RunTracker:
    """Tail-thread state for one run: cursors and what they have accumulated."""
    run_id: int
    series: step_series.StepSeries
    events: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    gates: dict[int, tuple[dict, ...]] = field(default_factory=dict)
    eval_metrics: dict[int, MappingProxyType] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    history: tuple[dict, ...] = ()   # the samples as last handed over: the same object while none arrive
    t0: float | None = None
    last_series: step_series.SeriesSnapshot | None = None
    series_shape: tuple = ()

    def read(self, conn: sqlite3.Connection, replay_epoch: int | None, *, preview: bool = False) -> RunSnapshot | None:
        """The run as committed now; with preview=True, only if a sampled series is worth
        posting first (a long run read for the first time), else None."""
        run = reader.run_row(conn, self.run_id)
        if run is None:
            return None
        if preview:
            series = self.series.preview(conn)
            if series is None:
                return None
        else:
            # the same snapshot object while nothing changed: the screen skips redrawing its charts
            changed = self.series.refresh(conn)
            shape = (self.series.width, self.series.step_from, self.series.last_step)
            if changed or self.last_series is None or shape != self.series_shape:
                self.last_series, self.series_shape = self.series.snapshot(), shape
            series = self.last_series
        # a resume deletes what was written after its checkpoint: then read these again
        if self.events and reader.events_count(conn, self.run_id, self.events[-1]["id"]) != len(self.events):
            self.events = []
        if self.evals and reader.evals_count(conn, self.run_id, self.evals[-1]["id"]) != len(self.evals):
            self.evals, self.gates, self.eval_metrics = [], {}, {}
        self.events += reader.events_after(conn, self.run_id, self.events[-1]["id"] if self.events else 0)
        new_evals = reader.evals_after(conn, self.run_id, self.evals[-1]["id"] if self.evals else 0)
        self.evals += new_evals
        new_ids = [e["id"] for e in new_evals]
        self.gates.update({k: tuple(v) for k, v in reader.gates_of(conn, new_ids).items()})
        self.eval_metrics.update({k: MappingProxyType(v) for k, v in reader.eval_metrics_of(conn, new_ids).items()})
        self._read_samples(conn)
        if self.t0 is None:
            self.t0 = reader.first_step_time(conn, self.run_id)
        limit = None if replay_epoch is None else self.series.step_limit
        recent = reader.latest_steps(conn, self.run_id, RATE_WINDOW, self.series.step_limit)
        all_epochs = reader.epochs_of(conn, self.run_id)
        events, evals, epochs = self.events, self.evals, all_epochs
        if replay_epoch is not None:
            events = [e for e in events if e["step"] is None or e["step"] <= limit]
            epochs = [e for e in epochs if e["epoch"] <= replay_epoch]
            evals = [e for e in evals if e["epoch"] is None or e["epoch"] <= replay_epoch]
        return RunSnapshot(
            run=run, series=series, latest=recent[0] if recent else None,
            steps_per_s=_rate(recent), events=tuple(events), epochs=tuple(epochs), evals=tuple(evals),
            gates=MappingProxyType(dict(self.gates)), commands=tuple(reader.recent_commands(conn, self.run_id)),
            step_limit=limit, last_epoch=all_epochs[-1]["epoch"] if all_epochs else None,
            system=self._latest_sample(), system_history=self.history,
            eval_metrics=MappingProxyType(dict(self.eval_metrics)), t0=self.t0)

    def _read_samples(self, conn: sqlite3.Connection) -> None:
        """New system samples by rowid; those the daemon has trimmed (older than an hour) go too."""
        new = samples_after(conn, self.run_id, self.samples[-1]["rowid"] if self.samples else 0)
        if not new:
            return
        self.samples += new
        if self.samples[0]["t"] < self.samples[-1]["t"] - KEEP_SAMPLES_S:
            self.samples = [r for r in self.samples if r["t"] >= self.samples[-1]["t"] - KEEP_SAMPLES_S]
        self.history = tuple(self.samples)

    def _latest_sample(self) -> tuple[dict, ...]:
        """The newest sample, a row per device."""
        if not self.samples:
            return ()
        t = self.samples[-1]["t"]
        return tuple(sorted((r for r in self.samples[-16:] if r["t"] == t), key=lambda r: r["device"]))


def _rate(rows_newest_first: list[dict]) -> float | None:
    """Training steps/s: the same rule as `lvmd status` (paused, stopped and eval time left out)."""
    return active_rate([(r["step"], r["t"]) for r in rows_newest_first])


class DbTail:
    """Run `run()` on a worker thread; `post` receives TailUpdate / TailFailed (thread-safe)."""

    def __init__(self, path: str | Path, post: Callable[[Message], object], *,
                 view: TailView = TailView(), fallback_s: float = FALLBACK_S):
        self.path = Path(path).resolve()
        self._post = post
        self._view = view
        self._fallback_s = fallback_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._trackers: dict[tuple, _RunTracker] = {}  # (run, replay limit, zoom, columns)
        self._last: tuple[int, TailView] | None = None  # data_version and view last posted
        self._last_error: str | None = None
        self.polls = 0       # wake-ups that found a commit and read the database
        self.wal_events = 0  # times the file watcher saw the -wal file change

    # -- called from the UI thread ------------------------------------------------------------
    @property
    def view(self) -> TailView:
        return self._view

    def set_view(self, view: TailView) -> None:
        self._view = view
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- the worker thread --------------------------------------------------------------------
    def run(self) -> None:
        try:
            conn = connect(self.path, readonly=True)
        except StoreError as exc:  # gone, foreign or a newer lvmd's since launch checked it
            self._post(TailFailed(str(exc), fatal=True))
            return
        watcher = threading.Thread(target=self._watch_wal, name="lvmd-tui-watch", daemon=True)
        watcher.start()
        try:
            while not self._stop.is_set():
                if not self._poll(conn):
                    return
                self._wake.wait(self._fallback_s)
                self._wake.clear()
        finally:
            conn.close()

    def _watch_wal(self) -> None:
        wal_name = self.path.name + "-wal"
        try:
            for _ in watchfiles.watch(self.path.parent, watch_filter=lambda _c, p: Path(p).name == wal_name,
                                      stop_event=self._stop, debounce=200, step=20, recursive=False,
                                      ignore_permission_denied=True):
                self.wal_events += 1
                self._wake.set()
        except Exception as exc:  # the fallback timer keeps the TUI live, only slower
            log.warning("file watcher stopped (%s); polling every %.1f s", exc, self._fallback_s)

    def _poll(self, conn: sqlite3.Connection) -> bool:
        """Read and post what changed; False once the file is one this lvmd must not read."""
        view = self._view
        try:
            version = reader.data_version(conn)
            if self._last == (version, view):
                return True
            schema = reader.schema_version(conn)
            if schema > len(MIGRATIONS):  # the same refusal as store.db.connect's, for a file upgraded since
                self._post(TailFailed(f"{self.path}: schema version {schema} is newer than this lvmd "
                                      f"({len(MIGRATIONS)}); upgrade lvmd", fatal=True))
                return False
            self.polls += 1
            if self._last is None or self._last[1] != view:  # a new view may mean a long first read
                with reader.read_snapshot(conn):
                    preview = self._read(conn, view, preview=True)
                if preview is not None:
                    self._post(preview)
            with reader.read_snapshot(conn):
                update = self._read(conn, view)
            self._last = (version, view)
            self._last_error = None
        except sqlite3.Error as exc:
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                self._post(TailFailed(f"{self.path.name}: {exc}"))
            return True
        self._post(update)
        return True

    def _read(self, conn: sqlite3.Connection, view: TailView, *, preview: bool = False) -> TailUpdate | None:
        """What the view shows; with preview=True, None unless the run needs a sampled first picture."""
        runs = tuple(reader.run_summaries(conn))
        sweeps = tuple(MappingProxyType(p) for p in sweep_progress(conn))  # two tiny reads when there are none
        run = baseline = None
        overlays: tuple[RunSnapshot, ...] = ()
        if view.run_id is not None:
            limit = None if view.replay_epoch is None else reader.epoch_end_step(conn, view.run_id, view.replay_epoch)
            wanted = {view.run_id, view.baseline_id, *view.overlay_ids} - {None}
            # keep the live, unzoomed trackers while replaying or zoomed: going back is then incremental
            self._trackers = {k: t for k, t in self._trackers.items()
                              if k[0] in wanted and k[1] in (None, limit) and k[2] in (0, view.zoom)
                              and k[3] == view.step_columns}
            window = zoom_window(conn, view, limit)
            run = self._tracker(view.run_id, limit, view, window).read(conn, view.replay_epoch, preview=preview)
            if run is not None and run.run.get("sweep_id") is not None:
                sweep_id, config = run.run["sweep_id"], run.run["sweep_config"]
                base = baseline_config(conn, sweep_id, config)
                run = replace(run, band=seed_band(conn, sweep_id, config),
                              baseline_band=None if base is None else seed_band(conn, sweep_id, base))
            if view.baseline_id is not None and view.baseline_id != view.run_id and run is not None:
                # the baseline is cut to the run's window, so the two share the x axis
                baseline = self._tracker(view.baseline_id, limit, view, window).read(
                    conn, view.replay_epoch, preview=preview)
            if run is not None:  # cut to the run's window too
                overlays = tuple(o for o in (self._tracker(i, limit, view, window).read(conn, view.replay_epoch,
                                                                                        preview=preview)
                                             for i in view.overlay_ids if i not in (view.run_id, view.baseline_id))
                                 if o is not None)
        if preview and run is None:
            return None
        return TailUpdate(view, runs, run, baseline, overlays, sweeps)

    def _tracker(self, run_id: int, limit: int | None, view: TailView, window: tuple[int, int | None]) -> _RunTracker:
        key = (run_id, limit, view.zoom, view.step_columns)
        if key not in self._trackers:
            self._trackers[key] = _RunTracker(run_id, step_series.StepSeries(run_id, target_bins=view.target_bins,
                                                                        step_limit=limit, columns=view.step_columns))
        tracker = self._trackers[key]
        tracker.series.retarget(view.target_bins)
        tracker.series.set_window(*window)
        return tracker


def seed_band(conn: sqlite3.Connection, sweep_id: int, config: str) -> SeedBand:
    """Not cut at a replay epoch: the other seeds are a reference, like the expected band."""
    return SeedBand(sweep_id, config, *(tuple(MappingProxyType(b) for b in epoch_band(conn, sweep_id, config, column))
                                        for column in ("val_margin", "val_cos")))


def zoom_window(conn: sqlite3.Connection, view: TailView, limit: int | None) -> tuple[int, int | None]:
    """(first step, span) of the step charts: the newest 4^-zoom of the run's steps (at or
    below the replay limit), never fewer than one step per bin; (0, None) is the whole run."""
    if not view.zoom:
        return 0, None
    last_step = reader.last_step(conn, view.run_id, reader.NO_LIMIT if limit is None else limit)
    if not last_step:
        return 0, None
    span = max(view.target_bins, -(-(last_step + 1) // 4 ** view.zoom))
    return max(0, last_step + 1 - span), span

