"""A modal list to choose from, narrowed by typing: the metric picker (`m`) and the event kind
filter (`f`). ↑ ↓ move, enter takes the highlighted choice, esc clears the words, then closes."""
from __future__ import annotations

from typing import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from tui.metrics import Metric
from tui.widgets.search import SearchBox


class ChoiceScreen(ModalScreen[str | None]):
    """choices: (key, label, hint); dismisses with the chosen key, or None."""

    BINDINGS = [
        Binding("down", "move(1)", "Down", show=False),
        Binding("up", "move(-1)", "Up", show=False),
        Binding("pagedown", "move(8)", "Page down", show=False),
        Binding("pageup", "move(-8)", "Page up", show=False),
    ]
    DEFAULT_CSS = """
    ChoiceScreen { align: center middle; }
    ChoiceScreen > Vertical { width: 76; max-width: 100%; height: auto; max-height: 90%;
                               border: round $accent; background: $surface; padding: 0 1; }
    ChoiceScreen #choice-title { height: auto; }
    ChoiceScreen OptionList { height: auto; max-height: 20; }
    """

    def __init__(self, title: str, choices: Sequence[tuple[str, str, str]], current: str | None = None) -> None:
        super().__init__()
        self.title_text, self.choices, self.current = title, list(choices), current
        self.shown: list[tuple[str, str, str]] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.title_text, style="bold"), id="choice-title")
            yield SearchBox(placeholder="type to narrow (every word must appear)", id="choice-search")
            yield OptionList(id="choice-list")

    def on_mount(self) -> None:
        self._fill("")
        self.query_one(SearchBox).focus()

    def _fill(self, query: str) -> None:
        words = query.lower().split()
        self.shown = [c for c in self.choices if all(w in " ".join(c).lower() for w in words)]
        if words:  # the best match first: the label itself, then labels that start so, then the rest
            q = " ".join(words)
            self.shown.sort(key=lambda c: (c[1].lower() != q, not c[1].lower().startswith(q),
                                           not all(w in c[1].lower() for w in words)))
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(self._line(key, label, hint), id=key) for key, label, hint in self.shown])
        if self.shown:
            keys = [c[0] for c in self.shown]
            options.highlighted = keys.index(self.current) if self.current in keys and not words else 0

    def _line(self, key: str, label: str, hint: str) -> Text:
        text = Text("● " if key == self.current else "  ", style="yellow")
        text.append(label, style="bold")
        if hint:
            text.append(f"  {hint}", style="dim")
        return text

    def on_input_changed(self, event: SearchBox.Changed) -> None:
        event.stop()
        self._fill(event.value)

    def on_input_submitted(self, event: SearchBox.Submitted) -> None:
        event.stop()
        options = self.query_one(OptionList)
        if options.highlighted is not None and self.shown:
            self.dismiss(self.shown[options.highlighted][0])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def on_search_box_left(self, event: SearchBox.Left) -> None:
        event.stop()
        self.dismiss(None)

    def action_move(self, delta: int) -> None:
        options = self.query_one(OptionList)
        if self.shown:
            now = options.highlighted if options.highlighted is not None else 0
            options.highlighted = max(0, min(len(self.shown) - 1, now + delta))


def metric_choices(catalogue: Sequence[Metric], default_title: str) -> list[tuple[str, str, str]]:
    """The picker's lines: the slot's default first, then every metric by source."""
    where = {"steps": "every step", "epochs": "every epoch", "eval": "every 5CAT"}
    return [("default", f"default: {default_title}", "this slot's own chart")] + [
        (m.key, m.label, f"{m.key} · {where[m.source]}") for m in catalogue]
