"""`lvmd tui [DB | --db DB] [--run ID] [--baseline ID] [--readonly]`: the live terminal UI, and with
`--web [--host H] [--port P] [--control]` the same app served to browsers (tui/web.py).

The tui package is imported inside the handler only, so other commands never load Textual."""
from __future__ import annotations

import argparse

from lvmd.cli.main import default_db
from lvmd.errors import UserError

# Modules that load torch (runner, trainer, 5CAT, legacy) or textual are imported inside the
# commands that need them, so `lvmd --help` and the light verbs start without them.


def register(sub) -> None:
    from tui.launch import add_arguments
    from tui.web import add_web_arguments

    p = sub.add_parser("tui", help="watch and steer runs live in the terminal (or in a browser: --web)")
    add_arguments(p, default_db())
    add_web_arguments(p)
    p.set_defaults(func=cmd_tui)


def cmd_tui(args: argparse.Namespace) -> int:
    from tui.launch import run
    from tui.web import WebRefused, check_options

    try:
        check_options(args)
        if args.web:
            return _serve_web(args)
    except WebRefused as exc:
        raise UserError(str(exc)) from None
    return run(args)


def _serve_web(args: argparse.Namespace) -> int:
    """Resolve the runs up front (a bad id or database fails here, in one line), then serve."""
    from store.db import connect
    from store.runs import resolve_run
    from tui.launch import database
    from tui.web import serve_web

    args.db = database(args)
    conn = connect(args.db, readonly=True)
    try:
        run_id = resolve_run(conn, args.run)["id"] if args.run else None
        baseline_id = resolve_run(conn, args.baseline)["id"] if args.baseline else None
    finally:
        conn.close()
    return serve_web(args, run_id=run_id, baseline_id=baseline_id)
