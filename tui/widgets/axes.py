"""Numbers as a chart shows them: legend values with at least three significant digits, tick
positions at round values (1-2-5 × 10^k, or round durations) and their labels. Pure functions.

Legend values keep three significant digits whatever their size (`.250`, `2.34e-3`, `12.3k`), so
0.0020 and 0.0024 never both read `2e-3`; counts read as integers (`665`, never `665.000`). Tick
labels carry only the digits their spacing needs (`1.5k`, `.25`)."""
from __future__ import annotations

import math

X_KINDS = ("step", "time", "epoch")  # what the x axis counts: steps, wall time since the run's first step, epochs


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and (math.isnan(v) or math.isinf(v)))


def fmt(v: float | None, *, count: bool = False) -> str:
    """A legend value: >= 3 significant digits in at most 8 characters (`-2.34e-5`); `count` as an integer."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if count or (isinstance(v, int) and not isinstance(v, bool)):
        return str(int(round(v)))
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e9:
        return _sig(v / 1e9, 3) + "G"
    if a >= 1e6:
        return _sig(v / 1e6, 3) + "M"
    if a >= 1e4:
        return _sig(v / 1e3, 3) + "k"
    if a >= 1e-3:
        return _sig(v, 3)
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _sig(v: float, digits: int) -> str:
    """v with `digits` significant digits, trailing zeros kept (.200, 12.5, 665), `0.` shortened to `.`."""
    a = abs(v)
    decimals = max(0, digits - 1 - math.floor(math.log10(a))) if a else 0
    text = f"{v:.{decimals}f}"
    if a < 1:
        text = text.replace("0.", ".", 1)
    return text


def fmt_step(s: float) -> str:
    """A step count in at most 6 characters (the gutter, the readout)."""
    s = int(s)
    return f"{s / 1e6:.2f}M" if s >= 1e6 else f"{s / 1e3:.1f}k" if s >= 1e4 else str(s)


def fmt_duration(seconds: float) -> str:
    """`45s`, `12m`, `1h05m`, `2d3h`: wall time since a run's first step."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" if s % 60 == 0 else f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h" if s % 3600 == 0 else f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def fmt_x(x: float, kind: str) -> str:
    """An x position in words of its axis (the cursor readout)."""
    if kind == "time":
        return fmt_duration(x)
    if kind == "epoch":  # epochs completed: 3.25 is a quarter into the fourth
        return f"{x:.2f}".rstrip("0").rstrip(".") + " epochs"
    return fmt_step(x)


# -- ticks ---------------------------------------------------------------------------------------
def nice_step(span: float, count: int) -> float:
    """A 1-2-5 × 10^k spacing that puts about `count` ticks over `span`."""
    raw = span / max(1, count)
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    base = 10 ** math.floor(math.log10(raw))
    return next((m * base for m in (1, 2, 5, 10) if m * base >= raw), 10 * base)


def ticks(lo: float, hi: float, count: int, *, integer: bool = False) -> tuple[list[float], float]:
    """Round values inside [lo, hi] (about `count`) and their spacing; `integer` spacing >= 1."""
    if not (_finite(lo) and _finite(hi)) or hi <= lo or count < 1:
        return [], 0.0
    step = nice_step(hi - lo, count)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9)
    values = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [0.0 if abs(v) < step * 1e-9 else v for v in values], step


DURATION_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
                  172800, 604800)


def time_ticks(lo: float, hi: float, count: int) -> list[float]:
    """Round durations (10 s, 5 min, 1 h, …) inside [lo, hi]."""
    if not (_finite(lo) and _finite(hi)) or hi <= lo or count < 1:
        return []
    raw = (hi - lo) / count
    step = next((s for s in DURATION_STEPS if s >= raw), DURATION_STEPS[-1])
    return [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float, count: int) -> list[float]:
    """Powers of ten (exponents, as the log axis holds them) inside [lo, hi], thinned to `count`."""
    if not (_finite(lo) and _finite(hi)) or hi <= lo or count < 1:
        return []
    exps = list(range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1))
    every = max(1, math.ceil(len(exps) / count))
    return [float(e) for e in exps if e % every == 0]


def tick_label(v: float, step: float, kind: str = "value") -> str:
    """The shortest label that tells ticks `step` apart: `1.5k`, `.25`, `-0.5`→`-.5`, `5m`, `1e-4`."""
    if kind == "time":
        return fmt_duration(v)
    if kind == "log":  # v is the exponent
        e = int(round(v))
        return {-2: ".01", -1: ".1", 0: "1", 1: "10", 2: "100", 3: "1k"}.get(e, f"1e{e}")
    a = abs(v)
    if a < step * 1e-6:
        return "0"
    scale, suffix = (1e6, "M") if a >= 1e6 else (1e3, "k") if a >= 1e4 or (kind == "step" and a >= 1e3) else (1, "")
    s = step / scale
    if 0 < a < 1e-3 and scale == 1:
        mantissa, exponent = f"{v:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    decimals = max(0, -math.floor(math.log10(s) + 1e-9)) if s > 0 else 0
    if s > 0 and abs(round(s * 10 ** decimals) - s * 10 ** decimals) > 1e-6:  # 2.5 spacing: one more
        decimals += 1
    text = f"{v / scale:.{decimals}f}"
    if text.startswith(("0.", "-0.")) and text not in ("0.", "-0."):
        text = text.replace("0.", ".", 1)
    return ("0" if text in ("-0", "-.0") else text) + (suffix if v else "")


def fmt_short(v: float, width: int = 6) -> str:
    """fmt(v) when it fits in `width` (a gutter), else fewer digits in e-notation (`-2e-5`)."""
    text = fmt(v)
    if len(text) <= width:
        return text
    for digits in (1, 0):
        mantissa, exponent = f"{v:.{digits}e}".split("e")
        text = f"{mantissa}e{int(exponent)}"
        if len(text) <= width:
            return text
    return text[:width]
