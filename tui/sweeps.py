"""Sweeps as groups (lvmd sweep): one line per sweep with its progress and best configuration so
far, and a configuration's seed band (mean, min–max over seeds) as text. Pure functions of what
the tail posted (TailUpdate.sweeps, RunSnapshot.band): like every widget, nothing here reads the
database."""
from __future__ import annotations

from typing import Mapping, Sequence

from rich.text import Text
from textual.widgets import Static

BAR = 16


def short_config(label: str) -> str:
    """`loss.preset=v2.1 loss.prev=true` → `v2.1·prev=true`: a preset by its name, any other
    override by its last key; words without `=` (an Optuna trial's `#3`) stay as they are."""
    parts = []
    for word in label.split():
        key, eq, value = word.partition("=")
        parts.append(word if not eq else value if key.endswith("preset") else f"{key.rsplit('.', 1)[-1]}={value}")
    return "·".join(parts) or label


def progress_text(p: Mapping) -> Text:
    """`sweep 1 demo ████████········ 12/24 done · 2 training · best v2.2·prev=true −0.1412 (n=3) · running`"""
    done = min(BAR, int(BAR * p["finished"] / p["planned"])) if p["planned"] else 0
    line = Text(f"sweep {p['id']} {p['name']} ", style="bold")
    line.append("█" * done, style="green")
    line.append("·" * (BAR - done), style="dim")
    line.append(f" {p['finished']}/{p['planned']} done")
    if p["training"]:
        line.append(f" · {p['training']} training", style="cyan")
    if p["pruned"]:
        line.append(f" · {p['pruned']} pruned", style="yellow")
    if p["best"] is not None:
        line.append(f" · best {short_config(p['best'])} {p['best_margin']:+.4f} (n={p['best_n']})")
    line.append(f" · {p['state']}", style="dim")
    return line


def band_lines(band: Sequence[Mapping], fmt: str = "+.4f") -> list[str]:
    """One line per epoch: mean [min, max] over the seeds that reached it."""
    return [f"e{b['epoch'] + 1:<3} {b['mean']:{fmt}} [{b['lo']:{fmt}}, {b['hi']:{fmt}}] n={b['n']}" for b in band]


class SweepGroups(Static):
    """The sweeps of the database, one progress line each, above the runs screen's list; hidden
    while the database has none."""

    shown: Sequence[Mapping] | None = None

    def show(self, sweeps: Sequence[Mapping]) -> None:
        if sweeps != self.shown:  # the runs screen redraws every second; the sweeps change on commits
            self.shown = sweeps
            self.display = bool(sweeps)
            self.update(Text("\n").join(progress_text(p) for p in sweeps))
