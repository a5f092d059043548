"""Whose is this checkpoint? The run's side of checkpoint identity (DESIGN rule 11): what a run's
checkpoints must carry (run_identity), the proof a resume runs before loading one
(checked_checkpoint), and the proof before a run's best.pt or last.pt is used by name
(`lvmd predict --run`): the folder's run.json names this database and run, and the file's
identity names the run. Loading stays weights_only; tensors stay on disk (mmap) for the look."""
from __future__ import annotations

import json
from pathlib import Path

from lvmd.errors import UserError
from lvmd.run.runlock import folder_refusal
from store.runs import database_id


def run_identity(run: dict, db_id: str | None) -> dict:
    """What every checkpoint of this run carries and a resume expects (checkpoint.identity)."""
    from lvmd.train.checkpoint import identity

    return identity(db_id, run["id"], json.loads(run["config_json"]), json.loads(run["data_json"] or "{}"))


def checked_checkpoint(conn, run: dict, path: Path, db_id: str | None, *, adopt: bool = False) -> dict:
    """The checkpoint a resume will load, proven to be this run's: its identity names this
    database, run, config and data (checkpoint.identity_mismatch), and its step is one the
    database holds (a checkpoint ahead of the rows would leave a gap: a database restored from
    an older copy). Tensors stay on disk (mmap); one line names both sides of a mismatch."""
    from lvmd.train import checkpoint as ckpt
    from store.reader import last_step

    state = ckpt.load(path, expect=run_identity(run, db_id), adopt=adopt, mmap=True)
    step = int(state.get("step", 0))
    held = last_step(conn, run["id"]) or 0
    if step > held:
        raise UserError(f"{path}: is at step {step} but the database holds run {run['id']}'s steps only up to "
                        f"{held} (a database older than the checkpoint?); resuming would leave a gap")
    return state


def run_checkpoint(conn, db: str | Path, run: dict, which: str) -> Path:
    """<out_dir>/<which>.pt of `run`, once its folder and its identity prove it is this run's."""
    db_id = database_id(conn)
    folder = Path(run["out_dir"] or ".")
    owner = {"db": str(Path(db).resolve()), "db_id": db_id, "run_id": run["id"]}
    why = folder_refusal(folder, owner) if folder.exists() else None
    if why is not None:
        raise UserError(why)
    path = folder / f"{which}.pt"
    if not path.exists():
        raise UserError(f"run {run['id']} has no {which} checkpoint ({path}); try --which last")
    from lvmd.train import checkpoint as ckpt

    ckpt.load(path, expect=run_identity(run, db_id), mmap=True)
    return path
