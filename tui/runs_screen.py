"""The list of runs in the database; enter opens one, b marks it as the baseline to compare."""
from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from store.reader import RunSummary
from tui.tail import TailUpdate
from tui.widgets.runs import RunList


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "Open", key_display="enter", tooltip="open the highlighted run"),
        Binding("b", "mark_baseline", "Baseline", tooltip="mark the highlighted run as the baseline to overlay"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: tuple[RunSummary, ...] = ()

    def compose(self) -> ComposeResult:
        yield Static(id="runs-header")
        yield RunList(id="run-list")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)
        if self.app.last_update is not None:
            self.show_update(self.app.last_update)
        else:
            self._draw()

    def _tick(self) -> None:
        if self.is_current:  # heartbeat ages grow without any database change
            self._draw()

    def show_update(self, update: TailUpdate) -> None:
        self.runs = update.runs
        if self.is_current:  # under the run screen: drawn when it comes back (on_screen_resume)
            self._draw()

    def on_screen_resume(self) -> None:
        self._draw()

    def _draw(self) -> None:
        now = time.time()
        self.query_one(RunList).show(self.runs, now, self.app.baseline_id)
        silent = sum(r.is_stale(now) for r in self.runs)
        header = Text(f"lvmd · {self.app.db_path} · {len(self.runs)} runs", style="bold")
        if silent:
            header.append(f" · {silent} silent (daemon gone?)", style="bold red")
        if not self.runs:
            header.append(" · no runs yet", style="dim")
        self.query_one("#runs-header", Static).update(header)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_run(int(event.row_key.value))

    def action_open(self) -> None:
        run_id = self.query_one(RunList).selected_run_id
        if run_id is not None:
            self.app.open_run(run_id)

    def action_mark_baseline(self) -> None:
        run_id = self.query_one(RunList).selected_run_id
        if run_id is None:
            return
        self.app.baseline_id = None if self.app.baseline_id == run_id else run_id
        self.notify(f"baseline: run {run_id}" if self.app.baseline_id else "baseline cleared")
        self._draw()
