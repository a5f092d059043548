"""The System tab: the daemon's newest machine sample (store/system.py), a line per device."""
from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

LABELS = {"process": "lvmd daemon", "host": "host"}


def _gib(v: float | None) -> str:
    return "–" if v is None else f"{v / 2**30:.1f} GiB"


def system_table(rows: tuple[dict, ...], now: float) -> Table | Text:
    if not rows:
        return Text("no system sample yet: the daemon samples CPU, memory and GPUs every 5 s while it runs",
                    style="dim")
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold")
    for label in ("device", "", "util", "memory", "temp"):
        table.add_column(label, justify="left" if label in ("device", "") else "right")
    for r in rows:
        util = "–" if r["util"] is None else f"{r['util']:.0f} %" + (" of a core" if r["device"] == "process" else "")
        memory = _gib(r["mem_used"]) + ("" if r["mem_total"] is None else f" / {_gib(r['mem_total'])}")
        table.add_row(LABELS.get(r["device"], r["device"]), r["name"] or "", util, memory,
                      "" if r["temp_c"] is None else f"{r['temp_c']:.0f} °C")
    age = now - rows[0]["t"]
    table.caption = f"sampled {age:.0f} s ago" + ("" if any(r["device"].startswith("gpu") for r in rows) else
                                                 " · no GPU on this machine (nvidia-ml-py finds none)")
    return table


class SystemPane(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: tuple[dict, ...] | None = None

    def show(self, rows: tuple[dict, ...]) -> None:
        if rows != self.rows:
            self.rows = rows
            self.update(system_table(rows, time.time()))
