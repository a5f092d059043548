"""A data file's sha256 is kept in the database with its stat and hashed again only when the
stat changes (or the record is racy); --verify-data hashes every file whatever the record says."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import TINY_MODEL, data_overrides, lvmd, query, wait_for
from lvmd.data import hashes, mapped
from lvmd.data.formats import file_sha256
from store.db import connect

LONG = [*TINY_MODEL, "train.batch_size=2", "train.epochs=1000", "train.max_steps=100000", "eval.fivecat_every=0"]
AN_HOUR_AGO = time.time_ns() - 3600 * 10**9


def age(path: Path, ns: int = AN_HOUR_AGO) -> None:
    os.utime(path, ns=(ns, ns))


def flip_a_byte(path: Path) -> None:
    """Same size, other bytes, the mtime put back as it was: the lowest bit of the first float of
    the NPZ's targets (a valid file still), or of the file's first byte."""
    st = os.stat(path)
    try:
        at = mapped.map_member(path, "target_vectors").offset
    except Exception:
        at = 0
    with open(path, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def hashed(monkeypatch):
    """The paths data_sha256 actually reads (file_sha256 calls)."""
    calls: list[str] = []
    monkeypatch.setattr(hashes, "file_sha256", lambda p: calls.append(p) or file_sha256(p))
    return calls


def test_a_file_is_hashed_again_only_when_its_stat_changes(tmp_path, hashed):
    conn = connect(tmp_path / "h.db")
    f = tmp_path / "x.npz"
    f.write_bytes(os.urandom(1 << 16))
    age(f)
    first = hashes.data_sha256(f, conn)
    assert first == file_sha256(f) and hashes.data_sha256(f, conn) == first and len(hashed) == 1
    flip_a_byte(f)                  # same size and mtime: the ctime moved, so the record no longer holds
    assert os.stat(f).st_mtime_ns == AN_HOUR_AGO
    edited = hashes.data_sha256(f, conn)
    assert edited != first and edited == file_sha256(f) and len(hashed) == 2
    with open(f, "ab") as fh:       # another size
        fh.write(b"x")
    age(f)
    assert hashes.data_sha256(f, conn) == file_sha256(f) and len(hashed) == 3
    assert hashes.data_sha256(f, conn, verify=True) == file_sha256(f) and len(hashed) == 4   # verify: always
    assert hashes.data_sha256(f, conn) == file_sha256(f) and len(hashed) == 4
    moved = tmp_path / "y.npz"      # another inode at the same path
    shutil.copy2(f, moved)
    os.replace(moved, f)
    hashes.data_sha256(f, conn)
    assert len(hashed) == 5
    conn.close()


def test_a_file_written_moments_before_it_was_hashed_is_hashed_again(tmp_path, hashed):
    """git's racy-stat rule: a write in the same clock tick after the read would leave the stat
    as recorded, so a record whose mtime is not clearly older than its hashing proves nothing."""
    conn = connect(tmp_path / "h.db")
    f = tmp_path / "x.npz"
    f.write_bytes(b"a" * 4096)                             # mtime: now
    hashes.data_sha256(f, conn)
    hashes.data_sha256(f, conn)
    assert len(hashed) == 2
    rec = conn.execute("SELECT mtime_ns, hashed_ns FROM data_hashes").fetchone()
    assert rec[0] >= rec[1] - hashes.RACY_NS
    age(f)                                                 # older now: hashed once more, then trusted
    hashes.data_sha256(f, conn)
    hashes.data_sha256(f, conn)
    assert len(hashed) == 3
    conn.close()


def test_resume_trusts_an_unchanged_stat_and_verify_data_reads_the_bytes(db, tiny_data, tmp_path):
    local = tmp_path / "data"
    shutil.copytree(tiny_data, local)
    for f in local.iterdir():
        age(f)
    val = str((local / "val.npz").resolve())
    lvmd("start", *data_overrides(local), *LONG, "--db", db, check=True)
    wait_for(lambda: query(db, "SELECT count(*) FROM steps")[0][0] > 5, 60, "some steps")
    lvmd("stop", "1", "--db", db, check=True)
    recorded = dict(query(db, "SELECT path, sha256 FROM data_hashes"))
    assert recorded[val] == file_sha256(val)

    # an edit that puts the size and mtime back: its ctime gives it away without --verify-data
    flip_a_byte(local / "val.npz")
    proc = lvmd("resume", "1", "--db", db)
    assert proc.returncode != 0 and "data.val" in proc.stderr and "has changed" in proc.stderr, proc.stderr

    # a change no stat shows (bytes rotting on disk): the record of the old bytes, with today's stat
    st = os.stat(val)
    conn = connect(db)
    with conn:
        conn.execute("UPDATE data_hashes SET sha256 = ?, ctime_ns = ?, hashed_ns = ? WHERE path = ?",
                     (recorded[val], st.st_ctime_ns, time.time_ns(), val))
    conn.close()
    before = dict(query(db, "SELECT path, hashed_ns FROM data_hashes"))
    out = lvmd("resume", "1", "--db", db, check=True).stdout       # trusts the stat: nothing re-hashed
    assert out.startswith("run 1 resumed")
    lvmd("stop", "1", "--db", db, check=True)
    assert dict(query(db, "SELECT path, hashed_ns FROM data_hashes")) == before
    proc = lvmd("resume", "1", "--verify-data", "--db", db)          # reads every byte: refused
    assert proc.returncode != 0 and "data.val" in proc.stderr and "has changed" in proc.stderr, proc.stderr
    assert query(db, "SELECT state FROM runs")[0][0] == "stopped"
