"""The run screen's two status lines: where the run is, and what needs attention."""
from __future__ import annotations

import json
import time

from rich.text import Text
from textual.widget import Widget

from store.reader import is_stale
from store.schema import TERMINAL_STATES
from tui.alerts import Alert
from tui.liveness import Liveness, of_app
from tui.plots import epoch_label
from tui.tail import RunSnapshot

NOTE_S = 10.0  # a command's outcome stays on the status line this long (or until the next key)

STATE_STYLES = {
    "running": "bold green", "paused": "bold yellow", "evaluating": "bold cyan", "starting": "cyan",
    "stopping": "yellow", "stopped": "bright_black", "finished": "bold blue", "failed": "bold red",
    "crashed": "bold red reverse",
}
# What an acknowledged (or finished) command did, by verb; {step} is where the daemon took it.
ACKED = {"pause": "paused at step {step}", "resume": "resumed at step {step}",
         "eval": "evaluating from step {step}", "checkpoint": "checkpointing at step {step}",
         "stop": "stopping at step {step}"}
DONE = {"pause": "paused at step {step}", "resume": "resumed at step {step}",
        "eval": "eval taken at step {step} done", "checkpoint": "checkpoint saved at step {step}",
        "stop": "stopped at step {step}"}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def command_status(cmd: dict) -> tuple[str, str]:
    """One line about a command and a style: waiting, taken at a step, done or failed."""
    verb, state, step = cmd["verb"], cmd["state"], cmd.get("acked_step")
    if state == "pending":
        return f"{verb}: sent, waiting for the daemon", "yellow"
    if state == "failed":
        return f"{verb} failed: {_result_text(cmd.get('result'))}", "bold red"
    result = _result(cmd.get("result")) if state == "done" else {}
    if verb == "resume" and result.get("was_paused") is False:  # the daemon answered, nothing changed
        return f"resume: run was not paused (step {result.get('step', step)})", "yellow"
    if verb == "pause" and result.get("note"):
        return f"pause: run was already paused (step {result.get('step', step)})", "yellow"
    words = (DONE if state == "done" else ACKED).get(verb, verb + " at step {step}")
    return words.format(step=step if step is not None else "?"), "green"


def _result(raw: str | None) -> dict:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _result_text(raw: str | None) -> str:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return raw or ""
    if isinstance(value, dict):
        return str(value.get("error") or value)
    return "" if value is None else str(value)


def eval_progress(run: RunSnapshot) -> str | None:
    """`5CAT 7/12 OOD A offsets` while the run evaluates: its newest eval_progress event."""
    if run.run["state"] != "evaluating":
        return None
    for event in reversed(run.events[-64:]):  # the events since the eval began are the newest few
        if event["kind"] == "eval_progress":
            d = _result(event["detail"])
            return f"5CAT {d.get('done', '?')}/{d.get('total', '?')} {d.get('stage', '')}".rstrip()
    return "5CAT starting"


def state_text(state: str, heartbeat_at: float | None, now: float, held: bool | None = None) -> Text:
    """The state, whole, flagged when a live run stopped heartbeating: `not responding for 42s`
    while its daemon still holds the run's lock (held), else `silent 42s` (its daemon is
    probably gone; the next lvmd command marks it crashed)."""
    if is_stale(state, heartbeat_at, now):
        if heartbeat_at is None:
            age = "no heartbeat"
        elif held:
            age = f"not responding for {fmt_duration(now - heartbeat_at)}"
        else:
            age = f"silent {fmt_duration(now - heartbeat_at)}"
        return Text(f"{state}? {age}", style="bold red reverse")
    return Text(state, style=STATE_STYLES.get(state, ""))


def run_state_text(run: dict, now: float, liveness: Liveness) -> Text:
    """state_text for a runs row, probing the lock of a silent run (tui.liveness)."""
    held = None
    if is_stale(run["state"], run.get("heartbeat_at"), now):
        held = liveness.held(run.get("out_dir"), run.get("host"))
    return state_text(run["state"], run.get("heartbeat_at"), now, held)


class CommandNotes:
    """The newest command's fate for the status line: while it is pending or taken, then NOTE_S
    seconds after this TUI saw it end (none for one that ended before), or until the next key."""

    def __init__(self) -> None:
        self._ended: dict[int, float] = {}  # command id -> monotonic time this TUI saw it end
        self._dismissed: set[int] = set()

    def note(self, commands: tuple[dict, ...], *, mono: float | None = None,
             wall: float | None = None) -> tuple[str, str] | None:
        if not commands:
            return None
        mono = time.monotonic() if mono is None else mono
        wall = time.time() if wall is None else wall
        cmd = commands[0]
        if cmd["state"] in ("pending", "acked"):
            return command_status(cmd)
        if cmd["id"] not in self._ended:
            ended = cmd.get("done_at") or cmd.get("acked_at") or cmd.get("issued_at") or wall
            self._ended[cmd["id"]] = mono - max(0.0, wall - ended)
        if cmd["id"] in self._dismissed or mono - self._ended[cmd["id"]] > NOTE_S:
            return None
        return command_status(cmd)

    def dismiss(self) -> None:
        """A key was pressed: the outcomes shown so far go (a pending command keeps its line)."""
        self._dismissed.update(self._ended)


class StatusBar(Widget):
    DEFAULT_CSS = """
    StatusBar { height: 2; background: $panel; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.run: RunSnapshot | None = None
        self.alerts: list[Alert] = []
        self.notes: list[tuple[str, str]] = []  # (text, style) shown after the alerts
        self.missing: str = "waiting for the database…"
        self.command_notes = CommandNotes()

    def show(self, run: RunSnapshot | None, alerts: list[Alert], notes: list[tuple[str, str]]) -> None:
        self.run, self.alerts, self.notes = run, alerts, notes
        self.refresh()

    def render(self) -> Text:
        if self.run is None:
            return Text(self.missing, style="dim")
        # one line each (CSS: nowrap), so the second line is never pushed off by the first
        return Text("\n").join([self._where(time.time()), self._attention()])

    def _where(self, now: float) -> Text:
        """Where the run is. What a glance needs (state, progress, speed, ETA, heartbeat) always
        fits: on a narrow terminal the word `steps`, then the preset and precision (`bf16×2`: bf16
        on 2 threads) go and the name shortens."""
        r, latest = self.run.run, self.run.latest or {}
        step = latest.get("step", r.get("step") or 0)
        epoch = latest.get("epoch", r.get("epoch"))
        tail = Text(" · ")
        state = run_state_text(r, now, of_app(self.app))
        silent = is_stale(r["state"], r.get("heartbeat_at"), now)
        tail.append_text(state)
        if epoch is not None:
            tail.append(f" · e{epoch_label(epoch, r.get('total_epochs'))}")
        steps = f" · {step:,}" + (f"/{r['total_steps']:,}" if r.get("total_steps") else "")
        tail.append(steps + " steps")
        if (r.get("world_size") or 1) > 1:     # a torchrun job: its rank count
            tail.append(f" · {r['world_size']} ranks")
        rate = self.run.steps_per_s
        # no speed or ETA while replaying, or while the daemon is silent (it is not making them)
        if r["state"] == "running" and rate and self.run.step_limit is None and not silent:
            tail.append(f" · {rate:,.1f} st/s")
            if r.get("total_steps") and step < r["total_steps"]:
                tail.append(f" · ETA {fmt_duration((r['total_steps'] - step) / rate)}")
        if r.get("heartbeat_at") is not None and r["state"] not in TERMINAL_STATES:
            tail.append(f" · ♥ {fmt_duration(max(0.0, now - r['heartbeat_at']))}", style="dim")
        width = self.content_region.width or 10**6
        head, name, preset = f"run {r['id']} ", r["name"], f" · {r.get('preset') or '?'}"
        if r.get("precision"):  # as resolved on the machine (train.precision/threads may say auto)
            preset += f" · {r['precision']}×{r.get('threads') or '?'}"
        if len(head) + len(name) + len(preset) + tail.cell_len > width:
            at = tail.plain.find(steps + " steps") + len(steps)
            tail = tail[:at] + tail[at + len(" steps"):]
        if len(head) + len(name) + len(preset) + tail.cell_len > width:
            preset = ""
        room = width - len(head) - tail.cell_len
        if len(name) > room:
            name = name[:max(room - 1, 4)] + "…"
        line = Text()
        line.append(head, style="bold")
        line.append(name + preset)
        line.append_text(tail)
        return line

    def _attention(self) -> Text:
        line = Text()
        for alert in self.alerts:
            line.append(f"⚠ {alert.text}", style="bold red")
            line.append("  ")
        if not self.alerts and self.run.series.count:
            line.append("✓ guardrails holding", style="green")
            line.append("  ")
        notes = list(self.notes)
        if (command := self.command_notes.note(self.run.commands)) is not None:
            notes.insert(0, command)
        for text, style in notes:
            line.append(text, style=style)
            line.append("  ")
        return line
