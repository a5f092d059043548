"""One run, live: status, charts, gates, events, config and the machine, and the keys that steer it.

The screen holds two helpers: which stretch of the run it shows and against what (replay, zoom,
baseline: tui.run_window) and what every chart shares (x axis, smoothing, cursor: tui.chart_deck).
The views are widgets that draw what they are shown and speak by messages (a chart's new metric or
scale, the mouse over a step).

Focus decides what a key means: while a text box has focus every printable key is text; the
run's commands (p r e c s) act only from a chart or a table, and say so elsewhere."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input, TabbedContent, TabPane

from tui.alerts import alerts_for
from tui.chart_deck import CHART_TABS, ChartDeck
from tui.dialogs import ConfirmScreen
from tui.metrics import STEP_SLOTS
from tui.run_window import RunWindow
from tui.tail import RunSnapshot, TailUpdate
from tui.widgets.chart import Chart
from tui.widgets.config import ConfigPane
from tui.widgets.events import EventLog, EventsPane
from tui.widgets.gates import GateTable
from tui.widgets.status import StatusBar
from tui.widgets.system import SystemPane

COMMAND_HOMES = (Chart, DataTable, EventLog, SystemPane)  # where p r e c s act


class RunScreen(Screen):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    BINDINGS = [
        Binding("p", "command('pause')", "Pause", tooltip="pause the run at the next step boundary"),
        Binding("r", "command('resume')", "Resume", tooltip="resume a paused run"),
        Binding("e", "command('eval')", "Eval", tooltip="run a 5CAT evaluation now"),
        Binding("c", "command('checkpoint')", "Ckpt", tooltip="save a checkpoint now"),
        Binding("s", "stop", "Stop…", tooltip="stop the run (asks first)"),
        # [ ] l m L x S f / are left out of the footer so that z, esc, ? and q fit at 80 columns (? lists them)
        Binding("left_square_bracket", "replay(-1)", "◀Ep", show=False, tooltip="replay: show the run as of the previous epoch"),
        Binding("right_square_bracket", "replay(1)", "Ep▶", show=False, tooltip="replay: next epoch (past the last: live)"),
        Binding("l", "live", "Live", show=False, tooltip="leave replay, follow the run live"),
        Binding("b", "toggle_baseline", "Base", tooltip="overlay the baseline run's curves (grey, dash-dot ┉)"),
        Binding("z", "zoom", "Zoom", tooltip="step charts: the newest 1/4, 1/16, 1/64 of the steps, then all"),
        Binding("m", "pick_metric", "Metric", show=False,
                tooltip="chart a metric: any column of steps or epochs, or a 5CAT metric, in the focused chart"),
        Binding("L", "log_scale", "Log", key_display="L", show=False, tooltip="log scale on the focused chart (again: linear)"),
        Binding("x", "x_axis", "X axis", show=False, tooltip="x axis of every chart: step, wall time, epoch"),
        Binding("S", "smooth", "Smooth", key_display="S", show=False,
                tooltip="step charts: EMA smoothing weight 0, 0.6, 0.9, 0.99 (as TensorBoard's slider)"),
        Binding("left", "cursor(-1)", "◀", key_display="←", show=False, priority=True,
                tooltip="step charts: cursor one bin left (reads step, value, min/max; the mouse does too)"),
        Binding("right", "cursor(1)", "▶", key_display="→", show=False, priority=True,
                tooltip="step charts: cursor one bin right (past the newest: cursor off)"),
        Binding("comma", "pick_eval(-1)", "◀Eval", show=False, tooltip="gate table: previous eval"),
        Binding("full_stop", "pick_eval(1)", "Eval▶", show=False, tooltip="gate table: next eval"),
        Binding("slash", "search", "Search", key_display="/", show=False,
                tooltip="search the shown view: Config keys, Events words (esc clears, then steps back)"),
        Binding("f", "event_kind", "Kind", show=False, tooltip="Events: show one kind of event (or all)"),
        Binding("end", "end", "End", show=False, tooltip="Events: jump to the newest and follow it; charts: cursor off"),
        Binding("1", "tab('train')", "Train", show=False, tooltip="tab: guardrail charts"),
        Binding("2", "tab('epochs')", "Epochs", show=False, tooltip="tab: val margin, val cos, 5CAT gates"),
        Binding("3", "tab('events')", "Events", show=False, tooltip="tab: event log and commands"),
        Binding("4", "tab('config')", "Config", show=False, tooltip="tab: the run's resolved config, searchable"),
        Binding("5", "tab('system')", "System", show=False, tooltip="tab: CPU, memory and GPUs of the daemon's machine over time"),
        Binding("escape", "back", "Runs", tooltip="back to the list of runs (first: the chart cursor off)"),
    ]

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id
        self.snapshot: RunSnapshot | None = None
        self.baseline: RunSnapshot | None = None
        self.overlays: tuple[RunSnapshot, ...] = ()  # the runs marked on the runs screen
        self.announced: set[str] = set()
        self.window = RunWindow(self)           # replay, zoom, baseline: what the tail reads
        self.deck = ChartDeck(self)             # x axis, smoothing, cursor, metrics: what the charts share

    # as the keys left them (tui.run_window, tui.chart_deck)
    replay_epoch = property(lambda self: self.window.replay_epoch)
    zoom = property(lambda self: self.window.zoom)
    x_kind = property(lambda self: self.deck.x_kind)
    smooth = property(lambda self: self.deck.smooth)
    cursor_step = property(lambda self: self.deck.cursor_step)

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with TabbedContent(initial="train"):
            with TabPane("Train", id="train"):
                with Grid(id="train-grid"):
                    for slot in STEP_SLOTS:
                        yield Chart(slot, id=f"chart-{slot}", classes="step-chart")
            with TabPane("Epochs", id="epochs"):
                with Vertical():
                    with Horizontal(id="epoch-charts"):
                        yield Chart("margin", id="chart-margin")
                        yield Chart("valcos", id="chart-valcos")
                    yield GateTable(id="gates")
            with TabPane("Events", id="events"):
                yield EventsPane(id="events-pane")
            with TabPane("Config", id="config"):
                yield ConfigPane(id="config-pane")
            with TabPane("System", id="system"):
                yield SystemPane(id="system-pane")
        yield Footer(compact=True, show_command_palette=False)  # ? lists ctrl+p

    def on_mount(self) -> None:
        self.deck.apply_prefs()
        self.set_interval(1.0, self.query_one(StatusBar).refresh)  # heartbeat age and ETA tick
        self.query_one("#chart-rho", Chart).focus()
        if self.app.last_update is not None:
            self.show_update(self.app.last_update)

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_bins)

    def _fit_bins(self) -> None:
        """Ask for about one bin per braille dot of the widest step chart (when it is laid out)."""
        widths = [c.dots_wide for c in self.query(".step-chart").results(Chart) if c.size.width > 0]
        if widths:
            self.app.follow(target_bins=max(widths))

    # -- drawing -----------------------------------------------------------------------------
    def show_update(self, update: TailUpdate) -> None:
        # The tail thread can deliver before compose() has built the widgets (or after they are
        # gone at exit); the next update redraws everything anyway.
        if update.view.run_id != self.run_id or not self.is_mounted:
            return
        if update.run is None:
            self.query_one(StatusBar).missing = f"no run {self.run_id} in this database"
            self.query_one(StatusBar).refresh()
            return
        self.snapshot = update.run
        self.baseline = update.baseline if self.window.show_baseline else None
        self.overlays = update.overlays
        wanted = self.app.baseline_id
        if self.window.show_baseline and wanted not in (None, self.run_id) and update.view.baseline_id == wanted \
                and update.baseline is None:
            self._announce(f"baseline-{wanted}", f"baseline run {wanted} is not in this database: no overlay")
        try:
            self.redraw()
        except NoMatches:  # widgets being torn down at exit
            return

    def _announce(self, key: str, text: str, severity: str = "warning") -> None:
        if key not in self.announced:
            self.announced.add(key)
            self.notify(text, title=f"run {self.run_id}", severity=severity, timeout=10)

    def redraw(self) -> None:
        run = self.snapshot
        alerts = alerts_for(run)
        for alert in alerts:
            self._announce(alert.key, alert.text, "error")
        self.query_one(StatusBar).show(run, alerts, self.window.notes())
        self.deck.draw()
        self.query_one(GateTable).show_evals(run.evals, run.gates)
        self.query_one(EventsPane).show(run.events, run.epochs, run.commands)
        self.query_one(ConfigPane).show(run.run.get("config_json"))
        self.query_one(SystemPane).show(run.system_history, run.system)

    def refresh_status(self) -> None:
        if self.snapshot is not None:
            self.query_one(StatusBar).show(self.snapshot, alerts_for(self.snapshot), self.window.notes())

    # -- focus: what a key means -------------------------------------------------------------
    def on_key(self, event) -> None:
        """Any key is the next action: the last command's outcome leaves the status line."""
        self.query_one(StatusBar).command_notes.dismiss()

    def shown_tab(self) -> str:
        return self.query_one(TabbedContent).active

    def _home(self, tab: str) -> Widget:
        """Where the focus goes when a tab is shown: its chart, its log, its lines."""
        if tab in CHART_TABS:
            return self.deck.first_of(tab)
        return {"events": lambda: self.query_one(EventLog), "config": lambda: self.query_one("#config-scroll"),
                "system": lambda: self.query_one(SystemPane)}[tab]()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.call_after_refresh(self._focus_home, event.pane.id)

    def _focus_home(self, tab: str) -> None:
        """Give the shown tab the focus, unless a key (`/`) already put it somewhere in that tab."""
        focused = self.focused
        pane = self.query_one(f"TabPane#{tab}")
        if self.shown_tab() == tab and (focused is None or pane not in focused.ancestors):
            self._home(tab).focus()

    def _commands_here(self, key: str) -> bool:
        if isinstance(self.focused, COMMAND_HOMES):
            return True
        where = "a text box" if isinstance(self.focused, Input) else f"the {self.shown_tab()} tab"
        self.notify(f"`{key}` steers the run from a chart or a table (tabs 1, 2, 3, 5); not from {where}",
                    severity="warning", timeout=4)
        return False

    # -- actions -----------------------------------------------------------------------------
    def action_command(self, verb: str) -> None:
        if self._commands_here(verb[0]):
            self.app.send_command(self.run_id, verb)

    def action_stop(self) -> None:
        if not self._commands_here("s") or self.app.refuse_if_readonly("stop"):
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.send_command(self.run_id, "stop")

        self.app.push_screen(ConfirmScreen(f"Stop run {self.run_id}? The daemon checkpoints and exits;"
                                           f" `lvmd resume {self.run_id}` can continue it later.", "Stop"), answered)

    def action_replay(self, delta: int) -> None:
        self.window.replay(delta)

    def action_live(self) -> None:
        self.window.set_replay(None)

    def action_zoom(self) -> None:
        self.window.cycle_zoom()

    def action_toggle_baseline(self) -> None:
        self.window.toggle_baseline()

    def action_smooth(self) -> None:
        self.deck.cycle_smooth()

    def action_x_axis(self) -> None:
        self.deck.cycle_x()
        self.refresh_status()

    def action_log_scale(self) -> None:
        self.deck.toggle_log()

    def action_pick_metric(self) -> None:
        self.deck.pick_metric()

    def on_chart_spec_changed(self, event: Chart.SpecChanged) -> None:
        self.deck.spec_changed(event.chart)

    def on_chart_hovered(self, event: Chart.Hovered) -> None:
        self.deck.hovered(event.x)

    def action_cursor(self, delta: int) -> None:
        if isinstance(self.focused, Input):  # ← → keep moving the text cursor of a search box
            (self.focused.action_cursor_left if delta < 0 else self.focused.action_cursor_right)()
        else:
            self.deck.move_cursor(delta)

    def set_cursor(self, step: int | None) -> None:
        self.deck.set_cursor(step)

    def action_pick_eval(self, delta: int) -> None:
        self.query_one(GateTable).pick(delta)

    def action_tab(self, tab: str) -> None:
        # Blur first: a focused widget left in the pane being hidden would hand the focus to one
        # of its neighbours there, and TabbedContent switches back to the pane that holds the focus.
        if self.shown_tab() != tab:
            self.set_focus(None)
            self.query_one(TabbedContent).active = tab

    def action_search(self) -> None:
        tab = self.shown_tab()
        if tab == "config":
            self.query_one(ConfigPane).focus_search()
        elif tab == "events":
            self.query_one(EventsPane).focus_filter()
        else:
            self.notify("/ searches the Config (4) and Events (3) tabs; m picks a chart's metric", timeout=4)

    def action_event_kind(self) -> None:
        if self.shown_tab() != "events":
            self.notify("f chooses the kind of event on the Events tab (3)", timeout=4)
            return
        self.query_one(EventsPane).ask_kind()

    def action_end(self) -> None:
        if self.shown_tab() == "events":
            log = self.query_one(EventLog)
            log.focus()
            log.action_scroll_end()
        elif self.cursor_step is not None:
            self.deck.set_cursor(None)

    def action_back(self) -> None:
        if self.cursor_step is not None:  # one layer at a time: the cursor first
            self.deck.set_cursor(None)
            return
        self.app.close_run()
