"""Scrollable logs: the run's events (every one of them) and its recent commands."""
from __future__ import annotations

import json

from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import DataTable

from tui.plots import shown_epoch
from tui.widgets.canvas import MARKERS
from tui.widgets.status import command_status

KIND_STYLES = {kind: style for kind, (_glyph, style, _p) in MARKERS.items()}


def detail_text(raw: str | None, limit: int = 70) -> str:
    """An event's JSON detail as `key=value` pairs, shortened to fit a row."""
    if not raw:
        return ""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw[:limit]
    if isinstance(value, dict):
        text = " ".join(f"{k}={_short(v)}" for k, v in value.items())
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class EventLog(ScrollView, can_focus=True):
    """Every event of the run, drawn line by line from the tuple it holds (the Line API), so
    10^5 events cost nothing until scrolled to. Follows the end unless you scrolled up."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; }
    """
    HEADER = f"{'step':>8} {'ep':>3}  {'kind':<17} detail"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.events: tuple[dict, ...] = ()

    def show(self, events: tuple[dict, ...]) -> None:
        if len(events) == len(self.events) and (not events or events[-1] is self.events[-1]):
            return  # nothing new (a heartbeat): no repaint
        following = self.scroll_y >= self.max_scroll_y
        self.events = events
        self.virtual_size = Size(self.size.width, len(events))
        if following:
            self.scroll_end(animate=False, immediate=True)
        self.refresh()

    def line_text(self, index: int) -> Text:
        e = self.events[index]
        text = Text(f"{'' if e['step'] is None else e['step']:>8} "
                    f"{'' if e['epoch'] is None else shown_epoch(e['epoch']):>3}  ")
        text.append(f"{e['kind']:<17}", style=KIND_STYLES.get(e["kind"], ""))
        text.append(" " + detail_text(e["detail"]))
        return text

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if index >= len(self.events):
            return Strip.blank(width, self.rich_style)
        line = self.line_text(index)
        line.truncate(width)
        return Strip(line.render(self.app.console), line.cell_len).extend_cell_length(width).apply_style(
            self.rich_style)


class CommandLog(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.shown: tuple[dict, ...] = ()

    def on_mount(self) -> None:
        for label in ("#", "verb", "by", "state", "what happened"):
            self.add_column(label)

    def show(self, commands: tuple[dict, ...]) -> None:
        if commands == self.shown:
            return
        self.shown = commands
        self.clear()
        for cmd in commands:
            text, style = command_status(cmd)
            self.add_row(str(cmd["id"]), cmd["verb"], cmd.get("issued_by") or "", cmd["state"], Text(text, style=style))
