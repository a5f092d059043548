"""One run on several processes: torchrun (torch.distributed.run) starts them, rank 0 is the run's
daemon, the other ranks train under its orders.

- `torchrun --nproc-per-node N -m lvmd run CONFIG [k=v ...]` (or any torchrun rendezvous, e.g.
  two nodes): rank 0 checks the input and creates the run row; every rank then comes to serve().
- `lvmd run|start|resume ... --nproc N` start `python -m torch.distributed.run --standalone
  --nproc-per-node N -m lvmd serve RUN` for you (torchrun_argv), detached for start/resume.

Rank 0 alone opens the database (writes steps, events, epochs, evals, heartbeats, claims
commands), holds the run's lock, validates, runs 5CAT and writes checkpoints. It hands the
others the resolved config, the run folder and the checkpoint to resume from in one broadcast;
they never open the database at all. Importing this module loads no torch.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable


def launched() -> bool:
    """Is this process one of several ranks started by torchrun?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def follower() -> bool:
    """A rank > 0 of a torchrun job: it takes everything from rank 0 and touches no database."""
    return launched() and int(os.environ.get("RANK", "0")) != 0


def torchrun_argv(nproc: int, lvmd_args: list[str]) -> list[str]:
    """The command line that runs `lvmd <lvmd_args>` on `nproc` local processes (one node;
    --standalone picks a free rendezvous port, so two jobs on one host never collide)."""
    if nproc <= 1:
        return [sys.executable, "-m", "lvmd", *lvmd_args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "lvmd", *lvmd_args]


def run_job(nproc: int, lvmd_args: list[str]) -> int:
    """torchrun in the foreground; its exit status. Ctrl-C reaches every rank from the terminal
    (rank 0 stops gracefully and the others follow it), so this parent only waits."""
    proc = subprocess.Popen(torchrun_argv(nproc, lvmd_args), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def serve(db: str | Path | None, run_id: int | None, *, resume: bool = False, cfg=None, data=None,
          progress: Callable[[dict], None] | None = None, **opts) -> str | None:
    """Train a run as one rank of a torchrun job. Rank 0: lvmd.run.daemon.serve, which hands
    the job to the others once it holds the lock (announce); its final state. Others: None."""
    from lvmd.train import distributed

    d = distributed.init()
    if not d.main:
        _follow(d)
        state = None
    else:
        state = _lead(d, db, run_id, resume=resume, cfg=cfg, data=data, progress=progress, **opts)
    distributed.close()          # on an error the process simply ends (a lost peer could hang a teardown)
    return state


def _lead(d, db, run_id, *, resume, cfg, data, progress, **opts) -> str:
    """opts: daemon.serve's opt-ins (allow_pickle, allow_data_change, verify_data), from this rank's command line."""
    from lvmd.config import config_to_dict
    from lvmd.run import daemon

    announced = False

    def announce(cfg, run: dict, checkpoint: Path | None) -> None:
        nonlocal announced
        d.broadcast_object({"config": config_to_dict(cfg), "out_dir": run["out_dir"], "run_id": run["id"],
                            "checkpoint": str(checkpoint) if checkpoint else None})
        announced = True

    try:
        return daemon.serve(db, run_id, cfg=cfg, data=data, resume=resume, progress=progress, announce=announce,
                            **opts)
    except BaseException as exc:
        if not announced:                   # the others wait for the job: tell them it is off
            d.broadcast_object({"error": f"{type(exc).__name__}: {exc}"})
        raise


def _follow(d) -> None:
    from lvmd.config import config_from_dict
    from lvmd.train.dist_control import FollowerControl
    from lvmd.train.sink import NullSink
    from lvmd.data.train_data import load_train_data
    from lvmd.train.trainer import Trainer

    job = d.broadcast_object(None)
    if "error" in job:
        raise SystemExit(1)                 # rank 0 reports the error; this rank just ends
    cfg = config_from_dict(job["config"])
    trainer = Trainer(cfg, load_train_data(cfg), NullSink(), out_dir=job["out_dir"],
                      control=FollowerControl(d, every=cfg.train.telemetry_block))
    if job["checkpoint"]:
        trainer.load_checkpoint(job["checkpoint"])
    trainer.run()
