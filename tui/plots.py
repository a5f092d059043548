"""From snapshots to canvas.Plot objects: which metrics share a chart, their colours, the ρ
cap line, event markers, the seed's expected margin band and a sweep member's band over its
configuration's seeds. Pure functions, no widgets.

Colours are the 16 ANSI names so the charts read the same on a 16-colour terminal.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from store.reader import SeriesSnapshot
from tui.sweeps import short_config
from tui.tail import RunSnapshot
from tui.widgets.canvas import DASH_GLYPHS, MARKERS, Band, Plot, RefLine, Trace, fmt_step

BASELINE_STYLE = "bright_black"
# Marked runs drawn over the run's charts: a colour and a line style each (16-colour safe, and the
# style tells them apart where two colours look alike); the legend shows the style's glyph.
OVERLAY_STYLES = ("bright_red", "bright_yellow", "bright_magenta", "bright_cyan", "bright_green", "bright_blue")
OVERLAY_DASHES = ("dash", "dot", "solid")
# The original's expected val margin by epoch (SPEC §5), epochs counted from 1 as it printed them.
SEED_MARGIN_BAND = ((1, 2, -0.04, -0.03), (3, 5, -0.03, -0.01), (6, 8, -0.01, 0.02), (9, 12, 0.02, 0.05))
BAND_STYLE = "grey30"
SEEDS_STYLE = "yellow"  # a sweep configuration's mean over seeds (dotted) and its min–max band


def shown_epoch(epoch: int) -> int:
    """lvmd counts epochs from 0 (config.py's ramp); people and the seed count from 1."""
    return epoch + 1


def epoch_label(epoch: int, total: int | None) -> str:
    """`3/12`. runs.epoch is the epoch in progress and equals the total once the last has ended."""
    shown = shown_epoch(epoch)
    return f"{min(shown, total) if total else shown}/{total or '?'}"


@dataclass(frozen=True)
class StepChart:
    id: str
    title: str
    metrics: tuple[tuple[str, str, str], ...]  # (column, legend label, colour)
    log_y: bool = False
    cap: bool = False    # draw the ρ cap
    zero: bool = False   # draw y = 0


STEP_CHARTS = (
    StepChart("rho", "ρ", (("rho", "ρ", "cyan"),), cap=True),
    StepChart("ratio", "ratio", (("ratio", "ratio", "green"),), zero=True),
    StepChart("cos", "cos", (("pos", "pos", "green"), ("neg", "neg", "magenta")), zero=True),
    StepChart("neg_rate", "neg-cos rate", (("neg_cos_rate", "rate", "yellow"),)),
    StepChart("lam", "λ", (("lam", "λ", "bright_blue"),)),
    StepChart("loss", "loss", (("total", "total", "white"), ("mse", "mse", "cyan"), ("l_dir", "dir", "yellow"),
                               ("l_floor", "floor", "magenta"), ("l_norm", "norm", "blue")), log_y=True),
)


def rho_cap_at(config: dict, epoch: int | None) -> float | None:
    """The ρ cap in force at `epoch`: the ramp stage's own cap (v2.2) or loss.rho_cap; None if off."""
    loss = config.get("loss", {})
    cap = loss.get("rho_cap") or 0.0
    stages = loss.get("ramp") or []
    if epoch is not None and stages:
        stage = next((s for s in stages if epoch < s.get("until", 0)), stages[-1])
        cap = stage.get("rho_cap") or cap
    return cap if cap > 0 else None


def run_config(run: dict) -> dict:
    try:
        return json.loads(run.get("config_json") or "{}")
    except ValueError:
        return {}


def step_range(run: RunSnapshot, baseline: RunSnapshot | None, overlays=()) -> tuple[float, float]:
    last = max([s.series.last_step or 0 for s in (run, baseline, *overlays) if s is not None] + [1])
    return float(run.series.step_from), float(last)


def event_markers(run: RunSnapshot) -> list[tuple[int, str]]:
    """Marker positions, one per (series bin, kind): a flood of 10^5 attenuate events becomes
    a few hundred marks, drawn at the start of their bin (less than one dot off)."""
    w, first = run.series.width, run.series.step_from
    return sorted({(e["step"] // w * w, e["kind"]) for e in run.events
                   if e["kind"] in MARKERS and e["step"] is not None and e["step"] >= first})


def overlay_look(i: int) -> tuple[str, str]:
    """(colour, dash) of the i-th marked run: neighbours differ in both; six pairs, then they repeat."""
    return OVERLAY_STYLES[i % len(OVERLAY_STYLES)], OVERLAY_DASHES[i % len(OVERLAY_DASHES)]


def overlay_traces(overlays, points) -> list[Trace]:
    """One trace per marked run (points(run) gives its points), labelled `run N` after its dash glyph."""
    traces = []
    for i, other in enumerate(overlays):
        style, dash = overlay_look(i)
        traces.append(Trace(f"{DASH_GLYPHS[dash]}run {other.run_id}", points(other), style, envelope=False, dash=dash))
    return traces


SMOOTH_ALPHA = 0.1  # `S`: EMA weight per dot column (about a 10-column memory)


def step_plot(chart: StepChart, run: RunSnapshot, baseline: RunSnapshot | None,
              markers: list[tuple[int, str]], overlays: tuple[RunSnapshot, ...] = (), *,
              smooth: bool = False, cursor: float | None = None) -> Plot:
    latest = run.latest or {}
    alpha = SMOOTH_ALPHA if smooth else 0.0
    # the loss chart's legend shows only the total's value: five numbers do not fit at 80 columns
    traces = [Trace(label, run.series.trace(col), style, latest.get(col) if i == 0 or not chart.log_y else None,
                    smooth=alpha)
              for i, (col, label, style) in enumerate(chart.metrics)]
    if baseline is not None:  # behind the run's own lines: drawn first, labelled once
        traces = [Trace(f"run {baseline.run_id}" if i == 0 else "", baseline.series.trace(col), BASELINE_STYLE,
                        envelope=False) for i, (col, _label, _style) in enumerate(chart.metrics)] + traces
    # marked runs: the chart's first metric only (five loss lines per run would be unreadable)
    traces = overlay_traces(overlays, lambda other: other.series.trace(chart.metrics[0][0])) + traces
    x0, x1 = step_range(run, baseline, overlays)
    refs = []
    if chart.cap and (segments := cap_segments(run_config(run.run), run.series)):
        refs.append(RefLine(f"cap {segments[-1][2]:g}", segments, "red"))
    if chart.zero:
        refs.append(RefLine("", [(x0, x1, 0.0)], "bright_black"))
    sampled = "≈ " if run.series.sample_stride > 1 else ""  # a long run's first, sampled picture
    steps = f"steps {fmt_step(x0)}–{fmt_step(x1)}" if x0 > 0 else f"step {fmt_step(x1)}"  # zoomed: the window
    return Plot(chart.title + (" ~EMA" if smooth else ""), traces, (x0, x1), refs=refs, log_y=chart.log_y,
                markers=markers, x_label=f"{sampled}{steps}", cursor=cursor)


def cap_segments(config: dict, series: SeriesSnapshot) -> list[tuple[float, float, float]]:
    """The cap as constant pieces over the bins (it changes per ramp stage in v2.2)."""
    segments: list[list[float]] = []
    for b in series.bins:
        cap = rho_cap_at(config, b.epoch)
        if cap is None:
            continue
        x0, x1 = series.span(b)
        if segments and segments[-1][2] == cap:
            segments[-1][1] = x1
        else:
            segments.append([x0, x1, cap])
    return [tuple(s) for s in segments]


def _epoch_points(epochs, column: str) -> list[tuple[float, float, float, float, float]]:
    return [(shown_epoch(e["epoch"]),) * 2 + (e[column],) * 3 for e in epochs if e.get(column) is not None]


def epoch_range(run: RunSnapshot, overlays=()) -> tuple[float, float]:
    band = [b for s in (run.band, run.baseline_band) if s for b in s.val_margin + s.val_cos]
    last = max([run.run.get("total_epochs") or 0] + [shown_epoch(e["epoch"]) for r in (run, *overlays)
                                                      for e in r.epochs] + [shown_epoch(b["epoch"]) for b in band] + [1])
    return 0.5, last + 0.5


def seed_band_traces(run: RunSnapshot, column: str) -> list[Trace]:
    """A sweep member's configuration over its seeds: the mean per epoch as a dotted line (under
    the run's own) over the min–max band, labelled `v2.1·prev=true 3-seed mean` with the mean
    at the run's newest epoch in view; then, in grey, the same for the configuration `lvmd compare`
    holds it against (mse with the same other overrides). Empty for a run outside a sweep."""
    newest = run.epochs[-1]["epoch"] if run.epochs else None
    traces = []
    for band, style in ((run.band, SEEDS_STYLE), (run.baseline_band, BASELINE_STYLE)):
        rows: tuple = getattr(band, column) if band else ()
        if rows:
            points = [(shown_epoch(b["epoch"]),) * 2 + (b["lo"], b["hi"], b["mean"]) for b in rows]
            value = next((b["mean"] for b in rows if b["epoch"] == newest), None)
            traces.append(Trace(f"{DASH_GLYPHS['dot']}{short_config(band.config)} {band.seeds}-seed mean", points,
                                style, value, dash="dot", fill=True, under=True))
    return traces


def margin_plot(run: RunSnapshot, baseline: RunSnapshot | None, overlays: tuple[RunSnapshot, ...] = ()) -> Plot:
    x0, x1 = epoch_range(run, overlays)
    traces = [Trace("margin", _epoch_points(run.epochs, "val_margin"), "green",
                    run.epochs[-1].get("val_margin") if run.epochs else None)]
    if baseline is not None:
        traces.insert(0, Trace(f"run {baseline.run_id}", _epoch_points(baseline.epochs, "val_margin"), BASELINE_STYLE))
    traces = overlay_traces(overlays, lambda other: _epoch_points(other.epochs, "val_margin")) + traces
    traces += seed_band_traces(run, "val_margin")
    bands = [Band(lo - 0.5, hi + 0.5, y0, y1, BAND_STYLE) for lo, hi, y0, y1 in SEED_MARGIN_BAND if lo <= x1]
    # `expected`, not `seed band`: the original's expected margins, never this sweep's seeds
    return Plot("val margin", traces, (x0, x1), refs=[RefLine("", [(x0, x1, 0.0)], "bright_black")], bands=bands,
                show_markers=False, extra=[("▒ expected", BAND_STYLE)], x_label=f"epoch {int(x1 - 0.5)}",
                empty_text="no epoch finished yet")


def val_cos_plot(run: RunSnapshot, baseline: RunSnapshot | None, overlays: tuple[RunSnapshot, ...] = ()) -> Plot:
    x0, x1 = epoch_range(run, overlays)
    last = run.epochs[-1] if run.epochs else {}
    traces = [Trace("cos", _epoch_points(run.epochs, "val_cos"), "cyan", last.get("val_cos")),
              Trace("prev", _epoch_points(run.epochs, "val_prev_cos"), "magenta", last.get("val_prev_cos"))]
    if baseline is not None:
        traces.insert(0, Trace(f"run {baseline.run_id}", _epoch_points(baseline.epochs, "val_cos"), BASELINE_STYLE))
    traces = overlay_traces(overlays, lambda other: _epoch_points(other.epochs, "val_cos")) + traces
    traces += seed_band_traces(run, "val_cos")
    return Plot("val cos", traces, (x0, x1), show_markers=False, x_label=f"epoch {int(x1 - 0.5)}",
                empty_text="no epoch finished yet")
