"""One run, live: status, guardrail charts, epoch charts and gates, events and commands."""
from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Input, Static, TabbedContent, TabPane

from tui.alerts import alerts_for
from tui.dialogs import ConfirmScreen
from tui.plots import STEP_CHARTS, event_markers, margin_plot, shown_epoch, step_plot, val_cos_plot
from tui.tail import RunSnapshot, TailUpdate
from tui.widgets.chart import Chart
from tui.widgets.config import ConfigPane
from tui.widgets.system import SystemPane
from tui.widgets.events import CommandLog, EventLog
from tui.widgets.gates import GateTable
from tui.widgets.status import StatusBar, command_status, eval_progress


CHART_PERIOD_S = 1.0  # a live run's step charts redraw at most this often
MAX_ZOOM = 3  # 1/4, 1/16, 1/64 of the steps; one more press shows the whole run again


class RunScreen(Screen):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    BINDINGS = [
        Binding("p", "command('pause')", "Pause", tooltip="pause the run at the next step boundary"),
        Binding("r", "command('resume')", "Resume", tooltip="resume a paused run"),
        Binding("e", "command('eval')", "Eval", tooltip="run a 5CAT evaluation now"),
        Binding("c", "command('checkpoint')", "Ckpt", tooltip="save a checkpoint now"),
        Binding("s", "stop", "Stop…", tooltip="stop the run (asks first)"),
        # [ ] l are left out of the footer so that z, esc, ? and q fit at 80 columns (? lists them)
        Binding("left_square_bracket", "replay(-1)", "◀Ep", show=False, tooltip="replay: show the run as of the previous epoch"),
        Binding("right_square_bracket", "replay(1)", "Ep▶", show=False, tooltip="replay: next epoch (past the last: live)"),
        Binding("l", "live", "Live", show=False, tooltip="leave replay, follow the run live"),
        Binding("b", "toggle_baseline", "Base", tooltip="overlay the baseline run's curves (grey)"),
        Binding("z", "zoom", "Zoom", tooltip="step charts: the newest 1/4, 1/16, 1/64 of the steps, then all"),
        Binding("S", "smooth", "Smooth", key_display="S", show=False,
                tooltip="step charts: EMA-smoothed lines over the min/max band (again: raw means)"),
        Binding("left", "cursor(-1)", "◀", key_display="←", show=False, priority=True,
                tooltip="step charts: cursor one bin left (reads step, value, min/max; the mouse does too)"),
        Binding("right", "cursor(1)", "▶", key_display="→", show=False, priority=True,
                tooltip="step charts: cursor one bin right (past the newest: cursor off)"),
        Binding("comma", "pick_eval(-1)", "◀Eval", show=False, tooltip="gate table: previous eval"),
        Binding("full_stop", "pick_eval(1)", "Eval▶", show=False, tooltip="gate table: next eval"),
        Binding("1", "tab('train')", "Train", show=False, tooltip="tab: guardrail charts"),
        Binding("2", "tab('epochs')", "Epochs", show=False, tooltip="tab: val margin, val cos, 5CAT gates"),
        Binding("3", "tab('events')", "Events", show=False, tooltip="tab: event log and commands"),
        Binding("4", "tab('config')", "Config", show=False, tooltip="tab: the run's resolved config, searchable"),
        Binding("5", "tab('system')", "System", show=False, tooltip="tab: CPU, memory and GPUs of the daemon's machine"),
        Binding("escape", "back", "Runs", tooltip="back to the list of runs"),
    ]

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id
        self.snapshot: RunSnapshot | None = None
        self.baseline: RunSnapshot | None = None
        self.overlays: tuple[RunSnapshot, ...] = ()  # the runs marked on the runs screen
        self.replay_epoch: int | None = None
        self.show_baseline = True
        self.picked_eval_id: int | None = None  # None: the newest eval in view
        self.zoom = 0                           # step charts: the newest 4^-zoom of the steps
        self.announced: set[str] = set()
        self._drawn: dict[str, tuple] = {}      # what the charts were last drawn from
        self._charts_at = 0.0                   # when the step charts were last drawn (monotonic)
        self._chart_timer = None
        self.smooth = False
        self.cursor_step: int | None = None     # the step charts' cursor (None: off)

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with TabbedContent(initial="train"):
            with TabPane("Train", id="train"):
                with Grid(id="train-grid"):
                    for spec in STEP_CHARTS:
                        yield Chart(spec.title, log_y=spec.log_y, id=f"chart-{spec.id}", classes="step-chart")
            with TabPane("Epochs", id="epochs"):
                with Vertical():
                    with Horizontal(id="epoch-charts"):
                        yield Chart("val margin", show_markers=False, id="chart-margin")
                        yield Chart("val cos", show_markers=False, id="chart-valcos")
                    yield GateTable(id="gates")
            with TabPane("Events", id="events"):
                yield Static(EventLog.HEADER, classes="log-header")
                yield EventLog(id="event-log")
                yield CommandLog(id="command-log")
            with TabPane("Config", id="config"):
                yield ConfigPane(id="config-pane")
            with TabPane("System", id="system"):
                yield SystemPane(id="system-pane")
        yield Footer(compact=True, show_command_palette=False)  # ? lists ctrl+p

    def on_mount(self) -> None:
        self.set_interval(1.0, self.query_one(StatusBar).refresh)  # heartbeat age and ETA tick
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
        self.baseline = update.baseline if self.show_baseline else None
        self.overlays = update.overlays
        try:
            self.redraw()
        except NoMatches:  # widgets being torn down at exit
            return

    def redraw(self) -> None:
        run, baseline = self.snapshot, self.baseline
        alerts = alerts_for(run)
        for alert in alerts:
            if alert.key not in self.announced:
                self.announced.add(alert.key)
                self.notify(alert.text, title=f"run {self.run_id}", severity="error", timeout=10)
        self.query_one(StatusBar).show(run, alerts, self._notes())
        # A heartbeat or a command commits too: redraw the charts only when what they show changed
        # (the tail hands over the same series object while no step arrived), so a paused run costs nothing.
        step_key = self._step_key()
        if step_key != self._drawn.get("steps"):
            # A live run commits a few times a second: the status line shows each step at once,
            # the six step charts at most every CHART_PERIOD_S (they barely move in between).
            # What you asked for (zoom, replay, baseline) is drawn at once.
            wait = self._charts_at + CHART_PERIOD_S - time.monotonic()
            if wait > 0 and self._drawn.get("view") == self._view_key():
                if self._chart_timer is None:
                    self._chart_timer = self.set_timer(wait, self._draw_due_charts)
            else:
                self._draw_step_charts(step_key)
        epoch_key = (run.epochs, run.run.get("total_epochs"), run.band, run.baseline_band,
                     baseline.epochs if baseline else None, tuple(o.epochs for o in self.overlays))
        if epoch_key != self._drawn.get("epochs"):
            self._drawn["epochs"] = epoch_key
            self.query_one("#chart-margin", Chart).show(margin_plot(run, baseline, self.overlays))
            self.query_one("#chart-valcos", Chart).show(val_cos_plot(run, baseline, self.overlays))
        self._show_gates()
        self.query_one(EventLog).show(run.events)
        self.query_one(CommandLog).show(run.commands)
        self.query_one(ConfigPane).show(run.run.get("config_json"))
        self.query_one(SystemPane).show(run.system)

    def _step_key(self) -> tuple:
        run, baseline = self.snapshot, self.baseline
        return (run.series, baseline.series if baseline else None, tuple(o.series for o in self.overlays),
                len(run.events),
                run.events[-1]["id"] if run.events else None)

    def _view_key(self) -> tuple:
        return (self.zoom, self.replay_epoch, self.show_baseline, self.baseline is None,
                tuple(o.run_id for o in self.overlays), self.smooth, self.cursor_step)

    def _draw_step_charts(self, key: tuple) -> None:
        self._drawn["steps"], self._drawn["view"], self._charts_at = key, self._view_key(), time.monotonic()
        run, baseline = self.snapshot, self.baseline
        markers = event_markers(run)
        for spec in STEP_CHARTS:
            self.query_one(f"#chart-{spec.id}", Chart).show(step_plot(spec, run, baseline, markers, self.overlays,
                                                                      smooth=self.smooth, cursor=self.cursor_step))

    def _draw_due_charts(self) -> None:
        self._chart_timer = None
        if self.is_mounted and self.snapshot is not None and self._step_key() != self._drawn.get("steps"):
            try:
                self._draw_step_charts(self._step_key())
            except NoMatches:  # torn down at exit
                pass

    def _notes(self) -> list[tuple[str, str]]:
        notes = []
        progress = eval_progress(self.snapshot)
        if progress:
            notes.append((progress, "bold cyan"))
        if self.snapshot.commands:
            notes.append(command_status(self.snapshot.commands[0]))
        if self.replay_epoch is not None:
            last = self.snapshot.last_epoch
            notes.append((f"REPLAY e{shown_epoch(self.replay_epoch)}/{shown_epoch(last) if last is not None else '?'}"
                          " ([ ] step, l live)", "bold reverse"))
        if self.zoom:
            notes.append((f"ZOOM newest 1/{4 ** self.zoom} (z)", "bold"))
        if self.baseline is not None:
            notes.append((f"vs run {self.baseline.run_id} (grey)", "bright_black"))
        if self.overlays:
            notes.append((f"+{len(self.overlays)} marked run{'s' if len(self.overlays) > 1 else ''}", "yellow"))
        if self.app.readonly:
            notes.append(("read-only", "dim"))
        return notes

    def _show_gates(self) -> None:
        evals = self.snapshot.evals
        table = self.query_one(GateTable)
        if not evals:
            table.show(None, (), 0, 0)
            return
        ids = [e["id"] for e in evals]
        pos = ids.index(self.picked_eval_id) if self.picked_eval_id in ids else len(ids) - 1
        ev = evals[pos]
        table.show(ev, self.snapshot.gates.get(ev["id"], ()), pos + 1, len(evals))

    # -- actions -----------------------------------------------------------------------------
    def action_command(self, verb: str) -> None:
        self.app.send_command(self.run_id, verb)

    def action_stop(self) -> None:
        if self.app.refuse_if_readonly("stop"):
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.send_command(self.run_id, "stop")

        self.app.push_screen(ConfirmScreen(f"Stop run {self.run_id}? The daemon checkpoints and exits;"
                                           f" `lvmd resume {self.run_id}` can continue it later.", "Stop"), answered)

    def action_replay(self, delta: int) -> None:
        last = self.snapshot.last_epoch if self.snapshot else None
        if last is None:
            self.notify("no finished epoch to replay yet", severity="warning")
            return
        if self.replay_epoch is None:
            if delta > 0:
                self.notify("already live")
                return
            target = last
        else:
            target = self.replay_epoch + delta
        if target < 0:
            self.notify("first epoch")
            return
        self._set_replay(None if target > last else target)

    def action_live(self) -> None:
        self._set_replay(None)

    def _set_replay(self, epoch: int | None) -> None:
        self.replay_epoch = epoch
        self.picked_eval_id = None
        self.app.follow(replay_epoch=epoch)

    def action_zoom(self) -> None:
        self.zoom = (self.zoom + 1) % (MAX_ZOOM + 1)
        self.app.follow(zoom=self.zoom)

    def action_smooth(self) -> None:
        self.smooth = not self.smooth
        self._redraw_step_charts()

    def action_cursor(self, delta: int) -> None:
        """Move the step charts' cursor by one bin; it starts at the newest step."""
        if isinstance(self.focused, Input):  # ← → keep moving the text cursor of the config search
            (self.focused.action_cursor_left if delta < 0 else self.focused.action_cursor_right)()
            return
        if self.snapshot is None or self.snapshot.series.last_step is None:
            return
        series = self.snapshot.series
        if self.cursor_step is None:
            step = series.last_step if delta < 0 else None
        else:
            step = self.cursor_step + delta * series.width
            step = None if step > series.last_step else max(series.step_from, step)
        self.set_cursor(step)

    def set_cursor(self, step: int | None) -> None:
        self.cursor_step = step
        self._redraw_step_charts()

    def _redraw_step_charts(self) -> None:
        if self.snapshot is not None:
            self._draw_step_charts(self._step_key())

    def action_toggle_baseline(self) -> None:
        if self.app.baseline_id is None or self.app.baseline_id == self.run_id:
            self.notify("no baseline: start with --baseline ID, or press b on a run in the runs list",
                        severity="warning")
            return
        self.show_baseline = not self.show_baseline
        self.app.follow(baseline_id=self.app.baseline_id if self.show_baseline else None)

    def action_pick_eval(self, delta: int) -> None:
        if not self.snapshot or not self.snapshot.evals:
            return
        ids = [e["id"] for e in self.snapshot.evals]
        pos = ids.index(self.picked_eval_id) if self.picked_eval_id in ids else len(ids) - 1
        self.picked_eval_id = ids[max(0, min(len(ids) - 1, pos + delta))]
        self._show_gates()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_back(self) -> None:
        self.app.close_run()
