"""Issue 20: what lvmd reads is data, never authority. Checkpoints and run folders prove whose
they are (identity), signals reach only a proven daemon (lvmd.run.signals), a stop typed while
a resume starts lands, a failed resume puts the run back, and a database moved or stripped of
its -wal under a live daemon stops it cleanly. Real `lvmd` subprocesses, real SQLite files."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY_MODEL, lvmd, query, rows, synth_splits, wait_for
from store.runs import pid_alive

LONG = [*TINY_MODEL, "train.batch_size=2", "train.epochs=1000", "train.max_steps=100000", "eval.fivecat_every=0"]
SHORT = [*TINY_MODEL, "train.batch_size=16", "train.epochs=2", "eval.fivecat_every=0"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return synth_splits(tmp_path_factory.mktemp("trust_data"), n_articles=24, min_chunks=12, max_chunks=20,
                        seed=3, val=0.25, ood=0.0)


def data_args(d: Path) -> list[str]:
    return [f"data.train={d / 'train.npz'}", f"data.val={d / 'val.npz'}"]


def row(db, run_id: int = 1) -> dict:
    return rows(db, "SELECT * FROM runs WHERE id = ?", run_id)[0]


def sql(db, text: str, *params) -> None:
    conn = sqlite3.connect(db, timeout=10)
    conn.execute(text, params)
    conn.commit()
    conn.close()


def one_line_error(proc, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("lvmd: error:"), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def finished_then_stopped(db, files: Path, *extra: str) -> dict:
    """A one-epoch foreground run (it writes last.pt and best.pt), then marked stopped so it can
    be resumed."""
    lvmd("run", *data_args(files), *SHORT, "train.epochs=1", *extra, "--quiet", "--db", db, check=True)
    run_id = query(db, "SELECT max(id) FROM runs")[0][0]
    sql(db, "UPDATE runs SET state = 'stopped' WHERE id = ?", run_id)
    return row(db, run_id)


def steps(db, run_id: int = 1) -> list[int]:
    return [s for (s,) in query(db, "SELECT step FROM steps WHERE run_id = ? ORDER BY step", run_id)]


# -- identity: checkpoints and folders ------------------------------------------------------------
def test_resume_refuses_another_runs_checkpoint_naming_both_sides(db, files):
    a = finished_then_stopped(db, files)
    b = finished_then_stopped(db, files, "train.seed=7")
    last_a = Path(a["out_dir"], "last.pt")
    own = last_a.read_bytes()
    shutil.copyfile(Path(b["out_dir"], "last.pt"), last_a)             # b's weights and step in a's folder
    n = a["step"]
    line = one_line_error(lvmd("resume", "1", "--foreground", "--quiet", "--db", db), "last.pt",
                          "a checkpoint of run 2 of database", "not of run 1 of database")
    assert "not used" in line and row(db)["state"] == "stopped" and steps(db) == list(range(1, n + 1))
    last_a.write_bytes(own)                                              # its own again: it resumes
    proc = lvmd("resume", "1", "--foreground", "--quiet", "--db", db)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("run 1 finished"), proc.stderr
    assert steps(db) == list(range(1, n + 1))
    # best.pt by the run's name: `lvmd predict --run` proves it too
    predict = ["predict", "--run", "1", "--which", "best", "--articles", str(files / "articles.npz"),
               "--context", "0,1,2,3,4", "--db", db]
    assert lvmd(*predict).returncode == 0
    shutil.copyfile(Path(b["out_dir"], "best.pt"), Path(a["out_dir"], "best.pt"))
    one_line_error(lvmd(*predict), "best.pt", "a checkpoint of run 2 of database", "not of run 1")


def test_a_checkpoint_ahead_of_the_database_is_refused(db, files, tmp_path):
    """The database restored from a copy older than the checkpoint: resuming would leave a gap."""
    run = finished_then_stopped(db, files)
    sql(db, "DELETE FROM steps WHERE run_id = 1 AND step > 2")
    one_line_error(lvmd("resume", "1", "--foreground", "--quiet", "--db", db), f"is at step {run['step']}",
                   "steps only up to 2", "gap")
    assert row(db)["state"] == "stopped" and Path(run["out_dir"], "last.pt").exists()


def test_a_foreign_folder_is_refused_before_anything_is_written_into_it(db, files, tmp_path):
    finished_then_stopped(db, files)
    foreign = tmp_path / "users-own-folder"
    foreign.mkdir()
    (foreign / ".best.pt.123.tmp").write_bytes(b"the user's")
    (foreign / "notes.txt").write_text("mine")
    before = sorted(p.name for p in foreign.iterdir())
    sql(db, "UPDATE runs SET out_dir = ? WHERE id = 1", str(foreign))
    for how in (["--foreground", "--quiet"], []):                       # in this process, and spawned
        one_line_error(lvmd("resume", "1", *how, "--db", db), str(foreign), "no run.json", "nothing was written")
        assert sorted(p.name for p in foreign.iterdir()) == before and row(db)["state"] == "stopped"
    # a new run is never pointed at a folder that holds anything: refused before a row exists
    one_line_error(lvmd("run", *data_args(files), *SHORT, f"out_dir={foreign}", "--quiet", "--db", db),
                   "is not empty")
    assert query(db, "SELECT count(*) FROM runs")[0][0] == 1 and sorted(p.name for p in foreign.iterdir()) == before


# -- signals -----------------------------------------------------------------------------------------
def test_stop_after_the_grace_never_signals_a_pid_that_is_not_the_daemon(db, files, tmp_path):
    """The daemon hangs (SIGSTOP); the row's pid is another process (reused or forged): the
    SIGTERM after the grace is not sent, and says why. --force with a forged pidfile and start
    time, under a lock some other process holds, kills nothing either; nor does a row that
    copies another run's live pid and folder."""
    lvmd("start", *data_args(files), *LONG, "--db", db, check=True)
    daemon_pid, folder = row(db)["pid"], row(db)["out_dir"]
    victim = subprocess.Popen(["sleep", "120"])
    holder = None
    try:
        os.kill(daemon_pid, signal.SIGSTOP)
        sql(db, "UPDATE runs SET pid = ? WHERE id = 1", victim.pid)
        proc = lvmd("stop", "1", "--grace", "1", "--db", db)
        assert f"pid {victim.pid} not signalled: its pidfile names {daemon_pid}" in proc.stderr, proc.stderr
        assert victim.poll() is None and pid_alive(daemon_pid)
        sql(db, "UPDATE runs SET pid = ? WHERE id = 1", daemon_pid)
        os.kill(daemon_pid, signal.SIGCONT)                              # it takes the queued stop
        wait_for(lambda: row(db)["state"] == "stopped" and not pid_alive(daemon_pid), 60, "the daemon to stop")

        # a forged folder: run.json naming this run, a pidfile naming the victim with its true
        # start time, and the lock held by a process that is not the victim (this test)
        from lvmd.run.runlock import process_start_time

        db_id = query(db, "SELECT value FROM db_properties WHERE key = 'db_id'")[0][0]
        forged = tmp_path / "forged"
        forged.mkdir()
        (forged / "run.json").write_text(json.dumps({"db": db, "db_id": db_id, "run_id": 1}))
        (forged / "daemon.pid").write_text(f"{victim.pid} {process_start_time(victim.pid)}\n")
        holder = os.open(forged / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(holder, fcntl.LOCK_EX)
        sql(db, "UPDATE runs SET state = 'running', pid = ?, out_dir = ?, heartbeat_at = ? WHERE id = 1",
            victim.pid, str(forged), time.time())
        one_line_error(lvmd("stop", "1", "--force", "--db", db), f"pid {victim.pid} is not its daemon",
                       f"its run lock is held by {os.getpid()}, not pid {victim.pid}", "not killed")
        assert victim.poll() is None

        # a row that copies a live run's pid and folder: that folder's run.json names run 1
        sql(db, "UPDATE runs SET state = 'stopped', pid = ?, out_dir = ? WHERE id = 1", daemon_pid, folder)
        lvmd("resume", "1", "--db", db, check=True)
        live = row(db)["pid"]
        conn = sqlite3.connect(db, timeout=10)
        conn.execute("INSERT INTO runs (name, preset, compat, state, config_json, out_dir, host, pid, created_at,"
                     " heartbeat_at) SELECT 'copy', preset, compat, 'running', config_json, out_dir, host, pid,"
                     " created_at, ? FROM runs WHERE id = 1", (time.time(),))
        conn.commit()
        conn.close()
        one_line_error(lvmd("stop", "2", "--force", "--db", db), "run.json names run 1", "not run 2", "not killed")
        assert pid_alive(live) and row(db)["state"] == "running"
        lvmd("stop", "1", "--db", db, check=True)
    finally:
        if holder is not None:
            os.close(holder)
        victim.kill()
        victim.wait()


def test_lock_holders_names_the_process_that_holds_the_flock(tmp_path):
    from lvmd.run.signals import lock_holders

    lock = tmp_path / "daemon.lock"
    assert lock_holders(lock) == set()
    child = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                              "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                              "time.sleep(60)", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert lock_holders(lock) == {child.pid}
    finally:
        child.kill()
        child.wait()
    assert lock_holders(lock) == set()


# -- stop racing resume; a failed resume ----------------------------------------------------------
def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_stop_typed_while_a_resume_starts_is_honoured_at_its_first_step(db, files):
    lvmd("start", *data_args(files), *LONG, "--db", db, check=True)
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 5, 60, "some steps")
    lvmd("stop", "1", "--db", db, check=True)
    at = row(db)["step"]
    resume = subprocess.Popen([sys.executable, "-m", "lvmd", "resume", "1", "--db", db], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the moment its daemon process exists, long before that daemon can say anything itself
    wait_for(lambda: children(resume.pid), 60, "the resume to spawn its daemon", interval=0.01)
    stop = lvmd("stop", "1", "--db", db)
    out, err = resume.communicate(timeout=180)
    assert stop.returncode == 0 and stop.stdout.startswith("run 1 stopped at step"), stop.stderr
    assert resume.returncode == 0, err
    final = row(db)
    assert final["state"] == "stopped" and at < final["step"] <= at + 2, (at, final["step"])
    assert steps(db) == list(range(1, final["step"] + 1))


def test_a_resume_whose_daemon_dies_while_starting_puts_the_run_back(db, files, tmp_path):
    """Killed inside its start (after it recorded `starting`): the resume says so and the run
    is stopped again at once, not left `starting` for the next command to find."""
    lvmd("start", *data_args(files), *LONG, "--db", db, check=True)
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 5, 60, "some steps")
    lvmd("stop", "1", "--db", db, check=True)
    held = tmp_path / "held"
    env = {**ENV, "LVMD_HOLD": "resume-start", "LVMD_HOLD_FILE": str(held), "LVMD_HOLD_SECONDS": "60"}
    resume = subprocess.Popen([sys.executable, "-m", "lvmd", "resume", "1", "--db", db], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = wait_for(lambda: held.exists() and held.read_text().strip(), 120, "the daemon to hold")
    pid = int(line.split()[1])
    wait_for(lambda: row(db)["pid"] == pid and row(db)["state"] == "starting", 30, "the daemon's own starting")
    os.kill(pid, signal.SIGKILL)
    out, err = resume.communicate(timeout=60)
    assert resume.returncode != 0 and len(err.strip().splitlines()) == 1, err
    assert row(db)["state"] == "stopped"                  # at once, before any other command looks
    assert lvmd("resume", "1", "--db", db, check=True).stdout.startswith("run 1 resumed")
    lvmd("stop", "1", "--db", db, check=True)


# -- the database changed under a live daemon -----------------------------------------------------
def test_a_database_replaced_or_stripped_of_its_wal_stops_the_daemon_cleanly(files, tmp_path):
    db, moved, other = tmp_path / "x.db", tmp_path / "moved.db", tmp_path / "other.db"
    lvmd("start", *data_args(files), *LONG, "--db", str(db), check=True)
    log = Path(row(db)["out_dir"], "daemon.log")
    from store.db import connect

    connect(other).close()                                                 # another lvmd database
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 5, 60, "some steps")
    other_before = query(other, "SELECT count(*) FROM runs")[0][0]
    os.rename(db, moved)
    os.rename(other, db)                                                   # replaced under the daemon
    wait_for(lambda: "was replaced by another file under the daemon" in log.read_text(), 60, "the daemon's line")
    pid = rows(moved, "SELECT pid FROM runs WHERE id = 1")[0]["pid"]
    wait_for(lambda: not pid_alive(pid), 30, "the daemon to exit")
    assert lvmd("check", str(db)).returncode == 0 and query(db, "SELECT count(*) FROM runs")[0][0] == other_before
    run = row(moved)                                                       # the file it opened has it all
    assert run["state"] == "stopped" and "replaced" in run["error"] and steps(moved) == list(range(1, run["step"] + 1))

    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)
    os.rename(moved, db)                                                   # put back: it resumes
    lvmd("resume", "1", "--db", str(db), check=True)
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > run["step"] + 5, 60, "steps after the resume")
    Path(f"{db}-wal").unlink()                                             # what the README says never to do
    wait_for(lambda: f"{db}-wal was deleted under the daemon" in log.read_text(), 60, "the daemon's line")
    wait_for(lambda: not pid_alive(row(db)["pid"]), 30, "the daemon to exit")
    assert lvmd("check", str(db)).returncode == 0
    final = row(db)
    assert final["state"] == "stopped" and steps(db) == list(range(1, final["step"] + 1))
    assert lvmd("resume", "1", "--db", str(db), check=True).stdout.startswith(f"run 1 resumed from step {final['step']}")
    lvmd("stop", "1", "--db", str(db), check=True)


def test_backup_copies_a_live_database_and_check_finds_damage(files, tmp_path):
    db, copy = tmp_path / "x.db", tmp_path / "copy.db"
    lvmd("start", *data_args(files), *LONG, "--db", str(db), check=True)
    try:
        wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 5, 60, "some steps")
        out = lvmd("backup", str(db), str(copy), check=True).stdout
        assert "1 runs" in out and oct(copy.stat().st_mode & 0o777) == "0o600"
        assert "integrity       ok" in lvmd("check", str(copy), check=True).stdout
        n = query(copy, "SELECT count(*) FROM steps")[0][0]
        assert n > 5 and steps(copy) == list(range(1, n + 1))
        one_line_error(lvmd("backup", str(db), str(copy)), "already exists")
    finally:
        lvmd("stop", "1", "--db", str(db))
    sql(copy, "DROP VIEW v_run_summary")
    proc = lvmd("check", str(copy))
    assert proc.returncode == 1 and "missing: view v_run_summary" in proc.stdout, proc.stdout
