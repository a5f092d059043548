"""A chart's legend line: the value first, then what it is (`.200 ρ`, `.150 ┉run 3`).

When the line is too narrow, things give way in this order: double spaces, the cursor's min‥max
ranges, notes, long labels (shortened to 6 characters with `…`), reference lines, other runs'
labels (their value stays, led by their line style's glyph), other runs, the open run's other
metrics, the remaining labels, the title. A value is never cut; the open run's main value
(rank 0) is never dropped."""
from __future__ import annotations

from dataclasses import dataclass, replace

from rich.cells import cell_len
from rich.text import Text

from tui.widgets.axes import fmt
from tui.widgets.canvas import DASH_GLYPHS, Plot, bin_at

LONG_LABEL = 6  # labels are first shortened to this many characters (with the `…`); shorter only at the end


@dataclass(frozen=True)
class Part:
    value: str | None  # never cut
    label: str         # shortened, then dropped, when the line is too narrow
    glyph: str         # the line style, kept with the value when the label goes
    style: str
    rank: int          # 0: the open run's main value; 1: its others; 2: other runs; 3: references; 4: notes
    detail: str = ""   # the cursor's [min‥max]: the first thing to go

    def render(self) -> Text:
        text = Text()
        if self.value is not None:
            text.append(self.value, style="bold" if self.rank == 0 else "")
        name = self.glyph + self.label
        if name:
            if self.value is not None:
                text.append(" ")
            text.append(name, style=self.style)
        if self.detail:
            text.append(" " + self.detail, style="dim")
        return text

    def width(self) -> int:
        """render().cell_len, without building the Text (fit() asks it often)."""
        name = cell_len(self.glyph + self.label)
        value = cell_len(self.value) if self.value is not None else 0
        return value + (1 if value and name else 0) + name + (1 + cell_len(self.detail) if self.detail else 0)


def _shorten(label: str, length: int) -> str:
    return label if len(label) <= length else label[:max(1, length - 1)] + "…"


def fit(title: str, parts: list[Part], width: int) -> tuple[str, list[Part], str]:
    """The title, parts and separator that fit in `width` cells, giving way in the module's order."""
    sep = "  "

    def total() -> int:
        widths = [len(title)] if title else []
        widths += [p.width() for p in parts]
        return sum(widths) + len(sep) * max(0, len(widths) - 1)

    def drop(pred) -> bool:
        nonlocal parts
        for i in range(len(parts) - 1, -1, -1):
            if total() <= width:
                return True
            if pred(parts[i]):
                parts = parts[:i] + parts[i + 1:]
        return total() <= width

    def shorten_to(minimum: int) -> bool:
        while total() > width:
            longest = max(range(len(parts)), key=lambda i: (len(parts[i].label), parts[i].rank), default=None)
            if longest is None or len(parts[longest].label) <= minimum:
                return False
            p = parts[longest]
            parts[longest] = replace(p, label=_shorten(p.label, len(p.label) - 1))
        return True

    def unlabel() -> bool:
        """Other runs' labels go; their value stays with the glyph of their line style."""
        for i in range(len(parts) - 1, -1, -1):
            if total() <= width:
                return True
            if parts[i].rank > 0 and parts[i].glyph and parts[i].value is not None:
                parts[i] = replace(parts[i], label="")
        return total() <= width

    if total() <= width:
        return title, parts, sep
    sep = " "
    for i in range(len(parts) - 1, -1, -1):  # the cursor's ranges, lowest priority (last) first
        if total() <= width:
            return title, parts, sep
        parts[i] = replace(parts[i], detail="")
    if (drop(lambda p: p.rank >= 4) or shorten_to(LONG_LABEL) or drop(lambda p: p.rank >= 3) or unlabel()
            or drop(lambda p: p.rank >= 2) or drop(lambda p: p.rank >= 1) or shorten_to(1)):
        return title, parts, sep
    while title and total() > width:
        title = title[:-2] + "…" if len(title) > 2 else ""
    if total() > width and parts:
        parts[0] = replace(parts[0], label="", glyph="")
    return title, parts, sep


def _bare(title: str) -> str:
    """The title without the smoothing mark (`ρ ~0.9` → `ρ`)."""
    return title.split(" ~", 1)[0]


def _parts(plot: Plot) -> list[Part]:
    parts = []
    for tr in plot.traces:
        if not tr.label and tr.value is None:
            continue
        label = "" if tr.rank == 0 and tr.label == _bare(plot.title) else tr.label
        glyph = "" if tr.dash == "solid" else DASH_GLYPHS.get(tr.dash, "")
        parts.append(Part(None if tr.value is None else fmt(tr.value, count=tr.count), label, glyph, tr.style, tr.rank))
    for ref in plot.refs:
        if ref.label and ref.segments:
            parts.append(Part(fmt(ref.segments[-1][2]), ref.label, "", ref.style, 3))
    for text, style in plot.extra:
        parts.append(Part(None, text, "", style, 4))
    return sorted(parts, key=lambda p: p.rank) if any(p.rank == 0 for p in parts) else parts


def _readout_parts(plot: Plot) -> list[Part]:
    """Each labelled trace's bin under the cursor: its mean, and its min‥max when they differ."""
    parts = []
    for tr in plot.traces:
        point = bin_at(tr, plot.cursor) if tr.label or tr.rank == 0 else None
        if point is None:
            continue
        lo, hi = fmt(point[2], count=tr.count), fmt(point[3], count=tr.count)
        label = "" if tr.rank == 0 and tr.label == _bare(plot.title) else tr.label
        glyph = "" if tr.dash == "solid" else DASH_GLYPHS.get(tr.dash, "")
        parts.append(Part(fmt(point[4], count=tr.count), label, glyph, tr.style, tr.rank,
                          "" if lo == hi else f"[{lo}‥{hi}]"))
    return sorted(parts, key=lambda p: p.rank) if any(p.rank == 0 for p in parts) else parts


def legend_line(plot: Plot, width: int) -> Text:
    cursor = plot.cursor is not None
    head = plot.title
    at = f"@{plot.cursor_label}" if cursor else ""
    parts = _readout_parts(plot) if cursor else _parts(plot)
    title, parts, sep = fit(head + (" " + at if at else ""), parts, width)
    text = Text()
    if title:
        if at and title.endswith(at):
            text.append(title[:-len(at)], style="bold")
            text.append(at, style="reverse")
        else:
            text.append(title, style="bold")
    for part in parts:
        if text.cell_len:
            text.append(sep)
        text.append_text(part.render())
    if plot.x_label and not cursor and text.cell_len + len(plot.x_label) + 2 <= width:
        text.append(" " * (width - text.cell_len - len(plot.x_label)))
        text.append(plot.x_label, style="dim")
    text.truncate(width)
    return text
