"""`lvmd tui [DB | --db DB] [--run ID] [--baseline ID] [--readonly]`: the live terminal UI.

The tui package is imported inside the handler only, so other commands never load Textual."""
from __future__ import annotations

import argparse

from lvmd.cli.main import default_db
from lvmd.errors import UserError

# Modules that load torch (runner, trainer, 5CAT, legacy) or textual are imported inside the
# commands that need them, so `lvmd --help` and the light verbs start without them.


def register(sub) -> None:
    from tui.launch import add_arguments

    p = sub.add_parser("tui", help="watch and steer runs live in the terminal")
    add_arguments(p, default_db())
    p.add_argument("--db", dest="db_option", metavar="FILE", help="the database, as every other command takes it "
                                                                 "(the same as DB)")
    p.set_defaults(func=cmd_tui)


def cmd_tui(args: argparse.Namespace) -> int:
    from tui.launch import run

    if args.db_option is not None:
        if args.db not in (default_db(), args.db_option):
            raise UserError(f"tui: the database twice ({args.db} and --db {args.db_option}); give one")
        args.db = args.db_option
    return run(args)
