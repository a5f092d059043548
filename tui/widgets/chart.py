"""Chart: a widget that draws a canvas.Plot at its current size."""
from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.widgets.canvas import GUTTER, Plot, draw


class Chart(Widget):
    DEFAULT_CSS = """
    Chart { height: 1fr; min-height: 4; }
    """

    def __init__(self, title: str, *, log_y: bool = False, show_markers: bool = True,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.plot = Plot(title, log_y=log_y, show_markers=show_markers)

    def show(self, plot: Plot) -> None:
        self.plot = plot
        self.refresh()

    @property
    def dots_wide(self) -> int:
        """How many x positions the chart can draw: what the series should be binned to."""
        return max(2, 2 * (self.size.width - GUTTER))

    def on_mouse_move(self, event) -> None:
        """Hovering a step chart puts the screen's cursor on the step under the mouse."""
        x0, x1 = self.plot.x_range
        cols = self.size.width - GUTTER
        if not self.has_class("step-chart") or cols < 2 or event.x < GUTTER:
            return
        step = round(x0 + 2 * (event.x - GUTTER) / (2 * cols - 1) * (x1 - x0))  # the cell's left dot
        if hasattr(self.screen, "set_cursor"):
            self.screen.set_cursor(int(min(max(step, x0), x1)))

    def render(self) -> Text:
        return Text("\n").join(draw(self.plot, self.size.width, self.size.height))
