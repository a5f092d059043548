"""From snapshots to canvas.Plot objects: a chart slot's metrics (tui.metrics.ChartSpec) drawn for
the open run, its baseline and the marked runs on the chosen x axis, with the ρ cap, y = 0, event
markers, the seed's expected margin band and a sweep member's band over its configuration's
seeds. Pure functions, no widgets.

Colours are the 16 ANSI names so the charts read the same on a 16-colour terminal; every other
run also has a line style of its own (its glyph leads its legend entry), so nothing is told apart
by colour alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

from store.series import SeriesSnapshot
from tui.metrics import DEFAULT_SPECS, ChartSpec, Metric
from tui.sweeps import short_config
from tui.tail import RunSnapshot
from tui.widgets.axes import fmt_step, fmt_x
from tui.widgets.canvas import DASH_GLYPHS, MARKERS, Band, Plot, RefLine, Trace
from tui.xaxis import XAxis

BASELINE_STYLE, BASELINE_DASH = "bright_black", "dashdot"
# Marked runs drawn over the run's charts: a colour and a line style each (16-colour safe, and the
# style tells them apart where two colours look alike); the legend shows the style's glyph. No
# marked run is solid (the open run is) or dash-dot (the baseline is).
OVERLAY_STYLES = ("bright_red", "bright_yellow", "bright_magenta", "bright_cyan", "bright_green", "bright_blue")
OVERLAY_DASHES = ("dash", "dot", "shortdash")
# The original's expected val margin by epoch (SPEC §5), epochs counted from 1 as it printed them.
SEED_MARGIN_BAND = ((1, 2, -0.04, -0.03), (3, 5, -0.03, -0.01), (6, 8, -0.01, 0.02), (9, 12, 0.02, 0.05))
BAND_STYLE = "grey30"
SEEDS_STYLE = "yellow"  # a sweep configuration's mean over seeds (dotted) and its min–max band
SMOOTHING = (0.0, 0.6, 0.9, 0.99)  # `S` steps through these EMA weights, as TensorBoard's slider


def shown_epoch(epoch: int) -> int:
    """lvmd counts epochs from 0 (config.py's ramp, SQL, JSON); people and the seed count from 1."""
    return epoch + 1


def epoch_label(epoch: int, total: int | None) -> str:
    """`3/12`. runs.epoch is the epoch in progress and equals the total once the last has ended."""
    shown = shown_epoch(epoch)
    return f"{min(shown, total) if total else shown}/{total or '?'}"


@dataclass(frozen=True)
class ChartView:
    """What every chart of the run screen draws from: the runs, and the screen's choices."""
    run: RunSnapshot
    baseline: RunSnapshot | None = None
    overlays: tuple[RunSnapshot, ...] = ()
    x_kind: str = "step"
    smooth: float = 0.0             # EMA weight of the step charts' lines (0: raw)
    cursor_step: int | None = None  # the step charts' cursor
    zoom: int = 0                   # what the tail was asked for: a change is drawn at once, not on the next tick
    replay_epoch: int | None = None


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
        value = json.loads(run.get("config_json") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def event_markers(run: RunSnapshot) -> list[tuple[int, str]]:
    """Marker positions, one per (series bin, kind): a flood of 10^5 attenuate events becomes
    a few hundred marks, drawn at the start of their bin (less than one dot off)."""
    w, first = run.series.width, run.series.step_from
    return sorted({(e["step"] // w * w, e["kind"]) for e in run.events
                   if e["kind"] in MARKERS and e["step"] is not None and e["step"] >= first})


def overlay_look(i: int) -> tuple[str, str]:
    """(colour, dash) of the i-th marked run: neighbours differ in both; six pairs, then they repeat."""
    return OVERLAY_STYLES[i % len(OVERLAY_STYLES)], OVERLAY_DASHES[i % len(OVERLAY_DASHES)]


def cap_segments(config: dict, series: SeriesSnapshot, axis: XAxis | None = None) -> list[tuple[float, float, float]]:
    """The cap as constant pieces over the bins (it changes per ramp stage in v2.2)."""
    segments: list[list[float]] = []
    for b in series.bins:
        cap = rho_cap_at(config, b.epoch)
        span = series.span(b) if axis is None else axis.bin_span(series, b)
        if cap is None or span is None:
            continue
        if segments and segments[-1][2] == cap:
            segments[-1][1] = span[1]
        else:
            segments.append([span[0], span[1], cap])
    return [tuple(s) for s in segments]


def chart_plot(spec: ChartSpec, view: ChartView, *, log_y: bool | None = None) -> Plot:
    """The slot's plot for the view; log_y None: the slot's own default."""
    log_y = spec.log_y if log_y is None else log_y
    if spec.source == "steps":
        return _step_plot(spec, view, log_y)
    return _row_plot(spec, view, log_y)


# -- charts of `steps` ----------------------------------------------------------------------------
def _series_trace(run: RunSnapshot, axis: XAxis, column: str) -> list:
    return axis.trace(run.series, column) if column in run.series.columns else []


def _step_plot(spec: ChartSpec, view: ChartView, log_y: bool) -> Plot:
    run, baseline, overlays = view.run, view.baseline, view.overlays
    axis = XAxis.of(run, view.x_kind)
    latest, w = run.latest or {}, view.smooth
    traces = [Trace(m.label, _series_trace(run, axis, m.column), m.colour, latest.get(m.column), smooth=w,
                    rank=0 if i == 0 else 1, count=m.is_count) for i, m in enumerate(spec.metrics)]
    first = spec.metrics[0]
    if baseline is not None:  # behind the run's own lines: drawn first, labelled once
        base_axis = XAxis.of(baseline, view.x_kind)
        traces = [Trace(f"run {baseline.run_id}" if i == 0 else "", _series_trace(baseline, base_axis, m.column),
                        BASELINE_STYLE, (baseline.latest or {}).get(m.column) if i == 0 else None, envelope=False,
                        dash=BASELINE_DASH, smooth=w, rank=2, count=m.is_count)
                  for i, m in enumerate(spec.metrics)] + traces
    # marked runs: the chart's first metric only (five loss lines per run would be unreadable)
    traces = _overlay_traces(overlays, lambda o: _series_trace(o, XAxis.of(o, view.x_kind), first.column),
                             lambda o: (o.latest or {}).get(first.column), first, smooth=w) + traces
    x0, x1 = _step_range(view, axis, traces)
    refs = []
    if spec.cap and (segments := cap_segments(run_config(run.run), run.series, axis)):
        refs.append(RefLine("cap", segments, "red"))
    if spec.zero:
        refs.append(RefLine("", [(x0, x1, 0.0)], "bright_black"))
    sampled = "≈ " if run.series.sample_stride > 1 else ""  # a long run's first, sampled picture
    where = ""
    if view.x_kind == "step":
        where = f"steps {fmt_step(x0)}–{fmt_step(x1)}" if x0 > 0 else f"step {fmt_step(x1)}"  # zoomed: the window
    cursor, cursor_label = _cursor(view, axis)
    title = spec.title + (f" ~{w:g}" if w else "")
    return Plot(title, traces, (x0, x1), refs=refs, log_y=log_y, markers=_markers(run, axis),
                x_label=f"{sampled}{where}".strip(), cursor=cursor, x_kind=view.x_kind, cursor_label=cursor_label)


def _step_range(view: ChartView, axis: XAxis, traces: list[Trace]) -> tuple[float, float]:
    """Step axis: the run's window to the newest step of any run shown (the longest sets it).
    Time and epoch axes: from 0 (or the zoomed window's start) to the furthest point."""
    runs = [s for s in (view.run, view.baseline, *view.overlays) if s is not None]
    if view.x_kind == "step":
        return float(view.run.series.step_from), float(max([s.series.last_step or 0 for s in runs] + [1]))
    ends = [p[1] for t in traces for p in t.points]
    starts = [p[0] for t in traces if t.rank < 2 for p in t.points]
    x0 = min(starts) if view.run.series.step_from and starts else 0.0
    return x0, max(ends + [x0 + 1e-9])


def _markers(run: RunSnapshot, axis: XAxis) -> list[tuple[float, str]]:
    if axis.kind == "step":
        return event_markers(run)
    bins = {b.index: b for b in run.series.bins}
    out = []
    for step, kind in event_markers(run):
        b = bins.get(step // run.series.width)
        span = None if b is None else axis.bin_span(run.series, b)
        if span is not None:
            out.append((span[0], kind))
    return out


def _cursor(view: ChartView, axis: XAxis) -> tuple[float | None, str]:
    """The cursor's x on this axis, and its label (`1.2k`, `5m10s`, `3.25 epochs`)."""
    step = view.cursor_step
    if step is None:
        return None, ""
    series = view.run.series
    if axis.kind == "step":
        return float(step), fmt_step(step)
    t = None
    b = next((b for b in series.bins if b.index == step // series.width), None)
    if b is not None and "t" in series.columns:
        i = series.columns.index("t")
        t = b.sums[i] / b.count
    x = axis.of_step(step, t)
    return (None, "") if x is None else (x, fmt_x(x, axis.kind))


def _overlay_traces(overlays, points, value, m: Metric, smooth: float = 0.0) -> list[Trace]:
    """One trace per marked run (points(run) gives its points), labelled `run N` after its dash glyph."""
    traces = []
    for i, other in enumerate(overlays):
        style, dash = overlay_look(i)
        traces.append(Trace(f"run {other.run_id}", points(other), style, value(other), envelope=False, dash=dash,
                            smooth=smooth, rank=2, count=m.is_count))
    return traces


# -- charts of `epochs` rows and 5CAT evaluations --------------------------------------------------
def _rows(run: RunSnapshot, m: Metric) -> list[tuple[dict, float]]:
    """(row, value) of the run's rows that hold the metric: epochs rows, or finished evals."""
    if m.source == "epochs":
        return [(e, e[m.column]) for e in run.epochs if e.get(m.column) is not None]
    out = []
    for ev in run.evals:
        value = run.eval_metrics.get(ev["id"], {}).get((m.split, m.column))
        if value is not None:
            out.append((ev, value))
    return out


def _row_points(run: RunSnapshot, m: Metric, axis: XAxis) -> list[tuple[float, float, float, float, float]]:
    points = []
    for row, v in _rows(run, m):
        # an epochs row, or a 5CAT at an epoch's end, sits at its epoch; one asked for mid-epoch at its step
        mid_epoch = m.source == "eval" and row.get("trigger") != "epoch" and row.get("step") is not None
        x = axis.of_step(row["step"]) if mid_epoch and axis.kind == "epoch" else axis.of_epoch_row(row)
        if x is not None:
            points.append((x, x, v, v, v))
    return points


def _row_plot(spec: ChartSpec, view: ChartView, log_y: bool) -> Plot:
    # rows come once an epoch (or an eval): on the step axis they stay by epoch, their own unit;
    # wall time and epoch put them on the step charts' axis
    view = replace(view, x_kind="epoch" if view.x_kind == "step" else view.x_kind)
    run, baseline, overlays = view.run, view.baseline, view.overlays
    axis = XAxis.of(run, view.x_kind)
    first = spec.metrics[0]
    traces = []
    for i, m in enumerate(spec.metrics):
        rows = _rows(run, m)
        traces.append(Trace(m.label, _row_points(run, m, axis), m.colour, rows[-1][1] if rows else None,
                            rank=0 if i == 0 else 1, count=m.is_count))
    if baseline is not None:
        rows = _rows(baseline, first)
        traces.insert(0, Trace(f"run {baseline.run_id}", _row_points(baseline, first, XAxis.of(baseline, view.x_kind)),
                               BASELINE_STYLE, rows[-1][1] if rows else None, dash=BASELINE_DASH, rank=2,
                               count=first.is_count))
    traces = _overlay_traces(overlays, lambda o: _row_points(o, first, XAxis.of(o, view.x_kind)),
                             lambda o: (_rows(o, first) or [(None, None)])[-1][1], first) + traces
    if first.source == "epochs" and first.column in ("val_margin", "val_cos"):
        traces += seed_band_traces(run, first.column, axis)
    x0, x1 = _row_range(view, axis, traces)
    refs = [RefLine("", [(x0, x1, 0.0)], "bright_black")] if spec.zero else []
    bands, extra = [], []
    if first.key == "epochs.val_margin":
        for lo, hi, y0, y1 in SEED_MARGIN_BAND:
            a, b = axis.of_epochs_done(lo - 0.5, run), axis.of_epochs_done(hi + 0.5, run)
            if a is not None and b is not None and a <= x1:
                bands.append(Band(a, b, y0, y1, BAND_STYLE))
        # `expected`, not `seed band`: the original's expected margins, never this sweep's seeds
        extra = [("▒ expected", BAND_STYLE)] if bands else []
    what = "no 5CAT eval yet" if first.source == "eval" else "no epoch finished yet"
    return Plot(spec.title, traces, (x0, x1), refs=refs, bands=bands, show_markers=False, extra=extra,
                x_label=f"epoch {int(x1 - 0.5)}" if view.x_kind == "epoch" else "", empty_text=what, log_y=log_y,
                x_kind=view.x_kind)


def _row_range(view: ChartView, axis: XAxis, traces: list[Trace]) -> tuple[float, float]:
    """Epoch axis: half an epoch either side of epochs 1..total (the epochs to come stay in view);
    step axis: 0 to the run's total steps; time: 0 to the newest point."""
    run = view.run
    ends = [p[1] for t in traces for p in t.points]
    if view.x_kind == "epoch":
        last = max([run.run.get("total_epochs") or 0] + [round(x) for x in ends] + [1])
        return 0.5, last + 0.5
    if view.x_kind == "step":
        return 0.0, float(max([run.run.get("total_steps") or 0] + ends + [1]))
    return 0.0, max(ends + [1.0])


def seed_band_traces(run: RunSnapshot, column: str, axis: XAxis | None = None) -> list[Trace]:
    """A sweep member's configuration over its seeds: the mean per epoch as a dotted line (under
    the run's own) over the min–max band, labelled `v2.1·prev=true 3-seed mean` with the mean
    at the run's newest epoch in view; then, in grey, the same for the configuration `lvmd compare`
    holds it against (mse with the same other overrides). Empty for a run outside a sweep."""
    newest = run.epochs[-1]["epoch"] if run.epochs else None
    traces = []
    for band, style in ((run.band, SEEDS_STYLE), (run.baseline_band, BASELINE_STYLE)):
        rows: tuple = getattr(band, column) if band else ()
        points = []
        for b in rows:
            x = shown_epoch(b["epoch"]) if axis is None else axis.of_epochs_done(shown_epoch(b["epoch"]), run)
            if x is not None:
                points.append((x, x, b["lo"], b["hi"], b["mean"]))
        if points:
            value = next((b["mean"] for b in rows if b["epoch"] == newest), None)
            traces.append(Trace(f"{short_config(band.config)} {band.seeds}-seed mean", points,
                                style, value, dash="dot", fill=True, under=True, rank=2))
    return traces


def margin_plot(run: RunSnapshot, baseline: RunSnapshot | None = None, overlays: tuple[RunSnapshot, ...] = ()) -> Plot:
    """The Epochs tab's default first chart (val margin with the expected band)."""
    return chart_plot(DEFAULT_SPECS["margin"], ChartView(run, baseline, overlays, x_kind="epoch"))


__all__ = ["BASELINE_STYLE", "ChartView", "DASH_GLYPHS", "SMOOTHING", "chart_plot", "epoch_label", "shown_epoch"]
