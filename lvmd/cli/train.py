"""`lvmd run`: train in the foreground (tmux, systemd), with a progress line."""
from __future__ import annotations

import argparse
import os
import sys
import time

from lvmd.cli.main import default_db, int_in
from lvmd.config import load_config
from lvmd.data.train_data import load_train_data
from lvmd.errors import UserError
from lvmd.run import daemon, launch

# Modules that load torch (runner, trainer, 5CAT, legacy) or textual are imported inside the
# commands that need them, so `lvmd --help` and the light verbs start without them.


def register(sub) -> None:
    p = sub.add_parser("run", help="train in the foreground; prints the run id")
    p.add_argument("config", nargs="?", help="TOML config (omit to use defaults + overrides)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")
    p.add_argument("--db", help="SQLite file (default $LVMD_DB or ./lvmd.db)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    nproc_arg(p)
    p.add_argument("--allow-pickle", action="store_true",
                   help="read the original's pickled NPZ metadata (runs code from the file); same as data.allow_pickle=true")
    verify_data_arg(p)
    p.set_defaults(func=cmd_run)


def verify_data_arg(p) -> None:
    p.add_argument("--verify-data", action="store_true",
                   help="hash every data file in full, even those whose size and times say they have not "
                        "changed since this database last hashed them")


def nproc_arg(p) -> None:
    p.add_argument("--nproc", type=int_in(1, 4096), default=None, metavar="N",
                   help="train on N local processes (torchrun; train.batch_size is the global batch)")


def check_nproc(n: int | None) -> int:
    if n is not None and n < 1:
        raise UserError(f"--nproc: {n} must be >= 1")
    if n and n > 1 and launch.launched():
        raise UserError("--nproc: this process is already one rank of a torchrun job; drop --nproc")
    return n or 1


def split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`lvmd run key=value ...` without a file: the first positional is an override."""
    if config is not None and "=" in config and not config.endswith(".toml"):
        return None, [config, *overrides]
    return config, list(overrides)


class Progress:
    """A redrawn line on a terminal; plain lines every few seconds otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_line = 0.0
        self.first_step: int | None = None

    def __call__(self, info: dict) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last_line < 5.0:
            return
        self.last_line = now
        step, total = info["step"], max(info["total_steps"], 1)
        if self.first_step is None:
            self.first_step = step
        rate = (step - self.first_step) / max(now - self.started, 1e-9)
        eta = (total - step) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * step / total)
        bar = "█" * filled + "·" * (width - filled)
        line = (f"epoch {info['epoch'] + 1}/{info['epochs']} {bar} {step}/{total} "
                f"loss {info['total']:.4g} ρ {info['rho']:.3f} pos {info['pos']:+.3f} "
                f"neg {info['neg']:+.3f} skip {int(info['skip'])} {rate:.1f} it/s ETA {_fmt(eta)}")
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def cmd_run(args: argparse.Namespace) -> int:
    nproc = check_nproc(args.nproc)
    if launch.follower():                 # torchrun rank > 0: rank 0 checks input and hands over the job
        return serve_foreground(None, None, quiet=True)
    config, overrides = split_config_arg(args.config, args.overrides)
    cfg = load_config(config, overrides + (["data.allow_pickle=true"] if args.allow_pickle else []))
    # input vetted before anything is written and before torch; the rows of val/OOD/banks are
    # checked on a helper thread beside torch's import, the train rows as batches draw them
    data = load_train_data(cfg, check="background")
    from lvmd.run import runner           # loads torch: only once the config and data are known good
    db = args.db or default_db()
    runner.preflight(cfg, db)             # profile, database and folder: before any row
    run_id, out_dir = runner.create(cfg, db, data, verify_data=args.verify_data)
    print(f"run {run_id} ({cfg.name}, preset {cfg.loss.preset}) → {db}; checkpoints in {out_dir}", flush=True)
    if nproc > 1:
        return launch_foreground(db, run_id, nproc, quiet=args.quiet)
    return serve_foreground(db, run_id, cfg=cfg, data=data, quiet=args.quiet)


def launch_foreground(db: str, run_id: int, nproc: int, *, quiet: bool, resume: bool = False,
                      allow_pickle: bool = False, allow_data_change: bool = False, adopt_folder: bool = False,
                      begun: bool = False, verify_data: bool = False) -> int:
    """`lvmd serve RUN` on nproc processes under torchrun, in the foreground. If the job died
    without recording it (a rank killed, torchrun tearing the rest down), the run is marked
    crashed here, as a later `lvmd status` would."""
    from pathlib import Path

    from store.db import connect
    from store.runs import LIVE_STATES, daemon_alive, get_run, record_state

    args = ["serve", "--db", str(Path(db).resolve()), str(run_id)] + (["--resume"] if resume else []) \
        + (["--quiet"] if quiet else []) + (["--allow-pickle"] if allow_pickle else []) \
        + (["--allow-data-change"] if allow_data_change else []) + (["--adopt-folder"] if adopt_folder else []) \
        + (["--begun"] if begun else []) + (["--verify-data"] if verify_data else [])
    code = launch.run_job(nproc, args)
    conn = connect(db)
    try:
        run = get_run(conn, run_id)
        if run["state"] in LIVE_STATES and not daemon_alive(run):
            record_state(conn, run_id, "crashed", {"reason": f"torchrun exited {code}"}, expect=(run["state"],),
                         error=f"crashed: a rank died (torchrun exit status {code})")
    finally:
        conn.close()
    return code


def serve_foreground(db: str, run_id: int, *, quiet: bool, resume: bool = False, cfg=None, data=None,
                     allow_pickle: bool = False, allow_data_change: bool = False, adopt_folder: bool = False,
                     begun: bool = False, verify_data: bool = False) -> int:
    """Train a run row in this process (lvmd run, lvmd serve, lvmd resume --foreground) under
    the daemon's lock and control, so it takes pause/eval/checkpoint/stop commands too.

    If the database changed under the run, its connections are parked (store.db.park) and the
    process ends with os._exit after its one line: a normal exit would close them, and SQLite's
    close deletes -wal and -shm by path, which may belong to another database now."""
    from store.db import parked

    progress = None if quiet or launch.follower() else Progress()
    try:
        opts = {"allow_pickle": allow_pickle, "allow_data_change": allow_data_change, "adopt_folder": adopt_folder,
                "begun": begun, "verify_data": verify_data}
        if launch.launched():             # distributed hook: one rank of a torchrun job
            state = launch.serve(db, run_id, cfg=cfg, data=data, resume=resume, progress=progress, **opts)
            if state is None:             # a rank > 0: rank 0 reports the run
                return 0
        else:
            state = daemon.serve(db, run_id, cfg=cfg, data=data, resume=resume, progress=progress, **opts)
    except UserError as exc:
        if parked():
            if progress:
                progress.close()
            print(f"lvmd: error: {str(exc).splitlines()[0]}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)
        raise
    except Exception as exc:
        if progress:
            progress.close()
        who = f"run {run_id}" if run_id is not None else f"rank {os.environ.get('RANK')} of the job"
        print(f"lvmd: error: {who} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    if progress:
        progress.close()
    print(f"run {run_id} {state}", flush=True)
    return 0
