"""`lvmd start` says "running" only for a daemon that lives: one that reaches `running` and
dies at its first step (a kernel this CPU lacks) is reported as the failure it is."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from lvmd.errors import UserError
from lvmd.run.daemon import Spawned, wait_started
from store.db import connect
from store.runs import create_run

# A real process that plays a daemon: it records itself running, then fails its first step.
DIES_AFTER_RUNNING = """
import os, sys, time
from store.db import connect
from store.runs import record_state, update_run
conn = connect(sys.argv[1])
update_run(conn, 1, pid=os.getpid())
record_state(conn, 1, "running", expect=("starting",))
time.sleep(0.3)
record_state(conn, 1, "failed", {"error": "RuntimeError: could not create a primitive"},
             error="RuntimeError: could not create a primitive")
sys.exit(1)
"""

LIVES = """
import os, sys, time
from store.db import connect
from store.runs import record_state, update_run
conn = connect(sys.argv[1])
update_run(conn, 1, pid=os.getpid())
record_state(conn, 1, "running", expect=("starting",))
time.sleep(30)
"""


def _spawn(tmp_path, code: str) -> tuple:
    db = tmp_path / "x.db"
    conn = connect(db)
    create_run(conn, name="r", preset="v2.1", compat="none", config={}, data={})
    conn.close()
    log = tmp_path / "daemon.log"
    log.write_text("")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], cwd=str(tmp_path.parent),
                            env={"PYTHONPATH": str(ROOT)})
    return db, Spawned(proc, log, 0)


def test_a_daemon_that_dies_right_after_running_is_reported_as_failed(tmp_path):
    db, spawned = _spawn(tmp_path, DIES_AFTER_RUNNING)
    with pytest.raises(UserError, match="run 1 did not start: RuntimeError: could not create a primitive"):
        wait_started(db, 1, spawned, timeout=60)
    spawned.proc.wait(10)


def test_a_daemon_that_lives_is_reported_running(tmp_path):
    db, spawned = _spawn(tmp_path, LIVES)
    try:
        assert wait_started(db, 1, spawned, timeout=60)["state"] == "running"
        assert spawned.proc.poll() is None
    finally:
        spawned.proc.kill()
        spawned.proc.wait(10)
