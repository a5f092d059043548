"""The `lvmd` command. Each command family is a module of lvmd/cli/ with a
`register(subparsers)` function; handlers return the exit code. UserError (and the store's
one-line errors) become `lvmd: error: ...` on stderr and exit 1."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from lvmd import __version__
from lvmd.errors import UserError
from store.db import StoreError
from store.runs import UnknownRun

DESCRIPTION = ("Train latent-vector models with the P6b v2.1 guardrails, watch every step live, "
               "and query it all in one SQLite file.")

# Order here is the order in `lvmd --help`.
COMMAND_MODULES = [
    "lvmd.cli.train",
    "lvmd.cli.daemon",
    "lvmd.cli.data",
    "lvmd.cli.tui",
    "lvmd.cli.eval",
    "lvmd.cli.report",
]


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end in one line (`lvmd: error: ...`) and exit 2, like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lvmd", description=DESCRIPTION)

    parser.add_argument("--version", action="version", version=f"lvmd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def default_db() -> str:
    """The database used when --db is not given: $LVMD_DB, else ./lvmd.db."""
    return os.environ.get("LVMD_DB", "lvmd.db")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `lvmd run cfg.toml --db x.db train.epochs=3`: overrides may follow options too
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except (UserError, StoreError, UnknownRun) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"lvmd: error: {msg}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        print("lvmd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
