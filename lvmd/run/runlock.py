"""One daemon per run: the flock on <out_dir>/daemon.lock, the pidfile beside it (pid and
process start time, so a recycled pid is never taken for our daemon) and run.json, which
database and run own the folder. Stdlib and store only."""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from lvmd.errors import UserError
from store.runs import DAEMON_LOCK

PID_FILE = "daemon.pid"
OWNER_FILE = "run.json"     # which database and run own a run folder


# -- one daemon per run ----------------------------------------------------------------------
class RunLock:
    """An flock on <out_dir>/daemon.lock held for the daemon's whole life, and a pidfile beside
    it. The kernel releases the flock when the process dies, so a lock left by a killed daemon
    is simply free again; the lock file itself is never removed (that would race). The pidfile
    is removed only by the process that wrote it (DESIGN rule 5); it names the pid and the
    process's start time, so a recycled pid is never taken for our daemon (lvmd.run.signals).

    `owner` ({db, db_id, run_id}): the folder must prove it is this run's (folder_refusal)
    BEFORE anything is written into it, the lock file included; under the lock it is checked
    again and run.json written if the folder is new. `adopt` is the user's --adopt-folder,
    typed now: a folder without run.json (an older lvmd's) is taken as this run's."""

    def __init__(self, run: dict, owner: dict | None = None, *, adopt: bool = False):
        self.run_id = run["id"]
        self.out_dir = Path(run["out_dir"])
        self.owner = owner
        self.adopt = adopt
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.owner is not None:
            refuse(folder_refusal(self.out_dir, self.owner, adopt=self.adopt))
        self.out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.out_dir / DAEMON_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        for attempt in range(5):           # a status probe holds a shared lock for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            os.close(fd)
            holder = read_pidfile(self.out_dir)[0]
            raise UserError(f"run {self.run_id} already has a daemon"
                            f"{f' (pid {holder})' if holder else ''}; `lvmd stop {self.run_id}` stops it")
        self.fd = fd
        try:
            if self.owner is not None:
                # again under the lock (lock files aside, the folder may have changed since)
                refuse(folder_refusal(self.out_dir, self.owner, adopt=self.adopt, lock_made=True))
                claim_folder(self.out_dir, self.owner)
        except BaseException:
            os.close(fd)
            self.fd = None
            raise
        _write_private(self.out_dir / PID_FILE, f"{os.getpid()} {process_start_time(os.getpid()) or ''}\n")

    def release(self) -> None:
        if self.fd is None:
            return
        if read_pidfile(self.out_dir)[0] == os.getpid():
            (self.out_dir / PID_FILE).unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def refuse(why: str | None) -> None:
    if why is not None:
        raise UserError(why)


def read_owner(out_dir: str | Path) -> dict | None:
    """run.json of a run folder: {db, db_id, run_id}; None when there is none, {} when it is
    not readable as one."""
    try:
        owner = json.loads((Path(out_dir) / OWNER_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def folder_refusal(out_dir: Path, owner: dict, *, adopt: bool = False, lock_made: bool = False) -> str | None:
    """Why run owner['run_id'] of database owner['db'] must not use `out_dir` (None: it may).
    A folder is this run's when its run.json names this database id and run (and no other live
    copy of the database: a copied file keeps the id); a folder that does not exist yet, or is
    empty, becomes this run's. Anything else is refused, and nothing is written into it."""
    run = f"run {owner['run_id']} of {owner['db']}"
    mine = read_owner(out_dir)
    if mine is None:
        if not out_dir.exists():
            return None
        if not out_dir.is_dir():
            return f"{out_dir}: not a directory; {run} needs a folder of its own"
        lvmd_own = {DAEMON_LOCK, PID_FILE} if lock_made else set()
        if not [p for p in out_dir.iterdir() if p.name not in lvmd_own] or adopt:
            return None
        return (f"{out_dir}: has no run.json naming {run} (a folder lvmd did not make for it, or an older "
                f"lvmd's); nothing was written into it. If it is this run's folder, `lvmd resume "
                f"{owner['run_id']} --adopt-folder` uses it")
    same_run = (mine.get("db_id"), mine.get("run_id")) == (owner["db_id"], owner["run_id"])
    # the same id in another live file: a copy of the database (cp, a restored backup), which must
    # not share its runs' folders; a file there with another id (or none) means the database moved
    other_db = mine.get("db") and mine["db"] != owner["db"] and not _same_file(mine["db"], owner["db"]) \
        and _db_id_at(mine["db"]) == owner["db_id"]
    if not same_run or other_db:
        return (f"{out_dir}: this folder belongs to run {mine.get('run_id')} of "
                f"{mine.get('db') or 'another database'} (database id {str(mine.get('db_id'))[:12]}); {run} "
                f"(database id {str(owner['db_id'])[:12]}) will not share it (give it its own out_dir)")
    return None


def claim_folder(out_dir: Path, owner: dict) -> None:
    """Write run.json (owner-only) when the folder is new or its database file moved."""
    if read_owner(out_dir) != owner:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(out_dir / OWNER_FILE, json.dumps(owner, sort_keys=True) + "\n")


def _db_id_at(path: str) -> str | None:
    """The database id of the lvmd database at `path` (None: none there, or not readable)."""
    from store.db import StoreError, connect
    from store.runs import database_id

    if not Path(path).is_file():
        return None
    try:
        conn = connect(path, readonly=True)
    except (StoreError, OSError):
        return None
    try:
        return database_id(conn)
    except Exception:
        return None
    finally:
        conn.close()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_pidfile(out_dir: str | Path) -> tuple[int | None, str | None]:
    """(pid, start time) from a run folder's pidfile; (None, None) when there is none."""
    try:
        fields = (Path(out_dir) / PID_FILE).read_text().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None, None


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid, names one process
    for the life of the machine. None where there is no /proc or no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None
