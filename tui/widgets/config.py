"""The run's resolved config as `section.key = value` lines, narrowed by a search box."""
from __future__ import annotations

import json

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from tui.widgets.search import SearchBox


def flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, JSON value) for every leaf; lists of tables (the ramp) keep their index."""
    if isinstance(value, dict):
        out = []
        for key in sorted(value):
            out += flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for i, item in enumerate(value):
            out += flatten(item, f"{prefix}[{i}]")
        return out
    return [(prefix, json.dumps(value, ensure_ascii=False))]


def config_lines(config_json: str | None, query: str = "") -> Text:
    try:
        config = json.loads(config_json or "{}")
    except ValueError:
        return Text(f"config_json is not JSON: {config_json[:80]!r}", style="red")
    words = query.lower().split()
    text = Text()
    rows = [(k, v) for k, v in flatten(config) if all(w in f"{k} = {v}".lower() for w in words)]
    for key, value in rows:
        text.append(key, style="bold cyan")
        text.append(f" = {value}\n")
    if not rows:
        text.append("no key matches" if words else "no config recorded", style="dim")
    return text


class ConfigPane(Vertical):
    """Search box (`/`: type to narrow, every word must appear in `key = value`) over the config.
    Esc clears the box, then hands the focus to the lines (where ↑ ↓ scroll)."""
    DEFAULT_CSS = """
    ConfigPane > Input { height: 3; }
    ConfigPane > VerticalScroll { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.config_json: str | None = None

    def compose(self) -> ComposeResult:
        yield SearchBox(placeholder="/ searches the resolved config (e.g. rho_cap, loss ramp); esc clears",
                        id="config-search")
        with VerticalScroll(id="config-scroll"):
            yield Static(id="config-lines")

    def show(self, config_json: str | None) -> None:
        if config_json != self.config_json:
            self.config_json = config_json
            self._draw()

    def focus_search(self) -> None:
        self.query_one("#config-search", SearchBox).focus()

    def focus_lines(self) -> None:
        self.query_one("#config-scroll", VerticalScroll).focus()

    def on_input_changed(self, event: SearchBox.Changed) -> None:
        event.stop()
        self._draw()

    def on_input_submitted(self, event: SearchBox.Submitted) -> None:
        event.stop()
        self.focus_lines()

    def on_search_box_left(self, event: SearchBox.Left) -> None:
        event.stop()
        self.focus_lines()

    def _draw(self) -> None:
        self.query_one("#config-lines", Static).update(
            config_lines(self.config_json, self.query_one("#config-search", SearchBox).value))
