"""The one place lvmd sends a signal to a process (DESIGN rule 11): `lvmd stop`'s SIGTERM after
the grace, `lvmd stop --force`'s SIGKILL, and anything later that must reach a run's daemon.

A pid read from the database is data, never authority: it is signalled only when
  1. the run's folder has a run.json naming this database id and this run,
  2. the folder's pidfile names that pid with the process start time it has now, and
  3. the run's lock (an flock on <out_dir>/daemon.lock) is held by that very pid,
which a reused pid, a forged row, a copied folder or a forged pidfile cannot all fake. Otherwise
nothing is sent and the caller gets the reason. On Linux the process is pinned by a pidfd before
it is checked, so it cannot die and be replaced between the proof and the signal.
Stdlib only (and lvmd.run.runlock for the folder's files)."""
from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from lvmd.run.runlock import read_owner, read_pidfile, process_start_time
from store.runs import DAEMON_LOCK

PROC_LOCKS = "/proc/locks"


def send_signal(run: dict, sig: int, *, db_id: str | None) -> str | None:
    """Send `sig` to run's daemon if it proves to be one (see the module); None when sent, else
    why nothing was sent (one clause, for a line like `pid 123 not signalled: ...`)."""
    pid = run.get("pid")
    if not isinstance(pid, int) or pid <= 1:
        return f"the run row names no usable pid ({pid!r})"
    pidfd = _pidfd(pid)
    if pidfd == -1:
        return f"pid {pid} is gone"
    try:
        why = not_our_daemon(run, db_id=db_id)
        if why is not None:
            return why
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:                            # no pidfd here: the proof and the kill are microseconds apart
                os.kill(pid, sig)
        except ProcessLookupError:
            return f"pid {pid} is gone"
        return None
    finally:
        if pidfd not in (None, -1):
            os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    """A pidfd pinning `pid` (-1: no such process; None: this system has no pidfds)."""
    if not hasattr(os, "pidfd_open") or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return -1
    except OSError:                          # ENOSYS, EPERM in some sandboxes: prove by /proc only
        return None


def not_our_daemon(run: dict, *, db_id: str | None) -> str | None:
    """Why the run's pid must not be signalled (None when it is the run's daemon)."""
    pid, run_id = run.get("pid"), run.get("id")
    if run.get("host") and run["host"] != socket.gethostname():
        return f"the run is on host {run['host']}, not this one"
    if not run.get("out_dir"):
        return "the run has no folder to prove its daemon by"
    folder = Path(run["out_dir"])
    owner = read_owner(folder)
    if owner is None:
        return f"{folder} has no run.json"
    if (owner.get("db_id"), owner.get("run_id")) != (db_id, run_id):
        return (f"{folder}/run.json names run {owner.get('run_id')} of database {str(owner.get('db_id'))[:12]}, "
                f"not run {run_id} of this database ({str(db_id)[:12]})")
    file_pid, started = read_pidfile(folder)
    if file_pid != pid:
        return f"its pidfile names {file_pid or 'no process'}, not pid {pid}"
    now = process_start_time(pid)
    if started is None or now is None:
        return f"pid {pid}'s start time cannot be checked"
    if now != started:
        return f"pid {pid} is another process now (started at {now}, not {started})"
    holders = lock_holders(folder / DAEMON_LOCK)
    if holders is None:
        return f"who holds {folder / DAEMON_LOCK} cannot be read here ({PROC_LOCKS})"
    if pid not in holders:
        held = ", ".join(map(str, sorted(holders))) or "nobody"
        return f"its run lock is held by {held}, not pid {pid}"
    return None


def lock_holders(path: str | Path) -> set[int] | None:
    """The pids holding an flock on `path`, from /proc/locks (granted locks only; a waiter's
    line starts with '->'). None where /proc/locks cannot be read; an empty set when the file
    does not exist or nobody holds it. The lock is an flock, which F_GETLK does not see."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return set()
    except OSError:
        return None
    try:
        with open(PROC_LOCKS) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    holders = set()
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or parts[1] != "FLOCK":
            continue
        try:
            pid = int(parts[4])
            major, minor, inode = parts[5].split(":")
            same = (int(major, 16), int(minor, 16), int(inode)) == (os.major(st.st_dev), os.minor(st.st_dev),
                                                                     st.st_ino)
        except ValueError:
            continue
        if same and pid > 0:
            holders.add(pid)
    return holders
