"""Rows of the `runs` table: create, read, state changes, crash detection. Plain functions over
a connection."""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import os
import socket
import sqlite3
import time
from typing import Any, Callable, Sequence

from store.commands import fail_open
from store.db import StoreError, connect, transaction
from store.schema import RUN_STATES, TERMINAL_STATES

LIVE_STATES = tuple(s for s in RUN_STATES if s not in TERMINAL_STATES)
# A live run whose process is gone is called crashed only once its heartbeat is this old: the
# daemon beats every <= 2 s, and the margin covers the moment between `lvmd start` creating the
# row and the daemon recording its own pid.
STALE_SECONDS = 10.0
# The flock a run's daemon holds for its whole life, in the run's folder (lvmd.run.daemon.RunLock).
DAEMON_LOCK = "daemon.lock"


class UnknownRun(LookupError):
    pass


def create_run(conn: sqlite3.Connection, *, name: str, preset: str, compat: str,
               config: dict, data: dict, out_dir: str = "", total_epochs: int = 0,
               total_steps: int = 0, lvmd_version: str = "", state: str = "starting") -> int:
    now = time.time()
    cur = conn.execute(
        "INSERT INTO runs (name, preset, compat, state, config_json, data_json, out_dir, host, pid,"
        " created_at, updated_at, heartbeat_at, epoch, step, total_epochs, total_steps, lvmd_version)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,0,?,?,?)",
        (name, preset, compat, state, json.dumps(config, sort_keys=True), json.dumps(data, sort_keys=True),
         out_dir, socket.gethostname(), os.getpid(), now, now, now, total_epochs, total_steps, lvmd_version),
    )
    return int(cur.lastrowid)


def database_id(conn: sqlite3.Connection) -> str | None:
    """The database's own random id (migration 8); None on a file opened read-only before it."""
    try:
        row = conn.execute("SELECT value FROM db_properties WHERE key = 'db_id'").fetchone()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


def update_run(conn: sqlite3.Connection, run_id: int, **fields: Any) -> None:
    if "state" in fields and fields["state"] not in RUN_STATES:
        raise ValueError(f"runs.state: {fields['state']!r} is not one of {', '.join(RUN_STATES)}")
    fields.setdefault("updated_at", time.time())
    cols = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), run_id))


def get_run(conn: sqlite3.Connection, run_id: int) -> dict:
    row = None if not 0 < run_id <= MAX_ID else conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise UnknownRun(f"no run {run_id} in this database{_id_hint(conn)}")
    return dict(row)


MAX_ID = 2**63 - 1          # SQLite's INTEGER: a larger id is no run, never an OverflowError


def _id_hint(conn: sqlite3.Connection) -> str:
    lo, hi, n = conn.execute("SELECT MIN(id), MAX(id), COUNT(*) FROM runs").fetchone()
    if not n:
        return " (it has no runs yet)"
    return f" (its only run is {lo})" if n == 1 else f" (it has {n} runs, ids {lo}–{hi}; `lvmd runs` lists them)"


def _name_hint(conn: sqlite3.Connection, text: str) -> str:
    """Names that start with `text`, else the close ones (difflib), as a 'did you mean'."""
    names = [r[0] for r in conn.execute("SELECT DISTINCT name FROM runs ORDER BY id DESC LIMIT 10000")]
    found = [n for n in names if n.startswith(text)][:3] or difflib.get_close_matches(text, names, n=3, cutoff=0.6)
    if not found:
        return f"{_id_hint(conn)}"
    return "; did you mean " + " or ".join(repr(n) for n in found) + "?"


def list_runs(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY id")]


def resolve_run(conn: sqlite3.Connection, ref: str | int | None) -> dict:
    """A run by id, by unique name, or (ref None) the newest run."""
    if ref is None:
        row = conn.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise UnknownRun("no runs in this database yet")
        return dict(row)
    text = str(ref)
    if text.isascii() and text.isdigit():
        return get_run(conn, int(text))
    rows = conn.execute("SELECT * FROM runs WHERE name = ? ORDER BY id", (text,)).fetchall()
    if not rows:
        raise UnknownRun(f"no run named {text!r} in this database{_name_hint(conn, text)}")
    if len(rows) > 1:
        ids = ", ".join(str(r["id"]) for r in rows)
        raise UnknownRun(f"run name {text!r} is ambiguous (ids {ids}); use the id")
    return dict(rows[0])


def truncate_after(conn: sqlite3.Connection, run_id: int, step: int, epoch: int) -> dict[str, int]:
    """Before a resume from a checkpoint at (step, epoch): remove what the dead process wrote
    after it, so the resumed run continues with no gap and no duplicate rows. State and
    crash events stay (they are history); step-derived rows go. Runs in the caller's
    transaction when one is open (the daemon's writer thread), else in its own."""
    if conn.in_transaction:
        return _truncate(conn, run_id, step, epoch)
    with transaction(conn):
        return _truncate(conn, run_id, step, epoch)


def _truncate(conn: sqlite3.Connection, run_id: int, step: int, epoch: int) -> dict[str, int]:
    removed = {
        "steps": conn.execute("DELETE FROM steps WHERE run_id = ? AND step > ?", (run_id, step)).rowcount,
        "events": conn.execute("DELETE FROM events WHERE run_id = ? AND step > ? AND kind IN "
                               "('skip', 'attenuate', 'checkpoint', 'collapse_warning')",
                               (run_id, step)).rowcount,
        "epochs": conn.execute("DELETE FROM epochs WHERE run_id = ? AND epoch >= ?", (run_id, epoch)).rowcount,
    }
    evals = [r[0] for r in conn.execute("SELECT id FROM evals WHERE run_id = ? AND step > ?", (run_id, step))]
    for table in ("gates", "eval_metrics"):
        conn.executemany(f"DELETE FROM {table} WHERE eval_id = ?", [(e,) for e in evals])
    conn.executemany("DELETE FROM evals WHERE id = ?", [(e,) for e in evals])
    removed["evals"] = len(evals)
    return removed


def sync_progress(conn: sqlite3.Connection, run_id: int) -> None:
    """runs.step/epoch from the newest step row when the heartbeat never recorded it (a run that
    failed between two beats, e.g. on a divergence found in a telemetry block)."""
    row = conn.execute("SELECT step, epoch FROM steps WHERE run_id = ? ORDER BY step DESC LIMIT 1",
                       (run_id,)).fetchone()
    if row is not None:
        conn.execute("UPDATE runs SET step = ?, epoch = ? WHERE id = ? AND COALESCE(step, 0) < ?",
                     (row["step"], row["epoch"], run_id, row["step"]))


def insert_event(conn: sqlite3.Connection, run_id: int, kind: str, detail: dict | None = None, *,
                 step: int | None = None, epoch: int | None = None) -> None:
    conn.execute("INSERT INTO events (run_id, step, epoch, t, kind, detail) VALUES (?,?,?,?,?,?)",
                 (run_id, step, epoch, time.time(), kind,
                  json.dumps(detail, sort_keys=True, default=str) if detail else None))


# -- state changes made from outside the daemon (CLI, TUI) -----------------------------------
def record_state(conn: sqlite3.Connection, run_id: int, state: str, detail: dict | None = None, *,
                 expect: tuple[str, ...] = LIVE_STATES, **fields: Any) -> bool:
    """Move a run to `state` if it is still in one of `expect`, with its 'state' event; a
    final state also fails the commands it will never do. False if the run had moved on."""
    if state not in RUN_STATES:
        raise ValueError(f"runs.state: {state!r} is not one of {', '.join(RUN_STATES)}")
    with contextlib.nullcontext() if conn.in_transaction else transaction(conn):
        row = conn.execute("SELECT state, step, epoch FROM runs WHERE id = ?", (run_id,)).fetchone()
        changed = row is not None and row["state"] in expect
        if changed:
            now = time.time()
            if state in TERMINAL_STATES:
                fields.setdefault("ended_at", now)
            update_run(conn, run_id, state=state, updated_at=now, **fields)
            insert_event(conn, run_id, "state", {"state": state, "previous": row["state"], **(detail or {})},
                         step=row["step"], epoch=row["epoch"])
            if state in TERMINAL_STATES:
                fail_open(conn, run_id, f"run {state}")
    return changed


RESUMABLE_STATES = ("stopped", "crashed")


def begin_resume(conn: sqlite3.Connection, run_id: int, *, pid: int) -> bool:
    """stopped | crashed → starting, before a resume spawns its daemon: from here on the run is
    live, so a `stop` typed while the daemon starts is queued and honoured by it at its first
    step boundary. `pid` is the process that waits for the daemon (it heartbeats the row, see
    beat_starting). False if the run was not resumable any more (another resume began)."""
    with contextlib.nullcontext() if conn.in_transaction else transaction(conn):
        row = conn.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None or row["state"] not in RESUMABLE_STATES:
            return False
        return record_state(conn, run_id, "starting", {"resume": True, "from": row["state"]},
                            expect=RESUMABLE_STATES, pid=pid, heartbeat_at=time.time(), ended_at=None)


def beat_starting(conn: sqlite3.Connection, run_id: int, pid: int) -> None:
    """The heartbeat of a run whose resume is starting, from the process `pid` that waits for
    its daemon (only while the row still names that process: the daemon takes over)."""
    conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND state = 'starting' AND pid = ?",
                 (time.time(), run_id, pid))


def end_failed_resume(conn: sqlite3.Connection, run_id: int, error: str, *, if_starting: bool = False) -> None:
    """A resume that failed before its daemon trained: the run goes back to the state it had
    (stopped or crashed; crashed if that is not known) with an 'error' event and the row's
    error, so it can be resumed once the cause is fixed; commands queued meanwhile fail with
    it. A stopped or crashed run only gets the error (nothing at all with `if_starting`: the
    daemon has said it already)."""
    first = error.strip().splitlines()[0] if error.strip() else "resume failed"
    with contextlib.nullcontext() if conn.in_transaction else transaction(conn):
        row = conn.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return
        if row["state"] == "starting":
            back = "crashed"
            # the state the resume began from: its begin_resume event, past the daemon's own `starting`
            for (text,) in conn.execute("SELECT detail FROM events WHERE run_id = ? AND kind = 'state' "
                                        "ORDER BY id DESC LIMIT 4", (run_id,)).fetchall():
                try:
                    began = json.loads(text) if text else {}
                except ValueError:
                    break
                if began.get("state") != "starting":
                    break
                if began.get("resume"):
                    back = began.get("from") if began.get("from") in RESUMABLE_STATES else back
                    break
            record_state(conn, run_id, back, {"reason": "the resume failed", "error": first},
                         expect=("starting",), error=first)
        elif row["state"] not in RESUMABLE_STATES or if_starting:
            return
        insert_event(conn, run_id, "error", {"error": error, "during": "resume"})
        update_run(conn, run_id, error=first)


def pid_alive(pid: int | None) -> bool:
    """Is process `pid` running on this host? A zombie (dead, not yet reaped) counts as gone."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                      # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True                      # no /proc here: trust kill(0)
    return state not in (b"Z", b"X")


def lock_held(path: str | os.PathLike) -> bool:
    """Does some process hold the flock on `path`? (A missing file is not held.)"""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)                      # drops the probe's own shared lock


def daemon_alive(run: dict) -> bool:
    """Is the run's process still there? Runs of other hosts are assumed alive. Once a daemon
    has taken its run's lock, the lock is the answer (the kernel drops it when the process dies,
    and a recycled pid cannot fake it); before that, the pid in the row is."""
    if run.get("host") and run["host"] != socket.gethostname():
        return True
    lock = os.path.join(run["out_dir"], DAEMON_LOCK) if run.get("out_dir") else None
    if lock and os.path.exists(lock):
        return lock_held(lock)
    return pid_alive(run["pid"])


def stale_runs(conn: sqlite3.Connection, *, now: float | None = None,
               is_alive: Callable[[dict], bool] = daemon_alive,
               stale_after: float = STALE_SECONDS) -> list[tuple[dict, dict]]:
    """Every live run of this host whose process is gone and whose heartbeat is older than
    `stale_after` s, with the evidence: (run, evidence). Reads only."""
    now = time.time() if now is None else now
    marks = ", ".join("?" * len(LIVE_STATES))
    rows = conn.execute(f"SELECT * FROM runs WHERE state IN ({marks}) AND host = ? AND "
                        "COALESCE(heartbeat_at, 0) < ?",
                        (*LIVE_STATES, socket.gethostname(), now - stale_after)).fetchall()
    out = []
    for run in [dict(r) for r in rows]:
        if is_alive(run):
            continue
        age = now - (run["heartbeat_at"] or 0)
        out.append((run, {"reason": f"process {run['pid']} is gone and the heartbeat is {age:.0f} s old",
                          "pid": run["pid"], "heartbeat_age_s": round(age, 1)}))
    return out


def mark_stale_crashed(conn: sqlite3.Connection, *, now: float | None = None,
                       is_alive: Callable[[dict], bool] = daemon_alive,
                       stale_after: float = STALE_SECONDS) -> list[int]:
    """Mark `crashed` every stale run (stale_runs); each gets a 'state' event with the
    evidence. Whichever lvmd command (or the TUI) looks first does it. Returns the ids it marked."""
    crashed = []
    for run, evidence in stale_runs(conn, now=now, is_alive=is_alive, stale_after=stale_after):
        if record_state(conn, run["id"], "crashed", evidence, expect=(run["state"],),
                        error=f"crashed: {evidence['reason']}"):
            crashed.append(run["id"])
    return crashed


def look_readonly(path) -> tuple[sqlite3.Connection, dict[int, dict]]:
    """What `lvmd status` opens: a read-only connection (a database we may only read works),
    after marking stale runs crashed where that can be written. The second value holds the
    evidence, by run id, for runs that could not be (a full disk, a read-only file), so they
    can be shown crashed anyway (shown_crashed)."""
    conn = connect(path, readonly=True)
    stale = stale_runs(conn)
    if not stale:
        return conn, {}
    try:
        writer = connect(path)
        try:
            mark_stale_crashed(writer)
        finally:
            writer.close()
    except (StoreError, sqlite3.Error) as exc:
        why = str(exc).removeprefix(f"{path}: ")
        return conn, {run["id"]: {**evidence, "not_recorded": why} for run, evidence in stale}
    return conn, {}


def shown_crashed(run: dict, evidence: dict | None) -> dict:
    """A run whose daemon is gone, shown crashed even where that could not be written."""
    if evidence is None:
        return run
    return {**run, "state": "crashed",
            "error": f"crashed: {evidence['reason']} (not recorded: {evidence['not_recorded']})"}


# -- what `lvmd status` shows --------------------------------------------------------------
def step_rate(conn: sqlite3.Connection, run_id: int, *, last: int = 200) -> float | None:
    """Steps per second of training over the run's newest `last` step rows (None with fewer
    than two): time spent paused, stopped or evaluating does not count (active_rate)."""
    rows = conn.execute("SELECT step, t FROM steps WHERE run_id = ? ORDER BY step DESC LIMIT ?",
                        (run_id, last)).fetchall()
    return active_rate([(r["step"], r["t"]) for r in rows])


GAP_FACTOR = 5.0  # a step that took this many times the median step time was a pause, a stop or an eval


def active_rate(rows: Sequence[tuple[int, float]]) -> float | None:
    """Steps per second from (step, t) rows (any order), leaving out the gaps between
    consecutive rows that took over GAP_FACTOR × the median time per step: a pause, an eval
    at epoch end, or a stop and resume are no training time. A run that really slowed down
    keeps its slower steps (they are counted once they are the median)."""
    rows = sorted(rows)
    pairs = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(rows, rows[1:]) if b[0] > a[0]]
    if not pairs:
        return None
    per_step = sorted(max(dt, 0.0) / ds for ds, dt in pairs)
    limit = GAP_FACTOR * per_step[len(per_step) // 2]
    kept = [(ds, dt) for ds, dt in pairs if dt <= limit * ds]
    steps, seconds = sum(ds for ds, _ in kept), sum(dt for _, dt in kept)
    return steps / seconds if seconds > 0 else None
