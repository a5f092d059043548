"""DaemonControl in-process against a real SQLite file: throttled claims, acks at a step, pause
holding and waking on the -wal file, evaluating heartbeats, signal flags."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lvmd.run.daemon import CHECK_SECONDS, PAUSED_WAKE_SECONDS, DaemonControl
from store import commands
from store.db import connect
from store.runs import create_run, get_run
from store.writer import SqliteSink


@pytest.fixture
def setup(tmp_path):
    db = tmp_path / "x.db"
    cli = connect(db)                     # plays the CLI / TUI side
    run_id = create_run(cli, name="r", preset="v2.1", compat="none", config={}, data={}, state="running")
    sink = SqliteSink(db, run_id, flush_seconds=0.1)
    control = DaemonControl(sink, db, run_id, install_signals=False)
    control.beat(1, 0)
    yield cli, run_id, sink, control
    control.close()
    sink.close()
    cli.close()


def states(cli, run_id) -> list[str]:
    return [json.loads(r[0])["state"] for r in cli.execute(
        "SELECT detail FROM events WHERE run_id = ? AND kind = 'state' ORDER BY id", (run_id,))]


def test_claims_are_throttled_and_acked_at_the_step(setup):
    cli, run_id, sink, control = setup
    assert control.poll(1, 0) == []                  # looked now; the next look is CHECK_SECONDS away
    cid = commands.enqueue(cli, run_id, "checkpoint")
    assert control.poll(2, 0) == []                  # not yet: no query per step
    time.sleep(CHECK_SECONDS + 0.05)
    (req,) = control.poll(7, 0)
    assert req.action == "checkpoint" and req.trigger == "command"
    assert commands.get(cli, cid)["state"] == "acked" and commands.get(cli, cid)["acked_step"] == 7
    req.done({"path": "last.pt", "step": 7})
    row = commands.get(cli, cid)
    assert row["state"] == "done" and json.loads(row["result"])["path"] == "last.pt"
    kinds = [json.loads(r[0])["state"] for r in cli.execute("SELECT detail FROM events WHERE kind = 'command'")]
    assert kinds == ["acked", "done"]


def test_pause_holds_the_loop_sleeps_on_the_wal_and_wakes_for_resume(setup):
    cli, run_id, sink, control = setup
    commands.enqueue(cli, run_id, "pause")
    time.sleep(CHECK_SECONDS + 0.05)
    (req,) = control.poll(10, 0)
    assert req.action == "pause" and not control.paused
    req.done({"step": 10})                            # the trainer flushed: now it holds
    assert control.paused and get_run(cli, run_id)["state"] == "paused"
    sink.flush()
    time.sleep(0.3)                                   # let the wal settle
    started = time.monotonic()
    assert control.poll(10, 0) == []                  # nothing asked: one sleep, bounded by the wake timer
    assert time.monotonic() - started <= PAUSED_WAKE_SECONDS + 5.0  # the timer, not a hang; slack for load
    cid = commands.enqueue(cli, run_id, "resume")
    started = time.monotonic()
    while control.paused and time.monotonic() - started < 5:
        control.poll(10, 0)
    assert not control.paused and get_run(cli, run_id)["state"] == "running"
    assert json.loads(commands.get(cli, cid)["result"]) == {"step": 10, "was_paused": True}
    assert states(cli, run_id) == ["paused", "running"]


def test_a_pause_and_a_resume_queued_together_are_done_in_order(setup):
    cli, run_id, sink, control = setup
    pause = commands.enqueue(cli, run_id, "pause")
    resume = commands.enqueue(cli, run_id, "resume")
    time.sleep(CHECK_SECONDS + 0.05)
    (req,) = control.poll(3, 0)
    req.done({"step": 3})
    assert control.paused
    assert control.poll(3, 0) == [] and not control.paused          # the resume, at once
    assert json.loads(commands.get(cli, resume)["result"])["was_paused"]
    assert commands.get(cli, pause)["state"] == "done"


def test_unknown_verbs_written_by_hand_fail(setup):
    cli, run_id, sink, control = setup
    cli.execute("INSERT INTO commands (run_id, verb, issued_at, state) VALUES (?, 'frobnicate', ?, 'pending')",
                (run_id, time.time()))
    assert control.poll(3, 0) == []
    row = cli.execute("SELECT state, result FROM commands").fetchone()
    assert row["state"] == "failed" and "unknown command 'frobnicate'" in row["result"]


def test_evaluating_is_a_state_with_its_own_heartbeat(setup):
    cli, run_id, sink, control = setup
    control.set_state("running")
    sink.flush()
    before = get_run(cli, run_id)["heartbeat_at"]
    with control.evaluating():
        time.sleep(1.4)                               # the loop is busy: a thread beats meanwhile
        sink.flush()
        assert get_run(cli, run_id)["state"] == "evaluating"
        assert get_run(cli, run_id)["heartbeat_at"] > before + 0.9
    sink.flush()
    assert get_run(cli, run_id)["state"] == "running"
    assert states(cli, run_id) == ["running", "evaluating", "running"]


def test_signal_flags_become_one_stop_and_a_second_sigint_means_now(setup):
    cli, run_id, sink, control = setup
    control._on_interrupt(None, None)
    (stop,) = control.poll(4, 0)
    assert stop.action == "stop" and not control.stop_now
    control._on_interrupt(None, None)
    assert control.stop_now and control.poll(5, 0) == []       # one stop only
    control._on_usr1(None, None)
    assert [r.action for r in control.poll(6, 0)] == ["eval"]
    sink.flush()
    assert get_run(cli, run_id)["state"] == "stopping"


def test_the_cli_side_of_the_daemon_loads_no_torch():
    code = ("import argparse, sys, lvmd.cli.daemon, lvmd.run.daemon\n"
            "lvmd.cli.daemon.register(argparse.ArgumentParser().add_subparsers())\n"
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
