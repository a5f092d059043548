"""Line charts drawn with Unicode braille (2×4 dots per cell): a pure function from a Plot to
lines of rich Text, so it is tested without a terminal and the widget stays a thin shell.

Each trace point is a bin: (x0, x1, lo, hi, mean). A dot column shades the whole lo..hi range of
the bins that fall in it (dim), so a one-step spike survives any downsampling, and draws the
mean over it as the line you read. Rows, top to bottom: the legend (tui/widgets/legend.py), the
plot with y tick labels in the gutter, the event markers, the x tick labels (markers and ticks
share one row when the chart is short).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from rich.text import Text

from tui.widgets.axes import fmt, fmt_short, log_ticks, tick_label, ticks, time_ticks  # noqa: F401  (fmt: re-export)

GUTTER = 7  # y-axis labels (6) + a space
_DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))  # [dx][dy]
LOG_FLOOR = 1e-12
# Line styles: which dot columns a line draws. The glyph names the style in the legend, so lines
# read apart without colour (16-colour terminals, colour-blind eyes).
DASH_GLYPHS = {"solid": "━", "dash": "╍", "dot": "┈", "dashdot": "┉", "shortdash": "┄"}
SEPARATE_MARKER_ROWS = 6  # from this height on, markers and x ticks get a row each


def _dash_on(dash: str, x: int) -> bool:
    """Does a line of this style draw in dot column x?"""
    return (dash == "solid" or (dash == "dash" and x % 6 < 4) or (dash == "dot" and x % 3 == 0)
            or (dash == "dashdot" and x % 9 in (0, 1, 2, 3, 4, 6)) or (dash == "shortdash" and x % 4 < 2))


# event kind -> (glyph, style, priority): the marker row shows the most severe per cell
MARKERS = {
    "attenuate": ("•", "yellow", 1),
    "skip": ("▲", "bold red", 2),
    "collapse_warning": ("✖", "bold magenta", 3),
}


@dataclass(frozen=True)
class Trace:
    label: str
    points: Sequence[tuple[float, float, float, float, float]]  # (x0, x1, lo, hi, mean)
    style: str
    value: float | None = None  # shown in the legend
    envelope: bool = True       # shade min..max behind the mean line
    dash: str = "solid"         # DASH_GLYPHS key: tells overlaid runs apart without colour
    smooth: float = 0.0         # > 0: the line is the EMA of the points with this weight (TensorBoard's)
    fill: bool = False          # columns between two points interpolate min and max too (a band over epochs)
    under: bool = False         # the line is drawn beneath the other traces' lines wherever it sits in the legend
    rank: int = 1               # legend priority: 0 the open run's main value (never dropped), 1 its others, 2 other runs
    count: bool = False         # values are counts: shown as integers


@dataclass(frozen=True)
class RefLine:
    """A dotted horizontal line, piecewise: [(x0, x1, y)]; the legend shows the newest y."""
    label: str
    segments: Sequence[tuple[float, float, float]]
    style: str


@dataclass(frozen=True)
class Band:
    """A shaded value range over an x interval (drawn as cell background)."""
    x0: float
    x1: float
    y0: float
    y1: float
    style: str


@dataclass(frozen=True)
class Plot:
    title: str
    traces: Sequence[Trace] = ()
    x_range: tuple[float, float] = (0.0, 1.0)
    refs: Sequence[RefLine] = ()
    bands: Sequence[Band] = ()
    markers: Sequence[tuple[float, str]] = ()  # (x, event kind)
    log_y: bool = False
    show_markers: bool = True
    x_label: str = ""            # right of the legend when there is room (the zoom window, a preview's ≈)
    empty_text: str = "no data yet"
    extra: Sequence[tuple[str, str]] = field(default=())  # more legend (text, style)
    cursor: float | None = None  # an x to read: its column is highlighted, the legend reads the bins there
    x_kind: str = "step"         # step | time | epoch: how the x ticks are chosen and labelled
    cursor_label: str = ""       # the cursor's x in words (`@1.2k`, `@5m10s`)


class _Grid:
    def __init__(self, cols: int, rows: int):
        self.cols, self.rows = cols, rows
        self.bits = [[0] * cols for _ in range(rows)]
        self.fg: list[list[str | None]] = [[None] * cols for _ in range(rows)]
        self.bg: list[list[str | None]] = [[None] * cols for _ in range(rows)]

    def dot(self, x: int, y: int, style: str) -> None:
        cx, cy = x // 2, y // 4
        if 0 <= cx < self.cols and 0 <= cy < self.rows:
            self.bits[cy][cx] |= _DOT_BITS[x % 2][y % 4]
            self.fg[cy][cx] = style


def layout(plot: Plot, height: int) -> tuple[int, bool, bool]:
    """(plot rows, a marker row of its own, an x tick row) for a chart `height` rows tall."""
    below = height - 1
    if plot.show_markers and height >= SEPARATE_MARKER_ROWS:
        return below - 2, True, True
    if below >= 3:
        return below - 1, False, True
    return below, False, False


def draw(plot: Plot, width: int, height: int) -> list[Text]:
    """The chart as `height` lines of `width` cells: legend, plot rows, marker and tick rows."""
    from tui.widgets.legend import legend_line

    legend = legend_line(plot, width)
    plot_rows, marker_row, tick_row = layout(plot, height)
    cols = width - GUTTER
    if plot_rows < 1 or cols < 4:
        return [legend][:height]
    tf = _transform(plot.log_y)
    y_range = _y_range(plot, tf)
    if y_range is None:
        blank = [Text(" " * width) for _ in range(height - 1)]
        blank[len(blank) // 2] = Text(plot.empty_text.center(width), style="dim")
        return [legend, *blank]
    y_lo, y_hi = y_range
    dots_w, dots_h = cols * 2, plot_rows * 4
    x0, x1 = plot.x_range
    x_span = (x1 - x0) or 1.0

    def px(x: float) -> int:
        return min(dots_w - 1, max(0, round((x - x0) / x_span * (dots_w - 1))))

    y_scale = (dots_h - 1) / (y_hi - y_lo)

    def py_t(t: float) -> int:  # a transformed value's dot row
        return min(dots_h - 1, max(0, round((y_hi - t) * y_scale)))

    if plot.log_y:
        def py(v: float) -> int:
            return py_t(tf(v))
    else:
        def py(v: float) -> int:  # the hot path: no transform
            return min(dots_h - 1, max(0, round((y_hi - v) * y_scale)))

    grid = _Grid(cols, plot_rows)
    for band in plot.bands:
        _shade(grid, band, px, y_lo, y_hi, tf)
    for ref in plot.refs:
        for a, b, y in ref.segments:
            for x in range(px(a), px(b) + 1):
                if x % 3 == 0:
                    grid.dot(x, py(y), ref.style)
    spans = [_columns(tr, px, dots_w) for tr in plot.traces]
    for tr, trace_spans in zip(plot.traces, spans):  # every envelope under every line
        if tr.envelope:
            _envelope(grid, tr, trace_spans, py)
    for tr, trace_spans in sorted(zip(plot.traces, spans), key=lambda p: not p[0].under):  # stable
        _mean_line(grid, tr, _smoothed(tr, trace_spans), py)
    labels = _y_labels(plot.log_y, y_lo, y_hi, plot_rows, py_t)
    lines = [legend]
    cursor_cell = None if plot.cursor is None else px(plot.cursor) // 2
    for r in range(plot_rows):
        line = Text()
        line.append(labels.get(r, "").rjust(GUTTER - 1)[:GUTTER - 1] + " ", style="dim")
        _append_cells(line, grid, r)
        if cursor_cell is not None:
            line.stylize("reverse", GUTTER + cursor_cell, GUTTER + cursor_cell + 1)
        lines.append(line)
    markers = _marker_cells(plot, px, cols) if plot.show_markers else [None] * cols
    if marker_row:
        lines.append(_marker_row(markers))
    if tick_row:
        lines.append(_tick_row(plot, px, cols, markers if not marker_row else [None] * cols))
    return lines


def _y_range(plot: Plot, tf) -> tuple[float, float] | None:
    """The transformed value range of the data, refs and bands; None when there is no data."""
    lows, highs = [], []
    for tr in plot.traces:
        for _x0, _x1, lo, hi, _mean in tr.points:
            if lo is not None and (not plot.log_y or hi > 0):  # a log axis shows zeros at its floor
                lows.append(tf(lo) if not plot.log_y or lo > 0 else tf(hi))
                highs.append(tf(hi))
    if not lows:
        return None
    for ref in plot.refs:
        lows += [tf(y) for *_x, y in ref.segments]
        highs += [tf(y) for *_x, y in ref.segments]
    for band in plot.bands:
        lows.append(tf(band.y0))
        highs.append(tf(band.y1))
    y_lo, y_hi = min(lows), max(highs)
    if y_hi - y_lo < 1e-12:  # a flat line: give it room
        pad = abs(y_hi) * 0.05 or 1e-3
        y_lo, y_hi = y_lo - pad, y_hi + pad
    return y_lo, y_hi


def _transform(log_y: bool):
    return (lambda v: math.log10(max(v, LOG_FLOOR))) if log_y else (lambda v: v)


def _y_labels(log_y: bool, y_lo: float, y_hi: float, rows: int, py) -> dict[int, str]:
    """Tick labels by plot row: round values (powers of ten on a log axis) at the row that holds
    them, at most one a row and none on the row next to another when there is room."""
    want = max(2, rows // 2 + (rows % 2))
    for attempt in range(3):
        if log_y:
            values, step, kind = log_ticks(y_lo, y_hi, want * 2 ** attempt), 1.0, "log"
        else:
            values, step = ticks(y_lo, y_hi, want * 2 ** attempt)
            kind = "value"
        if len(values) >= 2:
            break
    labels: dict[int, str] = {}
    for v in values:
        row = py(v) // 4
        if row in labels or (rows > 4 and (row - 1 in labels or row + 1 in labels)):
            continue
        labels[row] = tick_label(v, step, kind)
    if len(labels) < 2:  # no two round values fit: the range's ends
        labels = {0: fmt_short(10 ** y_hi if log_y else y_hi), rows - 1: fmt_short(10 ** y_lo if log_y else y_lo)}
    return labels


def _columns(trace: Trace, px, dots_w: int) -> list[tuple[float, float, float] | None]:
    """(lo, hi, mean) per dot column, means weighted by the bins' step spans; empty columns
    between two filled ones are interpolated (the mean; with trace.fill the min and max too)."""
    acc: list[list[float] | None] = [None] * dots_w
    for a, b, lo, hi, mean in trace.points:
        if lo is None:
            continue
        weight = max(1.0, b - a + 1)
        for x in range(px(a), px(b) + 1):
            cur = acc[x]
            if cur is None:
                acc[x] = [lo, hi, mean * weight, weight]
            else:
                cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)
                cur[2] += mean * weight
                cur[3] += weight
    cols = [None if c is None else (c[0], c[1], c[2] / c[3]) for c in acc]
    filled = [x for x in range(dots_w) if cols[x] is not None]
    for left, right in zip(filled, filled[1:]):
        if right - left > 1:
            a, b = cols[left], cols[right]
            for x in range(left + 1, right):
                f = (x - left) / (right - left)
                v = a[2] + (b[2] - a[2]) * f
                cols[x] = (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, v) if trace.fill else (v, v, v)
    return cols


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average with `weight` on the past,
    debiased (divided by 1 - weight^n) so the line starts at the first value, not at 0."""
    out, last = [], 0.0
    for n, v in enumerate(values, 1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def _smoothed(trace: Trace, cols):
    """The columns with their means replaced by the EMA over the columns in x order (the band
    keeps the raw min..max). TensorBoard smooths the points it draws; so does this."""
    if trace.smooth <= 0:
        return cols
    filled = [c for c in cols if c is not None]
    means = iter(ema([c[2] for c in filled], trace.smooth))
    return [None if c is None else (c[0], c[1], next(means)) for c in cols]


def _envelope(grid: _Grid, trace: Trace, cols, py) -> None:
    """The min..max range as a half-density dim texture, so lines drawn over it stay legible."""
    for x, col in enumerate(cols):
        if col is not None and col[0] != col[1]:
            for y in range(py(col[1]), py(col[0]) + 1):
                if (x + y) % 2 == 0:
                    grid.dot(x, y, f"dim {trace.style}")


def _mean_line(grid: _Grid, trace: Trace, cols, py) -> None:
    prev: int | None = None
    for x, col in enumerate(cols):
        if col is None:
            prev = None
            continue
        y = py(col[2])
        top, bottom = (y, y) if prev is None else (min(y, prev + 1), max(y, prev - 1))
        if _dash_on(trace.dash, x):
            for yy in range(top, bottom + 1):  # join to the previous column so the line has no gaps
                grid.dot(x, yy, trace.style)
        prev = y


def _shade(grid: _Grid, band: Band, px, y_lo: float, y_hi: float, tf) -> None:
    b0, b1 = tf(band.y0), tf(band.y1)
    per_row = (y_hi - y_lo) / grid.rows
    for cy in range(grid.rows):
        cell_hi = y_hi - cy * per_row
        cell_lo = cell_hi - per_row
        if cell_lo <= b1 and cell_hi >= b0:
            for cx in range(px(band.x0) // 2, px(band.x1) // 2 + 1):
                if 0 <= cx < grid.cols:
                    grid.bg[cy][cx] = band.style


def _append_cells(line: Text, grid: _Grid, row: int) -> None:
    run, run_style = [], None
    for cx in range(grid.cols):
        bits, fg, bg = grid.bits[row][cx], grid.fg[row][cx], grid.bg[row][cx]
        style = " ".join(s for s in (fg if bits else None, f"on {bg}" if bg else None) if s) or None
        if style != run_style and run:
            line.append("".join(run), style=run_style)
            run = []
        run_style = style
        run.append(chr(0x2800 + bits) if bits else " ")
    if run:
        line.append("".join(run), style=run_style)


def _marker_cells(plot: Plot, px, cols: int) -> list[tuple[str, str, int] | None]:
    cells: list[tuple[str, str, int] | None] = [None] * cols
    for x, kind in plot.markers:
        if kind in MARKERS:
            cx = px(x) // 2
            if cells[cx] is None or MARKERS[kind][2] > cells[cx][2]:
                cells[cx] = MARKERS[kind]
    return cells


def _marker_row(cells) -> Text:
    line = Text(" " * GUTTER)
    for cell in cells:
        line.append(*(cell[:2] if cell else ("─", "dim")))
    return line


def x_ticks(plot: Plot, cols: int) -> list[tuple[float, str]]:
    """(x, label) of the x axis: round steps, epochs or durations, about one per 7 columns."""
    x0, x1 = plot.x_range
    want = max(2, cols // 7)
    if plot.x_kind == "time":
        return [(v, tick_label(v, 0, "time")) for v in time_ticks(x0, x1, want)]
    values, step = ticks(x0, x1, want, integer=plot.x_kind == "step" or (plot.x_kind == "epoch" and x1 - x0 >= 2))
    return [(v, tick_label(v, step, plot.x_kind)) for v in values]


def _tick_row(plot: Plot, px, cols: int, markers) -> Text:
    """The axis name in the gutter, then tick labels centred on their columns (never two
    touching); a short chart's markers fill the cells the labels leave free."""
    cells: list[tuple[str, str] | None] = [(m[0], m[1]) if m else None for m in markers]
    end = -2
    for x, label in x_ticks(plot, cols):
        start = min(max(0, px(x) // 2 - len(label) // 2), cols - len(label))
        if start <= end + 1:
            continue
        for i, ch in enumerate(label):
            cells[start + i] = (ch, "dim")
        end = start + len(label) - 1
    line = Text(plot.x_kind[:GUTTER - 1].rjust(GUTTER - 1) + " ", style="dim italic")
    for cell in cells:
        line.append(*(cell if cell else (" ", "")))
    return line


def marker_columns(plot: Plot, width: int) -> dict[int, str]:
    """Which marker glyph sits in which plot column (for tests and the bench)."""
    cols = width - GUTTER
    x0, x1 = plot.x_range
    span = (x1 - x0) or 1.0
    dots_w = cols * 2
    cells = _marker_cells(plot, lambda x: min(dots_w - 1, max(0, round((x - x0) / span * (dots_w - 1)))), cols)
    return {i: c[0] for i, c in enumerate(cells) if c}


def bin_at(trace: Trace, x: float) -> tuple[float, float, float, float, float] | None:
    """The point (bin) of the trace that holds x, else the nearest one (another run's bins need
    not line up with the open run's); None if it has none, or if x lies more than a bin beyond
    the trace's ends (a shorter run has no value at a step it never reached)."""
    points = [p for p in trace.points if p[2] is not None]
    if not points:
        return None
    reach = max(p[1] - p[0] for p in points) + (points[-1][0] - points[0][0]) / max(1, len(points) - 1)
    if not points[0][0] - reach <= x <= points[-1][1] + reach:
        return None
    return min(points, key=lambda p: 0 if p[0] <= x <= p[1] else min(abs(x - p[0]), abs(x - p[1])))
