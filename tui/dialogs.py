"""Modal screens: the key help (built from the live bindings, so it cannot drift) and a yes/no."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Static


def key_rows(screen: Screen) -> list[tuple[str, str]]:
    """(key, what it does) for the screen's and the app's bindings, in declaration order."""
    rows = []
    for owner in (screen, screen.app):
        for binding in owner.BINDINGS:
            if isinstance(binding, Binding) and not binding.system:
                key = binding.key_display or screen.app.get_key_display(binding)
                rows.append((key, binding.tooltip or binding.description))
    rows.append(("ctrl+p", "command palette: every action by name"))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", show=False)]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 72; max-width: 100%; height: auto; max-height: 100%;
                                   border: round $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, under: Screen, title: str) -> None:
        super().__init__()
        self.rows = key_rows(under)
        self.title_text = title

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, text in self.rows:
            table.add_row(key, text)
        with VerticalScroll():
            yield Static(Text(self.title_text, style="bold"))
            yield Static(table)
            yield Static(Text("esc closes", style="dim"))


class ConfirmScreen(ModalScreen[bool]):
    """Asks once: y confirms; n or esc cancels (Cancel has the focus, so a stray enter is safe)."""
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 60; max-width: 100%; height: auto; border: thick $error;
                               background: $surface; padding: 1 2; }
    ConfirmScreen Horizontal { height: auto; margin-top: 1; }
    ConfirmScreen Button { margin-right: 2; }
    """

    def __init__(self, question: str, yes_label: str) -> None:
        super().__init__()
        self.question, self.yes_label = question, yes_label

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            with Horizontal():
                yield Button(f"{self.yes_label} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
