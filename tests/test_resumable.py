"""Issue 13: nothing lost, nothing stuck. Run folders keyed by the database file (A), failed
resumes stay resumable (C), two resumes at once (E), `stop --force` kills only our daemon (F),
opt-ins never from the database (G), resume re-checks the data files (L). Real `lvmd`
subprocesses, real SQLite files, a tiny model."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL, lvmd, query, rows, synth_splits, wait_for
from lvmd.data import formats as data
from store.runs import pid_alive

# Long epochs (never finished within a test) for daemons that are stopped by hand.
LONG = [*TINY_MODEL, "train.batch_size=2", "train.epochs=1000", "train.max_steps=100000", "eval.fivecat_every=0"]
SHORT = [*TINY_MODEL, "train.batch_size=16", "train.epochs=2", "eval.fivecat_every=0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return synth_splits(tmp_path_factory.mktemp("resumable_data"), n_articles=24, min_chunks=12, max_chunks=20,
                        seed=2, val=0.25, ood=0.0)


def overrides(d: Path) -> list[str]:
    return [f"data.train={d / 'train.npz'}", f"data.val={d / 'val.npz'}", f"data.articles={d / 'articles.npz'}"]


def row(db, run_id: int = 1) -> dict:
    return rows(db, "SELECT * FROM runs WHERE id = ?", run_id)[0]


def states(db, run_id: int = 1) -> list[str]:
    return [json.loads(d)["state"] for (d,) in query(
        db, "SELECT detail FROM events WHERE run_id = ? AND kind = 'state' ORDER BY id", run_id)]


def one_line_error(proc, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("lvmd: error:"), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def stopped_run(db, files: Path, *extra: str) -> dict:
    """A run started as a daemon, trained a little, stopped with a checkpoint."""
    lvmd("start", *overrides(files), *LONG, *extra, "--db", db, check=True)
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 10, 60, "some steps")
    lvmd("stop", "1", "--db", db, check=True)
    run = row(db)
    assert run["state"] == "stopped" and Path(run["out_dir"], "last.pt").exists()
    return run


# -- A: run folders ----------------------------------------------------------------------------
def test_two_databases_with_one_stem_in_one_folder_never_share_a_run_folder(tmp_path, files):
    a, b = tmp_path / "x.db", tmp_path / "x.lvmd"
    for path in (a, b):
        lvmd("run", *overrides(files), *SHORT, "train.max_steps=3", "--quiet", "--db", str(path), check=True)
    dir_a, dir_b = Path(row(a)["out_dir"]), Path(row(b)["out_dir"])
    assert dir_a != dir_b and dir_a.parent != dir_b.parent
    assert dir_a.parent.name.startswith("x.db-runs-") and dir_b.parent.name.startswith("x.lvmd-runs-")
    ids = [query(p, "SELECT value FROM db_properties WHERE key = 'db_id'")[0][0] for p in (a, b)]
    assert ids[0] != ids[1] and all(len(i) == 32 for i in ids)
    for path, folder, db_id in ((a, dir_a, ids[0]), (b, dir_b, ids[1])):
        assert json.loads((folder / "run.json").read_text()) == {"db": str(path.resolve()), "db_id": db_id, "run_id": 1}


def test_a_run_folder_claimed_by_another_database_is_refused_and_left_alone(tmp_path, files):
    """The clash an older lvmd made (x.db and x.lvmd both in x-runs/1): resuming the second
    database's run must neither train into nor truncate against the first one's folder."""
    a, b = str(tmp_path / "x.db"), str(tmp_path / "x.lvmd")
    stopped_run(a, files)
    stopped_run(b, files)
    folder_a = row(a)["out_dir"]
    conn = sqlite3.connect(b)
    conn.execute("UPDATE runs SET out_dir = ? WHERE id = 1", (folder_a,))      # as the old naming did
    conn.commit()
    conn.close()
    before = (Path(folder_a, "last.pt").read_bytes(), query(b, "SELECT count(*) FROM steps")[0][0])
    one_line_error(lvmd("resume", "1", "--db", b), "belongs to run 1 of", "x.db", "will not share it")
    assert (Path(folder_a, "last.pt").read_bytes(), query(b, "SELECT count(*) FROM steps")[0][0]) == before
    assert row(b)["state"] == "stopped" and "failed" not in states(b)


def test_an_old_database_is_migrated_and_its_runs_keep_their_folders(tmp_path, files):
    db = tmp_path / "old.db"
    lvmd("run", *overrides(files), *SHORT, "train.max_steps=3", "--quiet", "--db", str(db), check=True)
    folder = Path(row(db)["out_dir"])
    old = tmp_path / "old-runs" / "1"                              # the folder an older lvmd named
    old.parent.mkdir()
    shutil.move(folder, old)
    (old / "run.json").unlink()
    conn = sqlite3.connect(db)
    # a file as lvmd at schema 7 left it: no db id (migration 8), no step sums (migration 9)
    conn.executescript(f"DROP TABLE db_properties; DROP TRIGGER steps_add_to_block; "
                       f"DROP TRIGGER steps_resum_block_on_delete; DROP TRIGGER steps_resum_blocks_on_update; "
                       f"DROP TABLE step_blocks; PRAGMA user_version = 7; "
                       f"UPDATE runs SET out_dir = '{old}', state = 'stopped';")
    conn.close()
    # no run.json: the folder cannot prove it is this run's; refused, nothing written into it
    before = sorted((p.name, p.stat().st_size) for p in old.iterdir())
    one_line_error(lvmd("resume", "1", "--foreground", "--quiet", "--db", str(db)), "no run.json", "--adopt-folder")
    assert sorted((p.name, p.stat().st_size) for p in old.iterdir()) == before and row(db)["state"] == "stopped"
    proc = lvmd("resume", "1", "--foreground", "--quiet", "--adopt-folder", "--db", str(db))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("run 1 finished"), proc.stderr
    assert query(db, "PRAGMA user_version")[0][0] >= 8 and query(db, "SELECT count(*) FROM db_properties")[0][0] == 1
    assert row(db)["out_dir"] == str(old) and json.loads((old / "run.json").read_text())["run_id"] == 1


# -- C: a failed resume leaves the run resumable -----------------------------------------------
def test_a_bad_last_pt_leaves_the_run_crashed_with_the_error_and_resumable(db, files):
    run = stopped_run(db, files)
    last = Path(run["out_dir"], "last.pt")
    good = last.read_bytes()
    last.write_bytes(b"not a checkpoint")
    one_line_error(lvmd("resume", "1", "--db", db), "did not start", "last.pt")
    assert row(db)["state"] == "stopped" and "last.pt" in row(db)["error"]   # as it was: found before training
    errors = [json.loads(d)["error"] for (d,) in query(db, "SELECT detail FROM events WHERE kind = 'error'")]
    assert any("last.pt" in e for e in errors)
    last.write_bytes(good)                                          # fixed: it resumes
    out = lvmd("resume", "1", "--db", db, check=True).stdout
    assert out.startswith("run 1 resumed from step") and row(db)["state"] == "running"
    assert "failed" not in states(db)
    lvmd("stop", "1", "--db", db, check=True)


def test_enospc_during_a_checkpoint_leaves_the_run_crashed_and_resumable(tmp_path, files, monkeypatch):
    from lvmd.config import load_config
    from lvmd.run import daemon, runner
    from lvmd.train import checkpoint
    from lvmd.data.train_data import load_train_data

    db = tmp_path / "full.db"
    cfg = load_config(None, [*overrides(files), *SHORT, "train.checkpoint_every=5"])
    run_id, _ = runner.create(cfg, db, load_train_data(cfg))
    real_save, calls = checkpoint.save, []

    def full_disk(path, state):
        calls.append(state["step"])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, state)

    monkeypatch.setattr(checkpoint, "save", full_disk)
    with pytest.raises(OSError):
        daemon.serve(db, run_id)
    run = row(db, run_id)
    assert run["state"] == "crashed" and "No space left" in run["error"]
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert daemon.serve(db, run_id, resume=True) == "finished"
    steps = [s for (s,) in query(db, "SELECT step FROM steps ORDER BY step")]
    assert steps == list(range(1, row(db, run_id)["total_steps"] + 1))
    assert "failed" not in states(db, run_id)


# -- E: two resumes at once --------------------------------------------------------------------
def test_two_simultaneous_resumes_one_wins_the_other_says_so_and_the_run_stays_healthy(db, files):
    stopped_run(db, files)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-m", "lvmd", "resume", "1", "--db", db], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    _, _, loser_err = next(r for r in results if r[0] != 0)
    lines = loser_err.strip().splitlines()
    assert len(lines) == 1 and "already" in lines[0] and ("resumed" in lines[0] or "running" in lines[0]), lines
    time.sleep(1.0)
    run = row(db)
    assert run["state"] == "running" and not run["error"] and "failed" not in states(db)
    status = json.loads(lvmd("status", "1", "--json", "--db", db, check=True).stdout)
    assert status["state"] == "running" and status["error"] is None
    lvmd("stop", "1", "--db", db, check=True)


# -- F: stop --force ---------------------------------------------------------------------------
def test_stop_force_never_kills_a_process_that_is_not_the_runs_daemon(db, files, tmp_path):
    lvmd("start", *overrides(files), *LONG, "--db", db, check=True)
    daemon_pid, folder = row(db)["pid"], row(db)["out_dir"]
    stranger = subprocess.Popen(["sleep", "60"])                    # holds a pid, is not our daemon
    try:
        for out_dir in (folder, str(tmp_path / "never-used")):      # live lock + wrong pid; no lock at all
            conn = sqlite3.connect(db, timeout=10)
            conn.execute("UPDATE runs SET pid = ?, out_dir = ? WHERE id = 1", (stranger.pid, out_dir))
            conn.commit()
            conn.close()
            one_line_error(lvmd("stop", "1", "--force", "--db", db), f"pid {stranger.pid} is not its daemon",
                           "not killed")
            assert stranger.poll() is None and pid_alive(daemon_pid)
        conn = sqlite3.connect(db, timeout=10)
        conn.execute("UPDATE runs SET pid = ?, out_dir = ? WHERE id = 1", (daemon_pid, folder))
        conn.commit()
        conn.close()
        assert lvmd("stop", "1", "--force", "--db", db, check=True).stdout.startswith("run 1 stopped")
        wait_for(lambda: not pid_alive(daemon_pid), 30, "the daemon to die")
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_force_kills_the_real_daemon(db, files):
    lvmd("start", *overrides(files), *LONG, "--db", db, check=True)
    pid = row(db)["pid"]
    out = lvmd("stop", "1", "--force", "--db", db, check=True).stdout
    assert out.startswith("run 1 stopped") and not pid_alive(pid)


# -- G: opt-ins that run code ------------------------------------------------------------------
@pytest.fixture(scope="module")
def pickled(files, tmp_path_factory) -> list[str]:
    """The original's sequence format: ids only in a pickled `metadata` object array."""
    out = tmp_path_factory.mktemp("pickled")
    for split in ("train", "val"):
        s = data.load_sequences(files / f"{split}.npz")
        meta = np.array([{"article_index": int(a), "target_chunk_index": int(t)}
                         for a, t in zip(s.article_ids, s.target_indices)], dtype=object)
        np.savez(out / f"{split}.npz", context_sequences=s.contexts, target_vectors=s.targets, metadata=meta)
    return [f"data.train={out / 'train.npz'}", f"data.val={out / 'val.npz'}"]


def test_run_accepts_the_allow_pickle_flag_its_error_names(tmp_path, pickled):
    db = str(tmp_path / "p.db")
    line = one_line_error(lvmd("run", *pickled, *SHORT, "train.max_steps=3", "--quiet", "--db", db), "pickle")
    assert "--allow-pickle" in line
    proc = lvmd("run", *pickled, *SHORT, "train.max_steps=3", "--quiet", "--allow-pickle", "--db", db)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("finished"), proc.stderr


def test_resume_never_takes_allow_pickle_from_the_database(tmp_path, pickled):
    db = str(tmp_path / "p.db")
    lvmd("start", *pickled, *LONG, "--allow-pickle", "--db", db, check=True)    # the user opted in, now
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 5, 60, "some steps")
    lvmd("stop", "1", "--db", db, check=True)
    assert json.loads(row(db)["config_json"])["data"]["allow_pickle"] is True    # what a hand edit could set
    one_line_error(lvmd("resume", "1", "--db", db), "pickle", "--allow-pickle")
    assert row(db)["state"] in ("stopped", "crashed") and "failed" not in states(db)
    out = lvmd("resume", "1", "--allow-pickle", "--db", db, check=True).stdout
    assert out.startswith("run 1 resumed")
    lvmd("stop", "1", "--db", db, check=True)


# -- L: resume re-checks the data ----------------------------------------------------------------
def test_resume_refuses_a_changed_data_file_unless_allowed(db, files, tmp_path):
    local = tmp_path / "data"
    shutil.copytree(files, local)
    stopped_run(db, local)
    s = data.load_sequences(local / "val.npz")
    keep = slice(0, len(s) - 3)                                                   # three rows fewer
    np.savez(local / "val.npz", context_sequences=s.contexts[keep], target_vectors=s.targets[keep],
             article_ids=s.article_ids[keep], target_indices=s.target_indices[keep])
    one_line_error(lvmd("resume", "1", "--db", db), "data.val", "has changed", "--allow-data-change")
    assert row(db)["state"] == "stopped" and "failed" not in states(db)
    assert query(db, "SELECT count(*) FROM events WHERE kind = 'error'")[0][0] >= 1
    out = lvmd("resume", "1", "--allow-data-change", "--db", db, check=True).stdout
    assert out.startswith("run 1 resumed")
    lvmd("stop", "1", "--db", db, check=True)


# -- B: `lvmd resume` right after a kill -----------------------------------------------------------
@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """Epochs of thousands of steps: no epoch-end checkpoint within a test."""
    return synth_splits(tmp_path_factory.mktemp("resumable_big"), n_articles=400, min_chunks=12, max_chunks=20,
                        seed=4, val=0.05, ood=0.0)


def test_resume_right_after_a_kill_works_even_before_the_first_checkpoint(db, big):
    """Killed while paused and before any checkpoint (epochs far longer than the test): the resume
    typed at once restarts the run from step 0; killed again while training, again at once."""
    lvmd("start", *overrides(big), *LONG, "train.batch_size=1", "--db", db, check=True)
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 5, 60, "some steps")
    lvmd("pause", "1", "--db", db, check=True)
    pid = row(db)["pid"]
    assert not list(Path(row(db)["out_dir"]).glob("last.pt"))
    os.kill(pid, signal.SIGKILL)
    out = lvmd("resume", "1", "--db", db, check=True).stdout
    assert out.startswith("run 1 resumed from step 0 (running")
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 10, 60, "steps after the restart")
    os.kill(row(db)["pid"], signal.SIGKILL)
    assert lvmd("resume", "1", "--db", db, check=True).stdout.startswith("run 1 resumed from step 0 (running")
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 10, 60, "steps after the second restart")
    lvmd("stop", "1", "--db", db, check=True)
    steps = [s for (s,) in query(db, "SELECT step FROM steps ORDER BY step")]
    assert steps == list(range(1, len(steps) + 1))
    details = [json.loads(d) for (d,) in query(db, "SELECT detail FROM events WHERE kind = 'resume' ORDER BY id")]
    assert [d["checkpoint"] for d in details] == [None, None] and details[0]["removed"]["steps"] > 5
