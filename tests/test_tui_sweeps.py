"""Sweeps in the TUI: a sweep as a group on the runs screen (progress, best so far), `g` marking a
configuration's seeds, and a member's epoch charts overlaid with its configuration's band over
seeds. The database is a real `lvmd sweep` on the fixture (2 configurations × 2 seeds × 2 epochs,
tiny model); the app is the real one under run_test(), reading it read-only through its tail."""
from __future__ import annotations

import queue
import sqlite3
import statistics
import threading
import time

import pytest
import sqlite_utils
from textual.widgets import Input

from conftest import ROOT, TINY_MODEL, data_overrides, lvmd, rows
from store.db import connect
from store.runs import create_run
from store.schema import MIGRATIONS
from store.sweeps import add_config, baseline_config, create_sweep, epoch_band, sweep_progress, tag_run
from tui.app import LvmdTui
from tui.run_screen import RunScreen
from tui.runs_screen import RunsScreen
from tui.sweeps import SweepGroups, band_lines, progress_text, short_config
from tui.tail import DbTail, TailUpdate, TailView
from tui.widgets.canvas import Plot, Trace, draw
from tui.widgets.chart import Chart
from tui.widgets.runs import RunList

pytestmark = pytest.mark.anyio
GRID = ["--grid", "loss.preset=mse,v2.1"]
FAST = [*TINY_MODEL, "train.epochs=2", "eval.max_samples=200", "eval.check_samples=100"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- a sweep written through store's functions (no training) ----------------------------------------
@pytest.fixture
def conn(tmp_path):
    conn = connect(tmp_path / "t.db")
    sweep = create_sweep(conn, name="demo", search="grid", config_path="", spec={"seeds": [0, 1]}, parallel=2)
    add_config(conn, sweep, "loss.preset=mse", ["loss.preset=mse"])
    add_config(conn, sweep, "loss.preset=v2.1", ["loss.preset=v2.1"])
    last = {("loss.preset=mse", 0): -0.20, ("loss.preset=mse", 1): -0.10, ("loss.preset=v2.1", 0): -0.05}
    for (label, seed), margin in last.items():
        run = create_run(conn, name=f"{label}/{seed}", preset="x", compat="none", config={}, data={}, state="finished")
        tag_run(conn, run, sweep, label, seed)
        for epoch, value in enumerate((margin - 0.01, margin)):
            conn.execute("INSERT INTO epochs (run_id, epoch, val_margin) VALUES (?, ?, ?)", (run, epoch, value))
    run = create_run(conn, name="v2.1/1", preset="x", compat="none", config={}, data={}, state="running")
    tag_run(conn, run, sweep, "loss.preset=v2.1", 1)
    yield conn
    conn.close()


def test_progress_counts_runs_and_names_the_best_configuration_so_far(conn):
    (p,) = sweep_progress(conn)
    assert (p["planned"], p["finished"], p["training"], p["pruned"]) == (4, 3, 1, 0)
    assert (p["best"], p["best_n"]) == ("loss.preset=v2.1", 1) and p["best_margin"] == pytest.approx(-0.05)
    assert progress_text(p).plain == ("sweep 1 demo ████████████···· 3/4 done · 1 training · "
                                      "best v2.1 -0.0500 (n=1) · running")


def test_progress_agrees_with_v_sweep_summary_and_leaves_out_pruned_configurations(conn):
    """sweep_progress reads runs and epochs directly (cheap on every commit); it must rank as the view does."""
    conn.execute("UPDATE runs SET state = 'finished' WHERE name = 'v2.1/1'")
    conn.execute("INSERT INTO epochs (run_id, epoch, val_margin) VALUES (4, 0, -0.02)")
    view = {r["config"]: r for r in conn.execute("SELECT * FROM v_sweep_summary")}
    (p,) = sweep_progress(conn)
    assert (p["best"], p["best_n"]) == ("loss.preset=v2.1", view["loss.preset=v2.1"]["finished"])
    assert p["best_margin"] == pytest.approx(view["loss.preset=v2.1"]["margin_mean"])  # (-0.05 - 0.02) / 2
    conn.execute("UPDATE sweep_configs SET state = 'pruned' WHERE label = 'loss.preset=v2.1'")
    (p,) = sweep_progress(conn)
    assert (p["best"], p["pruned"]) == ("loss.preset=mse", 1) and p["best_margin"] == pytest.approx(-0.15)


def test_the_tail_posts_the_sweeps_progress_read_only_and_follows_a_finishing_run(conn, tmp_path):
    got: queue.Queue = queue.Queue()
    tail = DbTail(tmp_path / "t.db", got.put, view=TailView(run_id=4), fallback_s=0.2)
    thread = threading.Thread(target=tail.run, daemon=True)
    thread.start()
    try:
        first = got.get(timeout=20)
        assert isinstance(first, TailUpdate) and [p["finished"] for p in first.sweeps] == [3]
        with pytest.raises(TypeError):
            first.sweeps[0]["finished"] = 0                              # a snapshot, never the UI's to change
        assert (first.run.band.config, first.run.band.seeds) == ("loss.preset=v2.1", 1)
        assert first.run.baseline_band.config == "loss.preset=mse"
        conn.execute("UPDATE runs SET state = 'finished' WHERE id = 4")
        conn.execute("INSERT INTO epochs (run_id, epoch, val_margin) VALUES (4, 0, -0.02)")
        deadline = time.monotonic() + 20
        while True:
            update = got.get(timeout=20)
            if [p["finished"] for p in update.sweeps] == [4] or time.monotonic() > deadline:
                break
        assert [p["finished"] for p in update.sweeps] == [4] and update.run.band.seeds == 2
        assert [b["n"] for b in update.run.band.val_margin] == [2, 1]   # the new seed has finished epoch 0 only
    finally:
        tail.stop()
        thread.join(5)


def test_band_is_the_mean_and_range_over_seeds_per_epoch(conn):
    band = epoch_band(conn, 1, "loss.preset=mse")
    assert [(b["epoch"], b["n"]) for b in band] == [(0, 2), (1, 2)]
    assert band[1]["mean"] == pytest.approx(-0.15) and (band[1]["lo"], band[1]["hi"]) == (-0.20, -0.10)
    assert band_lines(band)[1] == "e2   -0.1500 [-0.2000, -0.1000] n=2"
    with pytest.raises(ValueError):
        epoch_band(conn, 1, "loss.preset=mse", "val_margin; DROP TABLE runs")


def test_the_baseline_configuration_is_mse_with_the_same_other_overrides(tmp_path):
    conn = connect(tmp_path / "b.db")
    sweep = create_sweep(conn, name="b", search="grid", config_path="", spec={"seeds": [0]}, parallel=1)
    for label in ("loss.preset=mse loss.prev=true", "loss.preset=v2.1 loss.prev=true", "loss.preset=v2.1 loss.prev=ctx-2"):
        add_config(conn, sweep, label, label.split())
    assert baseline_config(conn, sweep, "loss.preset=v2.1 loss.prev=true") == "loss.preset=mse loss.prev=true"
    assert baseline_config(conn, sweep, "loss.preset=v2.1 loss.prev=ctx-2") is None      # no mse with ctx-2
    assert baseline_config(conn, sweep, "loss.preset=mse loss.prev=true") is None        # itself
    assert baseline_config(conn, sweep, "loss.preset=v2.1 loss.prev=ctx-2", "loss.preset=v2.1 loss.prev=true") == \
        "loss.preset=v2.1 loss.prev=true"                                                 # a label as such
    conn.close()


def test_short_config_names_a_preset_by_its_value_and_other_keys_by_their_last_part():
    assert short_config("loss.preset=v2.1 loss.prev=true") == "v2.1·prev=true"
    assert short_config("#3 loss.lam=0.1") == "#3·lam=0.1" and short_config("base") == "base"


def test_a_filled_trace_shades_its_band_between_points_and_an_under_line_stays_beneath():
    band = Trace("band", [(1, 1, 0.0, 1.0, 0.5), (3, 3, 0.0, 1.0, 0.5)], "yellow", fill=True, under=True)
    line = Trace("run", [(1, 1, 0.5, 0.5, 0.5), (3, 3, 0.5, 0.5, 0.5)], "green")
    for traces in ([band, line], [line, band]):          # the legend order does not change what is on top
        lines = draw(Plot("x", traces, (1, 3), show_markers=False), 7 + 10, 7)  # 5 plot rows, the x ticks
        middle = lines[1 + 2]                                # the row of 0.5: the run's line
        assert {str(s.style) for s in middle.spans} == {"dim", "green"}
        assert all(dotted(ln) == list(range(10)) for ln in (lines[1], lines[5]))   # min..max shaded all along
        assert {str(s.style) for s in lines[1].spans} == {"dim", "dim yellow"}
    unfilled = draw(Plot("x", [Trace("b", band.points, "yellow")], (1, 3), show_markers=False), 7 + 10, 7)
    assert dotted(unfilled[1]) == [0, 9]                     # without fill: only at the two points


def dotted(line) -> list[int]:
    return [i for i, ch in enumerate(line.plain[7:]) if "\u2801" <= ch <= "\u28ff"]


# -- the real thing: `lvmd sweep`, then the app ------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory, tiny_data) -> str:
    db = str(tmp_path_factory.mktemp("tui_sweep") / "sweep.db")
    proc = lvmd("sweep", *data_overrides(tiny_data, articles=True), *FAST, *GRID, "--seeds", "2", "--parallel", "2",
                "--db", db, timeout=600, check=True)
    assert proc.stdout.splitlines()[-1] == "sweep 1 finished: 2 configurations (2 complete), 4 runs"
    return db


async def wait_for(pilot, predicate, what: str, timeout: float = 30.0) -> None:
    """conftest's wait_for, awaiting the app between looks."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def test_the_runs_screen_shows_the_sweep_with_its_best_configuration_and_g_marks_its_seeds(sweep_db):
    last = rows(sweep_db, "SELECT r.id, r.sweep_config, r.sweep_seed, e.val_margin FROM runs r JOIN epochs e"
                          " ON e.run_id = r.id AND e.epoch = 1 ORDER BY r.id")
    means = {c: statistics.fmean(r["val_margin"] for r in last if r["sweep_config"] == c)
             for c in ("loss.preset=mse", "loss.preset=v2.1")}
    best = max(means, key=means.get)
    app = LvmdTui(sweep_db, readonly=True)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.query_one(RunList).row_count == 4,
                       "the runs")
        groups = app.screen.query_one(SweepGroups)
        await wait_for(pilot, lambda: groups.display and groups.render().plain, "the sweep line")
        assert groups.render().plain == (f"sweep 1 run {'█' * 16} 4/4 done · best {short_config(best)}"
                                         f" {means[best]:+.4f} (n=2) · finished")
        table = app.screen.query_one(RunList)
        assert {r["id"]: table.get_cell(str(r["id"]), "sweep").plain for r in last} == {
            r["id"]: f"1 {short_config(r['sweep_config'])} s{r['sweep_seed']}" for r in last}
        # newest first: the cursor is on run 4, the second seed of the second configuration
        config = {r["id"]: r["sweep_config"] for r in last}
        seeds = {i for i, c in config.items() if c == config[table.selected_run_id]}
        await pilot.press("g")
        await pilot.pause()
        assert app.marked_ids == seeds and len(seeds) == 2
        assert "2 marked" in app.screen.query_one("#runs-header").render().plain
        await pilot.press("g")                                     # again: unmarked
        await pilot.pause()
        assert app.marked_ids == set()
        app.screen.query_one("#runs-filter", Input).value = "preset=mse"   # only a configuration label says so
        await wait_for(pilot, lambda: table.row_count == 2, "the filter")
        assert {r.sweep_config for r in table.runs} == {"loss.preset=mse"}


async def test_a_members_epoch_charts_overlay_its_configurations_band_and_its_baselines(sweep_db):
    """A v2.1 member: its own configuration's seeds in yellow, mse's (what `lvmd compare` holds it
    against) in grey, each the mean and min..max per epoch of the epochs table by hand."""
    epochs = rows(sweep_db, "SELECT r.sweep_config, e.* FROM epochs e JOIN runs r ON r.id = e.run_id")
    assert len(epochs) == 8                                        # 2 configurations × 2 seeds × 2 epochs

    def by_hand(config: str, column: str) -> list[tuple]:
        out = []
        for epoch in (0, 1):
            values = [e[column] for e in epochs if e["epoch"] == epoch and e["sweep_config"] == config]
            out.append((epoch + 1, epoch + 1, min(values), max(values), statistics.fmean(values)))
        return out

    def check(trace: Trace, want: list[tuple]) -> None:
        assert [p[:2] for p in trace.points] == [p[:2] for p in want]
        for got, expected in zip(trace.points, want):
            assert got[2:] == pytest.approx(expected[2:], abs=1e-12)
        assert trace.fill and trace.under and trace.value == pytest.approx(want[1][4], abs=1e-12)

    member = rows(sweep_db, "SELECT id FROM runs WHERE sweep_config = 'loss.preset=v2.1' ORDER BY id")[0]["id"]
    app = LvmdTui(sweep_db, run_id=member, readonly=True)
    async with app.run_test(size=(200, 30)) as pilot:          # wide: every legend entry fits
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.snapshot is not None, "the run")
        screen = app.screen
        await pilot.press("2")
        await pilot.pause()
        for chart_id, column in (("#chart-margin", "val_margin"), ("#chart-valcos", "val_cos")):
            traces = {t.label: t for t in screen.query_one(chart_id, Chart).plot.traces}
            own, base = traces["v2.1 2-seed mean"], traces["mse 2-seed mean"]  # the legend adds their ┈
            check(own, by_hand("loss.preset=v2.1", column))
            check(base, by_hand("loss.preset=mse", column))
            assert (own.style, base.style) == ("yellow", "bright_black")
        legend = chart_lines(screen.query_one("#chart-margin", Chart))[0]
        # the run's own number first, then its configuration's seeds, the baseline's, the original's expected band
        assert legend.index("margin ") < legend.index("┈v2.1 2-seed") < legend.index("┈mse 2-seed") < legend.index("▒ expected")

    mse = rows(sweep_db, "SELECT id FROM runs WHERE sweep_config = 'loss.preset=mse' ORDER BY id")[0]["id"]
    app = LvmdTui(sweep_db, run_id=mse, readonly=True)
    async with app.run_test(size=(160, 30)) as pilot:           # the baseline itself: its own band only
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.snapshot is not None, "the run")
        assert app.screen.snapshot.baseline_band is None
        labels = [t.label for t in app.screen.query_one("#chart-margin", Chart).plot.traces]
        assert labels == ["margin", "mse 2-seed mean"]


def chart_lines(chart: Chart) -> list[str]:
    return [line.plain for line in draw(chart.plot, chart.size.width, chart.size.height)]


# -- databases without sweeps -----------------------------------------------------------------------
def plain_run(path) -> int:
    conn = connect(path)
    run_id = create_run(conn, name="solo", preset="v2.1", compat="none", config={}, data={}, state="finished")
    conn.execute("INSERT INTO epochs (run_id, epoch, val_margin, val_cos) VALUES (?, 0, -0.03, 0.45)", (run_id,))
    conn.close()
    return run_id


def old_db(path) -> int:
    """A file written by an lvmd from before sweeps (migration 7), which a read-only TUI never migrates."""
    raw = sqlite3.connect(path)
    for migration in MIGRATIONS[:6]:
        migration(sqlite_utils.Database(raw))
    raw.execute("PRAGMA user_version=6")
    raw.execute("INSERT INTO runs (id, name, state, config_json, created_at) VALUES (1, 'old', 'finished', '{}', 0)")
    raw.execute("INSERT INTO epochs (run_id, epoch, val_margin, val_cos) VALUES (1, 0, -0.03, 0.45)")
    raw.commit()
    raw.close()
    return 1


@pytest.mark.parametrize("make", [plain_run, old_db], ids=["no-sweeps", "before-migration-7"])
async def test_a_database_without_sweeps_shows_no_sweep_block_and_no_band(tmp_path, make):
    db = tmp_path / "t.db"
    run_id = make(db)
    failures = []

    class Watched(LvmdTui):
        CSS_PATH = ROOT / "tui" / "lvmd.tcss"  # relative paths resolve beside the subclass's module

        def on_tail_failed(self, failure) -> None:
            failures.append(failure.error)

    app = Watched(db, readonly=True)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.query_one(RunList).row_count == 1,
                       "the run")
        assert app.last_update.sweeps == () and not app.screen.query_one(SweepGroups).display
        assert app.screen.query_one(RunList).get_cell(str(run_id), "sweep") == ""
        await pilot.press("g")                                    # not a member: says so, marks nothing
        await pilot.pause()
        assert app.marked_ids == set()
        await pilot.press("enter", "2")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.snapshot is not None, "the run")
        await pilot.pause()
        assert app.screen.snapshot.band is None
        traces = app.screen.query_one("#chart-margin", Chart).plot.traces
        assert [t.label for t in traces] == ["margin"] and traces[0].points[0][4] == pytest.approx(-0.03)
    assert failures == []
    if make is old_db:   # read-only: the file is still from before migration 7
        assert rows(str(db), "PRAGMA user_version")[0]["user_version"] == 6
