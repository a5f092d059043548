"""`lvmd start | serve | stop | status | pause | resume | eval-now | checkpoint`: detached runs and the
commands they take. Commands are rows in `commands`; the daemon acks them at a step boundary
and completes them, and these verbs wait for that (--no-wait to skip). Every verb first marks
crashed any run of this host whose daemon is gone (store.runs.mark_stale_crashed)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from lvmd.cli.main import default_db
from lvmd.cli.status import STATUS_HEADERS, status_block, status_of, status_row
from lvmd.cli.tables import print_table
from lvmd.cli.train import check_nproc, launch_foreground, nproc_arg, serve_foreground, split_config_arg, verify_data_arg
from lvmd.config import load_config
from lvmd.data.train_data import load_train_data
from lvmd.errors import UserError
from lvmd.run import daemon, launch
from lvmd.train.sink import NullSink
from store.commands import CommandError, enqueue, get
from store.db import connect
from store.runs import (
    LIVE_STATES,
    TERMINAL_STATES,
    daemon_alive,
    get_run,
    list_runs,
    look_readonly,
    mark_stale_crashed,
    pid_alive,
    record_state,
    resolve_run,
    shown_crashed,
)

# Modules that load torch (runner, trainer, 5CAT, legacy) or textual are imported inside the
# commands that need them, so `lvmd --help` and the light verbs start without them.

WAIT_SECONDS = 10.0        # how long a command verb waits for the daemon by default
START_SECONDS = 120.0      # how long start/resume wait for the daemon to report running
TERM_WAIT_SECONDS = 10.0   # after the grace period and SIGTERM, how long stop still waits
FORCE_WAIT_SECONDS = 5.0
DYING_SECONDS = 3.0        # how long resume lets a daemon that was just killed finish dying


def register(sub) -> None:
    p = sub.add_parser("start", help="start a run as a detached daemon; prints the run id once it runs")
    p.add_argument("config", nargs="?", help="TOML config (omit to use defaults + overrides)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")
    _db_arg(p)
    p.add_argument("--timeout", type=float, default=START_SECONDS, help="seconds to wait for the daemon to run")
    nproc_arg(p)
    _allow_pickle_arg(p)
    verify_data_arg(p)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("serve", help="train an existing run row in this process (what start and resume spawn)")
    p.add_argument("run", help="run id or name")
    _db_arg(p)
    p.add_argument("--resume", action="store_true", help="continue a stopped or crashed run from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _allow_pickle_arg(p)
    _allow_data_change_arg(p)
    verify_data_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stop", help="stop a run: checkpoint, state stopped, exit")
    p.add_argument("run", help="run id or name")
    _db_arg(p)
    p.add_argument("--grace", type=float, default=30.0, help="seconds to wait before SIGTERM (default 30)")
    p.add_argument("--force", action="store_true", help="SIGKILL now (no checkpoint)")
    p.add_argument("--no-wait", action="store_true", help="queue the stop and return")
    p.set_defaults(func=cmd_stop)

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
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="restart on N local processes (default: as many as the run last had)")
    _allow_pickle_arg(p)
    _allow_data_change_arg(p)
    verify_data_arg(p)
    p.set_defaults(func=cmd_resume, verb="resume")


def _allow_pickle_arg(p) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="read the original's pickled NPZ metadata (runs code from the file; never taken from the DB)")


def _allow_data_change_arg(p) -> None:
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume even though a data file's sha256 differs from the one stored at create")


def _db_arg(p) -> None:
    p.add_argument("--db", help="SQLite file (default $LVMD_DB or ./lvmd.db)")


def _command_args(p) -> None:
    p.add_argument("run", help="run id or name")
    _db_arg(p)
    p.add_argument("--timeout", type=float, default=WAIT_SECONDS, help="seconds to wait for the daemon (default 10)")
    p.add_argument("--no-wait", action="store_true", help="queue the command and return")


# -- shared ------------------------------------------------------------------------------
def _db_path(args) -> Path:
    path = Path(args.db or default_db())
    if not path.exists():
        raise UserError(f"{path}: no such database")
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
    while True:
        cmd = get(conn, command_id)
        if cmd["state"] in ("done", "failed") or time.monotonic() >= deadline:
            return cmd
        if time.monotonic() >= next_crash_check:
            mark_stale_crashed(conn)
            next_crash_check = time.monotonic() + 1.0
        time.sleep(0.05)


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
    return serve_foreground(str(db), run_id, resume=args.resume, quiet=args.quiet,
                            allow_pickle=args.allow_pickle, allow_data_change=args.allow_data_change,
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
    is already running says so and exits non-zero."""

    conn, db = _open(args)
    try:
        run = resolve_run(conn, args.run)
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
    finally:
        conn.close()
    nproc = check_nproc(args.nproc if args.nproc is not None else run.get("world_size") or 1)
    opts = {"allow_pickle": args.allow_pickle, "allow_data_change": args.allow_data_change,
            "verify_data": args.verify_data}
    if args.foreground and nproc > 1:
        return launch_foreground(str(db), run["id"], nproc, quiet=args.quiet, resume=True, **opts)
    if args.foreground:
        return serve_foreground(str(db), run["id"], resume=True, quiet=args.quiet, **opts)
    spawned = daemon.spawn(db, run, resume=True, nproc=nproc, **opts)
    run = daemon.wait_started(db, run["id"], spawned, timeout=max(args.timeout, START_SECONDS), resume=True)
    print(f"run {run['id']} resumed from step {run['step']} ({run['state']}, pid {run['pid']}); log {spawned.log}",
          flush=True)
    return 0


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


# -- stop --------------------------------------------------------------------------------------
def cmd_stop(args: argparse.Namespace) -> int:
    conn, _ = _open(args)
    try:
        run = resolve_run(conn, args.run)
        if run["state"] not in LIVE_STATES:
            raise UserError(f"run {run['id']} is {run['state']}; there is nothing to stop")
        if args.force:
            return _kill(conn, run)
        command_id = _enqueue(conn, run, "stop", {"grace": args.grace})
        if args.no_wait:
            print(f"run {run['id']}: stop queued (command {command_id})")
            return 0
        ended = _await_end(conn, run, args.grace)
        if ended is None:
            if _signal(run, signal.SIGTERM):
                print(f"lvmd: run {run['id']} did not stop within {args.grace:g} s; sent SIGTERM", file=sys.stderr)
            ended = _await_end(conn, run, TERM_WAIT_SECONDS)
        if ended is None:
            raise UserError(f"run {run['id']} is still running after stop and SIGTERM; "
                            f"`lvmd stop {run['id']} --force` kills it")
        checkpoint = _result(_get(conn, command_id)).get("checkpoint")
        print(f"run {run['id']} {ended['state']} at step {ended['step']}"
              + (f"; checkpoint {checkpoint}" if checkpoint else ""))
        return 0
    finally:
        conn.close()


def _get(conn, command_id: int) -> dict:
    return get(conn, command_id)


def _await_end(conn, run: dict, timeout: float) -> dict | None:
    """The run row once it is in a final state and its process has exited (so a resume can
    follow at once); None if that takes longer than `timeout`."""

    here = run["host"] == socket.gethostname()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = get_run(conn, run["id"])
        gone = not daemon_alive(row) and not (here and pid_alive(row["pid"]))
        if row["state"] in TERMINAL_STATES and gone:
            return row
        if gone:   # died on the way out without recording it
            record_state(conn, row["id"], "crashed", {"reason": "its daemon died while stopping"},
                         expect=(row["state"],), error="crashed while stopping")
            return get_run(conn, run["id"])
        time.sleep(0.05)
    return None


def _signal(run: dict, sig: int) -> bool:
    """Send `sig` to the run's daemon if it is alive on this host."""
    if run["host"] != socket.gethostname() or not daemon_alive(run) or not pid_alive(run["pid"]):
        return False
    try:
        os.kill(run["pid"], sig)
    except ProcessLookupError:
        return False
    return True


def _kill(conn, run: dict) -> int:
    """--force: SIGKILL, then record the run stopped (it wrote no checkpoint for this stop;
    resume continues from the last one and drops the rows after it)."""

    if run["host"] != socket.gethostname():
        raise UserError(f"run {run['id']} runs on {run['host']}; --force works on that host only")
    killed = False
    if daemon_alive(run):
        why = daemon.not_our_daemon(run)
        if why is not None:
            raise UserError(f"run {run['id']}: pid {run['pid']} is not its daemon ({why}); not killed")
        killed = _signal(run, signal.SIGKILL)
    deadline = time.monotonic() + FORCE_WAIT_SECONDS
    while daemon_alive(get_run(conn, run["id"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    if daemon_alive(get_run(conn, run["id"])):
        raise UserError(f"run {run['id']}: pid {run['pid']} is still there after SIGKILL")
    record_state(conn, run["id"], "stopped", {"forced": True, "signal": "SIGKILL" if killed else None,
                                              "pid": run["pid"]})
    row = get_run(conn, run["id"])
    print(f"run {run['id']} {row['state']} (killed at about step {row['step']}); "
          f"`lvmd resume {run['id']}` continues from its last checkpoint")
    return 0


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
