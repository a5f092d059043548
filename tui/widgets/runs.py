"""Every run in the database as a sortable, filterable table: state (stale and crashed runs
flagged), epoch, the newest epoch's numbers with a sparkline of the val margin, gates, heartbeat.

One function (`row_cells`) builds a row from a RunSummary and COLUMNS names the columns, so a new
column (or a group of runs) is one entry here and one cell there. Columns stand in priority
order: the marker, id and state stay fixed while the rest scroll sideways, so at 80 columns the
most telling ones are on screen and the others a → away. The highlighted row carries `▶` (it
reads without colour)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.text import Text
from textual.widgets import DataTable

from store.reader import RunSummary
from store.schema import TERMINAL_STATES
from tui.liveness import Liveness, of_app
from tui.plots import epoch_label
from tui.sweeps import short_config
from tui.widgets.canvas import fmt
from tui.widgets.status import fmt_duration, run_state_text

SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    sort: Callable[[RunSummary], object] | None = None  # None: not sortable


def _num(value):
    """Sort key that puts missing numbers last whatever the direction."""
    return (value is None, value if value is not None else 0)


COLUMNS = (  # in priority order: the first FIXED_COLUMNS never scroll away
    Column("mark", "  "),
    Column("id", "id", lambda r: r.id),
    Column("state", "state", lambda r: r.state),
    Column("name", "name", lambda r: r.name.lower()),
    Column("epoch", "epoch", lambda r: _num(r.epoch)),
    Column("margin", "margin", lambda r: _num(r.last_margin)),
    Column("gates", "gates", lambda r: _num(r.gates_passed)),
    Column("heartbeat", "♥ age", lambda r: _num(r.heartbeat_at)),
    Column("val_cos", "val cos", lambda r: _num(r.val_cos)),
    Column("r_at_5", "R@5", lambda r: _num(r.r_at_5)),
    Column("trend", "margin/epoch"),
    # a sweep's members sort together: by sweep, configuration, seed
    Column("sweep", "sweep", lambda r: (r.sweep_id is None, r.sweep_id or 0, r.sweep_config or "", r.sweep_seed or 0)),
    Column("preset", "preset", lambda r: r.preset or ""),
    Column("skip_rate", "skip%", lambda r: _num(r.skip_rate)),
    Column("rho_max", "max ρ", lambda r: _num(r.rho_max)),
)
FIXED_COLUMNS = 3  # marker, id, state
SORTABLE = tuple(c.key for c in COLUMNS if c.sort is not None)
# The filter word `running` means a daemon is at work on the run, whatever step of it: training,
# starting, in a 5CAT, stopping (not `paused`: that word finds those). `live`: any run with a daemon.
WORK_STATES = ("starting", "running", "evaluating", "stopping")


def sparkline(values: tuple[float, ...], width: int = 12) -> str:
    """The last `width` values as block heights between their own min and max."""
    values = values[-width:]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))] for v in values)


def mark_cell(*, selected: bool, marked: bool) -> Text:
    """`▶` on the highlighted row, `●` on a marked one: both read without colour."""
    return Text.assemble(("▶" if selected else " ", "bold"), ("●" if marked else " ", "bold yellow"))


def row_cells(r: RunSummary, now: float, *, marked: bool, baseline: bool, liveness: Liveness,
              selected: bool = False) -> list:
    """The cells of one run's row, in COLUMNS order."""
    name = Text(r.name)
    if baseline:
        name.append(" ◆base", style="bright_black")
    gates = "–" if r.gates_passed is None else Text(f"{r.gates_passed}/{r.gates_total}",
                                                    style="green" if r.gates_passed >= 3 else "red")
    margin = "–" if r.last_margin is None else Text(f"{r.last_margin:+.4f}",
                                                    style="green" if r.last_margin > 0 else "red")
    age = r.heartbeat_age(now)
    state = run_state_text({"id": r.id, "state": r.state, "heartbeat_at": r.heartbeat_at, "out_dir": r.out_dir,
                            "host": r.host}, now, liveness)
    return [mark_cell(selected=selected, marked=marked), str(r.id), state, name,
            "–" if r.epoch is None else epoch_label(r.epoch, r.total_epochs), margin, gates,
            "–" if age is None else fmt_duration(age), fmt(r.val_cos), fmt(r.r_at_5),
            Text(sparkline(r.margins), style="cyan"), sweep_cell(r), r.preset or "",
            "–" if r.skip_rate is None else f"{100 * r.skip_rate:.2f}", fmt(r.rho_max)]


def sweep_cell(r: RunSummary) -> Text | str:
    """`1 v2.1·prev=true s0`: the sweep, the configuration and the seed of a member; blank otherwise."""
    if r.sweep_id is None:
        return ""
    return Text(f"{r.sweep_id} {short_config(r.sweep_config or '')} s{r.sweep_seed}", style="cyan")


def matches(r: RunSummary, text: str) -> bool:
    """The filter: every word appears in the name, preset, state or sweep configuration
    (case-insensitive); `running` and `live` mean what a person means by them (WORK_STATES)."""
    hay = f"{r.name} {r.preset or ''} {r.state} {r.sweep_config or ''}".lower()
    return all(r.state in WORK_STATES if word == "running" else r.state not in TERMINAL_STATES if word == "live"
               else word in hay for word in text.lower().split())


class RunList(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, fixed_columns=FIXED_COLUMNS, **kwargs)
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
                        # a state grows (`evaluating`, `running? silent 42s`): the column widens, never cuts it
                        self.update_cell(str(r.id), column.key, cell, update_width=True)
        self.runs = shown
        self._selected = self.selected_run_id

    def _cells(self, r: RunSummary, now: float) -> list:
        return row_cells(r, now, marked=r.id in self.marked, baseline=r.id == self.baseline_id,
                         liveness=of_app(self.app), selected=r.id == self.selected_run_id)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Move the `▶` with the cursor."""
        now_id = int(event.row_key.value) if event.row_key is not None and event.row_key.value else None
        for run_id in {getattr(self, "_selected", None), now_id} - {None}:
            if str(run_id) in self.rows:
                self.update_cell(str(run_id), "mark", mark_cell(selected=run_id == now_id, marked=run_id in self.marked))
        self._selected = now_id

    @property
    def selected_run_id(self) -> int | None:
        if not self.row_count:
            return None
        return int(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
