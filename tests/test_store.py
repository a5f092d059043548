import os
import sqlite3
import time

import pytest

from store.db import StoreError, connect
from store.runs import create_run, get_run, resolve_run, truncate_after, UnknownRun
from store.schema import MIGRATIONS, STEP_COLUMNS
from store.writer import SqliteSink


def _row(step, epoch=0):
    return (step, epoch, time.time(), 1e-3) + tuple(float(i) for i in range(len(STEP_COLUMNS) - 5))


def test_new_db_is_owner_only_wal_and_migrated(tmp_path):
    conn = connect(tmp_path / "x.db")
    assert oct(os.stat(tmp_path / "x.db").st_mode & 0o777) == "0o600"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    connect(tmp_path / "x.db").close()     # re-opening applies nothing twice


def test_readonly_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(StoreError, match="no such database"):
        connect(tmp_path / "none.db", readonly=True)
    sqlite3.connect(tmp_path / "other.db").execute("create table t(x)").connection.commit()
    with pytest.raises(StoreError, match="not an lvmd database"):
        connect(tmp_path / "other.db", readonly=True)
    (tmp_path / "junk.db").write_bytes(b"x" * 4096)
    with pytest.raises(StoreError, match="not an lvmd database"):
        connect(tmp_path / "junk.db")


def test_writer_batches_and_reader_sees_commits(tmp_path):
    db = tmp_path / "x.db"
    conn = connect(db)
    run = create_run(conn, name="a", preset="v2.1", compat="none", config={}, data={})
    sink = SqliteSink(db, run, flush_seconds=0.2)
    reader = connect(db, readonly=True)
    sink.log_steps([_row(i) for i in range(1, 501)])
    sink.event("skip", step=3, epoch=0, detail={"pos": -0.1})
    deadline = time.time() + 5
    while reader.execute("SELECT count(*) FROM steps").fetchone()[0] < 500 and time.time() < deadline:
        time.sleep(0.02)
    assert reader.execute("SELECT count(*) FROM steps").fetchone()[0] == 500   # committed without flush()
    sink.log_steps([_row(5)])                                                   # duplicate step
    with pytest.raises(RuntimeError, match="UNIQUE"):
        sink.flush()
    # a lost batch breaks the sink for good (issue 20.9): later writes and close() say so, in any thread
    with pytest.raises(RuntimeError, match="UNIQUE"):
        sink.log_steps([_row(501)])
    with pytest.raises(RuntimeError, match="UNIQUE"):
        sink.close()
    assert reader.execute("SELECT max(step) FROM steps").fetchone()[0] == 500    # nothing landed after it
    assert reader.execute("SELECT count(*) FROM events WHERE kind='skip'").fetchone()[0] == 1
    assert reader.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_resolve_and_truncate(tmp_path):
    conn = connect(tmp_path / "x.db")
    a = create_run(conn, name="same", preset="v2.1", compat="none", config={}, data={})
    create_run(conn, name="same", preset="v2.1", compat="none", config={}, data={})
    assert resolve_run(conn, str(a))["id"] == a and resolve_run(conn, None)["id"] == a + 1
    with pytest.raises(UnknownRun, match="ambiguous"):
        resolve_run(conn, "same")
    with pytest.raises(UnknownRun, match="no run 99"):
        get_run(conn, 99)
    sink = SqliteSink(tmp_path / "x.db", a)
    sink.log_steps([_row(i, epoch=i // 10) for i in range(1, 31)])
    sink.event("skip", step=25)
    sink.event("state", step=26, detail={"state": "crashed"})
    sink.close()
    removed = truncate_after(conn, a, 20, 2)
    assert removed["steps"] == 10 and removed["events"] == 1
    assert conn.execute("SELECT max(step) FROM steps WHERE run_id=?", (a,)).fetchone()[0] == 20
    assert conn.execute("SELECT count(*) FROM events WHERE kind='state'").fetchone()[0] == 1
