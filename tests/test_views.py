"""The post-run views agree with direct computations over the raw tables, on a DB from a real
tiny `lvmd run` (with 5CAT) and on a hand-made DB holding the edge cases (caps, NULLs, no steps)."""
from __future__ import annotations

import json
import random
import sqlite3
from collections import defaultdict

import pytest
from conftest import TINY_MODEL, data_overrides, lvmd

from lvmd.train.rho_cap import over_cap
from store.db import connect
from store.evals import insert_eval
from store.report import open_readonly
from store.runs import create_run
from store.schema import MIGRATIONS, STEP_COLUMNS, STEP_METRICS

VIEWS = ("v_run_summary", "v_gates", "v_epoch_steps", "v_skip_rate_by_epoch", "v_guardrail_checks")


@pytest.fixture(scope="module")
def real_db(tiny_data, tmp_path_factory):
    db = tmp_path_factory.mktemp("views_real") / "lvmd.db"
    lvmd("run", "--db", str(db), "--quiet", *TINY_MODEL, *data_overrides(tiny_data, articles=True),
         "train.epochs=2", "train.device=cpu", check=True)
    return db


# v2.2's shape: a cap per ramp stage; the last stage has none of its own (0: loss.rho_cap holds)
STAGED = [{"until": 1, "m_gap": 0.02, "frac": 0.15, "rho_cap": 0.35},
          {"until": 2, "m_gap": 0.04, "frac": 0.25, "rho_cap": 0.50},
          {"until": 10**9, "m_gap": 0.07, "frac": 0.35, "rho_cap": 0.0}]


def cap_in_force(config: dict, epoch: int) -> float:
    """The trainer's rule, written out: the stage's own cap, else loss.rho_cap, else 0.25."""
    loss = config.get("loss", {})
    base = loss.get("rho_cap") or 0.25
    stages = loss.get("ramp") or []
    stage = next((st for st in stages if epoch < st["until"]), stages[-1] if stages else {})
    return stage.get("rho_cap") or base


def _step(run_id, step, epoch, **values):
    metrics = {m: 0.1 for m in STEP_METRICS} | {"skip": 0.0, "attenuate": 0.0} | values
    return (run_id, step, epoch, 1.0 * step, 1e-3, *(metrics[m] for m in STEP_METRICS))


@pytest.fixture(scope="module")
def edge_db(tmp_path_factory):
    """Four runs: A with every kind of violation, B with no ρ cap (v1), C with nothing yet,
    D whose ratio is positive but fell (not a climb)."""
    db = tmp_path_factory.mktemp("views_edge") / "lvmd.db"
    conn = connect(db)
    rng = random.Random(3)
    a = create_run(conn, name="a", preset="v2.1", compat="none", config={"loss": {"rho_cap": 0.25}}, data={})
    b = create_run(conn, name="b", preset="v1", compat="none", config={"loss": {"rho_cap": 0.0}}, data={})
    create_run(conn, name="c", preset="v2.1", compat="none", config={"loss": {"rho_cap": 0.25}}, data={})
    d = create_run(conn, name="d", preset="v2.1", compat="none", config={"loss": {"rho_cap": 0.25}}, data={})
    e = create_run(conn, name="e", preset="v2.2", compat="none", config={"loss": {"rho_cap": 0.25, "ramp": STAGED}},
                   data={})
    rows = []
    for step in range(1, 31):
        epoch = (step - 1) // 10
        rows.append(_step(a, step, epoch, rho=min(0.25, rng.random() * 0.3), rho_pre=rng.random() * 0.3,
                          pos=rng.uniform(-0.05, 0.5), ratio=rng.uniform(-0.2, 0.2) + 0.05 * epoch,
                          skip=float(step % 7 == 0), attenuate=float(step % 5 == 0)))
    rows.append(_step(a, 31, 2, rho=0.25 + 1e-8, rho_pre=0.26))        # at the cap (float32 noise): not over
    rows += [_step(b, s, 0, rho=0.3 * s / 8, rho_pre=0.3 * s / 8, pos=0.2) for s in range(1, 9)]
    rows += [_step(d, s, s // 3, ratio=0.2 - 0.1 * (s // 3)) for s in range(1, 6)]
    # e: caps .35 (epoch 0), .50 (epoch 1), then loss.rho_cap .25: one step over in epochs 1 and 2
    rows += [_step(e, s, (s - 1) // 4, rho=r, rho_pre=r) for s, r in
             enumerate((0.30, 0.35, 0.34, 0.33, 0.45, 0.55, 0.50, 0.40, 0.25, 0.24, 0.30, 0.20), start=1)]
    conn.executemany(f"INSERT INTO steps ({', '.join(STEP_COLUMNS)}) VALUES ({', '.join('?' * len(STEP_COLUMNS))})",
                     rows)
    for epoch, margin in enumerate((-0.04, 0.01, -0.005)):
        conn.execute("INSERT INTO epochs (run_id, epoch, val_margin, val_cos, r_at_5) VALUES (?,?,?,?,?)",
                     (a, epoch, margin, 0.4 + epoch / 10, None if epoch == 2 else 0.5))
    conn.execute("INSERT INTO events (run_id, t, kind) VALUES (?, 0, 'collapse_warning')", (a,))
    conn.execute("INSERT INTO events (run_id, t, kind) VALUES (?, 0, 'skip')", (a,))
    gates = [{"split": "VAL", "gate": "A", "metric": "m_0", "value": 0.6, "threshold": 0.5, "op": ">=", "passed": 1},
             {"split": "VAL", "gate": "A", "metric": "margin", "value": 0.0, "threshold": 0.12, "op": ">=",
              "passed": 0},
             {"split": "VAL", "gate": "B", "metric": "r_at_5", "value": 0.97, "threshold": 0.95, "op": ">=",
              "passed": 1},
             {"split": "OOD", "gate": "B", "metric": "r_at_5", "value": None, "threshold": 0.92, "op": ">=",
              "passed": None}]
    insert_eval(conn, a, {"epoch": 1, "step": 20, "trigger": "epoch", "gates_passed": 1, "gates_total": 5}, gates,
                [("VAL", "r_at_5", 0.97)])
    insert_eval(conn, a, {"epoch": 2, "step": 30, "trigger": "command", "error": "boom"}, [], [])  # failed: no count
    conn.close()
    return db


def _rows(conn, sql, *args) -> list[dict]:
    return [dict(r) for r in conn.execute(sql, args)]


@pytest.fixture(params=["real", "edge"])
def conn(request, real_db, edge_db):
    c = open_readonly(real_db if request.param == "real" else edge_db)
    yield c
    c.close()


# -- direct computations over the raw tables --------------------------------------------------
def _steps_by(conn, key):
    groups = defaultdict(list)
    for s in _rows(conn, "SELECT * FROM steps ORDER BY run_id, step"):
        groups[key(s)].append(s)
    return groups


def _mean(xs):
    return sum(xs) / len(xs)


def test_epoch_views_match_the_steps(conn):
    by_epoch = _steps_by(conn, lambda s: (s["run_id"], s["epoch"]))
    view = {(r["run_id"], r["epoch"]): r for r in _rows(conn, "SELECT * FROM v_epoch_steps")}
    skip_view = {(r["run_id"], r["epoch"]): r for r in _rows(conn, "SELECT * FROM v_skip_rate_by_epoch")}
    assert set(view) == set(by_epoch) == set(skip_view) and view
    for key, steps in by_epoch.items():
        v, k = view[key], skip_view[key]
        skips = sum(s["skip"] for s in steps)
        assert (v["steps"], v["first_step"], v["last_step"]) == (len(steps), steps[0]["step"], steps[-1]["step"])
        assert v["skips"] == k["skips"] == skips
        assert k["skip_rate"] == pytest.approx(skips / len(steps))
        assert k["attenuations"] == sum(s["attenuate"] for s in steps)
        assert k["attenuate_rate"] == pytest.approx(k["attenuations"] / len(steps))
        assert v["ratio_mean"] == pytest.approx(_mean([s["ratio"] for s in steps]))
        assert v["pos_mean"] == pytest.approx(_mean([s["pos"] for s in steps]))
        assert v["neg_mean"] == pytest.approx(_mean([s["neg"] for s in steps]))
        assert v["pos_min"] == min(s["pos"] for s in steps)
        assert v["rho_max"] == max(s["rho"] for s in steps)
        assert v["rho_pre_max"] == max(s["rho_pre"] for s in steps)


def test_run_summary_matches_the_tables(conn):
    runs = _rows(conn, "SELECT * FROM runs ORDER BY id")
    view = _rows(conn, "SELECT * FROM v_run_summary ORDER BY run_id")
    assert [v["run_id"] for v in view] == [r["id"] for r in runs]
    by_run = _steps_by(conn, lambda s: s["run_id"])
    for run, v in zip(runs, view):
        epochs = _rows(conn, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", run["id"])
        evals = [e for e in _rows(conn, "SELECT * FROM evals WHERE run_id = ? ORDER BY id", run["id"])
                 if e["gates_passed"] is not None]
        steps = by_run.get(run["id"], [])
        assert (v["name"], v["preset"], v["state"]) == (run["name"], run["preset"], run["state"])
        assert v["epochs_done"] == len(epochs)
        assert v["best_margin"] == (max(e["val_margin"] for e in epochs) if epochs else None)
        assert v["last_margin"] == (epochs[-1]["val_margin"] if epochs else None)
        assert v["last_val_cos"] == (epochs[-1]["val_cos"] if epochs else None)
        assert v["last_r_at_5"] == (epochs[-1]["r_at_5"] if epochs else None)
        assert v["last_gates_passed"] == (evals[-1]["gates_passed"] if evals else None)
        assert v["last_gates_total"] == (evals[-1]["gates_total"] if evals else None)
        assert v["steps"] == len(steps)
        if steps:
            assert v["skip_rate"] == pytest.approx(_mean([s["skip"] for s in steps]))
            assert (v["rho_max"], v["rho_pre_max"], v["pos_min"]) == (
                max(s["rho"] for s in steps), max(s["rho_pre"] for s in steps), min(s["pos"] for s in steps))
        else:
            assert (v["skip_rate"], v["rho_max"], v["pos_min"]) == (None, None, None)


def test_gates_view_passes_a_gate_only_when_all_its_checks_pass(conn):
    checks = defaultdict(list)
    for g in _rows(conn, "SELECT g.*, e.run_id, e.epoch FROM gates g JOIN evals e ON e.id = g.eval_id"):
        checks[(g["eval_id"], g["split"], g["gate"])].append(g)
    view = {(r["eval_id"], r["split"], r["gate"]): r for r in _rows(conn, "SELECT * FROM v_gates")}
    assert set(view) == set(checks) and view
    for key, rows in checks.items():
        v = view[key]
        assert v["passed"] == int(all(r["passed"] == 1 for r in rows))
        assert (v["checks"], v["checks_passed"]) == (len(rows), sum(r["passed"] == 1 for r in rows))
        assert (v["run_id"], v["epoch"]) == (rows[0]["run_id"], rows[0]["epoch"])
        failed = sorted(r["metric"] for r in rows if r["passed"] != 1)
        assert sorted((v["failed_metrics"] or "").split(", ") if failed else []) == failed


def test_guardrail_checks_match_the_steps(conn):
    by_run = _steps_by(conn, lambda s: s["run_id"])
    for run in _rows(conn, "SELECT * FROM runs ORDER BY id"):
        v = _rows(conn, "SELECT * FROM v_guardrail_checks WHERE run_id = ?", run["id"])[0]
        config = json.loads(run["config_json"])
        cap = config.get("loss", {}).get("rho_cap") or 0.25
        warnings = conn.execute("SELECT COUNT(*) FROM events WHERE run_id = ? AND kind = 'collapse_warning'",
                                (run["id"],)).fetchone()[0]
        assert v["rho_cap"] == cap
        assert (v["collapse_warnings"], v["no_collapse_warning"]) == (warnings, int(warnings == 0))
        steps = by_run.get(run["id"], [])
        assert v["steps"] == len(steps)
        if not steps:
            assert (v["rho_held"], v["skips_ok"], v["pos_held"], v["ratio_climbed"]) == (None,) * 4
            continue
        skips = sum(s["skip"] for s in steps)
        caps = [cap_in_force(config, s["epoch"]) for s in steps]
        assert (v["rho_cap_min"], v["rho_cap_max"]) == (min(caps), max(caps))
        over = sum(over_cap(s["rho"], c) for s, c in zip(steps, caps))   # the guardrail's rule
        epochs = sorted({s["epoch"] for s in steps})
        first = _mean([s["ratio"] for s in steps if s["epoch"] == epochs[0]])
        last = _mean([s["ratio"] for s in steps if s["epoch"] == epochs[-1]])
        assert v["rho_max"] == max(s["rho"] for s in steps)
        assert v["rho_pre_max"] == max(s["rho_pre"] for s in steps)
        assert v["rho_over_cap_steps"] == over
        # the trainer's stored flag, not a re-decision from rho_pre (issue 22)
        assert v["rho_pre_over_cap_steps"] == v["attenuated_steps"] == sum(s["attenuate"] for s in steps)
        assert (v["skips"], v["skip_share"]) == (skips, pytest.approx(skips / len(steps)))
        assert v["pos_min"] == min(s["pos"] for s in steps)
        assert v["pos_negative_steps"] == sum(s["pos"] < 0 for s in steps)
        assert (v["ratio_first_epoch"], v["ratio_last_epoch"]) == (pytest.approx(first), pytest.approx(last))
        climbed = len(epochs) > 1 and last > 0 and last > first
        flags = (over == 0, skips / len(steps) < 0.01, min(s["pos"] for s in steps) >= 0, climbed)
        assert (v["rho_held"], v["skips_ok"], v["pos_held"], v["ratio_climbed"]) == tuple(map(int, flags))
        assert v["all_held"] == int(all(flags) and warnings == 0)


def test_edge_cases_are_what_they_claim(edge_db):
    """Guards the fixture itself: without these the agreement tests could pass vacuously."""
    conn = open_readonly(edge_db)
    g = {r["name"]: r for r in _rows(conn, "SELECT * FROM v_guardrail_checks")}
    assert g["a"]["rho_over_cap_steps"] == 0 and g["a"]["rho_pre_over_cap_steps"] > 0     # capped, and attenuated
    assert g["b"]["rho_cap"] == 0.25 and g["b"]["rho_over_cap_steps"] > 0                 # v1: no cap, seed's 0.25
    assert g["a"]["collapse_warnings"] == 1 and g["c"]["steps"] == 0
    assert (g["e"]["rho_cap_min"], g["e"]["rho_cap_max"]) == (0.25, 0.5)                  # staged caps, v2.2
    assert g["e"]["rho_over_cap_steps"] == 2 and g["e"]["rho_held"] == 0                  # .55 (cap .5), .30 (.25)
    assert g["a"]["ratio_climbed"] == 1 and g["d"]["ratio_last_epoch"] > 0 and g["d"]["ratio_climbed"] == 0
    summary = {r["name"]: r for r in _rows(conn, "SELECT * FROM v_run_summary")}
    assert summary["a"]["last_gates_passed"] == 1               # the failed later eval has no count: skipped
    assert summary["a"]["best_margin"] == 0.01 and summary["a"]["last_margin"] == -0.005
    conn.close()


def test_real_run_filled_every_view(real_db):
    """One run of 2 epochs with an evaluation per epoch: each view holds exactly the rows its
    base tables say, and the numbers that tie them together agree."""
    conn = open_readonly(real_db)
    count = {view: conn.execute(f"SELECT COUNT(*) FROM {view}").fetchone()[0] for view in VIEWS}
    gates = conn.execute("SELECT COUNT(*) FROM (SELECT DISTINCT eval_id, split, gate FROM gates)").fetchone()[0]
    (evals,), (epochs,), (steps,) = (conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()
                                     for t in ("evals", "epochs", "steps"))
    assert (evals, epochs) == (2, 2) and gates >= 2 * 5
    assert count == {"v_run_summary": 1, "v_gates": gates, "v_epoch_steps": 2, "v_skip_rate_by_epoch": 2,
                     "v_guardrail_checks": 1}
    summary = dict(conn.execute("SELECT * FROM v_run_summary").fetchone())
    assert summary["steps"] == steps and summary["epochs_done"] == 2 and summary["state"] == "finished"
    conn.close()


def test_an_old_database_gets_the_views_when_opened_for_reading(tmp_path):
    db = tmp_path / "old.db"
    raw = sqlite3.connect(db)
    MIGRATIONS[0](__import__("sqlite_utils").Database(raw))       # a file from before the views
    raw.execute("PRAGMA user_version=1")
    raw.commit()
    raw.close()
    conn = open_readonly(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
    assert set(VIEWS) <= names
    columns = {r[1] for r in conn.execute("PRAGMA table_info(v_guardrail_checks)")}
    assert {"rho_cap_min", "rho_cap_max"} <= columns                 # migration 3's caps in force
    conn.close()
