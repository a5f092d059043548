"""`lvmd export RUN --tensorboard DIR [--follow]`: a run in TensorBoard's event files
(lvmd/eval/tensorboard_export.py), read on a read-only connection."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lvmd.errors import UserError
from store.db import connect
from store.runs import resolve_run


def export_tensorboard(args: argparse.Namespace) -> int:
    from lvmd.eval.tensorboard_export import RunMirror, event_files, follow, prepare_folder, run_folder, \
        tensorboard_api

    if args.out:
        raise UserError("--out is for --table; --tensorboard DIR names the folder to write")
    tensorboard_api()                      # a missing extra says so before anything is opened or made
    root = Path(args.tensorboard)
    conn = connect(args.db, readonly=True)  # a follower never takes a lock the trainer could wait on
    try:
        run = resolve_run(conn, args.run)
        folder = run_folder(root, run)
        prepare_folder(root, folder, force=args.force)
        made = [p for p in (root, folder) if not p.exists()]
        mirror = RunMirror(conn, run, folder)
        try:
            mirror.sync()
            gone = None
            if args.follow:
                print(f"following run {run['id']} into {folder} until it ends (Ctrl+C stops following)",
                      file=sys.stderr, flush=True)
                run, gone = follow(mirror)
        except BaseException:
            mirror.close()
            if not args.follow:             # a one-shot export that failed leaves nothing behind
                for path in event_files(folder):
                    path.unlink()
                for path in reversed(made):
                    _remove_empty(path)
            raise
        mirror.close()
    finally:
        conn.close()
    c = mirror.counts
    print(f"wrote run {run['id']} ({run['state']}) to {folder}: {c['steps']} steps, {c['epochs']} epochs, "
          f"{c['evals']} 5CAT evaluations, {c['events']} skip/attenuate events "
          f"(view: tensorboard --logdir {root})", file=sys.stderr)
    if gone:
        print(f"stopped following: run {run['id']}'s daemon is gone ({gone})", file=sys.stderr)
    return 0


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
