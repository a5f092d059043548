"""One training run against a database: create (or reopen) the run row, train, and leave the
row in a final state (finished | stopped | failed) whatever happens. Used by lvmd.run.daemon.serve,
which `lvmd run` (foreground), `lvmd start` and `lvmd resume` (detached) all go through."""
from __future__ import annotations

import os
import socket
import sqlite3
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from lvmd import __version__
from lvmd.train.collapse import CollapseWatch
from lvmd.config import RunConfig, config_to_dict
from lvmd.train import distributed, hardware
from lvmd.train.memory import check_model_fits
from lvmd.train.control import Control
from lvmd.data.hashes import data_sha256
from lvmd.data.train_data import TrainData
from lvmd.train.trainer import Trainer
from lvmd.errors import UserError
from lvmd.run.runlock import claim_folder, folder_refusal, refuse
from store.db import StoreError, check_path, connect, transaction
from store.evals import has_epoch_eval
from store.holdpoints import hold
from store.reader import epochs_of, latest_steps
from store.commands import fail_open
from store.runs import create_run, database_id, get_run, insert_event, sync_progress, truncate_after, update_run
from store.sweeps import tag_run
from store.writer import SqliteSink


def data_manifest(cfg: RunConfig, conn, *, verify: bool = False) -> dict:
    """Paths and sha256 of every data file, stored in the run row (hashed only when a file's
    stat changed since the database last hashed it, or verify: lvmd.data.hashes)."""
    out = {}
    for key in ("train", "val", "ood", "articles", "ood_articles"):
        path = getattr(cfg.data, key)
        if path:
            out[key] = {"path": path, "sha256": data_sha256(path, conn, verify=verify), "bytes": os.path.getsize(path)}
    return out


def preflight(cfg: RunConfig, db: str | Path) -> None:
    """What a run needs that can be checked before its row exists (nothing half-written): the
    5CAT profile, the database path and the folder its checkpoints go to."""
    from lvmd.eval.fivecat import load_profile

    load_profile(cfg.eval.profile)      # the device is checked by hardware.resolve in create()
    db_path = Path(db).resolve()
    check_path(db_path, create=True)
    check_folder(Path(cfg.out_dir) if cfg.out_dir else db_path.parent, "out_dir")
    if cfg.out_dir and Path(cfg.out_dir).is_dir() and any(Path(cfg.out_dir).iterdir()):
        # lvmd writes only into folders it made for the run (DESIGN rule 11)
        raise UserError(f"out_dir {cfg.out_dir}: is not empty; a new run needs a folder of its own")


def check_folder(path: Path, what: str) -> None:
    """`path` is a folder we can write, or can be created under one."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"{what} {path}: {folder} is not a directory")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise UserError(f"{what} {path}: {folder} is not writable")
            return


def create(cfg: RunConfig, db: str | Path, data: TrainData, *, sweep: tuple[int, str, int] | None = None,
           verify_data: bool = False) -> tuple[int, Path]:
    """Insert the run row (state starting) and make its output folder, in one transaction: a
    folder that cannot be made leaves no row. A device, precision or model this machine cannot
    run is refused first, so no row is left behind. sweep: (sweep id, configuration label,
    seed) of a sweep member, tagged in the same transaction."""
    # counted on the meta device, before hardware.resolve's bf16 trial builds the model for real
    check_model_fits(cfg.model, data.train.dim, hardware.pick_device(cfg.train.device))
    hw = hardware.resolve(cfg, data.train.dim, data.train.context_len)
    conn = connect(db)
    try:
        batches = -(-len(data.train) // cfg.train.batch_size)
        total = cfg.train.epochs * batches
        if cfg.train.max_steps:
            total = min(total, cfg.train.max_steps)
        manifest = data_manifest(cfg, conn, verify=verify_data)
        with transaction(conn):
            run_id = create_run(conn, name=cfg.name, preset=cfg.loss.preset, compat=cfg.compat,
                                config=config_to_dict(cfg), data=manifest,
                                total_epochs=cfg.train.epochs, total_steps=total, lvmd_version=__version__)
            update_run(conn, run_id, **hardware_fields(hw))
            if sweep is not None:
                tag_run(conn, run_id, *sweep)
            db_id = database_id(conn)
            out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(db, db_id, run_id)
            owner = {"db": str(Path(db).resolve()), "db_id": db_id, "run_id": run_id}
            refuse(folder_refusal(out_dir, owner))       # never into a folder that is not new or empty
            try:
                claim_folder(out_dir, owner)           # run.json: the folder's identity, written once
            except OSError as exc:
                raise UserError(f"out_dir {out_dir}: cannot create it ({exc.strerror})") from None
            update_run(conn, run_id, out_dir=str(out_dir))
    finally:
        conn.close()
    return run_id, out_dir


def hardware_fields(hw: hardware.Hardware) -> dict:
    compiled = {"compile": hw.compile, "compile_why": hw.compile_why} if hw.compile else {}  # the trainer's decision
    return {"device": str(hw.device), "precision": hw.precision, "threads": hw.threads, **compiled}


def default_out_dir(db: str | Path, db_id: str, run_id: int) -> Path:
    """Beside the database, keyed by the file itself: its full name (x.db and x.lvmd differ)
    and its random id (a copy of x.db made elsewhere, then moved here, still differs)."""
    db_path = Path(db).resolve()
    return db_path.parent / f"{db_path.name}-runs-{db_id[:12]}" / str(run_id)


def make_evaluator(cfg: RunConfig, data: TrainData, sink):
    """5CAT needs the articles bank; without it the run trains and validates only."""
    if data.articles is None:
        return None
    from lvmd.eval.evaluator import Evaluator

    return Evaluator(cfg, val=data.val, ood=data.ood, articles=data.articles,
                     ood_articles=data.ood_articles or data.articles, sink=sink)


def execute(cfg: RunConfig, db: str | Path, run_id: int, out_dir: Path, data: TrainData, *,
            control_factory: Callable[[SqliteSink], Control] | None = None,
            resume_from: Path | None = None, resume: bool = False,
            progress: Callable[[dict], None] | None = None, temp_removed: list[str] | None = None,
            identity: dict | None = None) -> str:
    """Train; returns the final state. The row ends finished or stopped; a failure leaves it
    crashed (resumable once the cause is fixed: a bad last.pt, a full disk), except a diverged
    run, which is failed (resuming would diverge again).

    A resume (resume_from, or `resume` with no checkpoint: a run that died before its first,
    which starts over at step 0) removes what the previous process wrote after the checkpoint's
    step (store.runs.truncate_after), so the steps continue with no gap and no duplicate; an
    epoch evaluation the checkpoint owes (killed during its 5CAT) is run before training on.
    lvmd.run.daemon.serve is the usual caller (it holds the run's lock and has proven the
    checkpoint; `identity` is what every checkpoint of this run carries).

    A database moved, replaced or stripped of its -wal under the run (sink.lost) stops it with a
    checkpoint; its final state goes into the file the daemon opened, never into whatever is at
    the path now, and the run ends with one line (DatabaseLost) on stderr and in its log."""
    from lvmd.train.telemetry import TrainingDiverged

    resume = resume or resume_from is not None
    sink = SqliteSink(db, run_id, flush_seconds=cfg.train.flush_seconds)
    control = (control_factory or (lambda s: Control(s)))(sink)
    dist = distributed.current()
    if dist is not None:     # distributed hook: rank 0 decides, every rank acts at block boundaries
        from lvmd.train.dist_control import LeaderControl

        control = LeaderControl(control, dist, every=cfg.train.telemetry_block)
    state, error, detail = "crashed", None, None
    try:
        sink.update_run(pid=os.getpid(), host=socket.gethostname(), started_at=time.time(), ended_at=None, error=None,
                        world_size=dist.world if dist else 1)
        control.set_state("starting", pid=os.getpid(), resume_from=str(resume_from) if resume_from else None)
        if resume:
            hold("resume-start")         # crash tests: a kill -9 of a resumed daemon before it trains
        watch = CollapseWatch(cfg, sink, act=control.request)
        trainer = Trainer(cfg, data, sink, out_dir=out_dir, control=control,
                          evaluator=make_evaluator(cfg, data, sink), progress=progress, watch=watch)
        trainer.identity = identity
        if resume:
            if resume_from is not None:
                trainer.load_checkpoint(resume_from)
            removed = sink.call(lambda conn: truncate_after(conn, run_id, trainer.step, trainer.epoch))
            due = trainer.eval_due
            if due is not None and sink.call(lambda conn: has_epoch_eval(conn, run_id, due)):
                trainer.eval_due = None          # the 5CAT finished before the process died
            watch.restore(*sink.call(lambda conn: (epochs_of(conn, run_id),
                                                   latest_steps(conn, run_id, cfg.watch.skip_window)[::-1])))
            sink.event("resume", step=trainer.step, epoch=trainer.epoch,
                       detail={"checkpoint": str(resume_from) if resume_from else None, "removed": removed,
                               "eval_rerun": trainer.eval_due, "temp_removed": temp_removed or []})
        sink.update_run(**hardware_fields(trainer.hardware))  # this process's: resume may run elsewhere
        sink.event("hardware", step=trainer.step, epoch=trainer.epoch,
                   detail={**hardware_fields(trainer.hardware), "why": trainer.hardware.why})
        control.beat(trainer.step, trainer.epoch)
        control.set_state("running", pid=os.getpid())
        state = trainer.run()
        return state
    except BaseException as exc:
        state = "failed" if isinstance(exc, TrainingDiverged) else "crashed"
        error = f"{type(exc).__name__}: {exc}".strip()
        detail = {"error": error, "traceback": traceback.format_exc(limit=8)}
        raise
    finally:
        control.close()
        if sink.check_database() is not None:
            error = error or sink.lost
            try:     # into the file the daemon opened: whatever is at the path now is another database
                sink.call(lambda conn: finish_on(conn, run_id, state, error=error, detail=detail))
            except Exception:
                pass
        try:
            sink.close()
        except Exception as exc:  # the final state below still gets written
            error = error or f"telemetry writer: {exc}"
            state = "crashed" if state in ("finished", "stopped") else state
        if sink.lost is not None:
            raise DatabaseLost(lost_line(run_id, sink.lost, state, out_dir))
        # The final state goes through a fresh connection: it must land even if the sink broke.
        try:
            finish(db, run_id, state, error=error, detail=detail)
        except (StoreError, sqlite3.Error) as exc:
            # disk full, read-only: the row keeps its last heartbeat, so the next lvmd command
            # that looks marks it crashed (store.runs.mark_stale_crashed) once it can write
            print(f"lvmd: error: run {run_id}: cannot record its final state {state!r}: {exc}", file=sys.stderr)
            if error is None:
                raise


class DatabaseLost(UserError):
    """The database file changed under a live run (store.writer.DatabaseWatch)."""


def lost_line(run_id: int, reason: str, state: str, out_dir: Path) -> str:
    """The one line a run ends with when its database changed under it; also appended to the
    run folder's daemon.log when stderr is not that log already."""
    last = out_dir / "last.pt"
    line = (f"run {run_id}: {reason}; {state}" + (f", checkpoint {last}" if last.exists() else "")
            + "; its rows are in the file it opened. Never move, replace or delete a live database or "
              "its -wal/-shm (`lvmd backup DB OUT` copies one safely)")
    log = out_dir / "daemon.log"
    try:
        if not (log.exists() and os.path.samestat(os.fstat(2), log.stat())):
            with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600), "a") as fh:
                fh.write(f"lvmd: error: {line}\n")
    except OSError:
        pass
    return line


def finish(db: str | Path, run_id: int, state: str, *, error: str | None = None, detail: dict | None = None) -> None:
    """The final state and its event; commands the run will never do are failed with it."""
    conn = connect(db)
    try:
        with transaction(conn):
            finish_on(conn, run_id, state, error=error, detail=detail)
    finally:
        conn.close()


def finish_on(conn, run_id: int, state: str, *, error: str | None = None, detail: dict | None = None) -> None:
    """finish() in the caller's transaction."""
    sync_progress(conn, run_id)      # a divergence can end a run between two heartbeats
    row = get_run(conn, run_id)
    fields = {"state": state, "ended_at": time.time(), "heartbeat_at": time.time()}
    if error:
        fields["error"] = error.splitlines()[0]
    update_run(conn, run_id, **fields)
    insert_event(conn, run_id, "state", {"state": state, "previous": row["state"]}, step=row["step"],
                 epoch=row["epoch"])
    if error:
        insert_event(conn, run_id, "error", detail or {"error": error})
    fail_open(conn, run_id, f"run {state}")
