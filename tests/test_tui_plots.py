"""Pure pieces of the TUI: braille drawing, plot building, alerts (no app, no database)."""
from __future__ import annotations

import math
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.series import SERIES_COLUMNS, SeriesBin, SeriesSnapshot
from tui.alerts import alerts_for
from tui.plots import SEED_MARGIN_BAND, cap_segments, margin_plot, rho_cap_at
from tui.tail import RunSnapshot
from tui.widgets.canvas import GUTTER, Band, Plot, Trace, draw, fmt, marker_columns

V22_CONFIG = {"loss": {"rho_cap": 0.25, "ramp": [
    {"until": 2, "rho_cap": 0.35}, {"until": 4, "rho_cap": 0.45}, {"until": 10**9, "rho_cap": 0.5}]}}


def dots(line: str) -> list[int]:
    """Column indexes (after the gutter) holding any braille dot."""
    return [i for i, ch in enumerate(line[GUTTER:]) if "\u2801" <= ch <= "\u28ff"]


def test_a_single_step_spike_survives_drawing_10000_steps_in_30_columns():
    points = [(s, s, 0.1, 0.1, 0.1) for s in range(10_000)]
    points[7_000] = (7_000, 7_000, 0.1, 0.9, 0.1)
    lines = [ln.plain for ln in draw(Plot("ρ", [Trace("ρ", points, "cyan")], (0, 9_999)), 37, 8)]
    top = lines[1]  # the first plot row holds the maximum
    assert dots(top) == [round(7_000 / 9_999 * 59) // 2]


def test_the_mean_line_and_the_envelope_use_their_rows():
    points = [(0, 9, 0.0, 1.0, 0.5), (10, 19, 0.0, 1.0, 0.5)]
    lines = draw(Plot("x", [Trace("x", points, "green")], (0, 19)), GUTTER + 10, 7)  # 4 plot rows
    middle = [ln for ln in lines[1:5] if any(s.style == "green" for s in ln.spans)]
    assert len(middle) == 1  # the mean (0.5) is drawn bright on exactly one row
    assert all("dim green" in {str(s.style) for s in ln.spans} for ln in (lines[1], lines[4]))


def test_log_axis_keeps_zeros_at_its_floor_and_labels_powers():
    points = [(0, 0, 0.0, 1e-3, 5e-4), (1, 1, 1e-5, 1e-2, 1e-3)]
    lines = [ln.plain for ln in draw(Plot("loss", [Trace("l", points, "white")], (0, 1), log_y=True), 40, 7)]
    gutter = [ln[:6].strip() for ln in lines[1:5]]
    assert gutter[0] == ".01" and "1e-4" in gutter  # ticks at powers of ten, at their rows


def test_markers_show_the_most_severe_event_per_cell():
    plot = Plot("ρ", [Trace("ρ", [(0, 100, 0.1, 0.2, 0.15)], "cyan")], (0, 100),
                markers=[(50, "attenuate"), (50, "collapse_warning"), (50, "skip"), (0, "skip"), (100, "checkpoint")])
    marks = marker_columns(plot, GUTTER + 20)
    assert marks == {0: "▲", 10: "✖"}


def test_band_shades_only_its_rows_and_empty_plots_say_so():
    band = Band(0.5, 2.5, -0.04, -0.03, "grey30")
    plot = Plot("m", [Trace("m", [(1, 1, -0.1, -0.1, -0.1), (2, 2, 0.1, 0.1, 0.1)], "green")], (0.5, 2.5), bands=[band],
                show_markers=False)
    lines = draw(plot, GUTTER + 10, 10)
    shaded = [i for i, ln in enumerate(lines) if any("on grey30" in str(s.style) for s in ln.spans)]
    assert shaded and len(shaded) <= 2 and 1 < shaded[0] < 8
    empty = [ln.plain for ln in draw(Plot("m", empty_text="no epoch yet"), 30, 5)]
    assert any("no epoch yet" in ln for ln in empty)


@pytest.mark.parametrize("value, text", [(0.2, ".200"), (-0.0123, "-.0123"), (0.00123, ".00123"), (12.5, "12.5"),
                                         (123456.0, "123k"), (0.0020, ".00200"), (0.0024, ".00240"),
                                         (2.34e-5, "2.34e-5"), (None, "–"), (0, "0"), (0.2500000298, ".250")])
def test_fmt_keeps_three_significant_digits_in_seven_characters(value, text):
    assert fmt(value) == text and len(fmt(value)) <= 7


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e12), st.booleans())
def test_every_value_keeps_three_significant_digits(v, negative):
    """Read back, a legend value is within half a unit of its third significant digit."""
    v = -v if negative else v
    text = fmt(v)
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}.get(text[-1], 1.0)
    back = float(text[:-1] if scale != 1.0 else text) * scale
    assert len(text) <= 8 and math.isclose(back, v, rel_tol=5e-3), (v, text)


def test_counts_read_as_integers():
    assert fmt(665.0, count=True) == "665" and fmt(400) == "400"


def test_rho_cap_follows_the_ramp_stage():
    assert rho_cap_at({"loss": {"rho_cap": 0.25}}, 5) == 0.25
    assert [rho_cap_at(V22_CONFIG, e) for e in (0, 1, 2, 3, 4, 11)] == [0.35, 0.35, 0.45, 0.45, 0.5, 0.5]
    assert rho_cap_at({"loss": {"rho_cap": 0.0}}, 0) is None


def snapshot(bins, *, config=V22_CONFIG, events=()) -> RunSnapshot:
    import json

    series = SeriesSnapshot(SERIES_COLUMNS, 100, bins[-1].index * 100 + 99 if bins else None, tuple(bins))
    return RunSnapshot(run={"id": 1, "config_json": json.dumps(config), "total_epochs": 12}, series=series,
                       latest=None, steps_per_s=None, events=tuple(events), epochs=(), evals=(),
                       gates=MappingProxyType({}), commands=(), step_limit=None, last_epoch=None)


def make_bin(index, epoch, *, rho=0.2, pos=0.3, count=100, skips=0):
    values = {c: 0.1 for c in SERIES_COLUMNS} | {"rho": rho, "pos": pos}
    row = tuple(values[c] for c in SERIES_COLUMNS)
    return SeriesBin(index, count, skips, epoch, row, row, tuple(v * count for v in row))


def test_alerts_judge_rho_against_the_cap_of_its_epoch():
    healthy = snapshot([make_bin(0, 0, rho=0.34), make_bin(1, 2, rho=0.44)])
    assert alerts_for(healthy) == []
    over = snapshot([make_bin(0, 0, rho=0.36), make_bin(1, 2, rho=0.44)])
    assert [a.key for a in alerts_for(over)] == ["rho_cap"] and "cap 0.35" in alerts_for(over)[0].text
    assert cap_segments(V22_CONFIG, over.series) == [(0, 99, 0.35), (100, 199, 0.45)]


def test_alerts_for_negative_pos_skip_rate_and_collapse():
    run = snapshot([make_bin(0, 0, pos=-0.01, skips=2)], events=[{"kind": "collapse_warning", "step": 42}])
    assert {a.key: a.text for a in alerts_for(run)} == {
        "pos_negative": "pos̄ < 0 (min -.0100)", "skip_rate": "skips 2.0% > 1%",
        "collapse": "collapse warning at step 42"}


def test_margin_plot_carries_the_seed_band_per_epoch():
    plot = margin_plot(snapshot([]), None)
    assert [(b.x0, b.x1, b.y0, b.y1) for b in plot.bands] == [
        (lo - 0.5, hi + 0.5, y0, y1) for lo, hi, y0, y1 in SEED_MARGIN_BAND]
