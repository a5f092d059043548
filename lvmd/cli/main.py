"""The `lvmd` command. Each command family is a module of lvmd/cli/ with a
`register(subparsers)` function; handlers return the exit code. UserError (and the store's
one-line errors) become `lvmd: error: ...` on stderr and exit 1; so does anything unexpected,
with its traceback saved to a file (main)."""
from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys
import time
import traceback
from pathlib import Path

from lvmd import __version__
from lvmd.errors import UserError
from store.db import MissingDatabase, StoreError, describe, meaning
from store.paths import NotRegularFile, create_new
from store.runs import UnknownRun

DESCRIPTION = ("Train latent-vector models with the P6b v2.1 guardrails, watch every step live, "
               "and query it all in one SQLite file.")

KEEP_CRASH_LOGS = 50    # newest traceback files kept in crash_log_dir()

# Order here is the order in `lvmd --help`.
COMMAND_MODULES = [
    "lvmd.cli.train",
    "lvmd.cli.daemon",
    "lvmd.cli.sweep",
    "lvmd.cli.data",
    "lvmd.cli.tui",
    "lvmd.cli.eval",
    "lvmd.cli.report",
    "lvmd.cli.dbtools",
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


def int_in(low: int, high: int):
    """An argparse type: an integer from low to high. Anything else is argparse's one-line usage
    error naming the option, never an OverflowError or a MemoryError further on."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            shown = text if len(text) <= 24 else f"{text[:20]}… ({len(text)} digits)"
            raise argparse.ArgumentTypeError(f"{shown} is out of range; allowed {low} to {high}")
        return value
    parse.__name__ = "integer"            # argparse names the type in its message
    return parse


def number_in(low: float, high: float):
    """An argparse type: a finite number from low to high (seconds, shares, thresholds)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:        # NaN fails this too
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed {low:g} to {high:g}")
        return value
    parse.__name__ = "number"
    return parse


def default_db() -> str:
    """The database used when --db is not given: $LVMD_DB, else ./lvmd.db."""
    return os.environ.get("LVMD_DB", "lvmd.db")


def main(argv: list[str] | None = None) -> int:
    """The one guarded entry point. Known errors (UserError, the store's) are one line; anything
    unexpected is one line too, naming the file where an OS or SQLite error gives one, and its
    traceback goes to a log file (crash_log_dir()) that the line names. Exit non-zero."""
    args = None
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # `lvmd run cfg.toml --db x.db train.epochs=3`: overrides may follow options too
        stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
        return int(args.func(args) or 0)
    except BrokenPipeError:
        if _stdout_closed():          # `lvmd status | head`: the reader has all it wanted
            return _quiet_exit()
        return _fail(f"broken pipe [{_save_traceback(sys.exc_info()[1], argv)}]", 1)
    except MissingDatabase as exc:
        return _fail(f"{_first_line(exc)}; name it with --db FILE or export LVMD_DB=FILE "
                     f"(`lvmd run` or `lvmd start` creates one)", 1)
    except (UserError, StoreError, UnknownRun, NotRegularFile) as exc:
        return _fail(_first_line(exc), getattr(exc, "exit_code", 1))
    except sqlite3.Error as exc:
        if meaning(exc) is None:      # not the file's or the disk's fault: keep the traceback
            return _fail(f"{_explain(exc, args)} [{_save_traceback(exc, argv)}]", 1)
        return _fail(_explain(exc, args), 1)  # disk full, read-only, busy, ...: the line says it all
    except KeyboardInterrupt:
        print("lvmd: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- the guard: no traceback ever reaches the user
        return _fail(f"{_explain(exc, args)} [{_save_traceback(exc, argv)}]", 1)


def _stdout_closed() -> bool:
    """Is our stdout a pipe whose reader has gone? (poll reports POLLERR on its write end.) Any
    other broken pipe is an error worth its traceback."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _quiet_exit() -> int:
    """Exit 0 without a word, as git and coreutils do under `| head`: what was left unwritten
    has nowhere to go, and Python's own flush at exit must not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass
    return 0


def _fail(message: str, code: int) -> int:
    print(f"lvmd: error: {message}", file=sys.stderr)
    return code


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explain(exc: Exception, args) -> str:
    """One line for an error no handler turned into a UserError: the file it concerns when the
    error names one (OSError) or is about the database (sqlite3)."""
    if isinstance(exc, sqlite3.Error):
        return describe(getattr(args, "db", None) or default_db(), exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or _first_line(exc)}"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def crash_log_dir() -> Path:
    """Where unexpected errors leave their traceback: $XDG_STATE_HOME/lvmd/errors, else
    ~/.local/state/lvmd/errors (the XDG default)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "lvmd" / "errors"


def _save_traceback(exc: Exception, argv: list[str] | None) -> str:
    folder = crash_log_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        with open(create_new(path, 0o600), "w") as fh:     # never through a link planted at that name
            fh.write(f"lvmd {__version__}: lvmd {' '.join(sys.argv[1:] if argv is None else argv)}\n")
            fh.write("".join(traceback.format_exception(exc)))
        for old in sorted(folder.glob("*.log"))[:-KEEP_CRASH_LOGS]:
            old.unlink(missing_ok=True)
    except OSError as err:
        return f"traceback not saved: {folder}: {err.strerror}"
    return f"traceback in {path}"


if __name__ == "__main__":
    sys.exit(main())
