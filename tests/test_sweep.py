"""`lvmd sweep` end to end with real `lvmd` subprocesses and a tiny model: a 2×2 grid × 2 seeds,
a killed driver (and a killed run) resumed, the compare table's CI against a hand computation
from the epochs table, the sweep verdict, and an Optuna search that prunes a collapsing trial."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_MODEL, data_overrides, lvmd, query, rows, wait_for

GRID = ["--grid", "loss.preset=mse,v2.1", "--grid", "loss.prev=ctx-2,true"]
FAST = [*TINY_MODEL, "train.epochs=2", "eval.max_samples=200", "eval.check_samples=100"]
# t(0.975, df) from the printed table
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045}


@pytest.fixture(scope="module")
def long_data(synth200) -> list[str]:
    """Seconds an epoch, not milliseconds: a run is still training when a test kills something or
    the pruner looks."""
    return [f"data.train={synth200 / 'train.npz'}", f"data.val={synth200 / 'val.npz'}", "train.batch_size=16"]


def run_is(db, run_id: int, state: str) -> bool:
    try:
        return bool(rows(db, "SELECT id FROM runs WHERE id = ? AND state = ?", run_id, state))
    except sqlite3.OperationalError:      # the driver has not created the file's tables yet
        return False


def test_grid_of_2x2_configs_by_2_seeds_gives_8_finished_runs_under_one_sweep(db, tiny_data):
    proc = lvmd("sweep", *data_overrides(tiny_data, articles=True), *FAST, *GRID, "--seeds", "2",
                "--parallel", "2", "--db", db, timeout=600, check=True)
    assert proc.stdout.splitlines()[-1] == "sweep 1 finished: 4 configurations (4 complete), 8 runs"
    (sweep,) = rows(db, "SELECT * FROM sweeps")
    assert (sweep["id"], sweep["state"], sweep["search"], sweep["parallel"]) == (1, "finished", "grid", 2)
    runs = rows(db, "SELECT * FROM runs ORDER BY id")
    assert len(runs) == 8 and {r["state"] for r in runs} == {"finished"} and {r["sweep_id"] for r in runs} == {1}
    assert {(r["sweep_config"], r["sweep_seed"]) for r in runs} == {
        (f"loss.preset={p} loss.prev={v}", s) for p in ("mse", "v2.1") for v in ("ctx-2", "true") for s in (0, 1)}
    for r in runs:   # each run's resolved config is its grid point and seed
        cfg = json.loads(r["config_json"])
        assert r["sweep_config"] == f"loss.preset={cfg['loss']['preset']} loss.prev={cfg['loss']['prev']}"
        assert cfg["train"]["seed"] == r["sweep_seed"] and r["epoch"] == 2
    # never more than 2 training at once: at each run's start, count the runs alive then
    for r in runs:
        alive = [o for o in runs if o["started_at"] <= r["started_at"] < o["ended_at"]]
        assert len(alive) <= 2
    summary = rows(db, "SELECT config, config_state, runs, finished, seeds FROM v_sweep_summary ORDER BY config")
    assert [(s["config_state"], s["runs"], s["finished"]) for s in summary] == [("complete", 2, 2)] * 4

    # compare: the CI of a configuration is the hand computation from the epochs table
    out = json.loads(lvmd("compare", "--sweep", "1", "--json", "--db", db, check=True).stdout)
    by = {c["config"]: c for c in out["configs"]}
    label, base = "loss.preset=v2.1 loss.prev=true", "loss.preset=mse loss.prev=true"
    margins = {r["sweep_seed"]: r["val_margin"] for r in rows(
        db, "SELECT r.sweep_seed, e.val_margin FROM epochs e JOIN runs r ON r.id = e.run_id"
            " WHERE r.sweep_config = ? AND e.epoch = 1", label)}
    base_margins = {r["sweep_seed"]: r["val_margin"] for r in rows(
        db, "SELECT r.sweep_seed, e.val_margin FROM epochs e JOIN runs r ON r.id = e.run_id"
            " WHERE r.sweep_config = ? AND e.epoch = 1", base)}
    m = by[label]["metrics"]["margin"]
    assert m["n"] == 2 and m["mean"] == pytest.approx(statistics.fmean(margins.values()), abs=1e-12)
    assert m["half"] == pytest.approx(12.706 * statistics.stdev(margins.values()) / math.sqrt(2), rel=1e-4)
    diffs = [margins[s] - base_margins[s] for s in (0, 1)]
    d = by[label]["diffs"]["margin"]
    assert by[label]["baseline"] == base and by[base]["is_baseline"] and not by[base]["diffs"]
    assert d["mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
    assert d["half"] == pytest.approx(12.706 * statistics.stdev(diffs) / math.sqrt(2), rel=1e-4)
    t = statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(2))
    assert d["p"] == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, abs=1e-9)   # t with 1 df is Cauchy
    table = lvmd("compare", "--sweep", "1", "--db", db, check=True).stdout
    assert f"{m['mean']:+.4f} ± {m['half']:.4f}" in table

    # the verdict: a tiny model on random walks meets none of the seed's criteria
    verdict = json.loads(lvmd("report", "--sweep", "1", "--json", "--db", db, check=True).stdout)
    assert verdict["verdict"] == "iterate" and verdict["best"] in by
    assert any(r.startswith("R@5 ≥ 0.70: failed in 2/2 seeds") for r in verdict["reasons"])
    proc = lvmd("sweep", "resume", "7", "--db", db)
    assert proc.returncode == 1 and proc.stderr == "lvmd: error: no sweep 7 in this database\n"


def test_killed_driver_and_run_resume_finishing_only_what_was_missing(db, long_data):
    argv = [sys.executable, "-m", "lvmd", "sweep", *long_data, *TINY_MODEL, "train.epochs=2",
            "--grid", "loss.preset=mse,v2.1,v2.2", "--parallel", "1", "--db", db]
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: run_is(db, 2, "running"), 180, "run 2 to train")
        # frozen where it is (a machine too busy to schedule it): on a loaded box it could otherwise
        # finish its steps while the second driver starts, and this test needs it unfinished
        os.kill(rows(db, "SELECT pid FROM runs WHERE id = 2")[0]["pid"], signal.SIGSTOP)
        second = lvmd("sweep", "resume", "1", "--db", db)
        assert second.returncode == 1 and second.stderr == "lvmd: error: sweep 1 already has a driver running\n"
    finally:
        driver.kill()
        driver.wait()
    (run1,) = rows(db, "SELECT * FROM runs WHERE id = 1")
    (run2,) = rows(db, "SELECT * FROM runs WHERE id = 2")
    assert run1["state"] == "finished" and run2["state"] == "running"
    os.kill(run2["pid"], signal.SIGKILL)          # and the run it was waiting on dies too (a reboot)
    status = lvmd("sweep", "status", "1", "--db", db, check=True).stdout
    assert "running, but its driver is gone (`lvmd sweep resume 1`) · 1/3 runs finished" in status
    proc = lvmd("sweep", "resume", "1", "--db", db, timeout=600, check=True)
    assert proc.stdout.splitlines()[-1] == "sweep 1 finished: 3 configurations (3 complete), 3 runs"
    assert "run 2 restarted (loss.preset=v2.1, seed 0)" in proc.stdout
    assert "run 3 started (loss.preset=v2.2, seed 0)" in proc.stdout and "run 1 " not in proc.stdout
    runs = rows(db, "SELECT * FROM runs ORDER BY id")
    assert [(r["id"], r["state"], r["sweep_config"]) for r in runs] == [
        (1, "finished", "loss.preset=mse"), (2, "finished", "loss.preset=v2.1"), (3, "finished", "loss.preset=v2.2")]
    assert runs[0]["ended_at"] == run1["ended_at"]          # the finished run was left alone
    for r in runs:                                          # steps continue with no gap, no duplicate
        assert query(db, "SELECT COUNT(*), MAX(step) FROM steps WHERE run_id = ?", r["id"]) == [(r["total_steps"],) * 2]
    assert rows(db, "SELECT state FROM sweeps") == [{"state": "finished"}]


def test_optuna_search_prunes_the_trial_forced_to_collapse_and_records_why(db, long_data):
    import optuna

    # huge λ (lam_min = 10, no cap) puts ρ far over 0.25 at once: the run's collapse watch warns
    # within the first 16 steps; the other symptoms are switched off so only that one can prune
    collapse = ["loss.lam_max=10", "loss.rho_cap=0", "watch.skip_window=16", "watch.warmup_steps=0",
                "watch.rho_over_cap_share=0.5", "watch.val_cos_floor=-1", "watch.val_cos_drop=2",
                "watch.skip_rate_max=1"]
    # one at a time: the driver judges between its polls, not while it waits for a new daemon to
    # report running, so a trial starting beside the collapsing one could let it run to its end
    proc = lvmd("sweep", *long_data, *TINY_MODEL, "train.epochs=6", *collapse, "--search", "optuna", "--trials", "4",
                "--grid", "loss.lam_min=1e-4,10", "--enqueue", "loss.lam_min=10", "--enqueue", "loss.lam_min=1e-4",
                "--parallel", "1", "--db", db, timeout=600, check=True)
    assert proc.stdout.splitlines()[-1].startswith("sweep 1 finished: 4 configurations (")
    configs = rows(db, "SELECT * FROM sweep_configs ORDER BY trial")
    assert [c["trial"] for c in configs] == [0, 1, 2, 3]
    assert configs[0]["label"] == "#0 loss.lam_min=10" and configs[1]["label"] == "#1 loss.lam_min=1e-4"
    for c in configs:
        (run,) = rows(db, "SELECT * FROM runs WHERE sweep_config = ?", c["label"])
        if c["label"].endswith("=10"):
            assert c["state"] == "pruned" and c["objective"] is None
            assert c["reason"].startswith("collapse warning at step ") and "rho_over_cap" in c["reason"]
            (event,) = rows(db, "SELECT detail FROM events WHERE run_id = ? AND kind = 'pruned'", run["id"])
            assert json.loads(event["detail"])["reason"] == c["reason"]
        else:
            assert c["state"] == "complete" and c["reason"] is None and run["state"] == "finished"
            (last,) = rows(db, "SELECT val_margin FROM epochs WHERE run_id = ? AND epoch = 5", run["id"])
            assert c["objective"] == pytest.approx(last["val_margin"])
    # the first collapsing trial was caught training: stopped by the sweep's stop command, early
    (run0,) = rows(db, "SELECT * FROM runs WHERE sweep_config = '#0 loss.lam_min=10'")
    assert run0["state"] == "stopped" and run0["epoch"] < 6
    (stop,) = rows(db, "SELECT * FROM commands WHERE run_id = ? AND verb = 'stop'", run0["id"])
    assert json.loads(stop["args"])["by"] == "sweep 1 pruner" and stop["state"] == "done"
    # the study (beside the database) agrees with the lvmd rows
    (sweep,) = rows(db, "SELECT * FROM sweeps")
    assert sweep["study_storage"] == f"sqlite:///{Path(db).parent / 't-sweeps' / 'optuna.db'}"
    study = optuna.load_study(study_name=sweep["study_name"], storage=sweep["study_storage"])
    states = {t.number: t.state.name for t in study.trials}
    assert states == {c["trial"]: {"pruned": "PRUNED", "complete": "COMPLETE"}[c["state"]] for c in configs}
    assert {t.number: t.value for t in study.trials if t.value is not None} == {
        c["trial"]: pytest.approx(c["objective"]) for c in configs if c["state"] == "complete"}
    status = lvmd("sweep", "status", "1", "--db", db, check=True).stdout
    assert "pruned" in status and "rho_over_cap" in status


def test_bad_grid_input_is_one_line_and_writes_nothing(db, tiny_data):
    proc = lvmd("sweep", *data_overrides(tiny_data), "--grid", "loss.preset=mse,v9", "--db", db)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ("lvmd: error: loss.preset=v9: loss.preset: 'v9' is not allowed; "
                           "choose one of mse, v1, v2.1, v2.2\n")
    assert not Path(db).exists() or query(db, "SELECT COUNT(*) FROM sweeps") == [(0,)]
    proc = lvmd("sweep", *data_overrides(tiny_data), "--grid", "loss.preset", "--db", db)
    assert proc.returncode == 1 and "--grid 'loss.preset': expected key=v1,v2" in proc.stderr
    proc = lvmd("sweep", *data_overrides(tiny_data), "--search", "optuna", "--grid", "loss.preset=mse", "--db", db)
    assert proc.returncode == 1 and proc.stderr == "lvmd: error: --search optuna needs --trials K (K >= 1)\n"
    proc = lvmd("sweep", "resume", "7", "--db", db)
    assert proc.returncode == 1 and proc.stderr.startswith(f"lvmd: error: {Path(db).resolve()}: no such database; ")


def test_a_configuration_whose_data_cannot_load_fails_alone(db, tiny_data):
    missing = tiny_data / "missing.npz"
    proc = lvmd("sweep", *data_overrides(tiny_data), *TINY_MODEL, "train.epochs=1",
                "--grid", f"data.train={missing},{tiny_data / 'train.npz'}", "--parallel", "1", "--db", db,
                timeout=300, check=True)
    assert proc.stdout.splitlines()[-1] == "sweep 1 finished: 2 configurations (1 complete, 1 failed), 1 runs"
    failed, complete = rows(db, "SELECT state, reason FROM sweep_configs ORDER BY created_at, rowid")
    assert failed["state"] == "failed" and str(missing) in failed["reason"] and complete["state"] == "complete"
    assert [r["state"] for r in rows(db, "SELECT state FROM runs")] == ["finished"]


def test_student_t_matches_the_printed_table():
    from lvmd.eval.sweepstats import paired, t_quantile, t_two_sided_p

    for df, t in T_TABLE.items():
        assert t_quantile(0.95, df) == pytest.approx(t, abs=1e-3)
        assert t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4)
    assert t_two_sided_p(0.0, 3) == pytest.approx(1.0)
    # paired over the seeds both have; identical differences: no spread, certain
    d = paired({0: 1.0, 1: 2.0, 2: 3.0, 5: 9.0}, {0: 0.5, 1: 1.5, 2: 2.5})
    assert (d["seeds"], d["n"], d["mean"], d["half"], d["p"], d["differs"]) == ([0, 1, 2], 3, 0.5, 0.0, 0.0, True)
    d = paired({0: 1.0}, {0: 0.0})
    assert d["n"] == 1 and d["half"] is None and d["p"] is None and not d["differs"]


def test_a_database_from_before_sweeps_gains_them_and_keeps_its_runs(tmp_path):
    import sqlite_utils

    from store.db import connect
    from store.schema import MIGRATIONS

    db = tmp_path / "old.db"
    raw = sqlite3.connect(db)
    for migration in MIGRATIONS[:6]:                       # a file written before migration 7
        migration(sqlite_utils.Database(raw))
    raw.execute("PRAGMA user_version=6")
    raw.execute("INSERT INTO runs (id, name, state, config_json, created_at) VALUES (1, 'old', 'finished', '{}', 0)")
    raw.commit()
    raw.close()
    conn = connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert [tuple(r) for r in conn.execute("SELECT id, name, sweep_id, sweep_config, sweep_seed FROM runs")] == [
        (1, "old", None, None, None)]
    assert conn.execute("SELECT COUNT(*) FROM v_sweep_summary").fetchone()[0] == 0
    assert conn.execute("SELECT run_id FROM v_run_summary").fetchall()[0][0] == 1
    conn.close()
