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
from store.runs import DAEMON_LOCK, lock_held

PID_FILE = "daemon.pid"
OWNER_FILE = "run.json"     # which database and run own a run folder


# -- one daemon per run ----------------------------------------------------------------------
class RunLock:
    """An flock on <out_dir>/daemon.lock held for the daemon's whole life, and a pidfile beside
    it. The kernel releases the flock when the process dies, so a lock left by a killed daemon
    is simply free again; the lock file itself is never removed (that would race). The pidfile
    is removed only by the process that wrote it (DESIGN rule 5); it names the pid and the
    process's start time, so `lvmd stop --force` can tell our daemon from a recycled pid.

    `owner` ({db, db_id, run_id}) is written to <out_dir>/run.json under the lock: a folder
    that another database's run (or another run) has claimed is refused, never shared."""

    def __init__(self, run: dict, owner: dict | None = None):
        self.run_id = run["id"]
        self.out_dir = Path(run["out_dir"])
        self.owner = owner
        self.fd: int | None = None

    def acquire(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.out_dir / DAEMON_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
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
                self._claim_folder()
        except BaseException:
            os.close(fd)
            self.fd = None
            raise
        _write_private(self.out_dir / PID_FILE, f"{os.getpid()} {process_start_time(os.getpid()) or ''}\n")

    def _claim_folder(self) -> None:
        path = self.out_dir / OWNER_FILE
        try:
            mine = json.loads(path.read_text())
        except FileNotFoundError:
            mine = None
        except (OSError, ValueError):
            mine = {}
        if mine is not None:
            same_run = (mine.get("db_id"), mine.get("run_id")) == (self.owner["db_id"], self.owner["run_id"])
            other_db = mine.get("db") and mine["db"] != self.owner["db"] and Path(mine["db"]).exists()
            if not same_run or other_db:
                raise UserError(f"{self.out_dir}: this folder belongs to run {mine.get('run_id')} of "
                                f"{mine.get('db') or 'another database'}; run {self.run_id} of {self.owner['db']} "
                                "will not share it (give it its own out_dir)")
        if mine != self.owner:               # new, or the database file moved
            _write_private(path, json.dumps(self.owner, sort_keys=True) + "\n")

    def release(self) -> None:
        if self.fd is None:
            return
        if read_pidfile(self.out_dir)[0] == os.getpid():
            (self.out_dir / PID_FILE).unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
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


def not_our_daemon(run: dict) -> str | None:
    """Why the run's pid must not be signalled (None when it is its daemon): the pid must be
    the one in the run folder's pidfile, started at the time written there, and the folder's
    lock must be held. A pidfile without a start time (an older lvmd) needs an lvmd cmdline."""
    pid = run["pid"]
    file_pid, started = read_pidfile(run["out_dir"]) if run.get("out_dir") else (None, None)
    if file_pid != pid:
        return f"its pidfile names {file_pid or 'no process'}, not pid {pid}"
    if not lock_held(Path(run["out_dir"]) / DAEMON_LOCK):
        return "no process holds its run lock"
    now = process_start_time(pid)
    if started is not None and now != started:
        return f"pid {pid} is another process now (started at {now}, not {started})"
    if started is None:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return f"pid {pid} cannot be checked"
        if not any(b"lvmd" in part for part in cmdline):
            return f"pid {pid} is not an lvmd process"
    return None
