"""A silent run's state on screen comes from its own folder's daemon lock: two databases whose runs
share an id (every database starts at run 1) never lend each other their answer."""
from __future__ import annotations

import fcntl
import os
import time

from store.runs import DAEMON_LOCK
from tui.liveness import Liveness
from tui.widgets.status import run_state_text


def _silent_run(folder, now: float) -> dict:
    folder.mkdir()
    (folder / DAEMON_LOCK).write_text("")
    return {"id": 1, "state": "running", "heartbeat_at": now - 600, "out_dir": str(folder), "host": None}


def test_two_databases_run_1_each_get_their_own_lock_probe(tmp_path):
    now = time.time()
    held, free = _silent_run(tmp_path / "a-run1", now), _silent_run(tmp_path / "b-run1", now)
    fd = os.open(os.path.join(held["out_dir"], DAEMON_LOCK), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)            # a daemon holds a's run 1; nothing holds b's run 1
    try:
        probes = Liveness()                       # one app's: its runs list and run screen share it
        first, second = run_state_text(held, now, probes).plain, run_state_text(free, now, probes).plain
        again = run_state_text(held, now, probes).plain
    finally:
        os.close(fd)
    assert first.startswith("running? not responding for") and again == first
    assert second.startswith("running? silent"), second
