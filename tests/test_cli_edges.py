"""The CLI at its edges (issues 20.8 and 22.6/8/9): a silent daemon, a closed stdout, a run whose
last.pt is empty, a checkpoint on a full disk, epochs counted one way in every human view,
`lvmd tui --db`, paths typed on the command line, errors that say the next step."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY_MODEL, data_overrides, lvmd, query

from lvmd.cli.main import main
from store.db import connect
from store.runs import DAEMON_LOCK, STALE_SECONDS, create_run, update_run
from store.schema import STEP_COLUMNS, STEP_METRICS


@pytest.fixture(scope="module")
def finished_db(tiny_data, tmp_path_factory) -> Path:
    """A real 2-epoch run with 5CAT, finished (id 1, name 'tiny')."""
    db = tmp_path_factory.mktemp("edges") / "lvmd.db"
    lvmd("run", "--db", str(db), "--quiet", *TINY_MODEL, *data_overrides(tiny_data, articles=True),
         "train.epochs=2", "train.device=cpu", "name=tiny", check=True)
    return db


def _call(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- 20.8: a daemon that holds its lock and has stopped beating -------------------------------------
def test_a_silent_daemon_reads_not_responding_with_no_speed_and_no_eta(tmp_path, capsys):
    db = tmp_path / "x.db"
    conn = connect(db)
    run = create_run(conn, name="silent", preset="v2.1", compat="none", config={}, data={}, state="running",
                     total_epochs=4, total_steps=400)
    folder = tmp_path / "runs" / str(run)
    folder.mkdir(parents=True)
    steps = [(run, s, 0, 1000.0 + s / 50, 1e-3, *[0.0] * len(STEP_METRICS)) for s in range(1, 101)]
    conn.executemany(f"INSERT INTO steps ({', '.join(STEP_COLUMNS)}) VALUES ({', '.join('?' * len(STEP_COLUMNS))})",
                     steps)
    update_run(conn, run, out_dir=str(folder), step=100, heartbeat_at=time.time() - (STALE_SECONDS + 50))
    conn.close()
    lock = os.open(folder / DAEMON_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)          # held, as a SIGSTOPped daemon holds it
    try:
        code, out, err = _call(["status", str(run), "--db", str(db)], capsys)
        assert code == 0 and not err, err
        assert "not responding for 6" in out and "speed" not in out and "ETA" not in out, out
        code, out, _ = _call(["status", "--db", str(db)], capsys)
        row = next(line for line in out.splitlines() if "silent" in line)
        assert "not responding for 6" in row and re.search(r"100/400\s+1/4\s+–\s+–", row), row
        code, out, _ = _call(["status", str(run), "--db", str(db), "--json"], capsys)
        s = json.loads(out)
        assert (s["responding"], s["steps_per_s"], s["eta_s"], s["state"]) == (False, None, None, "running")
    finally:
        os.close(lock)
    # the lock free (the daemon gone): not "not responding" but crashed, as before
    code, out, _ = _call(["status", str(run), "--db", str(db)], capsys)
    assert "crashed" in out and "not responding" not in out, out


# -- 20.8: output to a pipe closed early ------------------------------------------------------------
def test_a_closed_stdout_ends_quietly_with_exit_0(finished_db):
    for argv in (["status", "1"], ["status"], ["runs"], ["report", "1"], ["export", "1", "--table", "steps"]):
        proc = subprocess.Popen([sys.executable, "-m", "lvmd", *argv, "--db", str(finished_db)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        proc.stdout.close()                      # `| head -0`: the reader is gone before the first line
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0 and err == "", (argv, err)


# -- 20.8: an empty last.pt, a checkpoint on a full disk --------------------------------------------
def test_resuming_from_an_empty_last_pt_names_it(tiny_data, tmp_path):
    db = tmp_path / "x.db"
    lvmd("run", *data_overrides(tiny_data), *TINY_MODEL, "train.epochs=1", "--quiet", "--db", str(db), check=True)
    (out_dir,), = query(db, "SELECT out_dir FROM runs WHERE id = 1")
    (Path(out_dir) / "last.pt").write_bytes(b"")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE runs SET state = 'stopped' WHERE id = 1")
    conn.commit()
    conn.close()
    proc = lvmd("resume", "1", "--foreground", "--quiet", "--db", str(db))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "last.pt: empty file (0 bytes)" in lines[0], lines[0]
    assert query(db, "SELECT state FROM runs")[0][0] in ("stopped", "crashed")   # still resumable once fixed


def test_a_checkpoint_that_finds_the_disk_full_says_so(tmp_path):
    from test_store_failures import _unshare

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {mnt} && exec {sys.executable} -c '"
              "import sys, torch; from lvmd.train import checkpoint\n"
              "try: checkpoint.save(sys.argv[1], {\"w\": torch.zeros(100000)})\n"
              "except Exception as e: print(type(e).__name__, e); print(sorted(__import__(\"os\").listdir(sys.argv[2])))' "
              f"{mnt / 'run' / 'last.pt'} {mnt / 'run'}")
    proc = subprocess.run([*_unshare(), "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    first, files = proc.stdout.strip().splitlines()
    assert first.startswith(f"DiskFull {mnt / 'run'}: disk full: cannot write last.pt"), proc.stdout + proc.stderr
    assert files == "[]"                                               # no temp file left behind


# -- 22.6: epochs from 1 in every human view ------------------------------------------------------------
def test_epochs_read_the_same_in_status_runs_report_and_events(finished_db, tmp_path, capsys):
    db = tmp_path / "copy.db"
    shutil.copy(finished_db, db)
    # every checkpoint event names the epoch of its own step (the epoch-end one used to read one ahead)
    events = query(db, "SELECT e.step, e.epoch, s.epoch FROM events e JOIN steps s ON s.run_id = e.run_id"
                       " AND s.step = e.step WHERE e.kind = 'checkpoint'")
    assert events and all(ev == st for _, ev, st in events), events
    # a run that died in its second epoch: status, runs, compare and report all say 2/2
    conn = sqlite3.connect(db)
    conn.execute("UPDATE runs SET state = 'crashed', epoch = 1 WHERE id = 1")
    conn.execute("DELETE FROM epochs WHERE run_id = 1 AND epoch = 1")
    conn.commit()
    conn.close()
    _, status, _ = _call(["status", "1", "--db", str(db)], capsys)
    _, runs, _ = _call(["runs", "--db", str(db)], capsys)
    _, report, _ = _call(["report", "1", "--db", str(db)], capsys)
    _, raw, _ = _call(["status", "1", "--db", str(db), "--json"], capsys)
    assert "epoch 2/2," in status
    assert runs.splitlines()[0].split()[4] == "epoch" and runs.splitlines()[-1].split()[4] == "2/2", runs
    assert "epoch 2/2 (1 finished)" in report.splitlines()[0], report.splitlines()[0]
    assert json.loads(raw)["epoch"] == 1                                 # JSON keeps the stored 0-based


# -- 22.8 and 22.9 ------------------------------------------------------------------------------------
def test_tui_takes_db_like_every_other_command(tmp_path, capsys):
    code, _, err = _call(["tui", "--db", str(tmp_path / "none.db")], capsys)
    assert code == 1 and "none.db: no such database" in err and "unrecognized" not in err, err


def test_a_path_on_the_command_line_is_relative_to_where_it_is_typed(tmp_path, monkeypatch):
    from lvmd.config import load_config

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "run.toml").write_text('[data]\ntrain = "in-conf/train.npz"\n')
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    cfg = load_config(conf / "run.toml", ["data.val=mine/val.npz", "out_dir=out"])
    assert cfg.data.train == str(conf / "in-conf" / "train.npz")           # a file's path: to the file
    assert cfg.data.val == str(here / "mine" / "val.npz")                  # a typed path: to here
    assert cfg.out_dir == str(here / "out")


def test_errors_say_the_next_step(finished_db, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LVMD_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = _call(["status"], capsys)
    assert code == 1 and "lvmd.db: no such database" in err and "--db FILE" in err and "LVMD_DB" in err, err
    code, _, err = _call(["status", "ti", "--db", str(finished_db)], capsys)
    assert code == 1 and "did you mean 'tiny'?" in err, err              # a prefix
    code, _, err = _call(["status", "tnyi", "--db", str(finished_db)], capsys)
    assert code == 1 and "did you mean 'tiny'?" in err, err              # a close match (difflib)
    code, _, err = _call(["status", "42", "--db", str(finished_db)], capsys)
    assert code == 1 and "no run 42 in this database (its only run is 1)" in err, err
    db = tmp_path / "stopped.db"
    shutil.copy(finished_db, db)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE runs SET state = 'stopped', step = 17 WHERE id = 1")
    conn.commit()
    conn.close()
    for verb in ("pause", "eval-now", "checkpoint"):
        code, _, err = _call([verb, "1", "--db", str(db)], capsys)
        assert code == 1 and "run 1 is stopped; it takes no commands; `lvmd resume 1` continues it" in err, err
    code, _, err = _call(["stop", "1", "--db", str(db)], capsys)
    assert code == 1 and "run 1 is already stopped (at step 17); `lvmd resume 1`" in err, err


def test_a_second_stop_says_the_run_is_already_stopping_and_waits(tmp_path, capsys):
    """The run's 'daemon' is a short `sleep` this test starts (so nothing else can be signalled):
    a second stop says the first is under way, waits for the end and reports it."""
    db = tmp_path / "x.db"
    victim = subprocess.Popen(["sleep", "1"])
    try:
        conn = connect(db)
        run = create_run(conn, name="r", preset="v2.1", compat="none", config={}, data={}, state="stopping")
        update_run(conn, run, pid=victim.pid, step=42, heartbeat_at=time.time())
        conn.close()
        code, out, err = _call(["stop", str(run), "--grace", "30", "--db", str(db)], capsys)
    finally:
        victim.wait(timeout=30)
    assert code == 0 and f"run {run} is already stopping" in err and "--force` kills it now" in err, err
    assert out.startswith(f"run {run} crashed at step 42"), out          # it died without recording it


def test_sweep_seeds_reads_a_count_a_list_and_one_seed_alone_with_a_trailing_comma():
    from lvmd.cli.sweep import _seeds
    from lvmd.errors import UserError
    assert _seeds("3") == [0, 1, 2] and _seeds("0,5,9") == [0, 5, 9] and _seeds("7,") == [7]
    for bad in (",", "7,,", "2,2", "-1,", "x"):
        with pytest.raises(UserError, match="--seeds"):
            _seeds(bad)
