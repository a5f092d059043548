"""The Events tab: every event of the run, newest at the bottom, followed while you are at the
bottom (like `less +F`); a 5CAT's progress rows folded into one line per evaluation; narrowed
by kind (`f`) and by words (`/`); and the run's recent commands under it.

Epochs read from 1 and are those the step belongs to (the epochs table's end steps say where an
epoch ends), so a checkpoint and a state change at one step never name two epochs."""
from __future__ import annotations

import bisect
import json

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import DataTable, Static

from tui.widgets.canvas import MARKERS
from tui.widgets.picker import ChoiceScreen
from tui.widgets.search import SearchBox
from tui.widgets.status import command_status

KIND_STYLES = {kind: style for kind, (_glyph, style, _p) in MARKERS.items()} | {"eval_progress": "cyan",
                                                                                "error": "bold red"}
PROGRESS = "eval_progress"


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def detail_text(raw: str | None, limit: int = 70) -> str:
    """An event's JSON detail as `key=value` pairs, shortened to fit a row; an `epoch` is shown
    counted from 1, as `ep`."""
    if not raw:
        return ""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw[:limit]
    if isinstance(value, dict):
        text = " ".join(f"ep={v + 1}" if k == "epoch" and isinstance(v, int) else f"{k}={_short(v)}"
                        for k, v in value.items())
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _progress(raw: str | None) -> dict:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Folded:
    """Events as rows: each evaluation's eval_progress events become the one row of its newest
    progress. Built incrementally: a live run appends, a resume (which deletes rows) rebuilds."""

    def __init__(self) -> None:
        self.source: tuple[dict, ...] = ()
        self.rows: list[dict] = []
        self._open: dict[tuple, int] = {}  # (step, trigger) of an evaluation -> its row

    def update(self, events: tuple[dict, ...]) -> int | None:
        """Fold in what is new: None if nothing changed, else the first row that is new (0
        after a rebuild; a folded row before it may have changed in place)."""
        n = len(self.source)
        if n and (len(events) < n or events[n - 1] is not self.source[n - 1]):
            self.__init__()
            n = 0
        if len(events) == n:
            return None
        first = len(self.rows) if n else 0
        for e in events[n:]:
            self._add(e)
        self.source = events
        return first

    def _add(self, e: dict) -> None:
        if e["kind"] != PROGRESS:
            self.rows.append(e)
            return
        d = _progress(e["detail"])
        key = (e["step"], d.get("trigger"))
        at = self._open.get(key)
        if at is not None and (d.get("done") or 0) > (self.rows[at]["progress"].get("done") or 0):
            row = self.rows[at]
            row.update(progress=d, folded=row["folded"] + 1, t=e["t"], id=e["id"])
            return
        self._open[key] = len(self.rows)
        self.rows.append({**e, "progress": d, "folded": 1})

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r["kind"]] = counts.get(r["kind"], 0) + 1
        return counts


def row_matches(row: dict, kind: str | None, words: list[str]) -> bool:
    """The kind filter, then every word (a `-word` must not appear) in the kind and the detail."""
    if kind is not None and row["kind"] != kind:
        return False
    if not words:
        return True
    hay = f"{row['kind']} {row.get('detail') or ''}".lower()
    return all((w[1:] not in hay) if w.startswith("-") and len(w) > 1 else (w in hay) for w in words)


class EventLog(ScrollView, can_focus=True):
    """The rows, drawn line by line from the list it holds (the Line API), so 10^5 events cost
    nothing until scrolled to. `following`: pinned to the newest row; scrolling up lets go,
    reaching the bottom (or End) takes it again."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; }
    """
    HEADER = f"{'step':>8} {'ep':>3}  {'kind':<17} detail"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: list[dict] = []
        self.epoch_ends: list[int] = []  # the last step of each finished epoch, in order
        self.following = True
        self._pinning = False

    def show(self, rows: list[dict], epoch_ends: list[int]) -> None:
        self.rows, self.epoch_ends = rows, epoch_ends
        self.virtual_size = Size(self.size.width, len(rows))
        self._pin()
        self.call_after_refresh(self._pin)  # again once the new size is laid out (the bottom moved)
        self.refresh()

    def _pin(self) -> None:
        if self.following:
            self._pinning = True  # our own scroll: it says nothing about where you want to be
            try:
                self.scroll_end(animate=False, immediate=True)
            finally:
                self._pinning = False

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self.size.height and not self._pinning:  # a hidden log (another tab) has no bottom to be at
            self.following = new_value >= self.max_scroll_y

    def on_show(self) -> None:
        self.call_after_refresh(self._pin)

    def action_scroll_end(self) -> None:
        self.following = True
        self._pin()

    def epoch_of(self, row: dict) -> int | None:
        """The epoch (from 1) the row's step belongs to; the stored one for rows without a step."""
        if row["step"] is None:
            return None if row["epoch"] is None else row["epoch"] + 1
        return bisect.bisect_left(self.epoch_ends, row["step"]) + 1

    def line_text(self, index: int) -> Text:
        e = self.rows[index]
        ep = self.epoch_of(e)
        text = Text(f"{'' if e['step'] is None else e['step']:>8} {'' if ep is None else ep:>3}  ")
        text.append(f"{e['kind']:<17}", style=KIND_STYLES.get(e["kind"], ""))
        if e["kind"] == PROGRESS:
            d = e["progress"]
            text.append(f" 5CAT {d.get('done', '?')}/{d.get('total', '?')} {d.get('stage', '')}".rstrip())
            text.append(f" · {e['folded']} progress rows" if e["folded"] > 1 else "", style="dim")
        else:
            text.append(" " + detail_text(e["detail"]))
        return text

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        line = self.line_text(index)
        line.truncate(width)
        return Strip(line.render(self.app.console), line.cell_len).extend_cell_length(width).apply_style(
            self.rich_style)


class CommandLog(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.shown: tuple[dict, ...] = ()

    def on_mount(self) -> None:
        for label in ("#", "verb", "by", "state", "what happened"):
            self.add_column(label)

    def show(self, commands: tuple[dict, ...]) -> None:
        if commands == self.shown:
            return
        self.shown = commands
        self.clear()
        for cmd in commands:
            text, style = command_status(cmd)
            self.add_row(str(cmd["id"]), cmd["verb"], cmd.get("issued_by") or "", cmd["state"], Text(text, style=style))


class EventsPane(Vertical):
    """The log with its filter line (shown by `/`), the kind chosen with `f`, and the commands."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.folded = Folded()
        self.shown: list[dict] = []   # the rows that pass the filters
        self._upto = 0                # folded rows the shown list covers
        self.kind: str | None = None
        self.words: list[str] = []
        self.epoch_ends: list[int] = []

    def compose(self) -> ComposeResult:
        yield Static(id="events-header", classes="log-header")
        yield SearchBox(placeholder="words in kind or detail (-word leaves out; enter keeps, esc clears)",
                        id="events-filter")
        yield EventLog(id="event-log")
        yield CommandLog(id="command-log")

    def on_mount(self) -> None:
        self.query_one("#events-filter").display = False
        self._header()

    def show(self, events: tuple[dict, ...], epochs: tuple[dict, ...], commands: tuple[dict, ...]) -> None:
        ends = [e["step"] for e in epochs if e.get("step") is not None]
        first = self.folded.update(events)
        if first is not None or ends != self.epoch_ends:
            self.epoch_ends = ends
            self._refilter(first or 0)
        self.query_one(CommandLog).show(commands)

    def _refilter(self, first: int = 0) -> None:
        """The rows that pass the filters: only the rows from `first` on are new (a live run
        appends), else all of them again (a filter changed, a resume rebuilt the rows)."""
        if first and first == self._upto:
            self.shown = self.shown + [r for r in self.folded.rows[first:] if row_matches(r, self.kind, self.words)]
        else:
            self.shown = [r for r in self.folded.rows if row_matches(r, self.kind, self.words)]
        self._upto = len(self.folded.rows)
        self.query_one(EventLog).show(self.shown, self.epoch_ends)
        self._header(len(self.shown))

    def _header(self, shown: int | None = None) -> None:
        text = Text(EventLog.HEADER)
        notes = []
        if self.kind:
            notes.append(f"kind {self.kind}")
        if self.words:
            notes.append(f"“{' '.join(self.words)}”")
        if notes:
            notes.append(f"{shown if shown is not None else 0} of {len(self.folded.rows)}")
            text.append("   " + " · ".join(notes) + " (f kind, / words)", style="yellow")
        self.query_one("#events-header", Static).update(text)

    def set_kind(self, kind: str | None) -> None:
        self.kind = kind
        self._refilter()

    def ask_kind(self) -> None:
        """`f`: which kind to show (or all), chosen from the kinds there are, with their counts."""
        counts = self.folded.kinds()
        choices = [("all", "all kinds", f"{sum(counts.values())} rows")] + [
            (kind, kind, f"{n} row{'s' * (n != 1)}") for kind, n in sorted(counts.items())]

        def chosen(kind: str | None) -> None:
            if kind is not None:
                self.set_kind(None if kind == "all" else kind)
            self.query_one(EventLog).focus()

        self.app.push_screen(ChoiceScreen("show events of kind", choices, self.kind or "all"), chosen)

    def focus_filter(self) -> None:
        box = self.query_one("#events-filter", SearchBox)
        box.display = True
        box.focus()

    def on_input_changed(self, event: SearchBox.Changed) -> None:
        event.stop()
        self.words = event.value.lower().split()
        self._refilter()

    def on_input_submitted(self, event: SearchBox.Submitted) -> None:
        event.stop()
        self.query_one(EventLog).focus()

    def on_search_box_left(self, event: SearchBox.Left) -> None:
        event.stop()
        event.box.display = False
        self.query_one(EventLog).focus()
