"""`lvmd backup DB OUT` and `lvmd check DB`: the safe ways to copy and to examine a database,
live or not (store.maintenance). Never copy a live x.db with cp, and never delete its -wal or
-shm by hand."""
from __future__ import annotations

import argparse
from pathlib import Path

from lvmd.errors import UserError
from store import maintenance


def register(sub) -> None:
    p = sub.add_parser("backup", help="a consistent copy of a database, even while daemons write it "
                                      "(SQLite's online backup API)")
    p.add_argument("db", help="the database to copy")
    p.add_argument("out", help="the new file (never overwritten)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("check", help="integrity and schema checks of a database (read-only)")
    p.add_argument("db", help="the database to check")
    p.set_defaults(func=cmd_check)


def cmd_backup(args: argparse.Namespace) -> int:
    info = maintenance.backup(Path(args.db), Path(args.out))
    print(f"{args.out}: {info['runs']} runs, {info['pages']} pages ({info['bytes'] / 1e6:.1f} MB), "
          f"database id {str(info['db_id'])[:12]} (a copy keeps its source's id: keep one of them in use)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    results = maintenance.check(Path(args.db))
    width = max(len(name) for name, _, _ in results)
    for name, ok, detail in results:
        print(f"{name:<{width}}  {'ok ' if ok else 'BAD'}  {detail}")
    bad = [name for name, ok, _ in results if not ok]
    if bad:
        raise UserError(f"{args.db}: {', '.join(bad)} failed (see above)")
    return 0
