"""DbTail on a real database file: wake-ups, the data_version gate, views, deletions."""
from __future__ import annotations

import queue
import threading
import time

import pytest

from store.db import connect
from store.schema import STEP_METRICS
from conftest import new_run
from tui.tail import DbTail, TailUpdate, TailView


def rows(steps, epoch=0):
    return [(s, epoch, time.time(), 5e-4, *([0.5] * len(STEP_METRICS))) for s in steps]


@pytest.fixture()
def run_db(tmp_path):
    path = tmp_path / "lvmd.db"
    run_id, sink = new_run(path)
    sink.log_steps(rows(range(100)))
    sink.flush()
    yield path, run_id, sink
    sink.close()


@pytest.fixture()
def start_tail():
    started = []

    def start(path, view, fallback_s):
        got: queue.Queue = queue.Queue()
        tail = DbTail(path, got.put, view=view, fallback_s=fallback_s)
        thread = threading.Thread(target=tail.run, daemon=True)
        thread.start()
        started.append((tail, thread))
        return tail, got

    yield start
    for tail, thread in started:
        tail.stop()
        thread.join(5)


def next_update(got: queue.Queue, timeout: float = 20.0) -> TailUpdate:
    update = got.get(timeout=timeout)
    assert isinstance(update, TailUpdate), update
    return update


def test_a_commit_wakes_the_tail_through_the_wal_file(run_db, start_tail):
    path, run_id, sink = run_db
    tail, got = start_tail(path, TailView(run_id=run_id, target_bins=32), fallback_s=60.0)  # no timer help
    assert next_update(got).run.series.last_step == 99
    t0 = time.monotonic()
    sink.log_steps(rows([100]))
    sink.flush()
    update = next_update(got, timeout=10.0)
    assert update.run.series.last_step == 100 and update.run.latest["step"] == 100
    assert time.monotonic() - t0 < 10.0 and tail.wal_events >= 1  # the -wal wake, not the 60 s timer


def test_an_idle_database_is_not_read_again_and_the_tail_does_not_wake_itself(run_db, start_tail):
    """Its own reads must not touch -wal (a connection per wake-up would, forever)."""
    path, run_id, sink = run_db
    tail, got = start_tail(path, TailView(run_id=run_id, target_bins=32), fallback_s=0.1)
    next_update(got)
    time.sleep(0.5)  # let the watcher settle after the first read
    polls, wal_events = tail.polls, tail.wal_events
    time.sleep(1.5)  # ~15 fallback wake-ups
    assert got.empty() and tail.polls == polls and tail.wal_events == wal_events


def test_view_changes_answer_at_once_and_replay_cuts_at_the_epoch(run_db, start_tail):
    path, run_id, sink = run_db
    sink.log_steps(rows(range(100, 200), epoch=1))
    sink.epoch({"epoch": 0, "step": 99, "t": time.time()})
    sink.event("skip", step=150, epoch=1)
    sink.flush()
    tail, got = start_tail(path, TailView(target_bins=32), fallback_s=60.0)
    first = next_update(got)
    assert first.run is None and [r.id for r in first.runs] == [run_id]
    tail.set_view(TailView(run_id=run_id, replay_epoch=0, target_bins=32))
    replay = next_update(got, timeout=10.0).run
    assert replay.step_limit == 99 and replay.series.last_step == 99 and replay.latest["step"] == 99
    assert replay.events == () and replay.last_epoch == 0
    tail.set_view(TailView(run_id=run_id, target_bins=32))
    live = next_update(got, timeout=10.0).run
    assert live.step_limit is None and live.series.last_step == 199 and [e["step"] for e in live.events] == [150]


def test_events_deleted_by_a_resume_disappear(run_db, start_tail):
    path, run_id, sink = run_db
    for s in (10, 60, 90):
        sink.event("skip", step=s, epoch=0)
    sink.flush()
    tail, got = start_tail(path, TailView(run_id=run_id, target_bins=32), fallback_s=0.2)
    assert [e["step"] for e in next_update(got).run.events] == [10, 60, 90]
    from store.runs import truncate_after

    conn = connect(path)
    truncate_after(conn, run_id, 50, 0)
    conn.close()
    update = next_update(got)
    assert [e["step"] for e in update.run.events] == [10] and update.run.series.last_step == 50
