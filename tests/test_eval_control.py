"""A 5CAT never holds a command hostage (issue 22 item 7): the evaluation takes the run's
commands between its batches. A pause is acknowledged and holds the evaluation where it stands
(a resume carries it on: each stage is done once); a stop abandons it and the epoch's 5CAT stays
owed, so the resumed run runs it first, exactly once. Ordering is read from the events rows,
never from wall time. Each daemon holds for a while at the start of its first 5CAT (the store's
holdpoint, as the crash tests use it) so that the commands surely arrive during it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import TINY_MODEL, data_overrides, lvmd, rows, wait_for

from store.commands import enqueue
from store.db import connect

HOLD_S = 6   # the test's commands must be queued within this after the holdpoint is reached


def events(db: str) -> list[dict]:
    return [e | {"detail": json.loads(e["detail"] or "{}")} for e in rows(db, "SELECT * FROM events ORDER BY id")]


def command_events(db: str, verb: str, state: str) -> list[dict]:
    return [e for e in events(db) if e["kind"] == "command" and e["detail"]["verb"] == verb
            and e["detail"]["state"] == state]


def progress_after(db: str, after_id: int) -> list[dict]:
    return [e for e in events(db) if e["kind"] == "eval_progress" and e["id"] > after_id]


def states_after(db: str, after_id: int) -> list[str]:
    return [e["detail"]["state"] for e in events(db) if e["kind"] == "state" and e["id"] > after_id]


def held(holds: Path, n: int) -> bool:
    return holds.exists() and len(holds.read_text().splitlines()) >= n


@pytest.fixture
def hold_env(tmp_path):
    holds = tmp_path / "holds"
    return holds, {"LVMD_HOLD": "fivecat", "LVMD_HOLD_FILE": str(holds), "LVMD_HOLD_SECONDS": str(HOLD_S)}


def test_pause_and_stop_during_an_epoch_5cat_are_taken_at_once_and_the_owed_5cat_runs_once(tiny_data, db, hold_env):
    holds, env = hold_env
    lvmd("start", *TINY_MODEL, *data_overrides(tiny_data, articles=True), "train.epochs=2", "train.device=cpu",
         "eval.fivecat_every=1", "name=ev", "--db", db, check=True, env=env)
    wait_for(lambda: held(holds, 1), 120, "the first daemon to reach its epoch-0 5CAT")
    end0 = rows(db, "SELECT step FROM epochs WHERE run_id = 1 AND epoch = 0")[0]["step"]
    started = max(e["id"] for e in events(db) if e["kind"] == "state" and e["detail"]["state"] == "evaluating")

    # -- daemon 1: a pause during the 5CAT is taken before it ends, and holds it
    conn = connect(db)
    enqueue(conn, 1, "pause")
    conn.close()
    wait_for(lambda: rows(db, "SELECT state FROM runs")[0]["state"] == "paused", 60, "the pause")
    (acked,) = command_events(db, "pause", "acked")
    assert acked["step"] == end0 and acked["id"] > started
    assert rows(db, "SELECT acked_step FROM commands WHERE verb = 'pause'")[0]["acked_step"] == end0
    assert not rows(db, "SELECT id FROM evals")                       # the evaluation stands, unwritten
    done_stages = [e["detail"]["done"] for e in progress_after(db, started)]
    assert len(done_stages) < 12                                      # ... mid-way (12 stages: VAL and OOD)

    # -- a stop while it is held: abandoned, owed, no training after it
    out = lvmd("stop", "1", "--db", db, check=True).stdout
    assert f"run 1 stopped at step {end0}" in out
    assert rows(db, "SELECT state FROM runs")[0]["state"] == "stopped"
    assert not rows(db, "SELECT id FROM evals")
    assert rows(db, "SELECT MAX(step) AS s FROM steps")[0]["s"] == end0
    assert states_after(db, started) == ["paused", "stopping", "stopped"]
    (stop,) = command_events(db, "stop", "acked")
    assert stop["step"] == end0 and len(progress_after(db, started)) == len(done_stages)   # nothing ran after it

    # -- daemon 2: resumes, re-runs the owed 5CAT first; a pause from the CLI waits for the
    #    holdpoint, says what it waits for, and is taken before that 5CAT ends; resume carries it on
    resumed = lvmd("resume", "1", "--db", db, check=True, env=env)
    assert resumed.returncode == 0
    wait_for(lambda: held(holds, 2), 120, "the resumed daemon to reach the owed 5CAT")
    rerun = max(e["id"] for e in events(db) if e["kind"] == "resume")
    assert [e for e in events(db) if e["kind"] == "resume"][-1]["detail"]["eval_rerun"] == 0
    pause = lvmd("pause", "1", "--db", db, "--timeout", "60", check=True)
    assert "waiting for run 1 (evaluating at step" in pause.stderr and "to take the pause" in pause.stderr
    assert f"run 1 paused at step {end0}" in pause.stdout
    before_resume = progress_after(db, rerun)
    assert len(before_resume) < 12 and not rows(db, "SELECT id FROM evals")
    lvmd("resume", "1", "--db", db, check=True)
    wait_for(lambda: rows(db, "SELECT state FROM runs")[0]["state"] == "finished", 120, "the run to finish")

    evals = rows(db, "SELECT * FROM evals ORDER BY id")
    assert [(e["epoch"], e["trigger"], e["step"]) for e in evals][:1] == [(0, "epoch", end0)]
    assert [e["epoch"] for e in evals] == [0, 1]                      # the owed one exactly once, then epoch 1's
    first = [e for e in progress_after(db, rerun) if e["epoch"] == 0]
    assert [e["detail"]["done"] for e in first] == list(range(1, 13))  # carried on where it stood, once each
    (pause2,) = [e for e in command_events(db, "pause", "acked") if e["id"] > rerun]
    assert pause2["id"] < first[-1]["id"] and pause2["step"] == end0  # taken before that 5CAT ended
    # the evals row's duration leaves out the time it stood paused
    pause_done = rows(db, "SELECT done_at FROM commands WHERE verb = 'pause' ORDER BY id DESC LIMIT 1")[0]["done_at"]
    resume_acked = rows(db, "SELECT acked_at FROM commands WHERE verb = 'resume' ORDER BY id DESC LIMIT 1")[0]["acked_at"]
    wall = evals[0]["finished_at"] - evals[0]["started_at"]
    assert evals[0]["duration_s"] <= wall - (resume_acked - pause_done) + 0.01


# -- in process: DaemonControl during an evaluation ----------------------------------------------
def test_during_a_5cat_an_eval_joins_it_and_a_run_paused_before_it_is_not_held_again(tmp_path, monkeypatch):
    """eval-now on a paused run: its batches never wait on the paused hold; an eval asked meanwhile
    joins the running one; a resume during it goes back to `evaluating`, and the end to `running`."""
    from lvmd.run.daemon import CHECK_SECONDS, DaemonControl
    from store import commands
    from store.runs import create_run
    from store.writer import SqliteSink

    path = tmp_path / "x.db"
    cli = connect(path)
    run_id = create_run(cli, name="r", preset="v2.1", compat="none", config={}, data={}, state="running")
    sink = SqliteSink(path, run_id, flush_seconds=0.1)
    control = DaemonControl(sink, path, run_id, install_signals=False)
    try:
        control.beat(5, 0)
        control.pause_request("command").done({"step": 5})        # paused before the evaluation began
        acted, joined = [], []
        monkeypatch.setattr(control, "_sleep", lambda: pytest.fail("a 5CAT batch waited on the paused hold"))
        with control.evaluating():
            ids = [commands.enqueue(cli, run_id, verb) for verb in ("eval", "checkpoint", "resume")]
            for _ in range(3):
                time.sleep(CHECK_SECONDS + 0.05)
                control.between_eval_batches(5, 0, act=lambda reqs: acted.extend(reqs), evals=joined)
            assert [r.action for r in joined] == ["eval"] and [r.action for r in acted] == ["checkpoint"]
            assert [commands.get(cli, i)["state"] for i in ids] == ["acked", "acked", "done"]
            assert not control.paused
        sink.flush()
        got = [json.loads(r[0])["state"] for r in cli.execute(
            "SELECT detail FROM events WHERE kind = 'state' ORDER BY id")]
        assert got == ["paused", "evaluating", "evaluating", "running"]
    finally:
        control.close()
        sink.close()
        cli.close()


def test_a_checked_5cat_gives_the_same_numbers_and_looks_before_every_model_call():
    """between() runs before every call to the model (its batches split as the run's control
    needs) and after every stage; the numbers are exactly those of an unchecked evaluation."""
    import numpy as np
    import torch

    from lvmd.config import ModelConfig
    from lvmd.data import formats as data
    from lvmd.eval import fivecat
    from lvmd.train.models import build_model

    arts = data.synth_articles(n_articles=24, min_chunks=12, max_chunks=18, dim=16, seed=7)
    ids = np.unique(arts.article_ids)
    val, ood = data.build_windows(arts, article_subset=ids[:12]), data.build_windows(arts, article_subset=ids[12:])
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="transformer", d_model=16, nhead=2, num_layers=1, ff=32), 16).eval()
    calls, looks = [], []

    def predict(x):
        calls.append((len(looks), len(x)))
        with torch.no_grad():
            return model(x)

    kw = dict(max_samples=150, batch_size=512)
    plain = fivecat.evaluate(predict, val, ood, arts, **kw)
    n_plain, calls[:] = len(calls), []
    checked = fivecat.evaluate(predict, val, ood, arts, between=lambda: looks.append(1), **kw)
    same = {s: {k: v for k, v in m.items() if v == v} for s, m in plain.metrics.items()}   # NaN != NaN
    assert {s: {k: v for k, v in m.items() if v == v} for s, m in checked.metrics.items()} == same
    assert len(calls) > n_plain and all(n <= 512 for _, n in calls)                # split: from 64 rows up
    seen = [s for s, _ in calls]
    assert seen[0] >= 1 and all(a < b for a, b in zip(seen, seen[1:]))          # a look before each call
    assert len(looks) >= len(calls) + 12                                           # and after each stage
