"""The process side of a run: one daemon per run (flock + pidfile), the command-claiming
control, and starting a detached daemon.

`serve` trains one run row in this process; `lvmd run`, `lvmd serve` (what `lvmd start` and
`lvmd resume` spawn) and `lvmd resume --foreground` all go through it, so the TUI and the CLI
can pause, evaluate and stop a foreground run as well. Importing this module loads no torch.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from lvmd.config import RunConfig, config_from_dict
from lvmd.data.train_data import load_train_data
from lvmd.train.control import HEARTBEAT_SECONDS, Control, Request, ignore
from lvmd.errors import UserError
from lvmd.run.identity import checked_checkpoint, run_identity
from lvmd.run.runlock import OWNER_FILE, PID_FILE, RunLock, process_start_time, read_pidfile  # noqa: F401 (re-exported)
from lvmd.run.sysmon import SystemSampler
from store import commands
from store.db import connect, park
from store.runs import (DAEMON_LOCK, LIVE_STATES, RESUMABLE_STATES, beat_starting, daemon_alive, database_id,
                        end_failed_resume, get_run, lock_held, record_state)

CHECK_SECONDS = 0.25        # while training, look for commands this often (one indexed read)
PAUSED_WAKE_SECONDS = 1.0   # while paused, wake at least this often (heartbeat, signal flags)
LOG_FILE = "daemon.log"
CHECKPOINT = "last.pt"


# -- the control the daemon trains under -----------------------------------------------------
class DaemonControl(Control):
    """Control plus the command queue. At step boundaries it looks for pending commands every
    CHECK_SECONDS (an index probe on its own read connection) and claims them through the
    sink's writer thread (one writer per process). While paused it holds the loop and sleeps on
    the database's -wal file, which every commit touches, waking at least every
    PAUSED_WAKE_SECONDS to heartbeat and to see signal flags. Every command is acked at a named
    step and completed done|failed, each with a 'command' event."""

    def __init__(self, sink, db: str | Path, run_id: int, *, install_signals: bool = True):
        super().__init__(sink, install_signals=install_signals)
        self.run_id = run_id
        self.wal = Path(f"{db}-wal")
        self.reader = connect(db, readonly=True)
        self._next_check = 0.0
        self._waker: Iterator | None = None
        self._evaluating = False

    def poll(self, step: int, epoch: int, *, hold: bool = True) -> list[Request]:
        if self.paused and hold:
            self._sleep()
        if self.sink.lost is not None and not self._stopping:
            # the database moved or lost its -wal (store.writer.DatabaseWatch): stop with a checkpoint
            self.request("stop", trigger="database changed", detail={"reason": self.sink.lost})
        self.beat(step, epoch)
        requests = self.signal_requests() + self.take_queued()
        now = time.monotonic()
        if not self._stopping and (self.paused or now >= self._next_check):
            self._next_check = now + CHECK_SECONDS
            if commands.has_pending(self.reader, self.run_id):
                requests += self._claim()
                self._next_check = 0.0           # more may wait: look again at the next boundary
        return requests

    # -- commands ---------------------------------------------------------------------------
    def _claim(self) -> list[Request]:
        """Take the oldest pending command; the Request the loop must act on, if any."""
        step = self.step
        cmd = self.sink.call(lambda conn: commands.claim_next(conn, self.run_id, step))
        if cmd is None:
            return []
        self._command_event(cmd, "acked")
        req = self._request_for(cmd)
        return [] if req is None else [req]

    def _request_for(self, cmd: dict) -> Request | None:
        """What the loop must do for a claimed command; pause/resume bookkeeping happens here."""
        verb = cmd["verb"]

        def done(result: dict) -> None:
            self._complete(cmd, True, result)

        def failed(error: str) -> None:
            self._complete(cmd, False, {"error": error})

        if verb == "pause":
            if self.paused:
                done({"step": self.step, "note": "already paused"})
                return None
            return self.pause_request("command", done=done, failed=failed, command=cmd["id"])
        if verb == "resume":
            was_paused = self.paused
            if was_paused:
                self._unpause(command=cmd["id"])
            done({"step": self.step, "was_paused": was_paused})
            return None
        if verb in ("eval", "checkpoint"):
            return Request(verb, trigger="command", done=done, failed=failed)
        if verb == "stop":
            return self.stop_request("command", done=done, failed=failed, command=cmd["id"])
        failed(f"unknown command {verb!r}")     # a row written by hand; the CLI refuses these
        return None

    def _complete(self, cmd: dict, ok: bool, result: dict) -> None:
        self._command_event(cmd, "done" if ok else "failed", result.get("error"))
        self.sink.call(lambda conn: commands.complete(conn, cmd["id"], ok=ok, result=result))

    def _command_event(self, cmd: dict, state: str, error: str | None = None) -> None:
        detail = {"id": cmd["id"], "verb": cmd["verb"], "state": state}
        if error:
            detail["error"] = error
        self.sink.event("command", step=self.step, epoch=self.epoch, detail=detail)

    # -- pausing ----------------------------------------------------------------------------
    def pause_request(self, trigger: str, *, done: Callable[[dict], None] = ignore,
                      failed: Callable[[str], None] = ignore, **detail) -> Request:
        def hold(result: dict) -> None:      # the loop has flushed its telemetry: hold it here
            if not self.paused:
                self.paused = True
                self.set_state("paused", trigger=trigger, **detail)
            done(result)

        return Request("pause", trigger=trigger, done=hold, failed=failed)

    def _unpause(self, **detail) -> None:
        self.paused = False
        self._close_waker()
        self.set_state("evaluating" if self._evaluating else "running", **detail)  # a 5CAT held by a pause goes on

    def _sleep(self) -> None:
        """One wait while paused: until the -wal file changes (a command, or our own heartbeat's
        commit) or PAUSED_WAKE_SECONDS pass. Inotify underneath, so a paused daemon costs
        almost no CPU; a slow timer if the watcher cannot run here."""
        if self._waker is None:
            self._waker = self._watch_wal()
        try:
            next(self._waker)
        except Exception:                    # no inotify (limits, odd filesystems): the timer
            self._waker = _timer(PAUSED_WAKE_SECONDS)

    def _watch_wal(self) -> Iterator:
        from watchfiles import watch

        return watch(self.wal, watch_filter=None, debounce=200, step=50,
                     rust_timeout=int(PAUSED_WAKE_SECONDS * 1000), yield_on_timeout=True, raise_interrupt=False)

    def _close_waker(self) -> None:
        waker, self._waker = self._waker, None
        if waker is not None and hasattr(waker, "close"):
            waker.close()

    def stop_request(self, trigger: str, **kwargs) -> Request:
        self._close_waker()
        return super().stop_request(trigger, **kwargs)

    # -- evaluating -------------------------------------------------------------------------
    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """State `evaluating` for the length of a 5CAT run, heartbeating from a thread (the loop
        is busy), then `paused` or `running` as the run now stands (commands taken during it may
        have changed that); a stop taken during it keeps `stopping`."""
        self.set_state("evaluating")
        self._evaluating = True
        stop = threading.Event()
        beat = threading.Thread(target=self._beat_until, args=(stop,), name="lvmd-heartbeat", daemon=True)
        beat.start()
        try:
            yield
        finally:
            self._evaluating = False
            stop.set()
            beat.join()
            if not self._stopping:
                self.set_state("paused" if self.paused else "running")

    def _beat_until(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat(self.step, self.epoch)
            except Exception:                # a broken sink: the loop raises it at its next write
                return

    def close(self) -> None:
        self._close_waker()
        park(self.reader) if self.sink.lost is not None else self.reader.close()
        super().close()


def _timer(seconds: float) -> Iterator[None]:
    while True:
        time.sleep(seconds)
        yield None


# -- serving a run in this process -----------------------------------------------------------
def serve(db: str | Path, run_id: int, *, cfg: RunConfig | None = None, data=None, resume: bool = False,
          progress: Callable[[dict], None] | None = None, announce: Callable | None = None,
          allow_pickle: bool = False, allow_data_change: bool = False, adopt_folder: bool = False,
          begun: bool = False, verify_data: bool = False) -> str:
    """Train run `run_id` in this process under its lock: a fresh row made by runner.create, or
    (resume) a stopped or crashed run from its last checkpoint. `begun`: the resume was begun
    by the command that started this process (store.runs.begin_resume), so the run must still
    be `starting`: one stopped meanwhile (`lvmd stop --force`) is not resumed. Returns the
    final state.

    The run folder must prove it is this run's before anything is written into it, and the
    checkpoint must name this database, run, config and data (checked_checkpoint). Without
    `cfg` the config is the one stored in the row, but opt-ins that run code (data.allow_pickle)
    never come from the database: only from `allow_pickle`, which the user gave on this command
    line (or in the config file `lvmd start` read just now). A resume that fails before it
    trains leaves the run as it was (stopped or crashed) with an error event."""
    from lvmd.run import runner

    db = Path(db).resolve()
    conn = connect(db)
    try:
        run = get_run(conn, run_id)
        owner = {"db": str(db), "db_id": database_id(conn), "run_id": run_id}
        lock = RunLock(run, owner=owner, adopt=adopt_folder)
        try:
            lock.acquire()
        except UserError as exc:
            # a refused folder puts the run back; a lock another daemon holds is that daemon's run
            if resume and not lock_held(Path(run["out_dir"]) / DAEMON_LOCK):
                _note_error(conn, run_id, str(exc))
            raise
        try:
            run = get_run(conn, run_id)          # as it is now that we hold the lock
            if begun and run["state"] != "starting":
                raise UserError(f"run {run_id} is {run['state']} now (stopped while its resume was starting); "
                                "not resumed")
            if resume:
                checkpoint = resumable_checkpoint(conn, run, locked=True)
            elif run["state"] != "starting":
                raise UserError(f"run {run_id} is {run['state']}; `lvmd resume {run_id}` continues it")
            else:
                checkpoint = None
            if cfg is None:
                stored = config_from_dict(json.loads(run["config_json"]))
                cfg = replace(stored, data=replace(stored.data, allow_pickle=allow_pickle))
            if resume:
                check_data_unchanged(cfg, run, allow_change=allow_data_change, conn=conn, verify=verify_data)
                if checkpoint is not None:
                    checked_checkpoint(conn, run, checkpoint, owner["db_id"], adopt=adopt_folder)
        except UserError as exc:
            if resume and not (begun and run["state"] != "starting"):   # stays resumable; say why
                _note_error(conn, run_id, str(exc))
            lock.release()
            raise
        except BaseException:
            lock.release()
            raise
    finally:
        conn.close()
    try:
        from lvmd.train.checkpoint import remove_temp_files

        removed = remove_temp_files(run["out_dir"], run_id)   # under the lock, in a folder proven ours
        try:
            data = data or load_train_data(cfg, check="background")
        except UserError as exc:
            if resume:
                _note_error(db, run_id, str(exc))
            raise
        if announce is not None:     # distributed hook (lvmd.run.launch): the other ranks start now
            announce(cfg, run, checkpoint)
        sampler = SystemSampler(db, run_id).start()  # CPU/memory/GPU into system_samples, off the loop
        try:
            return runner.execute(cfg, db, run_id, Path(run["out_dir"]), data, resume_from=checkpoint, resume=resume,
                                  progress=progress, temp_removed=[str(p) for p in removed],
                                  identity=run_identity(run, owner["db_id"]),
                                  control_factory=lambda sink: DaemonControl(sink, db, run_id))
        finally:
            sampler.stop()
    finally:
        lock.release()


def _note_error(db_or_conn, run_id: int, error: str) -> None:
    """A resume that failed before training: back to stopped or crashed, with an 'error' event
    (store.runs.end_failed_resume), so the run can be resumed once it is fixed."""
    conn = connect(db_or_conn) if isinstance(db_or_conn, (str, Path)) else db_or_conn
    try:
        end_failed_resume(conn, run_id, error)
    except Exception:                        # the one-line error still reaches the user
        pass
    finally:
        if conn is not db_or_conn:
            conn.close()


def check_data_unchanged(cfg: RunConfig, run: dict, *, allow_change: bool, conn, verify: bool = False) -> None:
    """Resume re-checks every data file's sha256 against the one stored at create (re-hashed
    only when its stat changed, or verify: lvmd.data.hashes)."""
    from lvmd.data.hashes import data_sha256

    stored = json.loads(run["data_json"] or "{}")
    for key, entry in sorted(stored.items()):
        path = getattr(cfg.data, key, "") or entry.get("path")
        try:
            now = data_sha256(path, conn, verify=verify)
        except OSError as exc:
            raise UserError(f"data.{key}: {path}: cannot be read to check it ({exc.strerror or exc})") from None
        if now != entry.get("sha256") and not allow_change:
            raise UserError(f"data.{key}: {path} has changed since run {run['id']} was created "
                            f"(sha256 {now[:12]}…, was {str(entry.get('sha256'))[:12]}…); "
                            "pass --allow-data-change to resume on the new file")


def resumable_checkpoint(conn, run: dict, *, locked: bool) -> Path | None:
    """The checkpoint a resume of `run` starts from (None: it died before its first one, so it
    starts over at step 0), after checking the run may be resumed. A run still marked live
    whose daemon is gone is marked crashed first; `locked` says the caller holds the run's
    lock, which proves that."""
    run_id, state = run["id"], run["state"]
    if state == "starting" and locked:
        pass     # a resume has begun (begin_resume) and we are its daemon: commands queued meanwhile stay
    elif state in LIVE_STATES:
        if not locked and daemon_alive(run):
            raise UserError(f"run {run_id} is {state} (pid {run['pid']}); it already has a daemon")
        record_state(conn, run_id, "crashed", {"reason": "its daemon is gone (lock free)", "pid": run["pid"]},
                     expect=(state,), error="crashed: its daemon is gone")
    elif state not in RESUMABLE_STATES:
        raise UserError(f"run {run_id} is {state}; only a stopped or crashed run can be resumed")
    path = Path(run["out_dir"]) / CHECKPOINT
    return path if path.exists() else None


# -- a detached daemon -----------------------------------------------------------------------
@dataclass
class Spawned:
    """A daemon process just started, and where its output for this life begins in its log."""
    proc: subprocess.Popen
    log: Path
    log_offset: int


def spawn(db: Path, run: dict, *, resume: bool, nproc: int = 1, allow_pickle: bool = False,
          allow_data_change: bool = False, adopt_folder: bool = False, begun: bool = False, verify_data: bool = False) -> Spawned:
    """`lvmd serve` for the run, detached: its own session, stdin /dev/null, stdout and stderr
    appended to <out_dir>/daemon.log (owner-only; a resumed run's daemon appends to it). With
    nproc > 1 the process is torchrun and rank 0, its child, is the run's daemon. The opt-ins
    travel on its command line, never through the database. The caller has proven the folder
    this run's (runlock.folder_refusal) before the log is opened in it."""
    from lvmd.run.launch import torchrun_argv

    log = Path(run["out_dir"]) / LOG_FILE
    Path(run["out_dir"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    argv = torchrun_argv(nproc, ["serve", "--db", str(db), str(run["id"])])
    argv += (["--resume"] if resume else []) + (["--allow-pickle"] if allow_pickle else []) \
        + (["--allow-data-change"] if allow_data_change else []) + (["--adopt-folder"] if adopt_folder else []) \
        + (["--begun"] if begun else []) + (["--verify-data"] if verify_data else [])
    try:
        offset = os.fstat(fd).st_size
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=fd, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(fd)
    return Spawned(proc, log, offset)


START_GRACE_S = 2.0


def wait_started(db: Path, run_id: int, daemon: Spawned, *, timeout: float, resume: bool = False) -> dict:
    """Block until the spawned daemon records itself live (its pid, past `starting`) and return
    the row; if it exits first, raise its own error (from the row, else from its log). A fresh
    row its daemon never touched is marked failed. A resume begun by this process (begin_resume)
    is heartbeaten here until its daemon takes over, and put back (stopped or crashed) if the
    daemon dies before it could say so; if another daemon won the run (two resumes at once), the
    run is healthy and this one just says so."""
    proc = daemon.proc
    deadline = time.monotonic() + timeout
    live_since = None
    next_beat = 0.0
    conn = connect(db)
    try:
        while True:
            if resume and time.monotonic() >= next_beat:
                beat_starting(conn, run_id, os.getpid())
                next_beat = time.monotonic() + HEARTBEAT_SECONDS
            run = get_run(conn, run_id)
            ours = _started_by(run["pid"], proc.pid)
            if ours and run["state"] in LIVE_STATES and run["state"] != "starting":
                # "running" is said once a step has landed or the daemon has lived START_GRACE_S
                # past it: a first step that crashes (a kernel this CPU lacks) is reported here.
                if live_since is None:           # the row as it went live: a resume's step is where it resumed
                    live_since, first_live = time.monotonic(), run
                if (run["step"] or 0) >= 1 or time.monotonic() - live_since >= START_GRACE_S:
                    return {**run, "step": first_live["step"], "epoch": first_live["epoch"]}
            if proc.poll() is not None:
                run = get_run(conn, run_id)
                if _started_by(run["pid"], proc.pid) and run["state"] in ("finished", "stopped"):
                    return run                      # a run so short it was over before we looked
                error = ((_started_by(run["pid"], proc.pid) and run["error"]) or last_error(daemon.log, daemon.log_offset)
                         or f"exit status {proc.returncode}")
                if resume and (lock_held(Path(run["out_dir"]) / DAEMON_LOCK) or "already has a daemon" in error):
                    raise UserError(f"run {run_id} is already being resumed or running (another daemon holds "
                                    f"its lock); `lvmd status {run_id}` shows it")
                if resume:                   # died before it could say so: never left `starting`
                    end_failed_resume(conn, run_id, error, if_starting=True)
                if not resume and not _started_by(run["pid"], proc.pid):   # died before it could say so
                    record_state(conn, run_id, "failed", {"error": error}, expect=("starting",), error=error)
                raise UserError(f"run {run_id} did not start: {error} (log: {daemon.log})")
            if time.monotonic() > deadline:
                raise UserError(f"run {run_id} is still starting after {timeout:.0f} s; see {daemon.log}")
            time.sleep(0.1)
    finally:
        conn.close()


def _started_by(pid: int | None, launcher: int) -> bool:
    """Is `pid` the process we spawned, or its child (rank 0 under torchrun)?"""
    if pid == launcher:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1]) == launcher
    except (OSError, ValueError, IndexError):
        return False


def last_error(log: Path, offset: int = 0) -> str:
    """The daemon's own one-line error: its last `lvmd: error:` line in the log after `offset`
    (this life's output), else its last line."""
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("lvmd: error:")]
    line = (errors or lines or [""])[-1]
    return line.removeprefix("lvmd: error:").strip()
