"""Line charts drawn with Unicode braille (2×4 dots per cell): a pure function from a Plot to
lines of rich Text, so it is tested without a terminal and the widget stays a thin shell.

Each trace point is a bin: (x0, x1, lo, hi, mean). A dot column shades the whole lo..hi range of
the bins that fall in it (dim), so a one-step spike survives any downsampling, and draws the
mean over it as the line you read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from rich.text import Text

GUTTER = 7  # y-axis labels (6) + a space
_DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))  # [dx][dy]
LOG_FLOOR = 1e-12
DASH_GLYPHS = {"solid": "━", "dash": "╍", "dot": "┈"}


def _dash_on(dash: str, x: int) -> bool:
    """Does a line of this style draw in dot column x?"""
    return dash == "solid" or (dash == "dash" and x % 6 < 4) or (dash == "dot" and x % 3 == 0)

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
    dash: str = "solid"         # solid | dash | dot: tells overlaid runs apart without colour
    smooth: float = 0.0         # > 0: the line is an EMA (this alpha per dot column) of the means
    fill: bool = False          # columns between two points interpolate min and max too (a band over epochs)
    under: bool = False         # the line is drawn beneath the other traces' lines wherever it sits in the legend


@dataclass(frozen=True)
class RefLine:
    """A dotted horizontal line, piecewise: [(x0, x1, y)]."""
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
    x_label: str = ""
    empty_text: str = "no data yet"
    extra: Sequence[tuple[str, str]] = field(default=())  # more legend (text, style)
    cursor: float | None = None  # an x to read: its column is highlighted, the legend reads the bins there


def fmt(v: float | None) -> str:
    """A value in at most 6 characters."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e4:
        return f"{v / 1e3:.0f}k" if a < 1e6 else f"{v / 1e6:.1f}M"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}".replace("0.", ".", 1)
    return f"{v:.0e}".replace("e-0", "e-")


def fmt_step(s: float) -> str:
    s = int(s)
    return f"{s / 1e6:.2f}M" if s >= 1e6 else f"{s / 1e3:.1f}k" if s >= 1e4 else str(s)


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


def draw(plot: Plot, width: int, height: int) -> list[Text]:
    """The chart as `height` lines of `width` cells: legend, plot rows, marker row."""
    legend = _readout(plot, width) if plot.cursor is not None else _legend(plot, width)
    plot_rows = height - 1 - (1 if plot.show_markers else 0)
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

    def py(v: float) -> int:
        return min(dots_h - 1, max(0, round((y_hi - tf(v)) / (y_hi - y_lo) * (dots_h - 1))))

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
        _mean_line(grid, tr, trace_spans, py)
    lines = [legend]
    cursor_cell = None if plot.cursor is None else px(plot.cursor) // 2
    for r in range(plot_rows):
        label = fmt(_untransform(plot.log_y, y_hi)) if r == 0 else \
            fmt(_untransform(plot.log_y, y_lo)) if r == plot_rows - 1 else \
            fmt(_untransform(plot.log_y, (y_hi + y_lo) / 2)) if r == plot_rows // 2 and plot_rows >= 5 else ""
        line = Text()
        line.append(label.rjust(GUTTER - 1)[:GUTTER - 1] + " ", style="dim")
        _append_cells(line, grid, r)
        if cursor_cell is not None:
            line.stylize("reverse", GUTTER + cursor_cell, GUTTER + cursor_cell + 1)
        lines.append(line)
    if plot.show_markers:
        lines.append(_marker_row(plot, px, cols))
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


def _untransform(log_y: bool, v: float) -> float:
    return 10 ** v if log_y else v


def _legend(plot: Plot, width: int) -> Text:
    text = Text()
    text.append(plot.title, style="bold")
    for tr in plot.traces:
        if tr.label:
            text.append("  ")
            text.append(tr.label, style=tr.style)
            if tr.value is not None:
                text.append(f" {fmt(tr.value)}")
    for ref in plot.refs:
        if ref.label:
            text.append("  ")
            text.append(ref.label, style=ref.style)
    for part, style in plot.extra:
        text.append("  ")
        text.append(part, style=style)
    if plot.x_label and text.cell_len + len(plot.x_label) + 2 <= width:
        text.append(" " * (width - text.cell_len - len(plot.x_label)))
        text.append(plot.x_label, style="dim")
    text.truncate(width)
    return text


def bin_at(trace: Trace, x: float) -> tuple[float, float, float, float, float] | None:
    """The point (bin) of the trace that holds x, else the nearest one; None if it has none."""
    points = [p for p in trace.points if p[2] is not None]
    if not points:
        return None
    return min(points, key=lambda p: 0 if p[0] <= x <= p[1] else min(abs(x - p[0]), abs(x - p[1])))


def _readout(plot: Plot, width: int) -> Text:
    """The legend while a cursor is on: where, then each labelled trace's value there (the bin's
    mean, which is the row's value when a bin holds one step) and the bin's min..max."""
    text = Text()
    text.append(plot.title, style="bold")
    shown = None
    for tr in plot.traces:
        point = bin_at(tr, plot.cursor) if tr.label else None
        if point is None:
            continue
        if shown is None:
            shown = point
            span = f"{fmt_step(point[0])}" if point[0] == point[1] else f"{fmt_step(point[0])}–{fmt_step(point[1])}"
            text.append(f" @{span}", style="reverse")
        text.append("  ")
        text.append(tr.label, style=tr.style)
        text.append(f" {fmt(point[4])}")
        if point[2] != point[3]:
            text.append(f" [{fmt(point[2])}‥{fmt(point[3])}]", style="dim")
    text.truncate(width)
    return text


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


def _envelope(grid: _Grid, trace: Trace, cols, py) -> None:
    """The min..max range as a half-density dim texture, so lines drawn over it stay legible."""
    for x, col in enumerate(cols):
        if col is not None and col[0] != col[1]:
            for y in range(py(col[1]), py(col[0]) + 1):
                if (x + y) % 2 == 0:
                    grid.dot(x, y, f"dim {trace.style}")


def _mean_line(grid: _Grid, trace: Trace, cols, py) -> None:
    prev: int | None = None
    ema: float | None = None
    for x, col in enumerate(cols):
        if col is None:
            prev = ema = None
            continue
        value = col[2]
        if trace.smooth > 0:  # the band keeps the raw min..max; only the line is smoothed
            ema = value if ema is None else ema + trace.smooth * (value - ema)
            value = ema
        y = py(value)
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


def _marker_row(plot: Plot, px, cols: int) -> Text:
    cells: list[tuple[str, str, int] | None] = [None] * cols
    for x, kind in plot.markers:
        if kind in MARKERS:
            cx = px(x) // 2
            if cells[cx] is None or MARKERS[kind][2] > cells[cx][2]:
                cells[cx] = MARKERS[kind]
    line = Text(" " * GUTTER)
    for cell in cells:
        line.append(*(cell[:2] if cell else ("─", "dim")))
    return line


def marker_columns(plot: Plot, width: int) -> dict[int, str]:
    """Which marker glyph sits in which plot column (for tests and the bench)."""
    line = draw(plot, width, 8)[-1].plain[GUTTER:]
    return {i: ch for i, ch in enumerate(line) if ch != "─"}
