"""Issue 22, charts people can ask things of: any metric in any chart (remembered per database),
log scale per chart, step / wall time / epoch on x, tick labels on both axes, TensorBoard's EMA
weights, legends that put the value first and never cut it, line styles for other runs."""
from __future__ import annotations

import math
import re

import pytest

from store.writer import SqliteSink
from tui.app import LvmdTui
from tui.widgets.canvas import GUTTER, Plot, Trace, draw
from tui.widgets.chart import Chart

from test_tui import STEPS_PER_EPOCH, db, make_run, run_screen, step_rows, wait_for  # noqa: F401  (db: fixture)

pytestmark = pytest.mark.anyio
NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)(e-?\d+|[kMG])?$")


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


def legend(chart: Chart) -> str:
    return draw(chart.plot, chart.size.width, chart.size.height)[0].plain


def lines(chart: Chart) -> list[str]:
    return [ln.plain for ln in draw(chart.plot, chart.size.width, chart.size.height)]


def value(text: str) -> float:
    """A legend number read back (`.00240`, `12.3k`, `2.34e-5`)."""
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}.get(text[-1], 1.0)
    return float(text[:-1] if scale != 1.0 else text) * scale


def graded_run(db) -> int:
    """A run whose grad norm climbs step by step, with 5CAT numbers per eval (VAL r_at_5, n)."""
    from store.db import connect

    run_id = make_run(db, steps=200, epochs=0)
    conn = connect(db)
    conn.execute("UPDATE steps SET grad_norm = 0.5 + step / 1000.0 WHERE run_id = ?", (run_id,))
    conn.close()
    sink = SqliteSink(db, run_id, flush_seconds=0.0)
    for e in range(2):
        end = (e + 1) * STEPS_PER_EPOCH - 1
        sink.epoch({"epoch": e, "step": end, "t": step_rows([end])[0][2], "val_cos": 0.45, "val_margin": 0.01 * e,
                    "r_at_5": 0.6 + 0.1 * e})
        sink.write_eval({"epoch": e, "step": end, "trigger": "epoch", "gates_passed": 3, "gates_total": 5,
                         "verdict_3of5": 1, "verdict_all5": 0}, [],
                        [{"split": "VAL", "name": "r_at_5", "value": 0.7 + 0.05 * e},
                         {"split": "VAL", "name": "n", "value": 665.0}])
    sink.close()
    return run_id


async def test_the_metric_picker_charts_any_metric_and_each_database_remembers_its_charts(db, tmp_path):
    run_id = graded_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await run_screen(app, pilot)
        titles = {c.title for c in app.get_system_commands(screen)}
        assert any(t.startswith("Chart a metric") for t in titles)     # the command palette has it too
        await pilot.press("m")                                         # the focused chart: ρ
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ChoiceScreen", "the picker")
        await pilot.press(*"grad norm", "enter")
        rho = screen.query_one("#chart-rho", Chart)
        assert rho.spec.metrics[0].key == "steps.grad_norm"
        # the tail reads the new column: the legend shows its newest value first
        await wait_for(pilot, lambda: legend(rho).startswith("grad norm  .699"), "grad norm charted")
        assert "grad_norm" in screen.snapshot.series.columns
        await pilot.press("2", "m")                                    # the Epochs tab: a 5CAT metric
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ChoiceScreen", "the picker")
        await pilot.press(*"VAL r_at_5", "enter")
        margin = screen.query_one("#chart-margin", Chart)
        await wait_for(pilot, lambda: margin.spec.metrics[0].key == "eval.VAL.r_at_5", "r_at_5 picked")
        main = margin.plot.traces[-1]
        assert [p[:3] for p in main.points] == [(1.0, 1.0, 0.7), (2.0, 2.0, pytest.approx(0.75))]  # by epoch, from 1
        assert legend(margin).startswith("VAL r_at_5  .750")
        await pilot.press("m", *"VAL n", "enter")                      # a count reads as an integer
        await wait_for(pilot, lambda: legend(margin).startswith("VAL n  665 "), "a count")
    app = LvmdTui(db, run_id=run_id)                                   # this database again: as left
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await run_screen(app, pilot)
        assert screen.query_one("#chart-rho", Chart).spec.metrics[0].key == "steps.grad_norm"
        assert screen.query_one("#chart-margin", Chart).spec.metrics[0].key == "eval.VAL.n"
    other = tmp_path / "other.db"                                      # another database: its own defaults
    other_run = make_run(other)
    app = LvmdTui(other, run_id=other_run)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await run_screen(app, pilot)
        assert screen.query_one("#chart-rho", Chart).spec.metrics[0].key == "steps.rho"


async def test_L_x_and_S_change_scale_axis_and_smoothing(db):
    run_id = make_run(db)                                              # 200 steps, half a second apart
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await run_screen(app, pilot)
        rho, ratio = screen.query_one("#chart-rho", Chart), screen.query_one("#chart-ratio", Chart)
        await pilot.click("#chart-ratio")
        await pilot.press("L")                                         # the focused chart only
        await pilot.pause()
        assert ratio.plot.log_y and not rho.plot.log_y
        await pilot.press("x")                                         # wall time since the first step
        await pilot.pause()
        assert rho.plot.x_kind == "time" and rho.plot.x_range == pytest.approx((0.0, 99.5))
        ticks = lines(rho)[-1].split()
        assert ticks[:2] == ["time", "0s"] and "1m" in ticks and all(re.fullmatch(r"\d+(s|m|m\d\ds)", t) for t in ticks[1:])
        await pilot.press("x")                                         # epochs (100 steps each)
        await pilot.pause()
        assert rho.plot.x_kind == "epoch" and rho.plot.x_range == pytest.approx((0.0, 1.99))
        ticks = lines(rho)[-1].split()
        assert ticks[:2] == ["epoch", "0"] and {"1", "1.0"} & set(ticks) and set(ticks[1:]) <= {"0", ".5", "1", "1.0", "1.5"}
        await pilot.press("x")
        await pilot.pause()
        assert rho.plot.x_kind == "step" and lines(rho)[-1].split()[:2] == ["step", "0"]
        weights = []
        for _ in range(4):
            await pilot.press("S")
            await pilot.pause()
            weights.append((screen.smooth, rho.plot.title))
        assert weights == [(0.6, "ρ ~0.6"), (0.9, "ρ ~0.9"), (0.99, "ρ ~0.99"), (0.0, "ρ")]


def test_the_ema_is_tensorboards_debiased_moving_average():
    from tui.widgets.canvas import ema

    values, w = [1.0, 2.0, 3.0, 10.0], 0.6
    last, want = 0.0, []
    for i, v in enumerate(values, 1):                                  # TensorBoard's smoothing, by hand
        last = last * w + (1 - w) * v
        want.append(last / (1 - w ** i))
    assert ema(values, w) == pytest.approx(want) and ema(values, w)[0] == 1.0


def test_tick_labels_sit_at_round_values_on_both_axes():
    points = [(s, s, 0.1 + s / 40_000, 0.1 + s / 40_000, 0.1 + s / 40_000) for s in range(0, 4001, 50)]
    plot = Plot("ρ", [Trace("ρ", points, "cyan")], (0, 4000), show_markers=False)
    out = [ln.plain for ln in draw(plot, GUTTER + 40, 12)]
    axis = out[-1]
    assert axis[:GUTTER].strip() == "step"
    for label, step in (("0", 0), ("1k", 1000), ("2k", 2000), ("3k", 3000), ("4k", 4000)):
        at = axis.index(label, GUTTER) - GUTTER if f" {label}" in axis or axis[GUTTER:].startswith(label) else None
        assert at is not None, (label, axis)
        centre = round(step / 4000 * 79) // 2
        assert abs(at + len(label) // 2 - centre) <= 1, (label, at, centre)
    gutter = {r: ln[:GUTTER].strip() for r, ln in enumerate(out[1:-1]) if ln[:GUTTER].strip()}
    assert len(gutter) >= 3
    for row, label in gutter.items():                                  # each label is round and on its row
        v = value(label)
        assert round(v * 100, 6) == round(v * 100) or round(v * 1000, 6) == round(v * 1000)
        frac = (0.2 - v) / 0.1 * (10 * 4 - 1)                          # the dot row that value lands on
        assert row == round(frac) // 4, (label, row)


async def test_at_80x24_every_chart_shows_the_open_runs_value_first_and_no_number_is_cut(db):
    base = make_run(db, name="base", steps=300, state="finished", ratio=0.0712, neg_cos_rate=0.0123, lam=0.00234)
    m1 = make_run(db, name="m1", steps=250, state="finished", ratio=0.0811)
    m2 = make_run(db, name="m2", steps=220, state="finished", ratio=0.0911)
    run_id = make_run(db, name="open", steps=200, ratio=0.0913, neg_cos_rate=0.0456, lam=0.00213, mse=0.00245)
    app = LvmdTui(db, baseline_id=base)
    app.marked_ids = {m1, m2}
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.query("RunList") and app.screen.query_one("RunList").row_count == 4,
                       "the runs")
        app.open_run(run_id)
        screen = await run_screen(app, pilot)
        await wait_for(pilot, lambda: screen.baseline is not None and len(screen.overlays) == 2, "the other runs")
        await pilot.pause(1.2)
        latest = screen.snapshot.latest
        for tab, ids in (("1", ("rho", "ratio", "cos", "neg_rate", "lam", "loss")), ("2", ("margin", "valcos"))):
            await pilot.press(tab)
            await pilot.pause()
            for slot in ids:
                chart = screen.query_one(f"#chart-{slot}", Chart)
                head = legend(chart)
                words = head.split()
                first = chart.spec.metrics[0]
                want = latest[first.column] if first.source == "steps" else screen.snapshot.epochs[-1][first.column]
                numbers = [w for w in words if NUMBER.match(w)]
                assert numbers and math.isclose(value(numbers[0]), want, rel_tol=5e-3), (slot, head)  # value first
                assert all(not w.endswith("…") or not NUMBER.match(w[:-1]) for w in words), head  # none cut
                assert all(len(n.lstrip("-.0").rstrip("kMG").replace(".", "").split("e")[0]) >= 3
                           or value(n) == 0 or value(n).is_integer() for n in numbers), head  # ≥ 3 digits
        base_trace = next(t for t in screen.query_one("#chart-ratio", Chart).plot.traces if t.label == f"run {base}")
        assert base_trace.dash == "dashdot"                            # a line style, not only grey
        await pilot.press("1")
        await pilot.pause()
        wide = draw(screen.query_one("#chart-ratio", Chart).plot, 120, 8)[0].plain
        assert f"┉run {base}" in wide
