"""step_blocks (migration 9) stays equal to the steps it sums, whatever writes `steps`, and the
views that read it answer exactly what the v2 views, which read every step row, answered."""
from __future__ import annotations

import random
import sqlite3

import pytest
import sqlite_utils

from store.db import connect
from store.report import step_series
from store.runs import create_run, truncate_after
from store.schema import MIGRATIONS, STEP_COLUMNS, STEP_METRICS
from store.step_blocks import BLOCK_STEPS, SUMMED
from store.views import VIEWS_V2, VIEWS_V3, create_views

INSERT = f"INSERT INTO steps ({', '.join(STEP_COLUMNS)}) VALUES ({', '.join('?' * len(STEP_COLUMNS))})"
STEP_VIEWS = ("v_epoch_steps", "v_skip_rate_by_epoch", "v_run_summary", "v_guardrail_checks")
V22_RAMP = [{"until": 2, "m_gap": 0.02, "frac": 0.15, "rho_cap": 0.35},
            {"until": 4, "m_gap": 0.04, "frac": 0.25, "rho_cap": 0.50},
            {"until": 10**9, "m_gap": 0.07, "frac": 0.35, "rho_cap": 0.0}]


def _rows(rng: random.Random, run_id: int, steps: range, per_epoch: int) -> list[tuple]:
    out = []
    for step in steps:
        metrics = {m: rng.uniform(-0.2, 0.6) for m in STEP_METRICS}
        metrics |= {"skip": float(rng.random() < 0.1), "attenuate": float(rng.random() < 0.2)}
        out.append((run_id, step, step // per_epoch, float(step), 1e-3, *(metrics[m] for m in STEP_METRICS)))
    return out


def _expected_blocks(conn: sqlite3.Connection) -> dict[tuple, dict]:
    """step_blocks as one GROUP BY over the steps would give it."""
    sums = ", ".join(f"SUM({m}) AS sum_{m}" for m in SUMMED)
    rows = conn.execute(
        f"SELECT run_id, epoch, step / {BLOCK_STEPS} AS block, COUNT(*) AS steps, MIN(step) AS first_step,"
        f" MAX(step) AS last_step, SUM(pos < 0) AS pos_negative, MIN(pos) AS pos_min, MAX(rho) AS rho_max,"
        f" MAX(rho_pre) AS rho_pre_max, {sums} FROM steps GROUP BY run_id, epoch, block").fetchall()
    return {(r["run_id"], r["epoch"], r["block"]): dict(r) for r in rows}


def assert_blocks_exact(conn: sqlite3.Connection) -> None:
    want = _expected_blocks(conn)
    have = {(r["run_id"], r["epoch"], r["block"]): dict(r) for r in conn.execute("SELECT * FROM step_blocks")}
    assert set(have) == set(want)
    for key, row in want.items():
        for column, value in row.items():
            if column.startswith("sum_"):   # the same numbers added, maybe in another order
                assert have[key][column] == pytest.approx(value, rel=1e-12, abs=1e-12), (key, column)
            else:
                assert have[key][column] == value, (key, column)


@pytest.fixture
def db(tmp_path):
    conn = connect(tmp_path / "lvmd.db")
    yield conn
    conn.close()


def _runs(conn: sqlite3.Connection) -> list[int]:
    return [create_run(conn, name="v2.1", preset="v2.1", compat="none", config={"loss": {"rho_cap": 0.25}}, data={}),
            create_run(conn, name="v1", preset="v1", compat="none", config={"loss": {"rho_cap": 0.0}}, data={}),
            create_run(conn, name="v2.2", preset="v2.2", compat="none",
                       config={"loss": {"rho_cap": 0.25, "ramp": V22_RAMP}}, data={})]


def test_inserts_deletes_and_updates_keep_every_block_exact(db):
    rng = random.Random(7)
    runs = _runs(db)
    # epochs of 100 steps: blocks of 64 straddle the epoch boundaries; inserted in batches, as the writer does
    for run_id in runs:
        rows = _rows(rng, run_id, range(0, 700), per_epoch=100)
        for i in range(0, len(rows), 37):
            with db:
                db.executemany(INSERT, rows[i:i + 37])
    assert_blocks_exact(db)
    truncate_after(db, runs[0], 333, 3)                           # a resume's cut: the tail of a run
    assert_blocks_exact(db)
    with db:                                                       # hand edits: a hole, an update, a move
        db.execute("DELETE FROM steps WHERE run_id = ? AND step BETWEEN 100 AND 180", (runs[1],))
        db.execute("UPDATE steps SET rho = 2.0, pos = -0.9 WHERE run_id = ? AND step = 250", (runs[2],))
        db.execute("UPDATE steps SET step = 5000, epoch = 50 WHERE run_id = ? AND step = 251", (runs[2],))
        for step in rng.sample(range(0, 700), 50):
            db.execute("DELETE FROM steps WHERE run_id = ? AND step = ?", (runs[2], step))
    assert_blocks_exact(db)
    with db:
        db.execute("DELETE FROM steps WHERE run_id = ?", (runs[1],))   # every row of a run: no block left
    assert_blocks_exact(db)
    assert db.execute("SELECT COUNT(*) FROM step_blocks WHERE run_id = ?", (runs[1],)).fetchone()[0] == 0


def _view(conn: sqlite3.Connection, name: str) -> list[dict]:
    key = "run_id, epoch" if "epoch" in name else "run_id"
    return [dict(r) for r in conn.execute(f"SELECT * FROM {name} ORDER BY {key}")]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for column in x:
            if isinstance(x[column], float):
                assert y[column] == pytest.approx(x[column], rel=1e-12, abs=1e-15), column
            else:
                assert y[column] == x[column], column


def test_a_file_from_before_migration_9_gets_its_blocks_and_the_same_view_answers(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    raw.row_factory = sqlite3.Row
    for number in range(8):
        MIGRATIONS[number](sqlite_utils.Database(raw))
    raw.execute("PRAGMA user_version=8")
    runs = _runs(raw)
    rng = random.Random(11)
    for run_id in runs:
        raw.executemany(INSERT, _rows(rng, run_id, range(1, 451), per_epoch=90))
    raw.execute("INSERT INTO events (run_id, t, kind) VALUES (?, 0, 'collapse_warning')", (runs[2],))
    raw.commit()
    before = {name: _view(raw, name) for name in STEP_VIEWS}
    raw.close()

    conn = connect(path)                                 # migrates: the backfill and the v3 views
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert_blocks_exact(conn)
    with conn:                                           # v4 (migration 10) counts differently: tests/test_counts.py
        create_views(conn, VIEWS_V3)
    for name in STEP_VIEWS:
        _same(before[name], _view(conn, name))
    over = {r["name"]: r["rho_over_cap_steps"] for r in _view(conn, "v_guardrail_checks")}
    assert over["v1"] > 0 and over["v2.2"] > 0           # the over-cap branch was taken, not only the short cut
    sweep = conn.execute("SELECT COUNT(*) FROM v_sweep_summary").fetchone()[0]  # still resolves v_run_summary
    assert sweep == 0
    conn.close()


def test_v3_views_equal_v2_on_a_long_random_database(db):
    rng = random.Random(5)
    for run_id in _runs(db):
        rows = _rows(rng, run_id, range(0, 3000), per_epoch=rng.choice((50, 333, 1000)))
        with db:
            db.executemany(INSERT, rows)
    truncate_after(db, 1, 2100, 2)
    with db:
        create_views(db, VIEWS_V3)
    v3 = {name: _view(db, name) for name in STEP_VIEWS}
    with db:
        create_views(db, VIEWS_V2)
    for name in STEP_VIEWS:
        _same(_view(db, name), v3[name])
    with db:
        create_views(db, VIEWS_V3)


def test_a_long_runs_chart_bins_take_whole_blocks(db):
    run_id = _runs(db)[0]
    rows = _rows(random.Random(2), run_id, range(1, 40_001), per_epoch=4000)
    with db:
        db.executemany(INSERT, rows)
    series = step_series(db, run_id, ("rho", "skip"), bins=60)
    # by hand: each block (64 steps) goes to the bin its first step falls in
    lo, hi = 1, 40_000
    bins: dict[int, list[tuple]] = {}
    for block_start in range(0, hi + 1, BLOCK_STEPS):
        block = [r for r in rows if block_start <= r[1] < block_start + BLOCK_STEPS]
        if block:
            bins.setdefault((block[0][1] - lo) * 60 // (hi - lo + 1), []).extend(block)
    rho, skip = STEP_COLUMNS.index("rho"), STEP_COLUMNS.index("skip")
    assert len(series["rho"]) == len(bins) == 60
    assert series["rho"] == pytest.approx([sum(r[rho] for r in b) / len(b) for _, b in sorted(bins.items())])
    assert series["skip"] == pytest.approx([sum(r[skip] for r in b) / len(b) for _, b in sorted(bins.items())])
