"""Issue 15, the TUI as people use it: a gate table the eye reads like the code, an honest
speed, the right words after stop and resume, 80×24, and no redraw while nothing changes."""
from __future__ import annotations

import time

import pytest

from store.commands import ack, complete, enqueue
from store.db import connect
from store.runs import update_run
from store.schema import STEP_METRICS
from store.writer import SqliteSink
from tui.app import LvmdTui
from tui.dialogs import ConfirmScreen
from tui.widgets.chart import Chart
from tui.widgets.gates import GateTable
from tui.widgets.runs import RunList
from tui.widgets.status import StatusBar

from test_tui import db, make_run, plain, run_screen, step_rows, wait_for  # noqa: F401  (db: fixture)

pytestmark = pytest.mark.anyio


def fivecat_gates() -> list[dict]:
    """The 13 checks a real 5CAT writes for VAL and OOD (lvmd/eval/fivecat/results.py), with
    values that sit close to their thresholds."""
    rows = []
    spec = [("A", "m_0", 0.5259, 0.526, ">="), ("A", "margin", 0.13, 0.12, ">="), ("B", "r_at_1", 0.61, 0.6, ">="),
            ("B", "r_at_5", 0.96, 0.95, ">="), ("B", "mrr", 0.81, 0.8, ">="),
            ("C", "delta_shuffled", -0.2, -0.15, "<="), ("C", "delta_reversed", -0.2, -0.1, "<="),
            ("C", "delta_leave_one_out", -0.1, -0.08, "<="), ("C", "delta_repeat_pad", 0.02, 0.05, "<="),
            ("C", "delta_cross_article", 0.01, 0.05, "<="), ("D", "rollout", 0.5, 0.45, ">=")]
    for split in ("VAL", "OOD"):
        for gate, metric, value, thr, op in spec:
            ok = value >= thr if op == ">=" else value <= thr
            rows.append({"split": split, "gate": gate, "metric": metric, "value": value, "threshold": thr, "op": op,
                         "passed": int(ok)})
        rows.append({"split": split, "gate": "E", "metric": "bin_normal_n", "value": 400.0, "threshold": 1,
                     "op": ">=", "passed": 1})
    rows.append({"split": "VAL-OOD", "gate": "E", "metric": "normal_delta", "value": 0.044, "threshold": 0.045,
                 "op": "<=", "passed": 1})
    return rows


def add_eval(path, run_id: int, gates: list[dict]) -> None:
    sink = SqliteSink(path, run_id, flush_seconds=0.0)
    sink.write_eval({"epoch": 1, "step": 199, "trigger": "command", "gates_passed": 4, "gates_total": 5,
                     "verdict_3of5": 1, "verdict_all5": 0}, gates, [])
    sink.close()


def cell_styles(table, row_key: str, column: str, y: int) -> dict[str, str]:
    """Text -> colour of the painted segments of one table line (what the terminal gets)."""
    strip = table.render_line(y)
    return {seg.text.strip(): str(seg.style.color.name if seg.style and seg.style.color else "")
            for seg in strip if seg.text.strip()}


async def test_gate_table_thresholds_are_exact_glyphs_say_pass_fail_and_the_cursor_keeps_colour(db):
    run_id = make_run(db, epochs=0)
    add_eval(db, run_id, fivecat_gates())
    app = LvmdTui(db, run_id=run_id)
    app.theme = "ansi-dark"  # --ansi
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await run_screen(app, pilot)
        await pilot.press("2")
        await pilot.pause()
        table = screen.query_one(GateTable).query_one("DataTable")
        await wait_for(pilot, lambda: table.row_count == 13, "the gate rows")
        # 0.044 ≤ 0.045 passed: the threshold is not rounded to 0.04 (which would read as a fail)
        assert table.get_cell("E:normal_delta", "VAL-OOD").plain == "✓ 0.044 ≤0.045"
        # 0.5259 < 0.526 failed: not rounded up to 0.526 (a pass to the eye), nor the threshold to 0.53
        assert table.get_cell("A:m_0", "VAL").plain == "✗ 0.5259 ≥0.526"
        assert table.get_cell("B:r_at_5", "OOD").plain == "✓ 0.960 ≥0.95"
        # the cursor sits on the first row (A m_0): its cells keep red, its glyph says ✗ without colour
        assert table.cursor_row == 0
        painted = cell_styles(table, "A:m_0", "VAL", 1)
        assert any("✗" in text and "red" in colour for text, colour in painted.items()), painted


async def test_stop_dialog_names_the_real_resume_command(db):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        await run_screen(app, pilot)
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert f"`lvmd resume {run_id}`" in app.screen.question and "--resume" not in app.screen.question


async def test_resume_of_a_run_that_was_not_paused_says_so(db, conn):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_screen(app, pilot)
        command = enqueue(conn, run_id, "resume")
        ack(conn, command, 401)
        complete(conn, command, result={"step": 401, "was_paused": False})  # what the daemon answers
        status = screen.query_one(StatusBar)
        await wait_for(pilot, lambda: "401" in plain(status), "the answer")
        assert "resume: run was not paused (step 401)" in plain(status) and "resumed at" not in plain(status)


async def test_speed_and_eta_leave_out_a_pause(db):
    """200 steps at 2 steps/s, an hour paused, 20 more steps at 2 steps/s: 2.0 st/s, not 0.1."""
    run_id = make_run(db, steps=200)
    sink = SqliteSink(db, run_id, flush_seconds=0.0)
    sink.log_steps([(s, e, t + 3600.0, *rest) for s, e, t, *rest in step_rows(range(200, 220))])
    sink.update_run(step=219, heartbeat_at=time.time())
    sink.close()
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_screen(app, pilot)
        await wait_for(pilot, lambda: "219/400" in plain(screen.query_one(StatusBar)), "step 219")
        text = plain(screen.query_one(StatusBar))
        assert "2.0 st/s" in text and "ETA 1m30s" in text  # 181 steps at 2/s


async def test_80x24_shows_eta_heartbeat_keys_and_the_whole_gate_table(db):
    run_id = make_run(db, name="demo-wiki-v2.1-20261129-123456", epochs=0)
    add_eval(db, run_id, fivecat_gates())
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        status = screen.query_one(StatusBar)
        where = plain(status).splitlines()[0]
        assert "ETA 1m40s" in where and "♥" in where and "running" in where
        assert len(where) <= status.content_region.width
        keys = {k.key: k.region for k in screen.query("FooterKey")}
        for key in ("p", "s", "z", "escape", "question_mark", "q"):
            assert key in keys and keys[key].right <= 80, (key, keys.get(key))
        await pilot.press("2")
        await pilot.pause()
        table = screen.query_one(GateTable).query_one("DataTable")
        await wait_for(pilot, lambda: table.row_count == 13, "the gate rows")
        await pilot.pause()
        assert table.max_scroll_y == 0 and table.region.bottom <= 23  # every check on screen, above the footer
        assert all(c.region.height >= 4 for c in screen.query("#epoch-charts > Chart").results(Chart))


async def test_a_heartbeat_repaints_no_chart(db, conn):
    """A paused run commits only heartbeats: the tail posts them, the charts stay as drawn."""
    run_id = make_run(db, state="paused")
    renders = []
    original = Chart.render

    def counting(self):
        renders.append(self.id)
        return original(self)

    Chart.render = counting
    try:
        app = LvmdTui(db, run_id=run_id)
        async with app.run_test(size=(80, 24)) as pilot:
            await run_screen(app, pilot)
            settled = -1
            for _ in range(20):  # the first pictures (preview, re-binned to the laid-out width) are drawn
                if len(renders) == settled:
                    break
                settled = len(renders)
                await pilot.pause(1.5)
            polls, before = app.tail.polls, len(renders)
            for _ in range(3):
                update_run(conn, run_id, heartbeat_at=time.time())
                conn.commit()
                await wait_for(pilot, lambda: app.tail.polls > polls, "the heartbeat read")
                polls = app.tail.polls
                await pilot.pause(0.2)
            assert len(renders) == before, f"{len(renders) - before} chart repaints for 3 heartbeats"
    finally:
        Chart.render = original


@pytest.fixture()
def conn(db):
    c = connect(db)
    yield c
    c.close()


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


async def test_status_shows_5cat_progress_while_the_run_evaluates(db):
    run_id = make_run(db, state="evaluating")
    sink = SqliteSink(db, run_id, flush_seconds=0.0)
    sink.event("eval_progress", step=199, epoch=1, detail={"done": 7, "total": 12, "stage": "OOD A offsets",
                                                         "trigger": "epoch"})
    sink.close()
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        assert "5CAT 7/12 OOD A offsets" in plain(screen.query_one(StatusBar)).splitlines()[1]
        conn = connect(db)
        update_run(conn, run_id, state="running")
        conn.commit()
        conn.close()
        await wait_for(pilot, lambda: "5CAT" not in plain(screen.query_one(StatusBar)), "the eval's end")


async def test_runs_screen_sorts_filters_and_marks_three_runs_to_overlay(db):
    """Mark three runs, open a fourth: each marked run is drawn over every chart in its own colour
    and line style, named in the legend."""
    a = make_run(db, name="alpha-v21", steps=300, state="finished", rho=0.10)
    b = make_run(db, name="beta-mse", steps=250, state="finished", rho=0.12)
    c = make_run(db, name="gamma-v21", steps=200, state="stopped", rho=0.14)
    main = make_run(db, name="delta-v21", steps=100, rho=0.2, epochs=1)
    app = LvmdTui(db)
    app.theme = "ansi-dark"
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: app.screen.query_one(RunList).row_count == 4, "the runs")
        table = app.screen.query_one(RunList)
        assert [r.id for r in table.runs] == [main, c, b, a]          # newest first
        assert table.get_cell(str(a), "trend").plain == "▁█"          # margins -.035, -.025 over two epochs
        await pilot.press("o", "o")                                    # by state, then by name
        await pilot.pause()
        assert table.sort_key == "name" and [r.name for r in table.runs][0] == "gamma-v21"  # descending
        await pilot.press("O")
        await pilot.pause()
        assert [r.name for r in table.runs] == ["alpha-v21", "beta-mse", "delta-v21", "gamma-v21"]
        await pilot.press("slash", *"v21")
        await pilot.pause()
        assert [r.name for r in table.runs] == ["alpha-v21", "delta-v21", "gamma-v21"]
        await pilot.press("escape")                                    # clears the filter
        await pilot.pause()
        assert len(table.runs) == 4 and app.screen.query_one("#runs-filter").has_focus
        await pilot.press("escape")                                    # then hands the keys back to the list
        await pilot.pause()
        assert table.has_focus and not app.screen.query_one("#runs-filter").display
        for row in (0, 1, 3):                                          # alpha, beta, gamma
            table.move_cursor(row=row)
            await pilot.press("m")
        await pilot.pause()
        assert app.marked_ids == {a, b, c} and table.get_cell(str(a), "mark").plain == " ●"  # ▶ marks the cursor row
        table.move_cursor(row=2)
        await pilot.press("enter")
        screen = await run_screen(app, pilot)
        await wait_for(pilot, lambda: len(screen.overlays) == 3, "the marked runs")
        await pilot.pause(1.2)
        traces = screen.query_one("#chart-rho", Chart).plot.traces
        overlaid = [t for t in traces if "run " in t.label]
        assert [t.label for t in overlaid] == [f"run {a}", f"run {b}", f"run {c}"]
        # a colour and a line style each; none solid like the open run's own line
        assert len({t.style for t in overlaid}) == 3 and [t.dash for t in overlaid] == ["dash", "dot", "shortdash"]
        assert [t.points[0][4] for t in overlaid] == [pytest.approx(0.10), pytest.approx(0.12), pytest.approx(0.14)]
        assert screen.query_one("#chart-rho", Chart).plot.x_range == (0.0, 299.0)  # the longest run sets the axis
        legend = chart_text(screen.query_one("#chart-rho", Chart)).splitlines()[0]
        assert f".100 ╍run {a}" in legend and ".140 ┄" in legend  # narrow: the last run keeps value and glyph
        margin = screen.query_one("#chart-margin", Chart).plot.traces
        assert sum("run " in t.label for t in margin) == 3
        assert "+3 marked runs" in plain(screen.query_one(StatusBar))


def chart_text(chart: Chart) -> str:
    from tui.widgets.canvas import draw

    return "\n".join(line.plain for line in draw(chart.plot, chart.size.width, chart.size.height))


def varying_run(path, steps: int = 40) -> int:
    """A run whose ρ differs at every step: 0.1 + s/1000."""
    run_id = make_run(path, steps=1, epochs=0)
    sink = SqliteSink(path, run_id, flush_seconds=0.0)
    sink.log_steps([(s, e, t, lr, *vals) for (s, e, t, lr, *vals) in
                    (row[:4] + tuple(0.1 + s / 1000 if m == "rho" else v for m, v in zip(STEP_METRICS, row[4:]))
                     for s, row in ((s, step_rows([s])[0]) for s in range(1, steps)))])
    sink.update_run(step=steps - 1)
    sink.close()
    return run_id


async def test_chart_cursor_reads_the_rows_value_by_keys_and_mouse(db):
    run_id = varying_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_screen(app, pilot)
        chart = screen.query_one("#chart-rho", Chart)
        assert screen.snapshot.series.width == 1  # one step per bin: the readout is the row itself
        await pilot.press("left")                  # the cursor starts on the newest step
        await pilot.pause()
        assert screen.cursor_step == 39 and chart.plot.cursor == 39
        assert chart_text(chart).splitlines()[0].startswith("ρ @39  .139")
        await pilot.press("left", "left", "left")
        await pilot.pause()
        conn = connect(db)
        rho = conn.execute("SELECT rho FROM steps WHERE run_id = ? AND step = 36", (run_id,)).fetchone()[0]
        conn.close()
        assert f"ρ @36  {rho:.3f}".replace("0.", ".") in chart_text(chart).splitlines()[0]
        await pilot.hover(chart, offset=(7, 3))    # the mouse over the first plot column: step 0
        await pilot.pause()
        assert screen.cursor_step == 0 and "ρ @0  .200" in chart_text(chart).splitlines()[0]
        await pilot.press("right")
        await pilot.pause()
        assert screen.cursor_step == 1 and "ρ @1  .101" in chart_text(chart).splitlines()[0]


async def test_smoothing_toggles_an_ema_line_over_the_same_band(db):
    run_id = make_run(db, steps=1, epochs=0)
    sink = SqliteSink(db, run_id, flush_seconds=0.0)  # ρ alternates .1/.3: the EMA line stays near .2
    sink.log_steps([tuple(r[:4]) + tuple((0.1 if s % 2 else 0.3) if m == "rho" else v
                                         for m, v in zip(STEP_METRICS, r[4:]))
                    for s, r in ((s, step_rows([s])[0]) for s in range(1, 400))])
    sink.close()
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_screen(app, pilot)
        chart = screen.query_one("#chart-rho", Chart)
        await pilot.pause(1.5)  # the series re-binned to the laid-out chart width
        raw = chart_text(chart)
        assert not chart.plot.traces[0].smooth and "~" not in raw.splitlines()[0]
        await pilot.press("S")
        await pilot.pause()
        smoothed = chart_text(chart)
        assert chart.plot.traces[0].smooth == 0.6 and "ρ ~0.6" in smoothed.splitlines()[0]
        assert smoothed != raw and chart.plot.traces[0].points == screen.snapshot.series.trace("rho")  # data as is
        # a live row arriving keeps the smoothing and the cursor (a due redraw once reset both)
        await pilot.press("left")
        cursor = screen.cursor_step
        sink = SqliteSink(db, run_id, flush_seconds=0.0)
        sink.log_steps(step_rows([400]))
        sink.close()
        await wait_for(pilot, lambda: screen.snapshot.series.last_step == 400, "step 400")
        await wait_for(pilot, lambda: chart.plot.traces[0].points == screen.snapshot.series.trace("rho"), "the redraw")
        assert screen.smooth and chart.plot.traces[0].smooth > 0 and screen.cursor_step == cursor is not None
        await pilot.press("S", "S", "S")                       # 0.9, 0.99, then raw again
        await pilot.pause()
        assert not chart.plot.traces[0].smooth


async def test_config_tab_lists_the_resolved_config_and_searches_it(db):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await run_screen(app, pilot)
        await pilot.press("4")
        await pilot.pause()
        lines = screen.query_one("#config-lines").render().plain
        assert "loss.rho_cap = 0.25" in lines and "loss.ramp[0].m_gap = 0.02" in lines
        screen.query_one("#config-search").focus()
        await pilot.pause()
        await pilot.press(*"m_gap")
        await pilot.pause()
        await pilot.press("left")
        await pilot.pause()
        await pilot.press("p")  # typed keys are text, not commands (p is pause elsewhere)
        await pilot.pause()
        assert screen.query_one("#config-search").value == "m_gapp"  # ← moved the text cursor
        await pilot.press("backspace")
        await pilot.pause()
        assert screen.query_one("#config-search").value == "m_gap"
        lines = screen.query_one("#config-lines").render().plain
        assert lines.strip() == "loss.ramp[0].m_gap = 0.02"
        assert app.tail.view.run_id == run_id and not [c for c in screen.snapshot.commands]


async def test_system_tab_shows_the_daemons_samples_over_time_and_says_when_there_is_no_gpu(db):
    from lvmd.run.sysmon import SystemSampler

    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await run_screen(app, pilot)
        await pilot.press("5")
        await pilot.pause()
        pane = screen.query_one("#system-pane")
        assert "no system sample yet" in pane.render().plain
        sampler = SystemSampler(db, run_id, every=0.2).start()  # what the daemon runs beside its loop
        try:
            await wait_for(pilot, lambda: len({r["t"] for r in screen.snapshot.system_history}) >= 3,
                           "three samples")
        finally:
            sampler.stop()
        await pilot.pause()
        text = pane.render().plain
        lines = text.splitlines()
        daemon = next(ln for ln in lines if ln.startswith("lvmd daemon"))
        assert "cpu" in daemon and "% of a core" in daemon
        assert any(ln.split()[0] == "rss" and "GiB" in ln for ln in lines)
        host = next(ln for ln in lines if ln.startswith("host"))
        assert "cpu" in host and any("mem" in ln and " / " in ln and "GiB" in ln for ln in lines)
        # a history, not one number: a block per sample, right-aligned while they fit
        assert sum(ch in "▁▂▃▄▅▆▇█" for ch in daemon) >= 3 or sum(ch in "▁▂▃▄▅▆▇█" for ch in host) >= 3
        assert "no GPU on this machine" in text  # this machine has no NVIDIA driver
    conn = connect(db)
    devices = {r[0] for r in conn.execute("SELECT device FROM system_samples WHERE run_id = ?", (run_id,))}
    conn.close()
    assert devices == {"process", "host"}
