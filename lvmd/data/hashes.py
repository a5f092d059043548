"""The sha256 of a data file, hashed again only when the file has changed.

A run records the sha256 of every data file (its manifest) at create, and a resume checks them.
Hashing 10 GB takes tens of seconds, so each database keeps, per file (absolute path), the
sha256 with the file's stat when it was hashed (device, inode, size, mtime_ns, ctime_ns) and
the moment hashing began (store/data_hashes.py). A later start or resume re-hashes a file only
when its stat differs from the record, or when the record is racy (git's rule): a file whose
mtime is not clearly older than the moment hashing began may have been written in the same
clock tick after it was read, so its record proves nothing and it is hashed again.

ctime is in the stat as git has it: a tool that restores the mtime after an edit (touch -d,
rsync -t, os.utime) cannot restore the ctime, so the edit is still seen. What no stat can see
(bytes rotting on disk, a block-level restore) is what `verify=True` (--verify-data) is for: it
hashes every file whatever the record says.

Why the record lives in the database and not in a sidecar file: the hash answers "is this the
file run N trained on", so it belongs with the runs that rely on it and travels with the
database (lvmd backup); SQLite serialises the sweep members that start together, where a sidecar
would need its own locking; and nothing is written beside the data (often read-only or shared)
or in a per-user folder that a cluster shares between hosts whose (device, inode) differ. The
cost: a new database hashes each file once.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from lvmd.data.formats import DataError, file_sha256
from store.data_hashes import STAT_FIELDS, cached_hash, record_hash

# File timestamps come from a coarse clock (a scheduler tick; 2 s on FAT) that can lag the fine
# clock read when hashing began: a record is trusted only for a file older than this margin.
RACY_NS = 2_000_000_000
TRIES = 3                   # a file that keeps changing while it is hashed is an error


def file_stat(path: str | Path) -> dict[str, int]:
    st = os.stat(path)
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def trusted(record: dict | None, stat: dict[str, int]) -> bool:
    """The record still tells the file's sha256: same stat, and not racy."""
    return (record is not None and all(record[f] == stat[f] for f in STAT_FIELDS)
            and stat["mtime_ns"] < record["hashed_ns"] - RACY_NS)


def data_sha256(path: str | Path, conn: sqlite3.Connection, *, verify: bool = False) -> str:
    """The file's sha256: from the database's record when its stat says it has not changed
    (and verify is off), else hashed now and recorded. OSError if it cannot be read."""
    path = str(Path(path).resolve())
    stat = file_stat(path)
    if not verify:
        record = cached_hash(conn, path)
        if trusted(record, stat):
            return record["sha256"]
    for _ in range(TRIES):
        began = time.time_ns()
        sha = file_sha256(path)
        after = file_stat(path)
        if after == stat:
            record_hash(conn, path, stat, sha, began)
            return sha
        stat = after
    raise DataError(f"{path}: it changed while it was being hashed ({TRIES} tries); "
                    "wait until whatever writes it has finished")
