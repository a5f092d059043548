"""lvmd's terminal UI: the App wires the DbTail to the screens and owns the few app-wide choices
(which run, which baseline, read-only). No SQL here: reads come from the tail as messages, the
one write goes through tui.control."""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from tui import control, prefs
from tui.dialogs import HelpScreen
from tui.metrics import DEFAULT_SPECS, picked_spec, step_columns
from tui.run_screen import RunScreen
from tui.runs_screen import RunsScreen
from tui.tail import FALLBACK_S, DbTail, TailFailed, TailUpdate, TailView


class LvmdTui(App):
    CSS_PATH = "lvmd.tcss"
    TITLE = "lvmd"
    BINDINGS = [
        Binding("question_mark", "help", "Help", tooltip="this list of keys"),
        Binding("q", "quit", "Quit", tooltip="quit the TUI (the run goes on)"),
    ]

    def __init__(self, db_path: str | Path, *, run_id: int | None = None, baseline_id: int | None = None,
                 readonly: bool = False, fallback_s: float = FALLBACK_S) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.start_run_id = run_id
        self.baseline_id = baseline_id
        self.marked_ids: set[int] = set()  # runs marked on the runs screen: overlaid on the run screen's charts
        self.readonly = readonly
        self.last_update: TailUpdate | None = None
        self.tail = DbTail(self.db_path, self.post_message, view=TailView(baseline_id=baseline_id),
                           fallback_s=fallback_s)
        self.db_key = str(self.db_path.resolve())
        self.chart_prefs = prefs.ChartPrefs()
        self._prefs_failed = False
        self.fatal_error: str | None = None  # why the tail stopped for good (the app exits 1 with it)

    def on_mount(self) -> None:
        self._load_prefs()
        # a chart is never wider than the screen: start there, the run screen narrows it after layout;
        # the columns the remembered charts draw are read from the first read on (not read twice)
        columns = step_columns(picked_spec(slot, self.chart_prefs.slots.get(slot) or "default")
                               for slot in DEFAULT_SPECS)
        self.tail.set_view(replace(self.tail.view, run_id=self.start_run_id, target_bins=2 * self.size.width,
                                   step_columns=columns))
        self.run_worker(self.tail.run, thread=True, name="db-tail", exit_on_error=True)
        self.push_screen(RunsScreen())
        if self.start_run_id is not None:
            self.open_run(self.start_run_id)

    def on_unmount(self) -> None:
        self.tail.stop()

    # -- following the database --------------------------------------------------------------
    def follow(self, **changes) -> None:
        view = replace(self.tail.view, **changes)
        if view != self.tail.view:
            self.tail.set_view(view)

    def on_tail_update(self, update: TailUpdate) -> None:
        self.last_update = update
        for screen in self.screen_stack:
            if hasattr(screen, "show_update"):
                screen.show_update(update)

    def on_tail_failed(self, failure: TailFailed) -> None:
        if failure.fatal:  # nothing more will be read: say why, as `lvmd status` would, and end
            self.fatal_error = failure.error
            self.exit(return_code=1, message=f"tui: error: {failure.error}")
            return
        self.notify(failure.error, title="database", severity="error", timeout=10)

    # -- what was chosen to chart, per database (tui.prefs) -----------------------------------
    def _load_prefs(self) -> None:
        from store.db import StoreError, connect
        from store.runs import database_id

        try:
            conn = connect(self.db_path, readonly=True)
        except StoreError:  # the tail says why and ends the app
            return
        try:
            self.db_key = database_id(conn) or self.db_key
        finally:
            conn.close()
        self.chart_prefs = prefs.load(self.db_key)

    def save_prefs(self) -> None:
        try:
            prefs.save(self.db_key, self.chart_prefs)
        except OSError as exc:
            if not self._prefs_failed:  # once: the charts work on, only unremembered
                self._prefs_failed = True
                self.notify(f"charts not remembered: {prefs.state_path()}: {exc.strerror}", severity="warning")

    def open_run(self, run_id: int) -> None:
        if self.baseline_id == run_id:
            self.notify(f"run {run_id} is the baseline: opened without an overlay of itself", timeout=5)
        self.follow(run_id=run_id, replay_epoch=None, zoom=0,
                    baseline_id=self.baseline_id if self.baseline_id != run_id else None,
                    overlay_ids=tuple(sorted(self.marked_ids - {run_id, self.baseline_id})))
        self.push_screen(RunScreen(run_id))

    def close_run(self) -> None:
        self.follow(run_id=None, replay_epoch=None, zoom=0, overlay_ids=())
        self.pop_screen()

    # -- the one write -----------------------------------------------------------------------
    def refuse_if_readonly(self, verb: str) -> bool:
        if self.readonly:
            self.notify(f"read-only: `{verb}` not sent (started with --readonly)", severity="warning")
        return self.readonly

    def send_command(self, run_id: int, verb: str) -> None:
        if not self.refuse_if_readonly(verb):
            self._send(run_id, verb)

    @work(thread=True, group="commands")
    def _send(self, run_id: int, verb: str) -> None:
        try:
            command_id = control.send_command(self.db_path, run_id, verb)
        except Exception as exc:  # refused, locked, unwritable: say so; the UI keeps running
            self.call_from_thread(self.notify, f"{verb}: {exc}", severity="error")
            return
        self.call_from_thread(self.notify, f"{verb} sent to run {run_id} (command {command_id})")

    # -- help and the command palette --------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen, f"keys · {type(self.screen).__name__.replace('Screen', '')}"))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every key of the screen is also a palette command, named by its tooltip."""
        yield from super().get_system_commands(screen)
        for binding in getattr(screen, "BINDINGS", ()):
            if isinstance(binding, Binding) and binding.tooltip:
                yield SystemCommand(binding.tooltip.split(" (")[0].capitalize(), f"key: {self.get_key_display(binding)}",
                                    partial(screen.run_action, binding.action))
