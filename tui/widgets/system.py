"""The System tab: the daemon's machine over the run (table system_samples, every 5 s, the last
hour kept), drawn as nvitop draws it: per device a history line per quantity and its current
value. The daemon's CPU (% of one core) and RSS, the host's CPU and memory, and per NVIDIA GPU
its utilisation, memory and temperature."""
from __future__ import annotations

import math
import time
from typing import Sequence

from rich.text import Text
from textual.widget import Widget

LABELS = {"process": "lvmd daemon", "host": "host"}
BLOCKS = "▁▂▃▄▅▆▇█"
LABEL_W, NAME_W, VALUE_W = 13, 5, 22


def _gib(v: float | None) -> str:
    return "–" if v is None else f"{v / 2**30:.1f} GiB"


def _level_style(fraction: float) -> str:
    return "green" if fraction < 0.5 else "yellow" if fraction < 0.8 else "red"


def sparkline(values: Sequence[float | None], width: int, top: float) -> Text:
    """`values` (oldest first) as block heights from 0 to `top`, one column per sample and
    right-aligned while they fit, else averaged into `width` columns; coloured by level as nvitop
    does. A column without a sample is blank."""
    n = len(values)
    if n <= width:
        columns = [[v] for v in values]
        text = Text(" " * (width - n))
    else:
        columns = [values[c * n // width:(c + 1) * n // width] for c in range(width)]
        text = Text()
    for chunk in columns:
        chunk = [v for v in chunk if v is not None]
        if not chunk or top <= 0:
            text.append(" ")
            continue
        f = min(1.0, max(0.0, sum(chunk) / len(chunk) / top))
        text.append(BLOCKS[max(0, math.ceil(f * len(BLOCKS)) - 1)], style=_level_style(f))
    return text


def _series(rows: Sequence[dict], device: str) -> list[dict]:
    return [r for r in rows if r["device"] == device]


def _quantities(device: str, rows: list[dict]) -> list[tuple[str, list, float, str]]:
    """(name, values, top of the scale, current value as text) of one device's lines."""
    last = rows[-1]
    util = [r["util"] for r in rows]
    used = [r["mem_used"] for r in rows]
    total = next((r["mem_total"] for r in reversed(rows) if r["mem_total"]), None)
    peak_util = max((u for u in util if u is not None), default=0.0)
    out = []
    if device == "process":  # % of one core: a daemon on 4 threads can read 400 %
        out.append(("cpu", util, max(100.0, math.ceil(peak_util / 100) * 100),
                    "–" if last["util"] is None else f"{last['util']:.0f} % of a core"))
        out.append(("rss", used, max((u for u in used if u is not None), default=0.0) or 1.0, _gib(last["mem_used"])))
        return out
    out.append(("util" if device.startswith("gpu") else "cpu", util, 100.0,
                "–" if last["util"] is None else f"{last['util']:.0f} %"))
    out.append(("mem", used, total or max((u for u in used if u is not None), default=0.0) or 1.0,
                _gib(last["mem_used"]) + ("" if total is None else f" / {_gib(total)}")))
    temps = [r["temp_c"] for r in rows]
    if any(t is not None for t in temps):
        out.append(("temp", temps, max(100.0, max(t for t in temps if t is not None)),
                    "–" if last["temp_c"] is None else f"{last['temp_c']:.0f} °C"))
    return out


def system_lines(history: Sequence[dict], width: int, now: float) -> list[Text]:
    if not history:
        return [Text("no system sample yet: the daemon samples CPU, memory and GPUs every 5 s while it runs",
                     style="dim")]
    devices = sorted({r["device"] for r in history}, key=lambda d: (d != "process", d != "host", d))
    spark_w = max(8, width - LABEL_W - NAME_W - VALUE_W - 3)
    lines = []
    for device in devices:
        rows = _series(history, device)
        name = LABELS.get(device, device)
        if device.startswith("gpu") and rows[-1].get("name"):
            name = f"{device} {rows[-1]['name']}"
        for i, (what, values, top, current) in enumerate(_quantities(device, rows)):
            line = Text((name if i == 0 else "")[:LABEL_W - 1].ljust(LABEL_W), style="bold")
            line.append(what.ljust(NAME_W), style="dim")
            line.append_text(sparkline(values, spark_w, top))
            line.append(" " + current)
            lines.append(line)
    t0, t1 = history[0]["t"], history[-1]["t"]
    caption = f"sampled {now - t1:.0f} s ago · history {max(0, t1 - t0) / 60:.0f} min (the last hour is kept)"
    if not any(d.startswith("gpu") for d in devices):
        caption += " · no GPU on this machine (nvidia-ml-py finds none)"
    lines.append(Text(caption, style="dim"))
    return lines


class SystemPane(Widget, can_focus=True):
    DEFAULT_CSS = """
    SystemPane { height: 1fr; padding: 0 1; }
    SystemPane:focus { background: $boost; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history: tuple[dict, ...] = ()
        self.rows: tuple[dict, ...] = ()  # the newest sample, a row per device

    def show(self, history: tuple[dict, ...], latest: tuple[dict, ...]) -> None:
        if history is not self.history:  # the tail hands over the same tuple while no sample arrived
            self.history, self.rows = history, latest
            self.refresh()

    def render(self) -> Text:
        return Text("\n").join(system_lines(self.history, self.size.width or 100, time.time()))
