"""store/reader.py on a real SQLite file written through store's writer."""
from __future__ import annotations

import random
import time

import pytest

from store import reader, series as step_series
from store.db import connect
from store.runs import create_run, truncate_after, update_run
from store.schema import STEP_METRICS
from conftest import new_run


def step_row(step: int, *, epoch: int = 0, t: float | None = None, skip: int = 0, **metrics) -> tuple:
    """A steps row (STEP_COLUMNS without run_id); every metric 0.5 unless given."""
    values = {m: 0.5 for m in STEP_METRICS} | {"skip": float(skip)} | metrics
    return (step, epoch, time.time() if t is None else t, 5e-4, *(values[m] for m in STEP_METRICS))


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "lvmd.db"
    run_id, sink = new_run(path)
    read = connect(path, readonly=True)
    yield path, run_id, sink, read
    read.close()
    sink.close()


def write(sink, rows) -> None:
    sink.log_steps(list(rows))
    sink.flush()


def brute_bins(read, run_id: int, width: int, column: str) -> dict[int, tuple[float, float, float]]:
    """min, max, mean per bin straight from the rows (the reference the SQL must match)."""
    out: dict[int, list[float]] = {}
    for step, value in read.execute(f"SELECT step, {column} FROM steps WHERE run_id = ?", (run_id,)):
        out.setdefault(step // width, []).append(value)
    return {k: (min(v), max(v), sum(v) / len(v)) for k, v in out.items()}


def series_bins(series: step_series.StepSeries, column: str) -> dict[int, tuple[float, float, float]]:
    snap = series.snapshot()
    i = snap.columns.index(column)
    return {b.index: (b.lo[i], b.hi[i], b.sums[i] / b.count) for b in snap.bins}


def refreshed(read, series: step_series.StepSeries) -> bool:
    with reader.read_snapshot(read):
        return series.refresh(read)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k]), k


def test_bins_hold_min_max_and_mean_and_keep_a_one_step_spike(db):
    path, run_id, sink, read = db
    rng = random.Random(1)
    rows = [step_row(s, rho=0.2 + rng.uniform(-0.01, 0.01)) for s in range(1000)]
    rows[617] = step_row(617, rho=0.9)  # one spike in 1000 steps
    write(sink, rows)
    series = step_series.StepSeries(run_id, target_bins=16)
    assert refreshed(read, series)
    assert series.width == 64 and len(series.snapshot().bins) == 16  # 1000 steps / 16 bins -> 2^6
    assert_same(series_bins(series, "rho"), brute_bins(read, run_id, 64, "rho"))
    assert max(b[1] for b in series_bins(series, "rho").values()) == pytest.approx(0.9)


def test_incremental_refresh_equals_a_fresh_read_and_edges_stay_put(db):
    path, run_id, sink, read = db
    series = step_series.StepSeries(run_id, target_bins=8)
    rng = random.Random(2)
    step, widths = 0, []
    for _ in range(12):
        n = rng.randint(1, 150)
        write(sink, [step_row(s, pos=rng.random()) for s in range(step, step + n)])
        step += n
        before = series_bins(series, "pos")
        assert refreshed(read, series)
        widths.append(series.width)
        fresh = step_series.StepSeries(run_id, target_bins=8)
        refreshed(read, fresh)
        assert fresh.width == series.width
        assert_same(series_bins(series, "pos"), series_bins(fresh, "pos"))
        if widths[-2:-1] == [series.width]:  # same width: every full bin is unchanged
            last = max(before) if before else -1
            assert_same({k: v for k, v in series_bins(series, "pos").items() if k < last},
                        {k: v for k, v in before.items() if k < last})
    assert all(w & (w - 1) == 0 for w in widths) and widths == sorted(widths)  # powers of two, only growing
    assert not refreshed(read, series)  # nothing new: nothing changed


def test_resume_that_deletes_and_rewrites_steps_is_picked_up(db):
    """A resume deletes the steps after its checkpoint and writes them again; SQLite may hand the
    new rows the deleted rowids, so a rowid cursor alone would miss them."""
    path, run_id, sink, read = db
    write(sink, [step_row(s, rho=0.1) for s in range(300)])
    series = step_series.StepSeries(run_id, target_bins=64)
    refreshed(read, series)
    writer = connect(path)
    truncate_after(writer, run_id, 199, 1)
    writer.close()
    write(sink, [step_row(s, rho=0.3) for s in range(200, 300)])  # same steps, new values, reused rowids
    assert refreshed(read, series)
    assert_same(series_bins(series, "rho"), brute_bins(read, run_id, series.width, "rho"))
    assert max(b[1] for b in series_bins(series, "rho").values()) == pytest.approx(0.3)


def test_truncation_without_new_rows_shrinks_the_series(db):
    path, run_id, sink, read = db
    write(sink, [step_row(s) for s in range(500)])
    series = step_series.StepSeries(run_id, target_bins=64)
    refreshed(read, series)
    writer = connect(path)
    truncate_after(writer, run_id, 99, 1)
    writer.close()
    assert refreshed(read, series)
    assert series.last_step == 99 and series.snapshot().count == 100


def test_step_limit_cuts_the_series_and_retarget_merges_or_rebuilds(db):
    path, run_id, sink, read = db
    write(sink, [step_row(s, epoch=s // 100, skip=int(s % 50 == 0)) for s in range(400)])
    replay = step_series.StepSeries(run_id, target_bins=64, step_limit=199)
    refreshed(read, replay)
    assert replay.last_step == 199 and replay.snapshot().count == 200 and replay.snapshot().skips == 4
    live = step_series.StepSeries(run_id, target_bins=64)
    refreshed(read, live)
    live.retarget(8)  # coarser: merged from what it holds
    assert refreshed(read, live) and live.width == 64
    assert_same(series_bins(live, "mse"), brute_bins(read, run_id, 64, "mse"))
    live.retarget(128)  # finer: only the rows can tell
    assert refreshed(read, live) and live.width == 4
    assert_same(series_bins(live, "mse"), brute_bins(read, run_id, 4, "mse"))
    assert [b.epoch for b in live.snapshot().bins][:26:25] == [0, 1]


def test_a_zoom_window_bins_its_span_slides_without_rereading_and_zooms_out(db):
    path, run_id, sink, read = db
    rng = random.Random(4)
    write(sink, [step_row(s, rho=rng.random()) for s in range(1000)])
    series = step_series.StepSeries(run_id, target_bins=16)
    refreshed(read, series)
    assert series.width == 64
    series.set_window(750, 250)          # the newest quarter: finer bins, read again
    assert refreshed(read, series) and series.width == 32   # 250 // 32 + 2 bins fit in 16
    snap = series.snapshot()
    assert snap.step_from == 736 and [b.index for b in snap.bins] == list(range(23, 32))
    want = brute_bins(read, run_id, 32, "rho")
    assert_same(series_bins(series, "rho"), {k: v for k, v in want.items() if k >= 23})

    bin_reads = []
    read.set_trace_callback(lambda sql: bin_reads.append(sql) if "TOTAL(skip)" in sql else None)
    write(sink, [step_row(s, rho=rng.random()) for s in range(1000, 1100)])
    series.set_window(850, 250)          # the window slides with the newest step
    assert refreshed(read, series) and series.width == 32
    assert len(bin_reads) == 1099 // 32 - 999 // 32 + 1     # only the bins the new rows touch
    read.set_trace_callback(None)
    want = brute_bins(read, run_id, 32, "rho")
    assert_same(series_bins(series, "rho"), {k: v for k, v in want.items() if k >= 850 // 32})

    series.set_window(0, None)           # back to the whole run: the left part is read again
    assert refreshed(read, series) and series.width == 128 and series.snapshot().step_from == 0
    assert_same(series_bins(series, "rho"), brute_bins(read, run_id, 128, "rho"))


def test_new_rows_are_found_through_the_rowid_range_not_a_scan(db):
    """The cheap path the tail takes on every wake-up must stay cheap on a million rows."""
    path, run_id, sink, read = db
    plan = " ".join(r[3] for r in read.execute("EXPLAIN QUERY PLAN " + step_series.StepSeries.NEW_ROWS_SQL, (1, 0, run_id)))
    assert "INTEGER PRIMARY KEY (rowid>?)" in plan
    plan = " ".join(r[3] for r in read.execute("EXPLAIN QUERY PLAN " + step_series.StepSeries(run_id, target_bins=4)._bin_sql,
                                               (run_id, 0, 1, 1)))
    assert "USING INDEX" in plan and "TEMP B-TREE" not in plan


def test_run_summaries_carry_latest_gates_and_flag_silent_runs(db):
    path, run_id, sink, read = db
    from store.evals import insert_eval

    writer = connect(path)
    other = create_run(writer, name="old", preset="mse", compat="none", config={}, data={}, state="finished")
    for passed in (2, 4):
        insert_eval(writer, run_id, {"epoch": 0, "trigger": "epoch", "gates_passed": passed, "gates_total": 5}, [], [])
    update_run(writer, run_id, heartbeat_at=time.time() - 60)
    writer.close()
    runs = {r.id: r for r in reader.run_summaries(read)}
    assert list(runs) == [other, run_id]  # newest first
    assert (runs[run_id].gates_passed, runs[run_id].gates_total) == (4, 5)
    assert runs[other].gates_passed is None
    now = time.time()
    assert runs[run_id].is_stale(now) and not runs[other].is_stale(now)
    assert runs[run_id].heartbeat_age(now) == pytest.approx(60, abs=2)


def test_events_cursor_and_deletion_check(db):
    path, run_id, sink, read = db
    for s in (10, 20, 30):
        sink.event("skip", step=s, epoch=0, detail={"pos": -0.1})
    sink.flush()
    events = reader.events_after(read, run_id, 0)
    assert [e["step"] for e in events] == [10, 20, 30] and events[0]["kind"] == "skip"
    assert reader.events_after(read, run_id, events[-1]["id"]) == []
    assert reader.events_count(read, run_id, events[-1]["id"]) == 3
    writer = connect(path)
    truncate_after(writer, run_id, 15, 0)  # a resume from step 15 drops the skips after it
    writer.close()
    assert reader.events_count(read, run_id, events[-1]["id"]) == 1


def test_epoch_end_step_prefers_the_epochs_row(db):
    path, run_id, sink, read = db
    write(sink, [step_row(s, epoch=s // 10) for s in range(30)])
    sink.epoch({"epoch": 0, "step": 9, "t": time.time()})
    sink.flush()
    assert reader.epoch_end_step(read, run_id, 0) == 9
    assert reader.epoch_end_step(read, run_id, 1) == 19  # no epochs row yet: from the steps
    assert reader.epoch_end_step(read, run_id, 7) == 29


def test_a_long_run_gets_a_sampled_preview_on_the_same_bins_first(db, monkeypatch):
    path, run_id, sink, read = db
    monkeypatch.setattr(step_series, "PREVIEW_MIN_STEPS", 500)
    monkeypatch.setattr(step_series, "PREVIEW_SAMPLES", 50)
    write(sink, [step_row(s, pos=s / 1000) for s in range(1000)])
    series = step_series.StepSeries(run_id, target_bins=16)
    with reader.read_snapshot(read):
        preview = series.preview(read)
    assert preview.sample_stride == 19 and preview.width == 64 and preview.count == 53  # steps 0, 19, ... 988
    assert [b.index for b in preview.bins] == list(range(16))
    refreshed(read, series)
    exact = series.snapshot()
    assert exact.sample_stride == 1 and exact.width == preview.width and exact.count == 1000
    pos = step_series.SERIES_COLUMNS.index("pos")
    for p, e in zip(preview.bins, exact.bins):  # a sample's mean is near the bin's mean
        assert p.sums[pos] / p.count == pytest.approx(e.sums[pos] / e.count, abs=0.02)
    assert series.preview(read) is None  # once read, no more previews
    short = step_series.StepSeries(run_id, target_bins=16, step_limit=400)
    assert short.preview(read) is None  # short enough to read whole
