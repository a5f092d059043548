"""`lvmd export RUN --tensorboard DIR [--follow]`: the real CLI writes event files with TensorBoard's
own writer, and TensorBoard's own loader (EventAccumulator) reads them back, point by point
against the database; --follow beside a real daemon; the refusals, each one line."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, TENSORS, EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.util.tensor_util import make_ndarray

from conftest import ROOT, TINY_MODEL, lvmd, query, rows, wait_for
from fixture_runs import write_run
from lvmd.cli.main import main
from store.commands import enqueue
from store.db import connect

EVENT_DETAILS = {"skip": ("pos", "neg", "gap"), "attenuate": ("rho_pre", "rho_cap", "lam")}


def one_line_error(proc, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("lvmd: error:"), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def cli(capsys, *args: str) -> SimpleNamespace:
    """The real `lvmd` entry point in this process (no interpreter and torch start per call)."""
    code = main(list(args))
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


def loaded(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0, TENSORS: 0})  # 0: keep every point
    acc.Reload()
    return acc


def points(acc: EventAccumulator, tag: str) -> dict[int, float]:
    found = acc.Scalars(tag)
    assert len({e.step for e in found}) == len(found), f"{tag}: a step written twice"
    return {e.step: e.value for e in found}


def f32(value: float) -> float:
    """TensorBoard's scalars are float32: the database's value as TensorBoard holds it."""
    return float(np.float32(value))


def expected_scalars(db, run_id: int) -> dict[str, dict[int, float]]:
    """Every scalar the export must hold, computed from the database with plain SQL."""
    want: dict[str, dict[int, float]] = {}
    for row in rows(db, "SELECT * FROM steps WHERE run_id = ? ORDER BY step", run_id):
        for column, value in row.items():
            if column not in ("run_id", "step", "t"):
                want.setdefault(f"steps/{column}", {})[row["step"]] = f32(value)
    for row in rows(db, "SELECT * FROM epochs WHERE run_id = ?", run_id):
        for column, value in row.items():
            if column not in ("run_id", "epoch", "step", "t") and value is not None:
                want.setdefault(f"epochs/{column}", {})[row["step"]] = f32(value)
    for ev in rows(db, "SELECT * FROM evals WHERE run_id = ?", run_id):
        for column in ("gates_passed", "gates_total", "verdict_3of5", "verdict_all5", "duration_s"):
            want.setdefault(f"evals/{column}", {})[ev["step"]] = f32(ev[column])
        for g in rows(db, "SELECT * FROM gates WHERE eval_id = ?", ev["id"]):
            want.setdefault(f"gates/{g['split']}/{g['gate']}/{g['metric']}", {})[ev["step"]] = float(g["passed"])
        for m in rows(db, "SELECT * FROM eval_metrics WHERE eval_id = ?", ev["id"]):
            want.setdefault(f"5cat/{m['split']}/{m['name']}", {})[ev["step"]] = f32(m["value"])
    for kind, counter in (("skip", "events/skips"), ("attenuate", "events/attenuations")):
        events = rows(db, "SELECT * FROM events WHERE run_id = ? AND kind = ? ORDER BY id", run_id, kind)
        for n, ev in enumerate(events, 1):
            want.setdefault(counter, {})[ev["step"]] = float(n)
            for key in EVENT_DETAILS[kind]:
                want.setdefault(f"events/{kind}/{key}", {})[ev["step"]] = f32(json.loads(ev["detail"])[key])
    return want


def test_export_holds_every_point_of_the_database(tmp_path, capsys):
    db = tmp_path / "t.db"
    run_id = write_run(db, state="finished")
    proc = cli(capsys, "export", str(run_id), "--tensorboard", str(tmp_path / "tb"), "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "tb" / "fixture"
    assert f"to {folder}: 120 steps, 2 epochs, 2 5CAT evaluations" in proc.stderr
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1

    acc = loaded(folder)
    want = expected_scalars(db, run_id)
    assert len([t for t in want if t.startswith("steps/")]) == 21          # lr, epoch and the 19 metrics
    assert {"events/skips", "events/attenuations", "gates/OOD/B/r_at_5", "5cat/OOD/m_0"} <= set(want)
    assert sorted(acc.Tags()["scalars"]) == sorted(want)                    # nothing missing, nothing else
    for tag, by_step in want.items():
        assert points(acc, tag) == by_step, tag
    # the x axis is the step, the wall time the step's own t
    assert [e.wall_time for e in acc.Scalars("steps/lr")] == \
        [t for (t,) in query(db, "SELECT t FROM steps WHERE run_id = ? ORDER BY step", run_id)]

    # the config as text and as the hparams dashboard's session
    text = make_ndarray(acc.Tensors("config/text_summary")[0].tensor_proto).item().decode()
    assert '"lr": 0.0005' in text and '"kind": "amn"' in text
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    session = HParamsPluginData.FromString(content).session_start_info.hparams
    assert session["train.lr"].number_value == 5e-4 and session["model.kind"].string_value == "amn"
    assert session["loss.ramp"].string_value == '[{"frac": 0.1, "until": 100}]'


def test_export_refuses_in_one_line_and_changes_nothing(tmp_path, capsys, monkeypatch):
    db = tmp_path / "t.db"
    run_id = str(write_run(db, state="finished", steps=60))
    tb = tmp_path / "tb"
    cli(capsys, "export", run_id, "--tensorboard", str(tb), "--db", str(db))
    (first,) = (tb / "fixture").glob("events.out.tfevents.*")
    size = first.stat().st_size

    one_line_error(cli(capsys, "export", run_id, "--tensorboard", str(tb), "--db", str(db)), "already holds", "--force")
    assert list((tb / "fixture").glob("events.out.tfevents.*")) == [first] and first.stat().st_size == size
    cli(capsys, "export", run_id, "--tensorboard", str(tb), "--force", "--db", str(db))
    (again,) = (tb / "fixture").glob("events.out.tfevents.*")       # replaced, not doubled
    assert again != first and len(points(loaded(tb / "fixture"), "steps/lr")) == 60

    afile = tmp_path / "afile"
    afile.write_text("keep")
    one_line_error(cli(capsys, "export", run_id, "--tensorboard", str(afile), "--db", str(db)), "is a file")
    assert afile.read_text() == "keep"
    one_line_error(cli(capsys, "export", run_id, "--table", "steps", "--follow", "--db", str(db)), "--follow")
    one_line_error(cli(capsys, "export", "99", "--tensorboard", str(tmp_path / "none"), "--db", str(db)), "99")
    assert not (tmp_path / "none").exists()

    # without the extra: what to install, in one line, and no folder made
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    one_line_error(cli(capsys, "export", run_id, "--tensorboard", str(tmp_path / "new"), "--db", str(db)),
                   "pip install 'lvmd[tensorboard]'")
    assert not (tmp_path / "new").exists()


# A daemon that trains until it is stopped or reaches max_steps; 5CAT off to keep it short.
RUN = [*TINY_MODEL, "train.batch_size=16", "train.epochs=100000", "train.max_steps=300", "eval.fivecat_every=0",
       "eval.max_samples=200", "eval.check_samples=100"]


def test_follow_mirrors_a_live_run_until_it_finishes(tmp_path, synth200, db):
    data = [f"data.train={synth200 / 'train.npz'}", f"data.val={synth200 / 'val.npz'}",
            f"data.articles={synth200 / 'articles.npz'}"]
    # The daemon holds 5 s at its 50th step boundary (store/holdpoints), so the pause below lands
    # before step 300 however fast the tiny run trains on this machine.
    hold = {"LVMD_HOLD": "step", "LVMD_HOLD_AFTER": "50", "LVMD_HOLD_SECONDS": "5"}
    started = lvmd("start", *data, *RUN, "--db", db, check=True, env=hold).stdout
    run_id = int(re.match(r"run (\d+) ", started)[1])
    conn = connect(db)
    enqueue(conn, run_id, "pause")          # held mid-run, so the follower surely starts before the end
    conn.close()
    wait_for(lambda: query(db, "SELECT state FROM runs WHERE id = ?", run_id)[0][0] == "paused", 120, "the pause")
    (paused_at,) = query(db, "SELECT MAX(step) FROM steps WHERE run_id = ?", run_id)[0]
    assert paused_at < 300

    follower = subprocess.Popen([sys.executable, "-m", "lvmd", "export", str(run_id), "--tensorboard",
                                 str(tmp_path / "tb"), "--follow", "--db", db], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        folder = tmp_path / "tb" / "run"
        wait_for(lambda: folder.is_dir() and "steps/lr" in loaded(folder).Tags()["scalars"]
                 and max(points(loaded(folder), "steps/lr")) == paused_at, 120, "the follower to catch up",
                 interval=0.5)
        assert follower.poll() is None                                   # it waits for more
        conn = connect(db)
        enqueue(conn, run_id, "resume")     # what `lvmd resume` and the TUI's r send
        conn.close()
        out, err = follower.communicate(timeout=180)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    assert query(db, "SELECT state FROM runs WHERE id = ?", run_id)[0][0] == "finished"
    assert f"wrote run {run_id} (finished)" in err

    acc = loaded(folder)
    db_steps = rows(db, "SELECT step, rho, grad_norm FROM steps WHERE run_id = ? ORDER BY step", run_id)
    assert db_steps[-1]["step"] == 300 > paused_at                       # steps written after it started
    for column in ("rho", "grad_norm"):
        assert points(acc, f"steps/{column}") == {r["step"]: f32(r[column]) for r in db_steps}
