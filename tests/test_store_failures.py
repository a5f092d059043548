"""Issue 13, D H I J K L: the store under failure. A full disk never turns into "cannot rollback",
a failing writer call undoes only itself, the -wal stays small while readers come and go,
runs.step follows the step rows to the end, and the one guarded entry point turns any
unexpected exception into one line plus a saved traceback."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, TINY_MODEL, data_overrides, lvmd, new_run, query

from store import writer as writer_mod
from store.db import StoreError, connect
from store.runs import create_run, get_run, record_state, update_run


def _fill_to_the_brim(conn: sqlite3.Connection) -> None:
    """SQLite's own page limit: the next page it needs fails with SQLITE_FULL, as a full disk does."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")


# -- D: disk full ---------------------------------------------------------------------------------
def test_full_database_raises_the_real_error_not_cannot_rollback(tmp_path):
    conn = connect(tmp_path / "x.db")
    run_id = create_run(conn, name="r", preset="v2.1", compat="none", config={}, data={}, state="running")
    _fill_to_the_brim(conn)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        record_state(conn, run_id, "crashed", {"evidence": "x" * 20_000})
    assert not conn.in_transaction
    assert get_run(conn, run_id)["state"] == "running"     # nothing half-written
    from store.db import transaction

    with pytest.raises(sqlite3.OperationalError, match="full"):
        with transaction(conn):
            conn.execute("INSERT INTO events (run_id, t, kind, detail) VALUES (?, 0, 'x', ?)", (run_id, "y" * 20_000))
    conn.close()


def _unshare() -> list[str]:
    """A private mount namespace where a small tmpfs can be mounted (root, or a user namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    return ["unshare", "-rm"]


FULL_DISK = r'''
set -u
mount -t tmpfs -o size=600k tmpfs "$M"
"$PY" - "$M/x.db" <<'EOF'
import os, sys, time
from store.db import connect
from store.runs import create_run, update_run
c = connect(sys.argv[1])
rid = create_run(c, name="r", preset="v2.1", compat="none", config={}, data={}, state="running")
update_run(c, rid, pid=2**22 + 7, heartbeat_at=time.time() - 100)
os._exit(0)   # like a daemon that died: its -wal and -shm stay behind
EOF
dd if=/dev/zero of="$M/fill" bs=4k 2>/dev/null
for verb in "status" "status 1" "stop 1" "resume 1" "pause 1"; do
  echo "== $verb"; "$PY" -m lvmd $verb --db "$M/x.db" 2>&1; echo "rc=$?"
done
rm "$M/fill"
echo "== after"; "$PY" -m lvmd status 1 --db "$M/x.db" 2>&1; echo "rc=$?"
'''


def test_disk_full_status_stop_resume_are_one_line(tmp_path):
    """The disk fills under a run whose daemon died: status shows it crashed (it cannot write
    that yet), stop/resume/pause say "disk is full" in one line, and once there is room again
    the next look records the crash (issue 13 D)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run([*_unshare(), "sh", "-c", FULL_DISK], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "M": str(mnt), "PY": sys.executable,
                               "XDG_STATE_HOME": str(tmp_path / "state")})
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "cannot rollback" not in out, out
    parts = dict(p.split("\n", 1) for p in out.split("== ")[1:])
    assert "crashed" in parts["status"] and "rc=0" in parts["status"], out
    assert "not recorded" in parts["status 1"] and "full" in parts["status 1"], out
    for verb in ("stop 1", "resume 1", "pause 1"):
        lines = parts[verb].strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("lvmd: error:") and "disk is full" in lines[0], out
        assert lines[1] != "rc=0"
    assert "crashed" in parts["after"] and "not recorded" not in parts["after"], out


# -- L: a failing writer call undoes only itself -------------------------------------------------
def test_failing_call_keeps_the_step_rows_queued_with_it(tmp_path):
    db = tmp_path / "x.db"
    run_id, sink = new_run(db)
    sink.flush_seconds = 60.0          # everything below lands in ONE transaction
    sink.log_steps([(s, 0, 1000.0 + s, 1e-3, *[0.0] * 19) for s in range(1, 11)])
    sink.event("skip", step=3)

    def broken(conn):
        conn.execute("INSERT INTO events (run_id, t, kind) VALUES (?, 0, 'half')", (run_id,))
        raise ValueError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sink.call(broken)
    sink.log_steps([(11, 0, 1011.0, 1e-3, *[0.0] * 19)])
    sink.close()
    assert query(db, "SELECT count(*) FROM steps")[0][0] == 11
    assert [k for (k,) in query(db, "SELECT kind FROM events ORDER BY id")] == ["skip"]   # not 'half'


def test_a_lost_batch_breaks_the_sink_for_every_thread(tmp_path):
    """Issue 20.9: a commit that fails (here a duplicate step; on a full disk SQLITE_FULL) used to
    be raised once, in whichever thread called next. During a 5CAT that is the heartbeat thread,
    which died of it, and the training loop wrote on with a hole in its telemetry. Now the sink
    stays broken: every later call raises, and nothing queued after the lost batch lands."""
    db = tmp_path / "x.db"
    run_id, sink = new_run(db)
    row = (lambda s: (s, 0, 1000.0 + s, 1e-3, *[0.0] * 19))
    sink.log_steps([row(s) for s in range(1, 6)])
    sink.flush()
    sink.log_steps([row(5)])                                     # the batch that cannot land
    seen: list[str] = []

    def heartbeat_thread():
        try:
            sink.flush()
        except RuntimeError as exc:
            seen.append(str(exc))

    beat = threading.Thread(target=heartbeat_thread)
    beat.start()
    beat.join(timeout=30)
    assert seen and "UNIQUE" in seen[0]
    with pytest.raises(RuntimeError, match="telemetry write failed"):   # the loop sees it too
        sink.log_steps([row(6)])
    with pytest.raises(RuntimeError, match="telemetry write failed"):
        sink.close()
    assert query(db, "SELECT max(step) FROM steps") == [(5,)]


def test_run_step_follows_the_step_rows_when_the_run_fails(tmp_path):
    """A divergence is found in a telemetry block, between two heartbeats: finish still leaves
    runs.step at the last step row written (it stayed 0)."""
    from lvmd.run.runner import finish

    db = tmp_path / "x.db"
    run_id, sink = new_run(db)
    sink.log_steps([(s, 1, 1000.0 + s, 1e-3, *[0.0] * 19) for s in range(1, 8)])
    sink.close()
    finish(db, run_id, "failed", error="TrainingDiverged: non-finite mse at step 8")
    (step, epoch, state), = query(db, "SELECT step, epoch, state FROM runs")
    assert (step, epoch, state) == (7, 1, "failed")


def test_divergence_in_a_real_run_leaves_step_at_the_last_row(tiny_data, tmp_path):
    proc = lvmd("run", *data_overrides(tiny_data), *TINY_MODEL, "train.lr=1e6", "--quiet",
                "--db", str(tmp_path / "x.db"))
    assert proc.returncode == 1
    (step,), = query(tmp_path / "x.db", "SELECT step FROM runs")
    (last,), = query(tmp_path / "x.db", "SELECT COALESCE(MAX(step), 0) FROM steps")
    assert step == last


# -- K: the -wal stays small while readers keep arriving --------------------------------------
def test_wal_is_reset_while_readers_keep_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "CHECKPOINT_SECONDS", 0.05)
    monkeypatch.setattr(writer_mod, "TRUNCATE_BYTES", 256 * 1024)
    db = tmp_path / "x.db"
    run_id, sink = new_run(db)
    stop = threading.Event()

    def reader():
        conn = connect(db, readonly=True)
        while not stop.is_set():     # short read transactions, back to back, as a TUI tail does
            conn.execute("SELECT count(*), max(step) FROM steps").fetchall()
        conn.close()

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    wal = Path(f"{db}-wal")
    biggest = 0
    try:
        row = [0.0] * 19
        for block in range(200):      # ~8 MB of step rows through the real writer
            sink.log_steps([(block * 200 + i + 1, 0, 1.0, 1e-3, *row) for i in range(200)])
            sink.flush()
            biggest = max(biggest, wal.stat().st_size if wal.exists() else 0)
    finally:
        stop.set()
        for t in readers:
            t.join()
        sink.close()
    assert sink.truncations > 0
    assert biggest < 4 * 1024 * 1024, f"-wal grew to {biggest / 2**20:.1f} MB"
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


# -- H: the guarded entry point ------------------------------------------------------------------
def test_an_unexpected_error_is_one_line_and_a_saved_traceback(tmp_path, monkeypatch, capsys):
    from lvmd.cli import daemon as daemon_cli
    from lvmd.cli.main import main

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def broken(args):
        raise KeyError("a bug deep inside")

    monkeypatch.setattr(daemon_cli, "cmd_status", broken)
    connect(tmp_path / "x.db").close()
    assert main(["status", "--db", str(tmp_path / "x.db")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("lvmd: error: KeyError: 'a bug deep inside' [traceback in ")
    log = Path(err.split("traceback in ")[1].rstrip("]\n"))
    assert log.parent == tmp_path / "state" / "lvmd" / "errors"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "def broken" not in text and "a bug deep inside" in text
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_an_os_error_names_its_file(tmp_path, monkeypatch, capsys):
    from lvmd.cli import daemon as daemon_cli
    from lvmd.cli.main import main

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def broken(args):
        open(tmp_path / "nowhere" / "file.txt")

    monkeypatch.setattr(daemon_cli, "cmd_status", broken)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lvmd: error: {tmp_path / 'nowhere' / 'file.txt'}: No such file or directory")


# -- I: nothing half-written ---------------------------------------------------------------------
def test_export_refuses_to_overwrite_unless_forced(tmp_path):
    db = tmp_path / "x.db"
    run_id, sink = new_run(db)
    sink.log_steps([(1, 0, 1.0, 1e-3, *[0.0] * 19)])
    sink.close()
    out = tmp_path / "steps.csv"
    out.write_text("precious\n")
    proc = lvmd("export", str(run_id), "--table", "steps", "--out", str(out), "--db", str(db))
    assert proc.returncode == 1 and "--force" in proc.stderr and out.read_text() == "precious\n"
    lvmd("export", str(run_id), "--table", "steps", "--out", str(out), "--force", "--db", str(db), check=True)
    assert out.read_text().startswith("run_id,step")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_run_refused_before_its_row(tiny_data, tmp_path):
    """device and profile used to fail after the row and folder existed (a `failed` row)."""
    for bad in ("train.device=cuda", "eval.profile=nosuch"):
        proc = lvmd("run", *data_overrides(tiny_data, articles=True), *TINY_MODEL, bad, "--quiet",
                    "--db", str(tmp_path / "x.db"))
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == []


def test_import_lnsp_writes_nothing_before_refusing_a_pickle(tiny_data, tmp_path):
    import numpy as np

    seq = np.load(tiny_data / "val.npz")
    meta = np.array([{"article_index": 0, "target_chunk_index": 0}] * len(seq["target_vectors"]), dtype=object)
    np.savez(tmp_path / "p.npz", context_sequences=seq["context_sequences"], target_vectors=seq["target_vectors"],
             metadata=meta)
    proc = lvmd("data", "import-lnsp", "--articles", str(tiny_data / "articles.npz"),
                "--sequences", str(tiny_data / "train.npz"), "--sequences", str(tmp_path / "p.npz"),
                "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "allow-pickle" in proc.stderr
    assert not (tmp_path / "out").exists()


# -- J: readers need no write ----------------------------------------------------------------------
def test_reader_opens_a_wal_database_in_a_folder_it_cannot_write(tmp_path):
    """A database with no -shm in a read-only folder: mode=ro alone cannot open it (SQLite must
    make the -shm), so the reader falls back to immutable; the data is all in the file."""
    db = tmp_path / "ro" / "x.db"
    db.parent.mkdir()
    run_id, sink = new_run(db)
    sink.close()
    db.chmod(0o444)
    db.parent.chmod(0o555)
    try:
        if os.access(db.parent, os.W_OK):
            pytest.skip("running with the permission override (root): see test_bad_inputs' setpriv case")
        conn = connect(db, readonly=True)
        assert get_run(conn, run_id)["name"] == "r"
        conn.close()
        with pytest.raises(StoreError, match="read-only|readonly"):
            update_run(connect(db), run_id, name="x")
    finally:
        db.parent.chmod(0o755)



DAEMON_DISK_FULL = r"""
set -u
mount -t tmpfs -o size=3m tmpfs "$M"
"$PY" -X faulthandler -m lvmd run $OVERRIDES train.epochs=100000 --quiet --db "$M/x.db" > "$OUT/run.out" 2> "$OUT/run.err" &
RUN=$!
# every wait is bounded: the test can fail, never hang (issue 20.9)
i=0; until [ -s "$M/x.db-wal" ] && [ $i -gt 20 ]; do
  if [ $i -gt 480 ] || ! kill -0 $RUN 2>/dev/null; then echo "no-wal $i" > "$OUT/hung"; break; fi
  sleep 0.25; i=$((i+1)); done
dd if=/dev/zero of="$M/fill" bs=4k 2>/dev/null
i=0; while kill -0 $RUN 2>/dev/null && [ $i -lt 240 ]; do sleep 0.25; i=$((i+1)); done
if kill -0 $RUN 2>/dev/null; then   # still going 60 s after the disk filled: its stacks, then the end
  echo "alive 60 s after the disk filled" >> "$OUT/hung"; kill -ABRT $RUN; sleep 3; kill -KILL $RUN 2>/dev/null
fi
wait $RUN; echo "rc=$?" > "$OUT/run.rc"
sleep 11   # a dead run's heartbeat must be older than store.runs.STALE_SECONDS to read crashed
"$PY" -m lvmd status 1 --db "$M/x.db" > "$OUT/full.status" 2>&1
rm "$M/fill"
sleep 11
"$PY" -m lvmd status 1 --db "$M/x.db" > "$OUT/after.status" 2>&1
"$PY" -c 'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(c.execute("SELECT state FROM runs").fetchone()[0], c.execute("PRAGMA integrity_check").fetchone()[0])' "$M/x.db" > "$OUT/state"
"""


def test_daemon_dying_of_a_full_disk_is_marked_crashed(tiny_data, tmp_path):
    """The disk fills while a run trains: the run exits (non-zero, its error in one line) and
    its row never stays `running`: failed where the final state could still be written, else
    shown crashed to the next look and recorded so once there is room (issue 13 D)."""
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    overrides = " ".join([*data_overrides(tiny_data), *TINY_MODEL])
    proc = subprocess.run([*_unshare(), "sh", "-c", DAEMON_DISK_FULL], capture_output=True, text=True, timeout=290,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "M": str(mnt), "PY": sys.executable,
                               "OUT": str(out), "OVERRIDES": overrides, "XDG_STATE_HOME": str(tmp_path / "state")})
    assert proc.returncode == 0, proc.stderr
    err = (out / "run.err").read_text()
    assert not (out / "hung").exists(), (out / "hung").read_text() + err    # the stacks are in err
    assert (out / "run.rc").read_text().strip() != "rc=0", err
    assert "Traceback" not in err and "cannot rollback" not in err, err
    full_words = ("full", "No space left")      # the database or a checkpoint may hit it first
    assert any(w in err.strip().splitlines()[-1] for w in full_words), err
    # failed when the final write still found room in the -wal, else crashed by the heartbeat
    full, after = (out / "full.status").read_text(), (out / "after.status").read_text()
    assert any(f"): {s}" in full for s in ("failed", "crashed")) and any(w in full for w in full_words), full
    state, integrity = (out / "state").read_text().split()
    assert state in ("failed", "crashed") and f"): {state}" in after and integrity == "ok", after
