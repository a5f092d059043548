"""What a chart can show: every column of `steps` and `epochs` and every 5CAT metric of
`eval_metrics`, named by a key (`steps.rho`, `epochs.val_margin`, `eval.VAL.r_at_5`), and the
chart slots of the run screen with their defaults. Pure data, no widgets, no database."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from store.schema import STEP_METRICS

SOURCES = ("steps", "epochs", "eval")
STEP_COLUMNS = ("lr",) + STEP_METRICS  # the numeric columns of `steps` (step, epoch and t are axes)
# `epochs` columns before the first epoch row shows which the file has (step and t are axes)
EPOCH_COLUMNS = ("val_margin", "val_cos", "val_prev_cos", "val_loss", "train_loss", "train_mse", "r_at_1", "r_at_5",
                 "mrr", "lr", "skip_rate", "attenuate_rate", "rho_max", "pos_min", "duration_s")
EPOCH_AXES = ("run_id", "epoch", "step", "t")
LABELS = {"rho": "ρ", "rho_pre": "ρ pre", "lam": "λ", "neg_cos_rate": "neg-cos rate", "l_dir": "dir",
          "l_floor": "floor", "l_norm": "norm", "l_orth": "orth", "m_gap": "m gap", "grad_norm": "grad norm",
          "val_margin": "val margin", "val_cos": "val cos", "val_prev_cos": "val prev cos", "total": "total"}
# metrics whose sign matters: their charts draw y = 0
SIGNED = {"ratio", "pos", "neg", "gap", "val_margin", "margin", "pos_min"}


@dataclass(frozen=True)
class Metric:
    key: str     # source.column, or eval.SPLIT.name
    label: str
    colour: str = "cyan"

    @property
    def source(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def column(self) -> str:
        return self.key.rsplit(".", 1)[1] if self.source != "eval" else self.key.split(".", 2)[2]

    @property
    def split(self) -> str | None:
        return self.key.split(".", 2)[1] if self.source == "eval" else None

    @property
    def is_count(self) -> bool:
        """Shown as integers: 5CAT sample counts (`n`, `bin_normal_n`, `n_…`)."""
        name = self.column
        return name == "n" or name.endswith("_n") or name.startswith("n_")


def metric(key: str, colour: str = "cyan") -> Metric:
    """A Metric from its key, labelled for people (`steps.rho` → ρ, `eval.OOD.r_at_5` → OOD r_at_5)."""
    source, _, rest = key.partition(".")
    if source == "eval":
        split, _, name = rest.partition(".")
        return Metric(key, f"{split} {name}", colour)
    return Metric(key, LABELS.get(rest, rest), colour)


def valid_key(key: object) -> bool:
    """Is this a metric key lvmd could draw (a stored preference is data, checked before use)?"""
    if not isinstance(key, str) or len(key) > 120:
        return False
    source, _, rest = key.partition(".")
    if source == "steps":
        return rest in STEP_COLUMNS
    if source == "epochs":
        return bool(rest) and rest.replace("_", "").isalnum() and rest not in EPOCH_AXES
    if source == "eval":
        split, _, name = rest.partition(".")
        return bool(split and name) and all(c.isprintable() for c in rest)
    return False


@dataclass(frozen=True)
class ChartSpec:
    """One chart slot's content: its lines share a source (steps, epochs or eval)."""
    slot: str
    title: str
    metrics: tuple[Metric, ...]
    log_y: bool = False

    @property
    def source(self) -> str:
        return self.metrics[0].source

    @property
    def cap(self) -> bool:
        return self.source == "steps" and any(m.column in ("rho", "rho_pre") for m in self.metrics)

    @property
    def zero(self) -> bool:
        return any(m.column in SIGNED or m.column.startswith("delta_") for m in self.metrics)


def _spec(slot: str, title: str, lines: Iterable[tuple[str, str, str]], log_y: bool = False) -> ChartSpec:
    return ChartSpec(slot, title, tuple(Metric(key, label, colour) for key, label, colour in lines), log_y)


STEP_SLOTS = ("rho", "ratio", "cos", "neg_rate", "lam", "loss")   # the Train tab, in grid order
EPOCH_SLOTS = ("margin", "valcos")                                # the Epochs tab
DEFAULT_SPECS: Mapping[str, ChartSpec] = {s.slot: s for s in (
    _spec("rho", "ρ", [("steps.rho", "ρ", "cyan")]),
    _spec("ratio", "ratio", [("steps.ratio", "ratio", "green")]),
    _spec("cos", "cos", [("steps.pos", "pos", "green"), ("steps.neg", "neg", "magenta")]),
    _spec("neg_rate", "neg-cos rate", [("steps.neg_cos_rate", "rate", "yellow")]),
    _spec("lam", "λ", [("steps.lam", "λ", "bright_blue")]),
    _spec("loss", "loss", [("steps.total", "total", "white"), ("steps.mse", "mse", "cyan"),
                           ("steps.l_dir", "dir", "yellow"), ("steps.l_floor", "floor", "magenta"),
                           ("steps.l_norm", "norm", "blue")], log_y=True),
    _spec("margin", "val margin", [("epochs.val_margin", "margin", "green")]),
    _spec("valcos", "val cos", [("epochs.val_cos", "cos", "cyan"), ("epochs.val_prev_cos", "prev", "magenta")]),
)}


def picked_spec(slot: str, key: str, log_y: bool | None = None) -> ChartSpec:
    """The slot showing one metric chosen in the picker (its default when the key is the default's)."""
    default = DEFAULT_SPECS[slot]
    if key == "default" or key == default.metrics[0].key:
        return default if log_y is None else ChartSpec(slot, default.title, default.metrics, log_y)
    m = metric(key, "cyan")
    return ChartSpec(slot, m.label, (m,), bool(log_y))


def catalogue(epoch_rows: Iterable[Mapping], eval_names: Iterable[tuple[str, str]]) -> list[Metric]:
    """Every metric there is to pick for a run: its step columns, its epochs columns (as the
    file has them) and the 5CAT metrics its evaluations wrote."""
    epoch_columns: list[str] = []
    for row in epoch_rows:
        epoch_columns = [c for c in row if c not in EPOCH_AXES]
        break
    epoch_columns = epoch_columns or list(EPOCH_COLUMNS)
    out = [metric(f"steps.{c}") for c in STEP_COLUMNS]
    out += [metric(f"epochs.{c}") for c in epoch_columns]
    out += [metric(f"eval.{split}.{name}") for split, name in sorted(set(eval_names))]
    return out


def step_columns(specs: Iterable[ChartSpec]) -> tuple[str, ...]:
    """The `steps` columns the series must hold: what the charts draw, what the alerts judge
    (ρ, pos) and t (the wall-time axis), in a stable order."""
    wanted = {"rho", "pos", "t"} | {m.column for s in specs if s.source == "steps" for m in s.metrics}
    return tuple(c for c in ("t",) + STEP_COLUMNS if c in wanted)
