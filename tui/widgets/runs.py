"""Every run in the database: state (stale and crashed runs flagged), epoch, gates, heartbeat."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from store.reader import RunSummary
from tui.plots import epoch_label
from tui.widgets.status import fmt_duration, state_text

COLUMNS = (("id", "id"), ("name", "name"), ("preset", "preset"), ("state", "state"), ("epoch", "epoch"),
           ("step", "step"), ("gates", "gates"), ("heartbeat", "♥ age"))


class RunList(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.runs: tuple[RunSummary, ...] = ()
        self.baseline_id: int | None = None

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def show(self, runs: tuple[RunSummary, ...], now: float, baseline_id: int | None) -> None:
        """Rebuild when runs come or go (keeping the cursor on its run), else update in place."""
        self.baseline_id = baseline_id
        if [r.id for r in runs] != [r.id for r in self.runs]:
            selected = self.selected_run_id
            self.clear()
            for r in runs:
                self.add_row(*self._cells(r, now), key=str(r.id))
            if selected is not None and any(r.id == selected for r in runs):
                self.move_cursor(row=self.get_row_index(str(selected)), animate=False)
        else:
            for r in runs:
                for (key, _label), cell in zip(COLUMNS, self._cells(r, now)):
                    if self.get_cell(str(r.id), key) != cell:  # an unchanged cell costs no repaint
                        self.update_cell(str(r.id), key, cell)
        self.runs = runs

    @property
    def selected_run_id(self) -> int | None:
        if not self.row_count:
            return None
        return int(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def _cells(self, r: RunSummary, now: float) -> list:
        name = Text(r.name)
        if r.id == self.baseline_id:
            name.append(" ◆base", style="bright_black")
        epoch = "–" if r.epoch is None else epoch_label(r.epoch, r.total_epochs)
        gates = "–" if r.gates_passed is None else Text(f"{r.gates_passed}/{r.gates_total}",
                                                        style="green" if r.gates_passed >= 3 else "red")
        age = r.heartbeat_age(now)
        return [str(r.id), name, r.preset or "", state_text(r.state, r.heartbeat_at, now), epoch,
                f"{r.step or 0:,}", gates, "–" if age is None else fmt_duration(age)]
