"""The command queue and the run-state functions the CLI, TUI and daemon share (store only)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from lvmd.run.daemon import PID_FILE, RunLock, process_start_time
from lvmd.errors import UserError
from store import commands
from store.db import connect
from store.runs import (DAEMON_LOCK, create_run, daemon_alive, get_run, lock_held, mark_stale_crashed, pid_alive,
                        record_state, step_rate, truncate_after, update_run)
from store.schema import STEP_COLUMNS


@pytest.fixture
def conn(tmp_path):
    conn = connect(tmp_path / "x.db")
    yield conn
    conn.close()


def new_run(conn, tmp_path, **fields) -> int:
    run_id = create_run(conn, name="r", preset="v2.1", compat="none", config={}, data={})
    update_run(conn, run_id, out_dir=str(tmp_path / f"run{run_id}"), **fields)
    return run_id


def events(conn, run_id, kind="state") -> list[dict]:
    return [json.loads(r[0]) for r in conn.execute(
        "SELECT detail FROM events WHERE run_id = ? AND kind = ? ORDER BY id", (run_id, kind))]


def test_enqueue_refuses_unknown_verbs_unknown_runs_and_ended_runs(conn, tmp_path):
    run_id = new_run(conn, tmp_path, state="running")
    with pytest.raises(commands.CommandError, match="unknown command 'frobnicate'; choose one of pause"):
        commands.enqueue(conn, run_id, "frobnicate")
    with pytest.raises(commands.CommandError, match="no run 99"):
        commands.enqueue(conn, 99, "pause")
    update_run(conn, run_id, state="finished")
    with pytest.raises(commands.CommandError, match="run 1 is finished; it takes no commands"):
        commands.enqueue(conn, run_id, "pause")


def test_claim_next_acks_the_oldest_pending_command_once(conn, tmp_path):
    run_id = new_run(conn, tmp_path, state="running")
    other = new_run(conn, tmp_path, state="running")
    assert not commands.has_pending(conn, run_id) and commands.claim_next(conn, run_id, 1) is None
    first = commands.enqueue(conn, run_id, "pause")
    second = commands.enqueue(conn, run_id, "resume")
    commands.enqueue(conn, other, "stop")
    assert commands.has_pending(conn, run_id)
    taken = commands.claim_next(conn, run_id, 123)
    assert (taken["id"], taken["verb"], taken["state"], taken["acked_step"]) == (first, "pause", "acked", 123)
    assert commands.claim_next(conn, run_id, 124)["id"] == second
    assert commands.claim_next(conn, run_id, 125) is None and not commands.has_pending(conn, run_id)
    row = commands.get(conn, first)
    assert row["state"] == "acked" and row["acked_step"] == 123 and row["acked_at"] >= row["issued_at"]
    commands.complete(conn, first, ok=True, result={"step": 123})
    commands.complete(conn, second, ok=False, result={"error": "not paused"})
    assert commands.get(conn, first)["state"] == "done" and json.loads(commands.get(conn, first)["result"]) == {"step": 123}
    assert commands.get(conn, second)["state"] == "failed"
    assert commands.has_pending(conn, other)          # another run's commands are not touched


def test_record_state_moves_only_from_expected_states_and_fails_open_commands(conn, tmp_path):
    run_id = new_run(conn, tmp_path, state="paused", step=40, epoch=2)
    cid = commands.enqueue(conn, run_id, "resume")
    assert not record_state(conn, run_id, "stopped", expect=("running",))
    assert get_run(conn, run_id)["state"] == "paused"
    assert record_state(conn, run_id, "stopped", {"forced": True})
    run = get_run(conn, run_id)
    assert run["state"] == "stopped" and run["ended_at"] is not None
    assert events(conn, run_id) == [{"state": "stopped", "previous": "paused", "forced": True}]
    assert conn.execute("SELECT step FROM events WHERE run_id = ?", (run_id,)).fetchone()[0] == 40
    assert commands.get(conn, cid)["state"] == "failed"
    with pytest.raises(ValueError, match="not one of"):
        record_state(conn, run_id, "exploded")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pid_alive_sees_zombies_as_gone():
    assert pid_alive(os.getpid()) and not pid_alive(0) and not pid_alive(None)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while time.time() < deadline and open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.02)
    assert not pid_alive(zombie.pid)         # exited, not yet reaped
    zombie.wait()
    assert not pid_alive(zombie.pid)


def test_mark_stale_crashed_needs_a_gone_process_and_a_stale_heartbeat(conn, tmp_path):
    now = time.time()
    gone = dead_pid()
    crashed = new_run(conn, tmp_path, state="running", pid=gone, heartbeat_at=now - 30)
    fresh = new_run(conn, tmp_path, state="running", pid=gone, heartbeat_at=now - 2)
    alive = new_run(conn, tmp_path, state="paused", pid=os.getpid(), heartbeat_at=now - 30)
    elsewhere = new_run(conn, tmp_path, state="running", pid=gone, heartbeat_at=now - 30, host="another-host")
    ended = new_run(conn, tmp_path, state="stopped", pid=gone, heartbeat_at=now - 30)
    cid = commands.enqueue(conn, crashed, "pause")
    assert mark_stale_crashed(conn, now=now) == [crashed]
    assert [get_run(conn, r)["state"] for r in (crashed, fresh, alive, elsewhere, ended)] == \
        ["crashed", "running", "paused", "running", "stopped"]
    (evidence,) = events(conn, crashed)
    assert evidence["state"] == "crashed" and evidence["previous"] == "running" and evidence["pid"] == gone
    assert evidence["heartbeat_age_s"] == pytest.approx(30, abs=1) and "is gone" in evidence["reason"]
    assert commands.get(conn, cid)["state"] == "failed"
    assert mark_stale_crashed(conn, now=now) == []                       # once only
    assert mark_stale_crashed(conn, now=now + 60) == [fresh]             # its heartbeat has aged too


def test_the_lock_decides_liveness_once_a_daemon_has_taken_it(conn, tmp_path):
    run_id = new_run(conn, tmp_path, state="running", pid=os.getpid())
    run = get_run(conn, run_id)
    assert daemon_alive(run)                                 # no lock file yet: the pid decides
    lock = RunLock(run)
    lock.acquire()
    assert (tmp_path / "run1" / PID_FILE).read_text().split() == [str(os.getpid()), process_start_time(os.getpid())]
    assert lock_held(tmp_path / "run1" / DAEMON_LOCK) and daemon_alive(run)
    with pytest.raises(UserError, match=rf"run 1 already has a daemon \(pid {os.getpid()}\)"):
        RunLock(run).acquire()
    lock.release()
    assert not (tmp_path / "run1" / PID_FILE).exists()
    assert not lock_held(tmp_path / "run1" / DAEMON_LOCK)
    assert not daemon_alive(run)                             # lock free: gone, whatever the pid says
    assert daemon_alive({**run, "host": socket.gethostname() + "-other"})   # other hosts: cannot tell


def test_pidfile_is_removed_only_by_its_writer(conn, tmp_path):
    run = get_run(conn, new_run(conn, tmp_path, state="running"))
    lock = RunLock(run)
    lock.acquire()
    (tmp_path / "run1" / PID_FILE).write_text("999999\n")    # someone else's pidfile now
    lock.release()
    assert (tmp_path / "run1" / PID_FILE).read_text() == "999999\n"
    assert oct((tmp_path / "run1" / DAEMON_LOCK).stat().st_mode & 0o777) == "0o600"


def test_truncate_after_joins_an_open_transaction(conn, tmp_path):
    run_id = new_run(conn, tmp_path, state="running")
    marks = ", ".join("?" * len(STEP_COLUMNS))
    conn.executemany(f"INSERT INTO steps ({', '.join(STEP_COLUMNS)}) VALUES ({marks})",
                     [(run_id, s, 0, 100.0 + s, 1e-3, *[0.0] * (len(STEP_COLUMNS) - 5)) for s in range(1, 11)])
    assert step_rate(conn, run_id) == pytest.approx(1.0)
    conn.execute("BEGIN IMMEDIATE")
    removed = truncate_after(conn, run_id, 6, 0)
    assert conn.in_transaction                               # the caller's transaction is still open
    conn.execute("ROLLBACK")
    assert removed["steps"] == 4
    assert conn.execute("SELECT count(*) FROM steps").fetchone()[0] == 10
    assert truncate_after(conn, run_id, 6, 0)["steps"] == 4 and not conn.in_transaction
