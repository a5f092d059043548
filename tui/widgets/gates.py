"""The 5CAT gate table of one eval: A–E × splits, value against threshold, ✓ green or ✗ red.

The eye must decide like the code: a threshold is printed exactly (shortest form, never rounded
across the value), the value with as many decimals as it takes to differ from the threshold on
the side the gate decided, and a glyph says pass/fail for 16-colour and colour-blind readers."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tui.metrics import metric as metric_of
from tui.plots import shown_epoch

SPLIT_ORDER = ("val", "ood")  # then the cross-split VAL-OOD of gate E
PASS_STYLE, FAIL_STYLE = "bold green", "bold red"
OPS = {">=": "≥", "<=": "≤"}
TRIGGERS = {"epoch": "epoch end", "command": "on request", "signal": "on signal"}


def split_order(gates: list[dict]) -> list[str]:
    splits = list(dict.fromkeys(g["split"] for g in gates))
    return sorted(splits, key=lambda s: (SPLIT_ORDER.index(s.lower()) if s.lower() in SPLIT_ORDER else 9, s))


def eval_header(ev: dict, position: int, count: int) -> Text:
    text = Text()
    text.append(f"eval {ev['id']}", style="bold")
    if ev.get("epoch") is not None:
        text.append(f" · e{shown_epoch(ev['epoch'])}")
    text.append(f" · {TRIGGERS.get(ev.get('trigger'), ev.get('trigger') or '?')} · ")
    passed, total = ev.get("gates_passed"), ev.get("gates_total")
    ok = ev.get("verdict_3of5")
    text.append(f"{passed}/{total} gates", style=PASS_STYLE if ok else FAIL_STYLE)
    if ev.get("verdict_all5") is not None:
        text.append(" · all-5 ")
        text.append("✓" if ev["verdict_all5"] else "✗", style=PASS_STYLE if ev["verdict_all5"] else FAIL_STYLE)
    text.append(f"   [{position}/{count}]  , . choose", style="dim")
    return text


class GateTable(Vertical):
    DEFAULT_CSS = """
    GateTable { height: auto; }
    GateTable > Static { height: 1; }
    GateTable > DataTable { height: auto; max-height: 100%; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.shown: tuple[int, tuple] | None = None  # eval id and its gate rows
        self.evals: tuple[dict, ...] = ()
        self.gates: dict = {}
        self.picked_eval_id: int | None = None  # None: the newest eval in view

    def show_evals(self, evals: tuple[dict, ...], gates) -> None:
        """The run's finished evals and their gates; the table shows the picked one (`,` `.`)."""
        self.evals, self.gates = evals, gates
        if not evals:
            self.show(None, (), 0, 0)
            return
        ids = [e["id"] for e in evals]
        pos = ids.index(self.picked_eval_id) if self.picked_eval_id in ids else len(ids) - 1
        ev = evals[pos]
        self.show(ev, gates.get(ev["id"], ()), pos + 1, len(evals))

    def pick(self, delta: int) -> None:
        if not self.evals:
            return
        ids = [e["id"] for e in self.evals]
        pos = ids.index(self.picked_eval_id) if self.picked_eval_id in ids else len(ids) - 1
        self.picked_eval_id = ids[max(0, min(len(ids) - 1, pos + delta))]
        self.show_evals(self.evals, self.gates)

    def compose(self) -> ComposeResult:
        yield Static("no 5CAT eval yet", id="eval-header")
        # the cursor row keeps each cell's red/green (only its background changes)
        yield DataTable(cursor_type="row", zebra_stripes=True, cursor_foreground_priority="renderable")

    def show(self, ev: dict | None, gates: tuple[dict, ...], position: int, count: int) -> None:
        header = self.query_one("#eval-header", Static)
        table = self.query_one(DataTable)
        if ev is None:
            header.update(Text("no 5CAT eval yet", style="dim"))
            table.clear(columns=True)
            self.shown = None
            return
        header.update(eval_header(ev, position, count))
        if self.shown == (ev["id"], gates):
            return
        self.shown = (ev["id"], gates)
        table.clear(columns=True)
        splits = split_order(list(gates))
        cells: dict[tuple[str, str], dict[str, dict]] = {}
        for g in gates:
            cells.setdefault((g["gate"], g["metric"]), {})[g["split"]] = g
        rows = [(f"{gate}:{metric}", [Text(f"{gate} {metric.removeprefix('delta_')}"),
                                      *(gate_cell(by_split.get(split)) for split in splits)])
                for (gate, metric), by_split in sorted(cells.items(), key=lambda kv: kv[0][0])]
        # Each column as wide as its widest cell, said now: DataTable measures auto-width columns
        # only when it is next idle, and a busy screen (a live run) drew them label-wide till then.
        for i, (label, key) in enumerate([("gate", "gate"), *((s.upper(), s) for s in splits)]):
            table.add_column(label, key=key, width=max([len(label), *(row[i].cell_len for _, row in rows)]))
        for key, row in rows:
            table.add_row(*row, key=key)


def gate_cell(g: dict | None) -> Text:
    """`✓ 0.523 ≥0.5`: glyph and value green when it passed, red when not; the threshold dim."""
    if g is None:
        return Text("")
    style = PASS_STYLE if g["passed"] else FAIL_STYLE
    text = Text("✓ " if g["passed"] else "✗ ", style=style)
    op = g.get("op")
    count = metric_of(f"eval.{g['split']}.{g['metric']}").is_count  # a sample count reads as an integer
    text.append(fmt_value(g["value"], g["threshold"], op, bool(g["passed"]), count=count), style=style)
    if g["threshold"] is not None:
        text.append(f" {OPS.get(op, op or '')}{fmt_threshold(g['threshold'])}", style="dim")
    return text


def fmt_threshold(t: float) -> str:
    """Shortest exact-looking form: 0.045 stays 0.045 (not 0.04), 0.5 is 0.5."""
    return f"{t:.6g}"


def fmt_value(value: float | None, threshold: float | None, op: str | None, passed: bool, *,
              count: bool = False) -> str:
    """Three decimals, more while the rounded value would read as the other verdict (or as
    equal to a threshold it is not equal to); a count (`bin_normal_n`) as an integer."""
    if value is None:
        return "–"
    if count and float(value).is_integer():
        return str(int(value))
    if threshold is None or op not in OPS:
        return f"{value:.3f}"
    for digits in range(3, 10):
        shown = round(value, digits)
        reads_pass = shown >= threshold if op == ">=" else shown <= threshold
        if reads_pass == passed and (shown != threshold or value == threshold):
            return f"{value:.{digits}f}"
    return repr(value)
