"""tui/sweeps.py: a sweep as a group (progress, best so far) and a configuration's seed band,
over a real SQLite file written through store's functions, in the real app under run_test()."""
from __future__ import annotations

import pytest
from textual.app import App

from store.db import connect
from store.runs import create_run
from store.sweeps import add_config, create_sweep, epoch_band, sweep_progress, tag_run
from tui.sweeps import SweepGroups, band_lines, progress_text

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def conn(tmp_path):
    conn = connect(tmp_path / "t.db")
    sweep = create_sweep(conn, name="demo", search="grid", config_path="", spec={"seeds": [0, 1]}, parallel=2)
    add_config(conn, sweep, "loss.preset=mse", ["loss.preset=mse"])
    add_config(conn, sweep, "loss.preset=v2.1", ["loss.preset=v2.1"])
    last = {("loss.preset=mse", 0): -0.20, ("loss.preset=mse", 1): -0.10, ("loss.preset=v2.1", 0): -0.05}
    for (label, seed), margin in last.items():
        run = create_run(conn, name=f"{label}/{seed}", preset="x", compat="none", config={}, data={}, state="finished")
        tag_run(conn, run, sweep, label, seed)
        for epoch, value in enumerate((margin - 0.01, margin)):
            conn.execute("INSERT INTO epochs (run_id, epoch, val_margin) VALUES (?, ?, ?)", (run, epoch, value))
    run = create_run(conn, name="v2.1/1", preset="x", compat="none", config={}, data={}, state="running")
    tag_run(conn, run, sweep, "loss.preset=v2.1", 1)
    yield conn
    conn.close()


def test_progress_counts_runs_and_names_the_best_configuration_so_far(conn):
    (p,) = sweep_progress(conn)
    assert (p["planned"], p["finished"], p["training"], p["pruned"]) == (4, 3, 1, 0)
    assert (p["best"], p["best_n"]) == ("loss.preset=v2.1", 1) and p["best_margin"] == pytest.approx(-0.05)
    assert progress_text(p).plain == ("sweep 1 demo ████████████···· 3/4 done · 1 training · "
                                      "best loss.preset=v2.1 -0.0500 (n=1) · running")


def test_band_is_the_mean_and_range_over_seeds_per_epoch(conn):
    band = epoch_band(conn, 1, "loss.preset=mse")
    assert [(b["epoch"], b["n"]) for b in band] == [(0, 2), (1, 2)]
    assert band[1]["mean"] == pytest.approx(-0.15) and (band[1]["lo"], band[1]["hi"]) == (-0.20, -0.10)
    assert band_lines(band)[1] == "e2   -0.1500 [-0.2000, -0.1000] n=2"
    with pytest.raises(ValueError):
        epoch_band(conn, 1, "loss.preset=mse", "val_margin; DROP TABLE runs")


async def test_the_widget_shows_one_line_per_sweep(conn):
    class Host(App):
        def compose(self):
            yield SweepGroups(id="sweeps")

    async with Host().run_test(size=(120, 10)) as pilot:
        widget = pilot.app.query_one(SweepGroups)
        widget.refresh_from(conn)
        await pilot.pause()
        assert widget.render().plain.startswith("sweep 1 demo ████████████···· 3/4 done")
