"""Sweeps as groups (lvmd sweep): one line per sweep with its progress and best configuration so
far, and the seed band of a configuration (mean line, min–max over seeds) as text. A widget the
runs screen can mount; it reads only the store (store/sweeps.py), like the rest of the TUI."""
from __future__ import annotations

import sqlite3

from rich.text import Text
from textual.widgets import Static

from store.sweeps import epoch_band, sweep_progress

BAR = 16


def progress_text(p: dict) -> Text:
    """`sweep 1 demo ████████········ 12/24 done · 2 training · best loss.preset=v2.2 −0.1412 (n=3)`"""
    done = int(BAR * p["finished"] / p["planned"]) if p["planned"] else 0
    line = Text(f"sweep {p['id']} {p['name']} ", style="bold")
    line.append("█" * done, style="green")
    line.append("·" * (BAR - done), style="dim")
    line.append(f" {p['finished']}/{p['planned']} done")
    if p["training"]:
        line.append(f" · {p['training']} training", style="cyan")
    if p["pruned"]:
        line.append(f" · {p['pruned']} pruned", style="yellow")
    if p["best"] is not None:
        line.append(f" · best {p['best']} {p['best_margin']:+.4f} (n={p['best_n']})")
    line.append(f" · {p['state']}", style="dim")
    return line


def band_lines(band: list[dict], fmt: str = "+.4f") -> list[str]:
    """One line per epoch: mean [min, max] over the seeds that reached it."""
    return [f"e{b['epoch'] + 1:<3} {b['mean']:{fmt}} [{b['lo']:{fmt}}, {b['hi']:{fmt}}] n={b['n']}" for b in band]


class SweepGroups(Static):
    """The sweeps of a database, one progress line each; `refresh_from(conn)` on each tail tick."""

    def refresh_from(self, conn: sqlite3.Connection) -> list[dict]:
        groups = sweep_progress(conn)
        self.update(Text("\n").join(progress_text(p) for p in groups) if groups else Text("no sweeps", style="dim"))
        return groups

    @staticmethod
    def band(conn: sqlite3.Connection, sweep_id: int, config: str, column: str = "val_margin") -> list[dict]:
        return epoch_band(conn, sweep_id, config, column)
