"""`lvmd stop RUN [--grace S] [--force]`: a `stop` command the daemon takes at a step boundary
(checkpoint, `stopped`, exit); after the grace, SIGTERM; --force, SIGKILL. Both signals go through
lvmd.run.signals, which signals only a proven daemon and otherwise says why (issue 20)."""
from __future__ import annotations

import argparse
import signal
import socket
import sys
import time

from lvmd.cli.daemon import _enqueue, _open, _result
from lvmd.errors import UserError
from lvmd.run.signals import send_signal
from store.commands import get, next_step
from store.runs import (LIVE_STATES, TERMINAL_STATES, daemon_alive, database_id, get_run, pid_alive, record_state,
                        resolve_run)

TERM_WAIT_SECONDS = 10.0   # after the grace period and SIGTERM, how long stop still waits
FORCE_WAIT_SECONDS = 5.0


def cmd_stop(args: argparse.Namespace) -> int:
    conn, _ = _open(args)
    try:
        run = resolve_run(conn, args.run)
        if run["state"] == "stopped":
            raise UserError(f"run {run['id']} is already stopped (at step {run['step']}){next_step(run['id'], 'stopped')}")
        if run["state"] not in LIVE_STATES:
            raise UserError(f"run {run['id']} is {run['state']}; there is nothing to stop"
                            f"{next_step(run['id'], run['state'])}")
        if args.force:
            return _kill(conn, run)
        if run["state"] == "stopping":       # a second stop: say so, and wait for the first
            print(f"run {run['id']} is already stopping; waiting up to {args.grace:g} s for it "
                  f"(`lvmd stop {run['id']} --force` kills it now)", file=sys.stderr, flush=True)
        command_id = _enqueue(conn, run, "stop", {"grace": args.grace})
        if args.no_wait:
            print(f"run {run['id']}: stop queued (command {command_id})")
            return 0
        ended = _await_end(conn, run, args.grace)
        if ended is None:
            now = get_run(conn, run["id"])
            why = send_signal(now, signal.SIGTERM, db_id=database_id(conn))
            print(f"lvmd: run {run['id']} did not stop within {args.grace:g} s; "
                  + ("sent SIGTERM" if why is None else f"pid {now['pid']} not signalled: {why}"), file=sys.stderr)
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


def _kill(conn, run: dict) -> int:
    """--force: SIGKILL, then record the run stopped (it wrote no checkpoint for this stop;
    resume continues from the last one and drops the rows after it)."""

    if run["host"] != socket.gethostname():
        raise UserError(f"run {run['id']} runs on {run['host']}; --force works on that host only")
    killed = False
    if daemon_alive(run):
        why = send_signal(run, signal.SIGKILL, db_id=database_id(conn))
        if why is not None:
            raise UserError(f"run {run['id']}: pid {run['pid']} is not its daemon ({why}); not killed")
        killed = True
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
