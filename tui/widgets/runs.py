"""Every run in the database as a sortable, filterable table: state (stale and crashed runs
flagged), epoch, the newest epoch's numbers with a sparkline of the val margin, gates, heartbeat.

One function (`row_cells`) builds a row from a RunSummary and COLUMNS names the columns, so a new
column (or a group of runs) is one entry here and one cell there."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.text import Text
from textual.widgets import DataTable

from store.reader import RunSummary
from tui.plots import epoch_label
from tui.sweeps import short_config
from tui.widgets.canvas import fmt
from tui.widgets.status import fmt_duration, state_text

SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    sort: Callable[[RunSummary], object] | None = None  # None: not sortable


def _num(value):
    """Sort key that puts missing numbers last whatever the direction."""
    return (value is None, value if value is not None else 0)


COLUMNS = (
    Column("mark", " "),
    Column("id", "id", lambda r: r.id),
    Column("name", "name", lambda r: r.name.lower()),
    # a sweep's members sort together: by sweep, configuration, seed
    Column("sweep", "sweep", lambda r: (r.sweep_id is None, r.sweep_id or 0, r.sweep_config or "", r.sweep_seed or 0)),
    Column("preset", "preset", lambda r: r.preset or ""),
    Column("state", "state", lambda r: r.state),
    Column("epoch", "epoch", lambda r: _num(r.epoch)),
    Column("margin", "margin", lambda r: _num(r.last_margin)),
    Column("trend", "margin/epoch"),
    Column("val_cos", "val cos", lambda r: _num(r.val_cos)),
    Column("r_at_5", "R@5", lambda r: _num(r.r_at_5)),
    Column("gates", "gates", lambda r: _num(r.gates_passed)),
    Column("skip_rate", "skip%", lambda r: _num(r.skip_rate)),
    Column("rho_max", "max ρ", lambda r: _num(r.rho_max)),
    Column("heartbeat", "♥ age", lambda r: _num(r.heartbeat_at)),
)
SORTABLE = tuple(c.key for c in COLUMNS if c.sort is not None)


def sparkline(values: tuple[float, ...], width: int = 12) -> str:
    """The last `width` values as block heights between their own min and max."""
    values = values[-width:]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))] for v in values)


def row_cells(r: RunSummary, now: float, *, marked: bool, baseline: bool) -> list:
    """The cells of one run's row, in COLUMNS order."""
    name = Text(r.name)
    if baseline:
        name.append(" ◆base", style="bright_black")
    gates = "–" if r.gates_passed is None else Text(f"{r.gates_passed}/{r.gates_total}",
                                                    style="green" if r.gates_passed >= 3 else "red")
    margin = "–" if r.last_margin is None else Text(f"{r.last_margin:+.4f}",
                                                    style="green" if r.last_margin > 0 else "red")
    age = r.heartbeat_age(now)
    return [Text("●", style="bold yellow") if marked else " ", str(r.id), name, sweep_cell(r), r.preset or "",
            state_text(r.state, r.heartbeat_at, now), "–" if r.epoch is None else epoch_label(r.epoch, r.total_epochs),
            margin, Text(sparkline(r.margins), style="cyan"), fmt(r.val_cos), fmt(r.r_at_5), gates,
            "–" if r.skip_rate is None else f"{100 * r.skip_rate:.2f}", fmt(r.rho_max),
            "–" if age is None else fmt_duration(age)]


def sweep_cell(r: RunSummary) -> Text | str:
    """`1 v2.1·prev=true s0`: the sweep, the configuration and the seed of a member; blank otherwise."""
    if r.sweep_id is None:
        return ""
    return Text(f"{r.sweep_id} {short_config(r.sweep_config or '')} s{r.sweep_seed}", style="cyan")


def matches(r: RunSummary, text: str) -> bool:
    """The filter: every word appears in the name, preset, state or sweep configuration (case-insensitive)."""
    hay = f"{r.name} {r.preset or ''} {r.state} {r.sweep_config or ''}".lower()
    return all(word in hay for word in text.lower().split())


class RunList(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.runs: tuple[RunSummary, ...] = ()   # as shown: filtered and sorted
        self.baseline_id: int | None = None
        self.marked: frozenset[int] = frozenset()
        self.sort_key: str = "id"
        self.descending = True                    # newest first
        self.filter_text = ""

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.add_column(column.label, key=column.key)

    def ordered(self, runs: tuple[RunSummary, ...]) -> tuple[RunSummary, ...]:
        column = next(c for c in COLUMNS if c.key == self.sort_key)
        kept = [r for r in runs if matches(r, self.filter_text)]
        return tuple(sorted(kept, key=column.sort, reverse=self.descending))

    def show(self, runs: tuple[RunSummary, ...], now: float, baseline_id: int | None,
             marked: frozenset[int] = frozenset()) -> None:
        """Rebuild when the rows or their order change (keeping the cursor on its run), else
        update the cells that changed in place."""
        self.baseline_id, self.marked = baseline_id, marked
        shown = self.ordered(runs)
        if [r.id for r in shown] != [r.id for r in self.runs]:
            selected = self.selected_run_id
            self.clear()
            for r in shown:
                self.add_row(*self._cells(r, now), key=str(r.id))
            if selected is not None and any(r.id == selected for r in shown):
                self.move_cursor(row=self.get_row_index(str(selected)), animate=False)
        else:
            for r in shown:
                for column, cell in zip(COLUMNS, self._cells(r, now)):
                    if self.get_cell(str(r.id), column.key) != cell:  # an unchanged cell costs no repaint
                        self.update_cell(str(r.id), column.key, cell)
        self.runs = shown

    def _cells(self, r: RunSummary, now: float) -> list:
        return row_cells(r, now, marked=r.id in self.marked, baseline=r.id == self.baseline_id)

    @property
    def selected_run_id(self) -> int | None:
        if not self.row_count:
            return None
        return int(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
