"""ChartDeck: what the run screen's charts share and the keys that change it: the x axis (`x`),
the smoothing (`S`), the cursor (← →, the mouse), a chart's metric (`m`) and scale (`L`), and the
memory of all that per database (tui.prefs). The charts themselves are widgets (tui.widgets.chart)
on two tabs; the deck shows them one ChartView and hears their messages through the screen."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tui.metrics import DEFAULT_SPECS, EPOCH_SLOTS, STEP_SLOTS, catalogue, picked_spec, step_columns
from tui.plots import SMOOTHING, ChartView
from tui.widgets.chart import Chart
from tui.widgets.picker import ChoiceScreen, metric_choices
from tui.xaxis import KINDS, XAxis

if TYPE_CHECKING:
    from tui.run_screen import RunScreen

CHART_TABS = {"train": STEP_SLOTS, "epochs": EPOCH_SLOTS}


class ChartDeck:
    def __init__(self, screen: "RunScreen") -> None:
        self.screen = screen
        prefs = screen.app.chart_prefs
        self.x_kind: str = prefs.x_kind
        self.smooth: float = prefs.smooth
        self.cursor_step: int | None = None  # the step charts' cursor (None: off)

    def charts(self) -> list[Chart]:
        return list(self.screen.query(Chart).results(Chart))

    def first_of(self, tab: str) -> Chart:
        return next(c for c in self.charts() if c.slot == CHART_TABS[tab][0])

    def apply_prefs(self) -> None:
        """Each slot as this database's charts were left; the tail reads the columns they draw."""
        prefs = self.screen.app.chart_prefs
        for chart in self.charts():
            chart.set_spec(picked_spec(chart.slot, prefs.slots.get(chart.slot) or "default"),
                           prefs.log.get(chart.slot), announce=False)
        self.follow_columns()

    def follow_columns(self) -> None:
        self.screen.app.follow(step_columns=step_columns(c.spec for c in self.charts()))

    def view(self) -> ChartView:
        s = self.screen
        return ChartView(s.snapshot, s.baseline, s.overlays, self.x_kind, self.smooth, self.cursor_step,
                         s.zoom, s.replay_epoch)

    def draw(self) -> None:
        if self.screen.snapshot is not None:
            view = self.view()
            for chart in self.charts():
                chart.show(view)

    # -- what the keys change ----------------------------------------------------------------
    def cycle_x(self) -> None:
        self.x_kind = KINDS[(KINDS.index(self.x_kind) + 1) % len(KINDS)]
        self.remember()
        self.draw()

    def cycle_smooth(self) -> None:
        i = SMOOTHING.index(self.smooth) if self.smooth in SMOOTHING else 0
        self.smooth = SMOOTHING[(i + 1) % len(SMOOTHING)]
        self.screen.notify(f"smoothing {self.smooth:g}" if self.smooth else "smoothing off: raw means", timeout=3)
        self.remember()
        self.draw()

    def target(self, key: str) -> Chart | None:
        """The focused chart, else the first chart of the shown tab (focused, so you see which)."""
        focused = self.screen.focused
        if isinstance(focused, Chart):
            return focused
        tab = self.screen.shown_tab()
        if tab not in CHART_TABS:
            self.screen.notify(f"{key}: show a tab with charts first (1 Train, 2 Epochs)", severity="warning",
                               timeout=4)
            return None
        chart = self.first_of(tab)
        chart.focus()
        return chart

    def toggle_log(self) -> None:
        chart = self.target("L")
        if chart is not None:
            chart.toggle_log()
            self.screen.notify(f"{chart.spec.title}: {'log' if chart.log_y else 'linear'} scale", timeout=3)

    def pick_metric(self) -> None:
        chart, run = self.target("m"), self.screen.snapshot
        if chart is None or run is None:
            return
        names = {name for values in run.eval_metrics.values() for name in values}
        default = DEFAULT_SPECS[chart.slot]
        current = "default" if chart.spec == default else chart.spec.metrics[0].key

        def picked(key: str | None) -> None:
            if key is not None:
                chart.set_spec(picked_spec(chart.slot, key))
            chart.focus()

        self.screen.app.push_screen(ChoiceScreen(f"chart in the {default.title} slot",
                                                 metric_choices(catalogue(run.epochs, names), default.title),
                                                 current), picked)

    def spec_changed(self, chart: Chart) -> None:
        self.remember()
        self.follow_columns()
        if self.screen.snapshot is not None:
            chart.show(self.view())

    def remember(self) -> None:
        """The charts as chosen, for the next time this database is opened (tui.prefs)."""
        prefs = self.screen.app.chart_prefs
        for chart in self.charts():
            default = DEFAULT_SPECS[chart.slot]
            if chart.spec == default:
                prefs.slots.pop(chart.slot, None)
            else:
                prefs.slots[chart.slot] = chart.spec.metrics[0].key
            if chart.log_y == chart.spec.log_y:
                prefs.log.pop(chart.slot, None)
            else:
                prefs.log[chart.slot] = chart.log_y
        prefs.x_kind, prefs.smooth = self.x_kind, self.smooth
        self.screen.app.save_prefs()

    # -- the cursor ----------------------------------------------------------------------------
    def move_cursor(self, delta: int) -> None:
        """One bin left or right; it starts at the newest step, and past the newest it is off."""
        run = self.screen.snapshot
        if run is None or run.series.last_step is None:
            return
        series = run.series
        if self.cursor_step is None:
            step = series.last_step if delta < 0 else None
        else:
            step = self.cursor_step + delta * series.width
            step = None if step > series.last_step else max(series.step_from, step)
        self.set_cursor(step)

    def set_cursor(self, step: int | None) -> None:
        self.cursor_step = step
        self.draw()

    def hovered(self, x: float) -> None:
        """The mouse over a step chart at x (on any axis): the cursor on the step under it."""
        run = self.screen.snapshot
        if run is None:
            return
        series, axis = run.series, XAxis.of(run, self.x_kind)
        spans = [(b, span) for b in series.bins if (span := axis.bin_span(series, b)) is not None]
        if self.x_kind == "step" or not spans:
            step = round(x)
        else:
            b, _ = min(spans, key=lambda p: 0 if p[1][0] <= x <= p[1][1] else min(abs(x - p[1][0]), abs(x - p[1][1])))
            step = series.span(b)[0]
        self.set_cursor(int(min(max(step, series.step_from), series.last_step or 0)))
