"""Chart: one slot of the run screen. It draws its ChartSpec from the screen's ChartView at its
current size, keeps its own log-scale choice, redraws a live run's step chart at most once a
second, and tells the screen by messages what changed (a new metric or scale to remember, the
mouse over a step)."""
from __future__ import annotations

import time

from rich.text import Text
from textual.message import Message
from textual.widget import Widget

from tui.metrics import DEFAULT_SPECS, ChartSpec
from tui.plots import ChartView, chart_plot
from tui.widgets.canvas import GUTTER, Plot, draw

CHART_PERIOD_S = 1.0  # a live run's step charts redraw at most this often


class Chart(Widget, can_focus=True):
    DEFAULT_CSS = """
    Chart { height: 1fr; min-height: 4; }
    Chart:focus { background: $boost; }
    """

    class SpecChanged(Message):
        """The slot's metric or log scale changed (to remember, and to read its column)."""

        def __init__(self, chart: "Chart") -> None:
            super().__init__()
            self.chart = chart

    class Hovered(Message):
        """The mouse is over x (in the chart's axis units) of a step chart."""

        def __init__(self, chart: "Chart", x: float) -> None:
            super().__init__()
            self.chart, self.x = chart, x

    def __init__(self, slot: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.slot = slot
        self.spec: ChartSpec = DEFAULT_SPECS[slot]
        self.log_y: bool = self.spec.log_y
        self.plot = Plot(self.spec.title, log_y=self.log_y, show_markers=self.spec.source == "steps")
        self.view: ChartView | None = None
        self._drawn: tuple | None = None   # (data, choices) the plot was drawn from
        self._drawn_at = 0.0
        self._timer = None

    # -- what the screen tells it ------------------------------------------------------------
    def show(self, view: ChartView) -> None:
        """Draw the view: at once when a choice changed (or the chart is not live), else at
        most once a CHART_PERIOD_S (a heartbeat, which changes no data, draws nothing)."""
        self.view = view
        data, choices = self._keys(view)
        if self._drawn == (data, choices):
            return
        due = self._drawn_at + CHART_PERIOD_S - time.monotonic()
        if self._drawn is not None and self._drawn[1] == choices and self.spec.source == "steps" and due > 0:
            if self._timer is None:
                self._timer = self.set_timer(due, self._draw_due)
            return
        self._draw()

    def set_spec(self, spec: ChartSpec, log_y: bool | None = None, *, announce: bool = True) -> None:
        self.spec = spec
        self.log_y = spec.log_y if log_y is None else log_y
        self.set_class(spec.source == "steps", "step-chart")
        self._redraw_now()
        if announce:
            self.post_message(self.SpecChanged(self))

    def toggle_log(self) -> None:
        self.log_y = not self.log_y
        self._redraw_now()
        self.post_message(self.SpecChanged(self))

    # -- drawing -----------------------------------------------------------------------------
    def _keys(self, view: ChartView) -> tuple[tuple, tuple]:
        run, base, overlays = view.run, view.baseline, view.overlays
        if self.spec.source == "steps":
            data = (run.series, base.series if base else None, tuple(o.series for o in overlays),
                    len(run.events), run.events[-1]["id"] if run.events else None)
        else:
            data = (run.epochs, run.evals, run.run.get("total_epochs"), run.band, run.baseline_band,
                    base.epochs if base else None, base.evals if base else None,
                    tuple((o.epochs, o.evals) for o in overlays))
        choices = (self.spec, self.log_y, view.x_kind, view.smooth if self.spec.source == "steps" else None,
                   view.cursor_step if self.spec.source == "steps" else None,
                   base.run_id if base else None, tuple(o.run_id for o in overlays), view.zoom, view.replay_epoch)
        return data, choices

    def _draw(self) -> None:
        if self.view is None:
            return
        self._drawn, self._drawn_at = self._keys(self.view), time.monotonic()
        self.plot = chart_plot(self.spec, self.view, log_y=self.log_y)
        self.refresh()

    def _draw_due(self) -> None:
        self._timer = None
        if self.is_mounted and self.view is not None and self._keys(self.view) != self._drawn:
            self._draw()

    def _redraw_now(self) -> None:
        self._drawn = None
        self._draw()

    @property
    def dots_wide(self) -> int:
        """How many x positions the chart can draw: what the series should be binned to."""
        return max(2, 2 * (self.size.width - GUTTER))

    def on_mouse_move(self, event) -> None:
        """Hovering a step chart puts the screen's cursor on the x under the mouse."""
        x0, x1 = self.plot.x_range
        cols = self.size.width - GUTTER
        if self.spec.source != "steps" or cols < 2 or event.x < GUTTER or self.view is None:
            return
        x = x0 + 2 * (event.x - GUTTER) / (2 * cols - 1) * (x1 - x0)  # the cell's left dot
        self.post_message(self.Hovered(self, min(max(x, x0), x1)))

    def render(self) -> Text:
        return Text("\n").join(draw(self.plot, self.size.width, self.size.height))
