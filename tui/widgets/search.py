"""SearchBox: the one kind of text input in the TUI (runs filter, config search, events filter,
pickers). While it has focus every printable key is text (Textual's Input takes them before any
binding sees them); esc clears it, and on an empty box says `Left` so its view can put the focus
back where keys mean commands again."""
from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class SearchBox(Input):
    BINDINGS = [Binding("escape", "clear_or_leave", "Clear", show=False)]

    class Left(Message):
        """Esc on an empty box: its view decides where the focus goes (one layer back)."""

        def __init__(self, box: "SearchBox") -> None:
            super().__init__()
            self.box = box

        @property
        def control(self) -> "SearchBox":
            return self.box

    def action_clear_or_leave(self) -> None:
        if self.value:
            self.value = ""
        else:
            self.post_message(self.Left(self))
