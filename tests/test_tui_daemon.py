"""The TUI end to end against a real daemon: a detached `lvmd start` run on a tiny model, the
Textual app under App.run_test() on its database; `p` pauses it (the daemon acks, the TUI says
paused, the steps stop), `r` resumes it (the steps grow again), then `lvmd stop` ends it."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import time

import pytest

from conftest import TINY_MODEL, data_overrides, lvmd, query
from store.runs import pid_alive
from tui.app import LvmdTui
from tui.run_screen import RunScreen
from tui.widgets.status import StatusBar

pytestmark = pytest.mark.anyio

# Epochs that outlast the test; max_steps ends a daemon that somehow escaped the cleanup.
RUN = [*TINY_MODEL, "train.batch_size=16", "train.epochs=200", "train.max_steps=40000",
       "eval.fivecat_every=0", "eval.max_samples=200", "eval.check_samples=100",
       "watch.action=warn"]          # the tiny model trips collapse warnings: only the TUI may pause it
TIMEOUT = 20.0


def max_step(db, run_id: int) -> int:
    return query(db, "SELECT COALESCE(max(step), 0) FROM steps WHERE run_id = ?", run_id)[0][0]


def run_state(db, run_id: int) -> str:
    return query(db, "SELECT state FROM runs WHERE id = ?", run_id)[0][0]


def command(db, run_id: int, verb: str) -> dict | None:
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM commands WHERE run_id = ? AND verb = ? ORDER BY id DESC LIMIT 1",
                           (run_id, verb)).fetchone()
        return dict(row) if row else None
    finally:
        conn.close()


async def wait_for(pilot, predicate, what: str, timeout: float = TIMEOUT):
    """Poll `predicate` while the app keeps running; its first truthy value, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pilot.pause(0.1)


def status_lines(screen: RunScreen) -> list[str]:
    return screen.query_one(StatusBar).render().plain.splitlines()


def tui_step(screen: RunScreen) -> int:
    """The step the run screen shows in its status line (`… · 1,234/40,000 steps`)."""
    return int(re.search(r" · ([\d,]+)(?:/[\d,]+)?(?: steps)?(?: · |$)", status_lines(screen)[0])[1].replace(",", ""))


async def test_tui_pauses_and_resumes_a_real_daemon(tiny_data, tmp_path):
    db = str(tmp_path / "t.db")
    try:
        proc = lvmd("start", *data_overrides(tiny_data), *RUN, "--db", db, check=True)
        match = re.fullmatch(r"run (\d+) running \(pid (\d+)\); log .*daemon\.log\n", proc.stdout)
        assert match, proc.stdout
        run_id, pid = int(match[1]), int(match[2])
        app = LvmdTui(db, run_id=run_id)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.snapshot is not None,
                           "the run screen")
            screen = app.screen
            await wait_for(pilot, lambda: max_step(db, run_id) > 20 and tui_step(screen) > 20, "some training")
            assert " · running · " in status_lines(screen)[0]

            # pause: the TUI's command row is acked at a step, the TUI says so, the steps stop there
            await pilot.press("p")
            cmd = await wait_for(pilot, lambda: (c := command(db, run_id, "pause")) and c["state"] == "done" and c,
                                 "the daemon to ack and do the pause")
            paused_at = cmd["acked_step"]
            assert cmd["issued_by"] == "tui" and cmd["acked_at"] is not None and paused_at > 20
            await wait_for(pilot, lambda: screen.snapshot.run["state"] == "paused"
                           and f"paused at step {paused_at}" in status_lines(screen)[1], "the TUI to show paused")
            assert " · paused · " in status_lines(screen)[0]
            assert run_state(db, run_id) == "paused" and max_step(db, run_id) == paused_at
            await wait_for(pilot, lambda: tui_step(screen) == paused_at, "the TUI to show the paused step")
            frozen_until = time.monotonic() + 1.5               # a window to see that nothing moves
            while time.monotonic() < frozen_until:
                assert max_step(db, run_id) == paused_at, "steps kept coming while paused"
                await pilot.pause(0.1)
            assert tui_step(screen) == paused_at and " · paused · " in status_lines(screen)[0]

            # resume: acked, running again, the steps grow in the database and on screen
            await pilot.press("r")
            cmd = await wait_for(pilot, lambda: (c := command(db, run_id, "resume")) and c["state"] == "done" and c,
                                 "the daemon to resume")
            assert cmd["issued_by"] == "tui" and cmd["acked_step"] == paused_at
            await wait_for(pilot, lambda: max_step(db, run_id) > paused_at + 10, "steps after the resume")
            await wait_for(pilot, lambda: screen.snapshot.run["state"] == "running" and tui_step(screen) > paused_at
                           and f"resumed at step {paused_at}" in status_lines(screen)[1], "the TUI to show it running")

            # run_test's teardown prunes the screens while the app still handles messages, and the
            # live daemon commits several times a second: stop the tail and drain what it posted
            # first, or a late TailUpdate redraws a RunScreen whose widgets are already gone
            tail = next(w for w in app.workers if w.name == "db-tail")
            app.tail.stop()
            await tail.wait()
            await pilot.pause()

        out = lvmd("stop", str(run_id), "--grace", "10", "--db", db, timeout=30, check=True).stdout
        assert re.fullmatch(rf"run {run_id} stopped at step \d+; checkpoint .*last\.pt\n", out), out
        assert run_state(db, run_id) == "stopped" and not pid_alive(pid)
    finally:  # whatever failed, no daemon outlives the test (each killed by its own pid)
        if os.path.exists(db):
            for (daemon_pid,) in query(db, "SELECT pid FROM runs"):
                if pid_alive(daemon_pid) and daemon_pid != os.getpid():
                    os.kill(daemon_pid, signal.SIGKILL)


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"
