"""Where a run's rows sit on the x axis: by step, by wall time since the run's first step, or by
epoch (epochs completed, so the end of the third epoch is x = 3, as the epoch charts count).

Each run maps with its own start time and epoch length, so an overlaid run is compared at the same
relative time or the same epoch (W&B's "relative time")."""
from __future__ import annotations

from dataclasses import dataclass

from store.series import SeriesBin, SeriesSnapshot
from tui.tail import RunSnapshot

KINDS = ("step", "time", "epoch")


@dataclass(frozen=True)
class XAxis:
    kind: str
    t0: float | None               # the run's first step time
    steps_per_epoch: float | None  # total_steps / total_epochs (the trainer's epoch length)

    @classmethod
    def of(cls, run: RunSnapshot, kind: str) -> "XAxis":
        r = run.run
        spe = None
        if r.get("total_steps") and r.get("total_epochs"):
            spe = r["total_steps"] / r["total_epochs"]
        elif run.epochs and run.epochs[0].get("step"):
            spe = float(run.epochs[0]["step"]) / (run.epochs[0]["epoch"] + 1)
        return cls(kind, run.t0, spe)

    def of_step(self, step: float, t: float | None = None) -> float | None:
        if self.kind == "step":
            return float(step)
        if self.kind == "epoch":
            return step / self.steps_per_epoch if self.steps_per_epoch else None
        return None if t is None or self.t0 is None else t - self.t0

    def bin_span(self, series: SeriesSnapshot, b: SeriesBin) -> tuple[float, float] | None:
        """The x range of one bin of steps (its first and last step time on the time axis)."""
        first, last = series.span(b)
        if self.kind != "time":
            a, z = self.of_step(first), self.of_step(last)
            return None if a is None else (a, z)
        if "t" not in series.columns or self.t0 is None:
            return None
        i = series.columns.index("t")
        return b.lo[i] - self.t0, b.hi[i] - self.t0

    def trace(self, series: SeriesSnapshot, column: str) -> list[tuple[float, float, float, float, float]]:
        """series.trace(column) with x mapped onto this axis."""
        if self.kind == "step":
            return series.trace(column)
        i = series.columns.index(column)
        out = []
        for b in series.bins:
            if b.lo[i] is None:
                continue
            span = self.bin_span(series, b)
            if span is not None:
                out.append((*span, b.lo[i], b.hi[i], b.sums[i] / b.count))
        return out

    def of_epoch_row(self, row: dict) -> float | None:
        """An `epochs` row (written at the epoch's end) or an eval (at its epoch or step)."""
        if self.kind == "epoch":
            if row.get("epoch") is not None:
                return row["epoch"] + 1.0
            return self.of_step(row["step"]) if row.get("step") is not None else None
        if self.kind == "step":
            return None if row.get("step") is None else float(row["step"])
        t = row.get("t") or row.get("finished_at")
        return None if t is None or self.t0 is None else t - self.t0

    def of_epochs_done(self, epochs: float, run: RunSnapshot) -> float | None:
        """x of `epochs` completed: for drawing per-epoch references (the expected margin band)
        on the step and time axes; time is read off the epochs rows (linear past the newest)."""
        if self.kind == "epoch":
            return epochs
        if self.kind == "step":
            return epochs * self.steps_per_epoch if self.steps_per_epoch else None
        ends = [(r["epoch"] + 1, r["t"] - self.t0) for r in run.epochs if r.get("t") and self.t0 is not None]
        if not ends:
            return None
        per_epoch = ends[-1][1] / ends[-1][0]
        return epochs * per_epoch
