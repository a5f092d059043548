"""`lvmd start | serve | stop | status | pause | resume | eval-now | checkpoint`: detached runs
and the commands they take (stop lives in lvmd/cli/stop.py). Commands are rows in `commands`; the daemon acks them at a step boundary
and completes them, and these verbs wait for that (--no-wait to skip). Every verb first marks
crashed any run of this host whose daemon is gone (store.runs.mark_stale_crashed)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lvmd.cli.main import default_db, int_in, number_in
from lvmd.cli.status import STATUS_HEADERS, status_block, status_of, status_row
from lvmd.cli.tables import print_table
from lvmd.cli.train import check_nproc, launch_foreground, nproc_arg, serve_foreground, split_config_arg, verify_data_arg
from lvmd.config import load_config
from lvmd.data.train_data import load_train_data
from lvmd.errors import UserError
from lvmd.run import daemon, launch
from lvmd.run.runlock import folder_refusal, refuse
from lvmd.train.sink import NullSink
from store.commands import CommandError, enqueue, get
from store.db import check_path, connect
from store.evals import eval_progress
from store.runs import (
    DAEMON_LOCK,
    LIVE_STATES,
    STALE_SECONDS,
    begin_resume,
    daemon_alive,
    database_id,
    end_failed_resume,
    lock_held,
    get_run,
    list_runs,
    look_readonly,
    mark_stale_crashed,
    record_state,
    resolve_run,
    shown_crashed,
)

# Modules that load torch (runner, trainer, 5CAT, legacy) or textual are imported inside the
# commands that need them, so `lvmd --help` and the light verbs start without them.

WAIT_SECONDS = 10.0        # how long a command verb waits for the daemon by default
SAY_WAITING_S = 1.0        # a wait longer than this says what it is waiting for (stderr)
START_SECONDS = 120.0      # how long start/resume wait for the daemon to report running
DYING_SECONDS = 3.0        # how long resume lets a daemon that was just killed finish dying


def register(sub) -> None:
    p = sub.add_parser("start", help="start a run as a detached daemon; prints the run id once it runs")
    p.add_argument("config", nargs="?", help="TOML config (omit to use defaults + overrides)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")
    _db_arg(p)
    p.add_argument("--timeout", type=number_in(0, 1e6), default=START_SECONDS, help="seconds to wait for the daemon to run")
    nproc_arg(p)
    _allow_pickle_arg(p)
    verify_data_arg(p)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("serve", help="train an existing run row in this process (what start and resume spawn)")
    p.add_argument("run", help="run id or name")
    _db_arg(p)
    p.add_argument("--resume", action="store_true", help="continue a stopped or crashed run from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--begun", action="store_true", help=argparse.SUPPRESS)   # spawned by a resume that began the run
    _allow_pickle_arg(p)
    _allow_data_change_arg(p)
    verify_data_arg(p)
    _adopt_folder_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stop", help="stop a run: checkpoint, state stopped, exit")
    p.add_argument("run", help="run id or name")
    _db_arg(p)
    p.add_argument("--grace", type=number_in(0, 1e6), default=30.0, help="seconds to wait before SIGTERM (default 30)")
    p.add_argument("--force", action="store_true", help="SIGKILL now (no checkpoint)")
    p.add_argument("--no-wait", action="store_true", help="queue the stop and return")
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser("status", help="state, progress, speed, heartbeat and last gate verdict of runs")
    p.add_argument("run", nargs="?", help="run id or name (default: every run)")
    _db_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    # `lvmd eval CHECKPOINT` (lvmd.cli.eval) evaluates a checkpoint file; a live run's
    # evaluate-now command is `lvmd eval-now RUN` (the command row's verb is `eval`).
    for name, verb, text in (("pause", "pause", "pause a run at its next step boundary"),
                             ("eval-now", "eval", "run 5CAT on a live run now, mid-epoch if need be"),
                             ("checkpoint", "checkpoint", "write the run's last.pt now")):
        p = sub.add_parser(name, help=text)
        _command_args(p)
        p.set_defaults(func=cmd_command, verb=verb)

    p = sub.add_parser("resume", help="unpause a paused run, or restart a stopped/crashed run from its checkpoint")
    _command_args(p)
    p.add_argument("--foreground", action="store_true", help="restart in this process instead of detached")
    p.add_argument("--quiet", action="store_true", help="no progress output (--foreground)")
    p.add_argument("--nproc", type=int_in(1, 4096), default=None, metavar="N",
                   help="restart on N local processes (default: as many as the run last had)")
    _allow_pickle_arg(p)
    _allow_data_change_arg(p)
    verify_data_arg(p)
    _adopt_folder_arg(p)
    p.set_defaults(func=cmd_resume, verb="resume")


def _cmd_stop(args: argparse.Namespace) -> int:
    from lvmd.cli.stop import cmd_stop

    return cmd_stop(args)


def _allow_pickle_arg(p) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="read the original's pickled NPZ metadata (runs code from the file; never taken from the DB)")


def _allow_data_change_arg(p) -> None:
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume even though a data file's sha256 differs from the one stored at create")


def _adopt_folder_arg(p) -> None:
    p.add_argument("--adopt-folder", action="store_true",
                   help="use a run folder (and its last.pt) that cannot prove it is this run's: no run.json, or a "
                        "checkpoint without identity (made by an older lvmd); never taken from the DB")


def _db_arg(p) -> None:
    p.add_argument("--db", help="SQLite file (default $LVMD_DB or ./lvmd.db)")


def _command_args(p) -> None:
    p.add_argument("run", help="run id or name")
    _db_arg(p)
    p.add_argument("--timeout", type=number_in(0, 1e6), default=WAIT_SECONDS, help="seconds to wait for the daemon (default 10)")
    p.add_argument("--no-wait", action="store_true", help="queue the command and return")


# -- shared ------------------------------------------------------------------------------
def _db_path(args) -> Path:
    path = Path(args.db or default_db())
    check_path(path, create=False)       # missing (with how to name one), a FIFO, a device node
    return path.resolve()


def _open(args):
    """A connection with crashed runs already marked, and the database's path."""
    db = _db_path(args)
    conn = connect(db)
    mark_stale_crashed(conn)
    return conn, db


def _open_reader(args):
    """A read-only connection and the dead runs that could not be recorded crashed
    (store.runs.look_readonly)."""
    return look_readonly(_db_path(args))


def _enqueue(conn, run: dict, verb: str, args: dict | None = None) -> int:
    try:
        return enqueue(conn, run["id"], verb, args)
    except CommandError as exc:
        raise UserError(str(exc)) from None


def _await(conn, command_id: int, timeout: float) -> dict:
    """The command row once done or failed, or as it stands when `timeout` runs out. A daemon
    that dies meanwhile is noticed (its open commands fail with it)."""

    deadline = time.monotonic() + timeout
    next_crash_check = time.monotonic() + 1.0
    say_after, said = time.monotonic() + SAY_WAITING_S, None
    while True:
        cmd = get(conn, command_id)
        if cmd["state"] in ("done", "failed") or time.monotonic() >= deadline:
            return cmd
        if time.monotonic() >= say_after and cmd["state"] != said:     # once per state: pending, acked
            said = cmd["state"]
            print(_waiting_line(conn, cmd), file=sys.stderr, flush=True)
        if time.monotonic() >= next_crash_check:
            mark_stale_crashed(conn)
            next_crash_check = time.monotonic() + 1.0
        time.sleep(0.05)


def _waiting_line(conn, cmd: dict) -> str:
    """What a command verb is waiting for (said once it has waited SAY_WAITING_S)."""
    run = get_run(conn, cmd["run_id"])
    doing = f"{run['state']} at step {run['step']}"
    progress = eval_progress(conn, run["id"]) if run["state"] == "evaluating" else None
    if progress:
        doing += f", 5CAT {progress.get('done')}/{progress.get('total')} {progress.get('stage')}"
    if cmd["state"] == "pending":
        return f"lvmd: waiting for run {run['id']} ({doing}) to take the {cmd['verb']} (command {cmd['id']})…"
    return f"lvmd: run {run['id']} took the {cmd['verb']} at step {cmd['acked_step']}; waiting for it to finish ({doing})…"


def _result(cmd: dict) -> dict:
    return json.loads(cmd["result"]) if cmd.get("result") else {}


# -- start / serve -----------------------------------------------------------------------------
def cmd_start(args: argparse.Namespace) -> int:
    nproc = check_nproc(args.nproc)
    config, overrides = split_config_arg(args.config, args.overrides)
    cfg = load_config(config, overrides + (["data.allow_pickle=true"] if args.allow_pickle else []))
    # bad input fails here, before anything is written, and before torch; the daemon checks every row
    data = load_train_data(cfg, check="sample")
    from lvmd.run import runner  # loads torch: only once the config and data are known good
    db = Path(args.db or default_db()).resolve()
    runner.preflight(cfg, db)                # profile, database and folder: before any row
    runner.make_evaluator(cfg, data, NullSink())
    run_id, out_dir = runner.create(cfg, db, data, verify_data=args.verify_data)
    spawned = daemon.spawn(db, {"id": run_id, "out_dir": str(out_dir)}, resume=False, nproc=nproc,
                           allow_pickle=cfg.data.allow_pickle)     # the config file the user passed now
    run = daemon.wait_started(db, run_id, spawned, timeout=args.timeout)
    print(f"run {run_id} {run['state']} (pid {run['pid']}); log {spawned.log}", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if launch.follower():          # torchrun rank > 0: never opens the database; rank 0 hands over the job
        return serve_foreground(None, None, quiet=True)
    db = _db_path(args)
    conn = connect(db)
    try:
        run_id = resolve_run(conn, args.run)["id"]
    finally:
        conn.close()
    return serve_foreground(str(db), run_id, resume=args.resume, quiet=args.quiet, begun=args.begun,
                            allow_pickle=args.allow_pickle, allow_data_change=args.allow_data_change,
                            adopt_folder=args.adopt_folder,
                            verify_data=args.verify_data)


# -- commands ----------------------------------------------------------------------------------
def cmd_command(args: argparse.Namespace) -> int:
    conn, _ = _open(args)
    try:
        return _send(conn, resolve_run(conn, args.run), args)
    finally:
        conn.close()


def _send(conn, run: dict, args: argparse.Namespace) -> int:
    """Queue args.verb for the run, wait for the daemon, say what happened."""
    verb, run_id = args.verb, run["id"]
    command_id = _enqueue(conn, run, verb)
    if args.no_wait:
        print(f"run {run_id}: {verb} queued (command {command_id})")
        return 0
    return _report(conn, run_id, command_id, args)


def _report(conn, run_id: int, command_id: int, args: argparse.Namespace) -> int:
    verb = args.verb
    cmd = _await(conn, command_id, args.timeout)
    result = _result(cmd)
    if cmd["state"] == "failed":
        raise UserError(f"run {run_id}: {verb} failed: {result.get('error', 'unknown error')}")
    if cmd["state"] == "pending":
        raise UserError(f"run {run_id} has not taken the {verb} command (id {command_id}) within "
                        f"{args.timeout:g} s; it stays queued")
    if cmd["state"] == "acked":
        print(f"run {run_id} took {verb} at step {cmd['acked_step']}; not done within {args.timeout:g} s "
              f"(`lvmd status {run_id}` shows it)")
        return 0
    print(_done_line(run_id, verb, cmd, result))
    return 0


def _done_line(run_id: int, verb: str, cmd: dict, result: dict) -> str:
    step = result.get("step", cmd["acked_step"])
    if verb == "pause":
        return f"run {run_id} {'was already paused' if result.get('note') else 'paused'} at step {step}"
    if verb == "resume":
        return f"run {run_id} resumed at step {step}" if result.get("was_paused") else \
            f"run {run_id} was not paused (step {step})"
    if verb == "checkpoint":
        return f"run {run_id} checkpoint at step {step}: {result.get('path')}"
    if verb == "eval":
        gates = f"{result['gates_passed']}/{result['gates_total']} gates" if "gates_total" in result else "done"
        return f"run {run_id} evaluated at step {cmd['acked_step']}: {gates} (eval {result.get('eval_id')})"
    return f"run {run_id} {verb} done at step {step}"


def cmd_resume(args: argparse.Namespace) -> int:
    """A paused run with a live daemon takes a `resume` command; a stopped or crashed run (or
    one whose daemon is gone) restarts from its last checkpoint under the same id. A run that
    is already running (or being resumed) says so and exits non-zero.

    The restart is begun in the database before its daemon is spawned (store.runs.begin_resume:
    the run is `starting` from then on), so a stop typed while the daemon starts is queued and
    the daemon honours it at its first step boundary; a resume that fails puts the run back."""

    conn, db = _open(args)
    try:
        run = resolve_run(conn, args.run)
        if run["state"] == "starting" and _being_started(run):
            raise UserError(f"run {run['id']} is already being resumed or started (pid {run['pid']}); "
                            f"`lvmd status {run['id']}` shows it")
        if run["state"] in LIVE_STATES and _alive_settled(run, paused=run["state"] == "paused"):
            if args.foreground:
                raise UserError(f"run {run['id']} is {run['state']} in pid {run['pid']}; "
                                f"`lvmd resume {run['id']}` (no --foreground) unpauses it")
            if run["state"] != "paused":
                raise UserError(f"run {run['id']} is already {run['state']} (pid {run['pid']}); nothing to resume")
            sent = _send_resume(conn, run, args)
            if sent is not None:
                return sent
            run = get_run(conn, run["id"])     # its daemon died before taking it: restart below
        daemon.resumable_checkpoint(conn, run, locked=False)   # marks it crashed if its daemon is gone
        owner = {"db": str(db), "db_id": database_id(conn), "run_id": run["id"]}
        refuse(folder_refusal(Path(run["out_dir"]), owner, adopt=args.adopt_folder))  # before its log is opened
        if not begin_resume(conn, run["id"], pid=os.getpid()):
            raise UserError(f"run {run['id']} is already being resumed; `lvmd status {run['id']}` shows it")
        run = get_run(conn, run["id"])
    finally:
        conn.close()
    nproc = check_nproc(args.nproc if args.nproc is not None else run.get("world_size") or 1)
    opts = {"allow_pickle": args.allow_pickle, "allow_data_change": args.allow_data_change,
            "adopt_folder": args.adopt_folder, "verify_data": args.verify_data}
    if args.foreground and nproc > 1:
        return launch_foreground(str(db), run["id"], nproc, quiet=args.quiet, resume=True, begun=True, **opts)
    if args.foreground:
        return serve_foreground(str(db), run["id"], resume=True, begun=True, quiet=args.quiet, **opts)
    try:
        spawned = daemon.spawn(db, run, resume=True, nproc=nproc, begun=True, **opts)
    except BaseException as exc:
        _end_failed_resume(db, run["id"], f"cannot start its daemon: {exc}")
        raise
    run = daemon.wait_started(db, run["id"], spawned, timeout=max(args.timeout, START_SECONDS), resume=True)
    print(f"run {run['id']} resumed from step {run['step']} ({run['state']}, pid {run['pid']}); log {spawned.log}",
          flush=True)
    return 0


def _being_started(run: dict) -> bool:
    """A `starting` run whose daemon holds its lock, or whose starter still heartbeats it."""
    lock = Path(run["out_dir"] or ".") / DAEMON_LOCK
    return lock_held(lock) or time.time() - (run["heartbeat_at"] or 0) < STALE_SECONDS


def _end_failed_resume(db: Path, run_id: int, error: str) -> None:
    conn = connect(db)
    try:
        end_failed_resume(conn, run_id, error, if_starting=True)
    finally:
        conn.close()


def _alive_settled(run: dict, *, paused: bool) -> bool:
    """daemon_alive, allowing a daemon killed a moment ago to finish dying: a kill -9 frees the
    run's lock only once the kernel has torn the process down, which a resume typed right
    after it can beat. A running daemon holds its lock for good, so this waits only when the
    answer is 'already running' anyway."""
    deadline = time.monotonic() + (0.0 if paused else DYING_SECONDS)
    while daemon_alive(run):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)
    return False


def _send_resume(conn, run: dict, args: argparse.Namespace) -> int | None:
    """The resume command to a paused daemon; None if that daemon turns out dead before it
    takes it (then the command is failed and the caller restarts the run)."""
    command_id = _enqueue(conn, run, "resume")
    if args.no_wait:
        print(f"run {run['id']}: resume queued (command {command_id})")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        cmd = get(conn, command_id)
        if cmd["state"] != "pending":
            break
        if not daemon_alive(get_run(conn, run["id"])):
            record_state(conn, run["id"], "crashed", {"reason": "its daemon died before taking a resume"},
                         expect=LIVE_STATES, error="crashed: its daemon is gone")
            return None
        time.sleep(0.05)
    return _report(conn, run["id"], command_id, args)


# -- status ------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    conn, unrecorded = _open_reader(args)
    try:
        runs = list_runs(conn) if args.run is None else [resolve_run(conn, args.run)]
        infos = [status_of(conn, shown_crashed(run, unrecorded.get(run["id"]))) for run in runs]
    finally:
        conn.close()
    if args.json:
        print(json.dumps(infos[0] if args.run is not None else infos, indent=2))
    elif not infos:
        print("no runs in this database yet")
    elif args.run is not None:
        print(status_block(infos[0]))
    else:
        print_table(STATUS_HEADERS, [status_row(info) for info in infos], left_columns=3)
    return 0
