"""`lvmd sweep CONFIG --grid key=a,b --seeds N [--parallel N]`, `lvmd sweep resume ID`,
`lvmd sweep status [ID]`: configurations × seeds as ordinary runs under one sweep row
(lvmd/run/sweep.py drives them; `lvmd compare --sweep` and `lvmd report --sweep` judge them)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lvmd.cli.main import default_db, int_in, number_in
from lvmd.config import absolute_overrides
from lvmd.errors import UserError
from lvmd.eval.verdict import format_table
from lvmd.run.sweep import LOCK_FILE, sweep_dir
from store.db import check_path, connect
from store.runs import lock_held
from store.sweeps import UnknownSweep, get_sweep, list_sweeps, sweep_summary

SUBCOMMANDS = ("resume", "status")


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run configurations × seeds (a grid, or an Optuna search) as runs grouped under a sweep",
        description="lvmd sweep CONFIG [key=value ...] --grid KEY=V1,V2 [--grid ...] --seeds N [--parallel N]; "
                    "lvmd sweep resume ID; lvmd sweep status [ID]. Each configuration × seed is an ordinary run "
                    "(its own id, lock, daemon; pause/stop/resume work on it). The driver runs in the foreground; "
                    "killing it leaves the runs training, and `lvmd sweep resume ID` carries on.")
    p.add_argument("config", nargs="?", help="TOML config, or `resume` / `status`")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run (or the sweep id)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="an axis of the grid (repeat); with --search optuna, a categorical choice")
    p.add_argument("--seeds", default="1", help="N (seeds 0..N-1) or a list 0,5,9; one seed alone: 7, (default 1)")
    p.add_argument("--parallel", type=int_in(1, 1024), help="runs training at once (default: one per GPU, else cores/2)")
    p.add_argument("--name", help="sweep name (default: the config's name)")
    p.add_argument("--search", choices=("grid", "optuna"), default="grid")
    p.add_argument("--trials", type=int_in(0, 100_000), default=0, help="optuna: configurations to sample")
    p.add_argument("--objective", choices=("margin", "val_cos", "r_at_5"), default="margin",
                   help="what a configuration is judged by: the mean of its seeds' last epoch (maximised)")
    p.add_argument("--range", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                   help="optuna: a float range to sample")
    p.add_argument("--enqueue", action="append", default=[], metavar="'KEY=V KEY=V'",
                   help="optuna: a configuration to try first (repeat)")
    p.add_argument("--sampler-seed", type=int_in(0, 2**63 - 1), default=0, help="optuna: the TPE sampler's seed")
    p.add_argument("--prune-skip-max", type=number_in(0, 1),
                   help="optuna: prune when an epoch's skip rate exceeds this (default: the run's watch.skip_rate_max)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read the original's pickled NPZ metadata in every member (runs code from the file); "
                        "`sweep resume` needs it again: it is never taken from the database")
    p.add_argument("--json", action="store_true", help="status: JSON")
    p.add_argument("--db", help="SQLite file (default $LVMD_DB or ./lvmd.db)")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.config == "resume":
        return _resume(args)
    if args.config == "status":
        return _status(args)
    return _new(args)


def _db(args) -> Path:
    return Path(args.db or default_db()).resolve()


MAX_SEEDS = 1000


def _seeds(text: str) -> list[int]:
    """`3` is a count (0, 1, 2); a comma makes a list, so `7,` is the one seed 7 (to add a seed
    to a configuration that has the others)."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.removesuffix(",").split(",")]
        else:
            if not 0 < int(text) <= MAX_SEEDS:
                raise UserError(f"--seeds {text[:24]!r}: a count from 1 to {MAX_SEEDS}, or a list (0,5,9)")
            seeds = list(range(int(text)))
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected a count (3) or a list (0,5,9)") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) >= 2**63:
        raise UserError(f"--seeds {text!r}: expected at least one seed, none repeated, negative or past 2**63")
    return seeds


def _new(args) -> int:
    from lvmd.cli.train import split_config_arg
    from lvmd.config import load_config
    from lvmd.run import sweep

    config, overrides = split_config_arg(args.config, args.overrides)
    grid = [sweep.parse_axis(item) for item in args.grid]
    keys = [k for k, _ in grid]
    if len(set(keys)) != len(keys):
        raise UserError("--grid: an axis is given twice")
    ranges = [sweep.parse_range(item) for item in args.range]
    if args.search == "grid":
        if ranges or args.enqueue or args.trials:
            raise UserError("--range, --enqueue and --trials need --search optuna")
    elif args.trials < 1:
        raise UserError("--search optuna needs --trials K (K >= 1)")
    elif not grid and not ranges:
        raise UserError("--search optuna needs a search space: --grid KEY=V1,V2 and/or --range KEY=LOW:HIGH")
    if args.parallel is not None and args.parallel < 1:
        raise UserError(f"--parallel {args.parallel}: must be >= 1")
    spec = sweep.SweepSpec(
        config=str(Path(config).resolve()) if config else None, overrides=absolute_overrides(overrides), grid=grid,
        seeds=_seeds(args.seeds), search=args.search, trials=args.trials, objective=args.objective,
        ranges=ranges, enqueue=[item.split() for item in args.enqueue], sampler_seed=args.sampler_seed,
        prune_skip_max=args.prune_skip_max)
    base = load_config(config, overrides)
    name = args.name or base.name
    # the opt-in: this command line, or the config file and overrides given now (never the DB later)
    allow_pickle = args.allow_pickle or base.data.allow_pickle
    db = _db(args)
    parallel = args.parallel or sweep.default_parallel()
    sweep_id = sweep.create(db, spec, name=name, parallel=parallel)
    print(f"sweep {sweep_id} ({name}): {args.search}, seeds {','.join(map(str, spec.seeds))}, "
          f"{parallel} at once → {db}", flush=True)
    state = sweep.Driver(db, sweep_id, say=_say, allow_pickle=allow_pickle).run()
    return 0 if state in ("finished", "stopped") else 1


def _say(text: str) -> None:
    print(text, flush=True)


def _resume(args) -> int:
    from lvmd.run import sweep

    if len(args.overrides) != 1:
        raise UserError("usage: lvmd sweep resume ID [--parallel N] [--allow-pickle] [--db FILE]")
    db = _db(args)
    check_path(db, create=False)      # missing (with how to name one), a FIFO, a device node
    try:
        conn = connect(db)
        try:
            sweep_id = get_sweep(conn, args.overrides[0])["id"]
        finally:
            conn.close()
    except UnknownSweep as exc:
        raise UserError(str(exc)) from None
    print(f"sweep {sweep_id}: resuming → {db}", flush=True)
    state = sweep.resume(db, sweep_id, parallel=args.parallel, say=_say, allow_pickle=args.allow_pickle)
    return 0 if state in ("finished", "stopped") else 1


def _status(args) -> int:
    db = _db(args)
    check_path(db, create=False)      # missing (with how to name one), a FIFO, a device node
    conn = connect(db)
    try:
        try:
            sweeps = [get_sweep(conn, args.overrides[0])] if args.overrides else list_sweeps(conn)
        except UnknownSweep as exc:
            raise UserError(str(exc)) from None
        out = [{**s, "configs": sweep_summary(conn, s["id"])} for s in sweeps]
    finally:
        conn.close()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if not out:
        print("no sweeps in this database yet")
    for s in out:
        spec = json.loads(s["spec_json"])
        planned = len(spec["seeds"]) * len(s["configs"])
        done = sum(c["finished"] for c in s["configs"])
        state = s["state"]
        if state == "running" and not lock_held(sweep_dir(db, s["id"]) / LOCK_FILE):
            state = f"running, but its driver is gone (`lvmd sweep resume {s['id']}`)"
        print(f"sweep {s['id']} {s['name']!r} · {s['search']} · {state} · {done}/{planned} runs finished")
        rows = [[c["config"], c["config_state"], f"{c['finished']}/{len(spec['seeds'])}",
                 "–" if c["margin_mean"] is None else f"{c['margin_mean']:+.4f}", c["reason"] or ""]
                for c in s["configs"]]
        if rows:
            print(format_table(["config", "state", "finished", "mean margin", "why"], rows, left_columns=2))
    return 0
