"""The Textual app under App.run_test() over a database written through store's writer."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from store.commands import ack, pending
from store.db import connect
from store.runs import create_run
from store.schema import STEP_METRICS
from store.writer import SqliteSink
from tui.app import LvmdTui
from tui.dialogs import ConfirmScreen, HelpScreen
from tui.run_screen import RunScreen
from tui.runs_screen import RunsScreen
from tui.widgets.canvas import draw, marker_columns
from tui.widgets.chart import Chart
from tui.widgets.events import EventLog
from tui.widgets.gates import FAIL_STYLE, PASS_STYLE, GateTable
from tui.widgets.runs import RunList
from tui.widgets.status import StatusBar

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.anyio  # async tests run on asyncio (anyio's pytest plugin)
CONFIG = {"loss": {"rho_cap": 0.25, "ramp": [{"until": 10**9, "m_gap": 0.02, "frac": 0.1, "rho_cap": 0.0}]}}
STEPS_PER_EPOCH = 100
T0 = time.time() - 3600.0  # step s was taken at T0 + s/2: two steps a second


def step_rows(steps, skip_steps=(), **metrics):
    base = {m: 0.0 for m in STEP_METRICS} | {"rho": 0.2, "pos": 0.3, "neg": 0.25, "ratio": 0.09, "lam": 0.004,
                                             "mse": 0.002, "l_dir": 0.1, "total": 0.0024} | metrics
    return [(s, s // STEPS_PER_EPOCH, T0 + 0.5 * s, 5e-4, *(float(s in skip_steps) if m == "skip" else base[m]
                                                          for m in STEP_METRICS)) for s in steps]


def gates(passed_m0: bool) -> list[dict]:
    return [
        {"split": "VAL", "gate": "A", "metric": "m_0", "value": 0.52 if passed_m0 else 0.41, "threshold": 0.5,
         "op": ">=", "passed": int(passed_m0)},
        {"split": "OOD", "gate": "A", "metric": "m_0", "value": 0.44, "threshold": 0.48, "op": ">=", "passed": 0},
        {"split": "VAL", "gate": "D", "metric": "rollout", "value": 0.47, "threshold": 0.45, "op": ">=", "passed": 1},
        {"split": "VAL-OOD", "gate": "E", "metric": "normal_delta", "value": 0.02, "threshold": 0.05, "op": "<=",
         "passed": 1},
    ]


def make_run(path: Path, *, name="run", steps=200, state="running", skips=(), events=(), epochs=2,
             heartbeat_age=-120.0, total_steps=400, skip_steps=(), **metrics) -> int:
    """A run as the daemon writes it: steps, skip events, epoch rows, one 5CAT eval per epoch.
    The heartbeat defaults to two minutes ahead, so the run stays fresh (not silent: no speed,
    no ETA) however slowly a loaded machine runs the test."""
    conn = connect(path)
    run_id = create_run(conn, name=name, preset="v2.1", compat="none", config=CONFIG, data={},
                        total_epochs=4, total_steps=total_steps, state=state)
    conn.close()
    sink = SqliteSink(path, run_id, flush_seconds=0.0)
    sink.log_steps(step_rows(range(steps), skip_steps, **metrics))
    for s in skips:
        sink.event("skip", step=s, epoch=s // STEPS_PER_EPOCH, detail={"pos": -0.01, "neg": -0.07})
    for kind, s in events:
        sink.event(kind, step=s, epoch=s // STEPS_PER_EPOCH)
    for e in range(epochs):
        end = (e + 1) * STEPS_PER_EPOCH - 1
        sink.epoch({"epoch": e, "step": end, "t": time.time(), "val_cos": 0.45 + 0.01 * e,
                    "val_prev_cos": 0.47, "val_margin": -0.035 + 0.01 * e})
        sink.write_eval({"epoch": e, "step": end, "trigger": "epoch", "gates_passed": 2 + e, "gates_total": 5,
                         "verdict_3of5": int(2 + e >= 3), "verdict_all5": 0}, gates(passed_m0=e == 1), [])
    sink.update_run(step=steps - 1, epoch=(steps - 1) // STEPS_PER_EPOCH, heartbeat_at=time.time() - heartbeat_age)
    sink.close()
    return run_id


@pytest.fixture()
def db(tmp_path) -> Path:
    return tmp_path / "lvmd.db"


@pytest.fixture()
def conn(db):
    """The CLI's side of the database: where the tests read the commands the TUI sends."""
    c = connect(db)
    yield c
    c.close()


async def wait_for(pilot, predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def run_screen(app, pilot) -> RunScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.snapshot is not None, "the run")
    await pilot.pause()
    return app.screen


def plain(widget) -> str:
    return widget.render().plain


def chart_lines(chart: Chart) -> list[str]:
    return [line.plain for line in draw(chart.plot, chart.size.width, chart.size.height)]


async def test_run_screen_shows_the_numbers(db):
    run_id = make_run(db, steps=200)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        status = plain(screen.query_one(StatusBar))
        assert f"run {run_id} run · v2.1 · running · e2/4 · 199/400 · 2.0 st/s · ETA 1m40s · ♥" in status
        legend = chart_lines(screen.query_one("#chart-rho", Chart))[0]
        assert legend.startswith("ρ  .200  ") and ".250 cap" in legend  # the value first, three digits
        assert ".300 pos" in chart_lines(screen.query_one("#chart-cos", Chart))[0]
        await pilot.press("2")
        await pilot.pause()
        margin = chart_lines(screen.query_one("#chart-margin", Chart))[0]
        assert "-.0250 margin" in margin  # the last epoch's val_margin
        header = plain(screen.query_one("#eval-header"))
        assert "e2" in header and "3/5 gates" in header and "[2/2]" in header


async def test_a_run_on_several_ranks_says_how_many(db, conn):
    run_id = make_run(db, steps=200)
    conn.execute("UPDATE runs SET world_size = 2 WHERE id = ?", (run_id,))
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        assert "199/400 · 2 ranks" in plain(screen.query_one(StatusBar))  # at 80 columns the word `steps` gives way


async def test_the_status_line_shows_the_resolved_precision_and_threads(db, conn):
    run_id = make_run(db, steps=200)
    conn.execute("UPDATE runs SET device = 'cpu', precision = 'bf16', threads = 2 WHERE id = ?", (run_id,))
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(120, 24)) as pilot:
        screen = await run_screen(app, pilot)
        assert " · bf16×2 · " in plain(screen.query_one(StatusBar))


async def test_a_committed_row_appears_without_a_key_press(db):
    run_id = make_run(db, steps=200)
    app = LvmdTui(db, run_id=run_id, fallback_s=60.0)  # only the -wal watcher can bring it
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        sink = SqliteSink(db, run_id, flush_seconds=0.0)
        sink.log_steps(step_rows([200], rho=0.21))
        sink.flush()
        sink.close()
        await wait_for(pilot, lambda: "200/400" in plain(screen.query_one(StatusBar)), "step 200", timeout=15.0)
        # the charts follow within a second (a live run's charts redraw at most once a second)
        await wait_for(pilot, lambda: "ρ  .210" in chart_lines(screen.query_one("#chart-rho", Chart))[0], "the chart",
                       timeout=15.0)


async def test_skip_events_are_logged_and_marked_on_the_charts(db):
    run_id = make_run(db, steps=200, skips=(50, 150), events=(("attenuate", 100), ("checkpoint", 99)))
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        chart = screen.query_one("#chart-rho", Chart)
        marks = marker_columns(chart.plot, chart.size.width)
        skips = sorted(col for col, glyph in marks.items() if glyph == "▲")
        plot_cols = chart.size.width - 7
        assert len(skips) == 2 and abs(skips[0] - plot_cols / 4) <= 1 and abs(skips[1] - 3 * plot_cols / 4) <= 1
        assert list(marks.values()).count("•") == 1  # the attenuate; checkpoints are no marker
        await pilot.press("3")
        await pilot.pause()
        log = screen.query_one(EventLog)
        rows = [log.line_text(i).plain.split() for i in range(len(log.rows))]
        assert [(r[0], r[2]) for r in rows] == [("50", "skip"), ("150", "skip"), ("100", "attenuate"), ("99", "checkpoint")]
        assert "skip" in log.render_line(0).text and "red" in str(log.line_text(0).spans[0].style)


async def test_gate_cells_are_green_when_passed_and_red_when_not(db):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        await pilot.press("2")
        await pilot.pause()
        table = screen.query_one(GateTable).query_one("DataTable")

        def value_style(row: str, column: str) -> str:
            cell = table.get_cell(row, column)
            return str(cell.spans[0].style)

        assert value_style("A:m_0", "VAL") == PASS_STYLE and table.get_cell("A:m_0", "VAL").plain == "✓ 0.520 ≥0.5"
        assert value_style("A:m_0", "OOD") == FAIL_STYLE
        assert value_style("E:normal_delta", "VAL-OOD") == PASS_STYLE
        await pilot.press("comma")  # the previous eval: m_0 failed on VAL there
        await pilot.pause()
        assert value_style("A:m_0", "VAL") == FAIL_STYLE and "[1/2]" in plain(screen.query_one("#eval-header"))


async def test_pause_key_sends_a_pause_and_shows_the_ack(db, conn):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        await pilot.press("p")
        await wait_for(pilot, lambda: pending(conn, run_id), "the pause command")
        [cmd] = pending(conn, run_id)
        assert (cmd["verb"], cmd["issued_by"]) == ("pause", "tui")
        await wait_for(pilot, lambda: "pause: sent" in plain(screen.query_one(StatusBar)), "pending shown")
        ack(conn, cmd["id"], 1234)  # what the daemon does at its next step boundary
        await wait_for(pilot, lambda: "paused at step 1234" in plain(screen.query_one(StatusBar)), "the ack")


async def test_readonly_refuses_commands(db, conn):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id, readonly=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await run_screen(app, pilot)
        await pilot.press("p", "e", "s")
        await pilot.pause(0.3)
        assert pending(conn, run_id) == [] and not isinstance(app.screen, ConfirmScreen)
        assert any("read-only" in n.message for n in app._notifications)


async def test_stop_asks_first(db, conn):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        await run_screen(app, pilot)
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause(0.3)
        assert isinstance(app.screen, RunScreen) and pending(conn, run_id) == []
        await pilot.press("s")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: pending(conn, run_id), "the stop command")
        assert [c["verb"] for c in pending(conn, run_id)] == ["stop"]


async def test_alerts_for_cap_negative_pos_skips_and_collapse(db):
    run_id = make_run(db, steps=200, rho=0.3, pos=-0.02, skips=(10, 20, 30),
                      events=(("collapse_warning", 120),))
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        screen = await run_screen(app, pilot)
        text = plain(screen.query_one(StatusBar))
        assert "ρ .300 > cap 0.25" in text and "pos̄ < 0" in text and "collapse warning at step 120" in text
        assert {n.message for n in app._notifications} >= {"ρ .300 > cap 0.25", "collapse warning at step 120"}


async def test_skip_rate_alert_counts_the_steps(db):
    run_id = make_run(db, steps=200, skip_steps=(0, 1, 2))  # 3 of 200 = 1.5 %
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        assert "skips 1.5% > 1%" in plain(screen.query_one(StatusBar))


async def test_replay_steps_through_epochs(db):
    run_id = make_run(db, steps=200, state="finished")
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        await pilot.press("left_square_bracket", "left_square_bracket")  # live -> e2 -> e1
        await wait_for(pilot, lambda: screen.snapshot.step_limit == 99, "epoch 1")
        assert screen.snapshot.series.last_step == 99 and len(screen.snapshot.epochs) == 1
        assert "REPLAY e1/2" in plain(screen.query_one(StatusBar))
        assert "99/400" in plain(screen.query_one(StatusBar))
        await pilot.press("right_square_bracket")
        await wait_for(pilot, lambda: screen.snapshot.step_limit == 199, "epoch 2")
        await pilot.press("l")
        await wait_for(pilot, lambda: screen.snapshot.step_limit is None, "live")
        assert "REPLAY" not in plain(screen.query_one(StatusBar))


async def test_zoom_shows_the_newest_steps_of_run_and_baseline_then_all(db):
    base = make_run(db, name="base", steps=3000, state="finished", epochs=0, rho=0.1)
    run_id = make_run(db, name="new", steps=2000, skips=(100, 1900), epochs=0)
    app = LvmdTui(db, run_id=run_id, baseline_id=base)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        await wait_for(pilot, lambda: screen.baseline is not None, "the baseline")
        chart = screen.query_one("#chart-rho", Chart)
        assert chart.plot.x_range == (0.0, 2999.0) and chart.plot.x_label == "step 2999"
        await pilot.press("z")                                   # the newest quarter of the run's 2,000 steps
        await wait_for(pilot, lambda: screen.snapshot.series.step_from > 0, "the zoomed series")
        run, baseline = screen.snapshot.series, screen.baseline.series
        assert 1500 - run.width < run.step_from <= 1500 and run.bins[0].index * run.width == run.step_from
        assert baseline.step_from == run.step_from               # cut to the run's steps: one x axis
        x0, x1 = chart.plot.x_range
        assert (x0, x1) == (run.step_from, 2999.0) and chart.plot.x_label == f"steps {x0:.0f}–2999"
        assert [m[0] for m in chart.plot.markers] == [1900 // run.width * run.width]  # step 100 is out of view
        assert "ZOOM newest 1/4" in plain(screen.query_one(StatusBar))
        await pilot.press("z", "z")                              # 1/16, 1/64 = 31 steps: widened to target_bins steps
        bins = app.tail.view.target_bins
        await wait_for(pilot, lambda: screen.snapshot.series.step_from >= 2000 - bins - 2, "1/64")
        assert screen.zoom == 3 and screen.snapshot.series.width <= 2
        await pilot.press("z")                                   # and back to the whole run
        await wait_for(pilot, lambda: screen.snapshot.series.step_from == 0, "the whole run")
        assert "ZOOM" not in plain(screen.query_one(StatusBar))


async def test_baseline_overlay_and_toggle(db):
    base = make_run(db, name="base", steps=300, state="finished", rho=0.1)
    run_id = make_run(db, name="new", steps=200)
    app = LvmdTui(db, run_id=run_id, baseline_id=base)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        await wait_for(pilot, lambda: screen.baseline is not None, "the baseline")
        traces = screen.query_one("#chart-rho", Chart).plot.traces
        assert [t.label for t in traces] == [f"run {base}", "ρ"] and traces[0].points[0][4] == pytest.approx(0.1)
        assert screen.query_one("#chart-rho", Chart).plot.x_range == (0.0, 299.0)
        await pilot.press("b")
        await wait_for(pilot, lambda: screen.baseline is None, "overlay off")
        assert [t.label for t in screen.query_one("#chart-rho", Chart).plot.traces] == ["ρ"]


async def test_runs_screen_flags_silent_and_crashed_runs_and_opens_one(db):
    silent = make_run(db, name="silent", heartbeat_age=60.0)
    crashed = make_run(db, name="crashed", state="crashed", heartbeat_age=600.0)
    fresh = make_run(db, name="fresh")
    app = LvmdTui(db)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.query_one(RunList).row_count == 3,
                       "the runs")
        table = app.screen.query_one(RunList)
        state = {rid: table.get_cell(str(rid), "state") for rid in (silent, crashed, fresh)}
        assert "silent 1m00s" in state[silent].plain and "red" in str(state[silent].style)
        assert state[crashed].plain == "crashed" and "red" in str(state[crashed].style)
        assert state[fresh].plain == "running"
        assert table.get_cell(str(fresh), "gates").plain == "3/5"
        assert "1 silent" in plain(app.screen.query_one("#runs-header"))
        await pilot.press("down", "enter")  # newest first: fresh, then crashed
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), "the run screen")
        assert app.screen.run_id == crashed
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)


async def test_fits_80x24_in_16_colours_and_help_lists_the_keys(db):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    app.theme = "ansi-dark"  # what `lvmd tui` picks on a 16-colour terminal
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        charts = [c for c in screen.query(Chart) if c.display and c.region.width]
        assert len(charts) == 6 and all(c.region.height >= 5 and c.region.width >= 38 for c in charts)
        assert all(c.region.bottom <= 23 for c in charts)  # above the footer
        assert screen.query_one(StatusBar).region.height == 2
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        keys = dict(app.screen.rows)
        assert keys["p"] == "pause the run at the next step boundary" and "ctrl+p" in keys and "[" in keys
        await pilot.press("escape")
        await pilot.pause()
        titles = {c.title for c in app.get_system_commands(screen)}
        assert {"Pause the run at the next step boundary", "Stop the run"} <= titles


@pytest.mark.parametrize("doc", ["README.md", "lvmd/docs/tui.md"])
def test_docs_list_every_key(doc):
    text = (ROOT / doc).read_text()
    app = LvmdTui("unused.db")
    for screen in (RunScreen, RunsScreen, LvmdTui):
        for binding in screen.BINDINGS:
            key = binding.key_display or app.get_key_display(binding)
            assert f"`{key}`" in text, f"{doc} does not mention {key}"


def test_cli_parses_and_rejects_a_missing_database(tmp_path):
    import argparse

    from store.db import StoreError
    from lvmd.cli import tui as cli_tui

    parser = argparse.ArgumentParser()
    cli_tui.register(parser.add_subparsers())
    args = parser.parse_args(["tui", str(tmp_path / "none.db"), "--run", "3", "--readonly"])
    assert (args.run, args.readonly, args.func) == ("3", True, cli_tui.cmd_tui)
    with pytest.raises(StoreError, match="no such database"):
        args.func(args)


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"
