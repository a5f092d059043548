"""Command line of the TUI, shared by `lvmd tui` and `python -m tui`."""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser, default_db: str) -> None:
    parser.add_argument("db", nargs="?", default=None, help=f"the lvmd database (default {default_db})")
    # `--db FILE` as every other lvmd command takes it (the positional stays for `lvmd tui FILE`)
    parser.add_argument("--db", dest="db_option", metavar="FILE", help="the lvmd database, as for other commands")
    parser.set_defaults(default_db=default_db)
    parser.add_argument("--run", metavar="ID", help="open this run (id or name) instead of the list")
    parser.add_argument("--baseline", metavar="ID", help="overlay this run's curves (id or name); b toggles")
    parser.add_argument("--readonly", action="store_true", help="watch only: pause/stop/eval keys are refused")
    parser.add_argument("--ansi", action="store_true", default=None,
                        help="use the terminal's own 16 colours (default: when it has no more)")


def database(args: argparse.Namespace) -> str:
    """The database named by the positional or by --db (both: the same file), else the default."""
    from store.db import StoreError

    given = getattr(args, "db", None), getattr(args, "db_option", None)
    if all(given) and given[0] != given[1]:
        raise StoreError(f"two databases named: {given[0]} and --db {given[1]}; name one")
    return given[0] or given[1] or getattr(args, "default_db", "lvmd.db")


def run(args: argparse.Namespace) -> int:
    """Resolve run references up front (a bad id fails here, in one line), then start the app."""
    from store.db import connect
    from store.runs import resolve_run

    args.db = database(args)
    conn = connect(args.db, readonly=True)  # StoreError for a missing or foreign file
    try:
        run_id = resolve_run(conn, args.run)["id"] if args.run else None
        baseline_id = resolve_run(conn, args.baseline)["id"] if args.baseline else None
    finally:
        conn.close()
    from tui.app import LvmdTui

    app = LvmdTui(args.db, run_id=run_id, baseline_id=baseline_id, readonly=args.readonly)
    if args.ansi or (args.ansi is None and _few_colours()):
        app.theme = "ansi-dark"
    app.run()
    return 0


def _few_colours() -> bool:
    from rich.console import Console

    return Console().color_system in ("standard", "windows")


def main(argv: list[str] | None = None) -> int:
    from store.db import StoreError
    from store.runs import UnknownRun

    parser = argparse.ArgumentParser(prog="python -m tui", description="watch and steer lvmd runs")
    add_arguments(parser, os.environ.get("LVMD_DB", "lvmd.db"))
    try:
        return run(parser.parse_args(argv))
    except (StoreError, UnknownRun) as exc:
        print(f"tui: error: {exc}", file=sys.stderr)
        return 1
