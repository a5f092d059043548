"""The list of runs in the database: sort, filter, mark runs to overlay; enter opens one, b marks
the baseline to compare. Sweeps (lvmd sweep) show as a line each above the list; g marks every
seed of the highlighted member's configuration. `/` focuses the filter; esc clears it, then
hands the keys back to the list."""
from __future__ import annotations

import time
from typing import Mapping

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from store.reader import RunSummary
from tui.sweeps import SweepGroups, short_config
from tui.tail import TailUpdate
from tui.widgets.runs import COLUMNS, SORTABLE, RunList
from tui.widgets.search import SearchBox


class RunsScreen(Screen):
    AUTO_FOCUS = "#run-list"
    BINDINGS = [
        Binding("enter", "open", "Open", key_display="enter", tooltip="open the highlighted run (marked runs overlaid)"),
        Binding("m", "mark", "Mark", tooltip="mark the highlighted run to overlay on the run screen's charts (again: unmark)"),
        Binding("g", "mark_config", "Seeds", tooltip="mark every seed of the highlighted sweep member's configuration (again: unmark)"),
        Binding("b", "mark_baseline", "Baseline", tooltip="mark the highlighted run as the baseline to overlay"),
        Binding("o", "sort(1)", "Sort", tooltip="sort by the next column (the header shows which)"),
        Binding("O", "reverse", "Reverse", key_display="O", show=False, tooltip="reverse the sort order"),
        Binding("slash", "filter", "Filter", key_display="/",
                tooltip="filter runs by name, preset, state or sweep configuration (`running`: at work, `live`: any daemon)"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: tuple[RunSummary, ...] = ()
        self.sweeps: tuple[Mapping, ...] = ()

    def compose(self) -> ComposeResult:
        yield Static(id="runs-header")
        yield SweepGroups(id="sweep-groups")
        yield SearchBox(placeholder="filter: words in name, preset, state or sweep config (enter keeps it, esc clears)",
                        id="runs-filter")
        yield RunList(id="run-list")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#runs-filter", SearchBox).display = False
        self.set_interval(1.0, self._tick)
        if self.app.last_update is not None:
            self.show_update(self.app.last_update)
        else:
            self._draw()

    def _tick(self) -> None:
        if self.is_current:  # heartbeat ages grow without any database change
            self._draw()

    def show_update(self, update: TailUpdate) -> None:
        self.runs, self.sweeps = update.runs, update.sweeps
        if self.is_current:  # under the run screen: drawn when it comes back (on_screen_resume)
            self._draw()

    def on_screen_resume(self) -> None:
        self._draw()

    def _draw(self) -> None:
        now = time.time()
        table = self.query_one(RunList)
        table.show(self.runs, now, self.app.baseline_id, frozenset(self.app.marked_ids))
        self.query_one(SweepGroups).show(self.sweeps)
        silent = sum(r.is_stale(now) for r in self.runs)
        header = Text(f"lvmd · {self.app.db_path} · {len(self.runs)} runs", style="bold")
        if table.filter_text:
            header.append(f" · {len(table.runs)} match “{table.filter_text}”", style="yellow")
        if self.app.marked_ids:
            header.append(f" · {len(self.app.marked_ids)} marked", style="yellow")
        label = next(c.label for c in COLUMNS if c.key == table.sort_key)
        header.append(f" · sorted by {label} {'↓' if table.descending else '↑'}", style="dim")
        if silent:
            header.append(f" · {silent} silent (daemon gone?)", style="bold red")
        if not self.runs:
            header.append(" · no runs yet", style="dim")
        self.query_one("#runs-header", Static).update(header)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_run(int(event.row_key.value))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key in SORTABLE:
            table = self.query_one(RunList)
            table.descending = not table.descending if table.sort_key == key else True
            table.sort_key = key
            self._draw()

    def action_open(self) -> None:
        run_id = self.query_one(RunList).selected_run_id
        if run_id is not None:
            self.app.open_run(run_id)

    def action_mark(self) -> None:
        run_id = self.query_one(RunList).selected_run_id
        if run_id is not None:
            self.app.marked_ids ^= {run_id}
            self._draw()

    def action_mark_config(self) -> None:
        run_id = self.query_one(RunList).selected_run_id
        run = next((r for r in self.runs if r.id == run_id), None)
        if run is None or run.sweep_id is None:
            self.notify("not a sweep member: g marks the seeds of a sweep's configuration", severity="warning")
            return
        seeds = {r.id for r in self.runs if (r.sweep_id, r.sweep_config) == (run.sweep_id, run.sweep_config)}
        marking = not seeds <= self.app.marked_ids  # all marked already: unmark them
        self.app.marked_ids = self.app.marked_ids | seeds if marking else self.app.marked_ids - seeds
        self.notify(f"{'marked' if marking else 'unmarked'} {len(seeds)} runs of sweep {run.sweep_id}"
                    f" {short_config(run.sweep_config or '')}")
        self._draw()

    def action_mark_baseline(self) -> None:
        """b: this run is the baseline (again: none); says what it replaced, never silently."""
        run_id = self.query_one(RunList).selected_run_id
        if run_id is None:
            return
        before = self.app.baseline_id
        self.app.baseline_id = None if before == run_id else run_id
        if self.app.baseline_id is None:
            self.notify(f"baseline cleared (was run {before})")
        elif before is not None:
            self.notify(f"baseline: run {run_id} (replaces run {before})")
        else:
            self.notify(f"baseline: run {run_id}")
        self._draw()

    def action_sort(self, step: int) -> None:
        table = self.query_one(RunList)
        table.sort_key = SORTABLE[(SORTABLE.index(table.sort_key) + step) % len(SORTABLE)]
        self._draw()

    def action_reverse(self) -> None:
        table = self.query_one(RunList)
        table.descending = not table.descending
        self._draw()

    def action_filter(self) -> None:
        box = self.query_one("#runs-filter", SearchBox)
        box.display = True
        box.focus()

    def on_input_changed(self, event: SearchBox.Changed) -> None:
        self.query_one(RunList).filter_text = event.value.strip()
        self._draw()

    def on_input_submitted(self, event: SearchBox.Submitted) -> None:
        self.query_one(RunList).focus()
        event.input.display = bool(event.value.strip())

    def on_search_box_left(self, event: SearchBox.Left) -> None:
        event.box.display = False
        self.query_one(RunList).focus()

