"""The live collapse checks of SPEC §5, judged on what the TUI already holds (no extra reads)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from store.views import RHO_CAP_RTOL_DIVISOR
from tui.plots import rho_cap_at, run_config
from tui.tail import RunSnapshot
from tui.widgets.canvas import fmt

SKIP_RATE_MAX = 0.01  # "skips < 1 % of batches"


@dataclass(frozen=True)
class Alert:
    key: str   # stable identity, so each alert is announced once
    text: str


def alerts_for(run: RunSnapshot) -> list[Alert]:
    series, config = run.series, run_config(run.run)
    found: list[Alert] = []
    if series.sample_stride > 1:  # a preview's min/max and skip counts are estimates: wait for the real ones
        series = replace(series, bins=())
    if "rho" in series.columns:
        i = series.columns.index("rho")
        over = [(b.hi[i], cap) for b in series.bins
                if b.hi[i] is not None and (cap := rho_cap_at(config, b.epoch)) is not None
                and b.hi[i] > cap + cap / RHO_CAP_RTOL_DIVISOR]            # the guardrail's rule (lvmd/train/rho_cap.py)
        if over:
            worst, cap = max(over)
            found.append(Alert("rho_cap", f"ρ {fmt(worst)} > cap {cap:g}"))
    if "pos" in series.columns:
        i = series.columns.index("pos")
        lows = [b.lo[i] for b in series.bins if b.lo[i] is not None]
        if lows and min(lows) < 0:
            found.append(Alert("pos_negative", f"pos̄ < 0 (min {fmt(min(lows))})"))
    if series.count and series.skips / series.count > SKIP_RATE_MAX:
        found.append(Alert("skip_rate", f"skips {100 * series.skips / series.count:.1f}% > 1%"))
    collapses = [e for e in run.events if e["kind"] == "collapse_warning"]
    if collapses:
        where = collapses[-1]["step"]
        found.append(Alert("collapse", "collapse warning" + (f" at step {where}" if where is not None else "")))
    return found
