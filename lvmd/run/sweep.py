"""Sweeps: configurations × seeds, each an ordinary run started with the daemon machinery
(runner.create + daemon.spawn, exactly what `lvmd start` does), at most `parallel` training at
once, grouped under one `sweeps` row.

The driver is a foreground loop that only reads the database, starts daemons and queues
commands; it never trains. Killing it leaves its runs training (they are detached daemons);
`lvmd sweep resume ID` starts a new driver that counts the live runs, restarts the stopped and
crashed ones (from their checkpoint, or from scratch under the same id if they died before the
first one) and starts the slots that have no run yet. With `search = "optuna"` the
configurations come from an Optuna study (lvmd/run/sweep_search.py) and a trial whose guardrails
fail at an epoch boundary is stopped and told PRUNED, with the reason on the run and the trial.
"""
from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lvmd.config import ConfigError, RunConfig, load_config
from lvmd.errors import UserError
from lvmd.run import daemon
from lvmd.train.sink import NullSink
from store.commands import CommandError, enqueue
from store.db import connect, transaction
from store.runs import LIVE_STATES, mark_stale_crashed, record_state, truncate_after
from store.sweeps import (
    add_config,
    configs_of,
    create_sweep,
    get_sweep,
    guardrail_events,
    last_epoch,
    member_values,
    members,
    record_pruned,
    set_config,
    update_sweep,
)

POLL_SECONDS = 1.0          # the driver looks at its runs this often (a few indexed reads)
START_SECONDS = 300.0       # how long one daemon may take to report running (loaded machines)
OBJECTIVES = {"margin": "last_margin", "val_cos": "last_val_cos", "r_at_5": "last_r_at_5"}
LOCK_FILE = "sweep.lock"
MAX_RESTARTS = 3            # restarts of one crashed member by one driver before it is left crashed


@dataclass(frozen=True)
class SweepSpec:
    """Everything a driver needs to (re)plan a sweep; stored as sweeps.spec_json."""
    config: str | None                  # the TOML file (absolute), or None for defaults
    overrides: list[str]                # applied to every member
    grid: list[tuple[str, list[str]]]   # axes: key, values (TOML text, as on the command line)
    seeds: list[int]
    search: str = "grid"                # grid | optuna
    trials: int = 0                     # optuna: how many configurations to sample
    objective: str = "margin"
    ranges: list[tuple[str, float, float, bool]] = ()   # optuna: key, low, high, log
    enqueue: list[list[str]] = ()       # optuna: configurations to try first (key=value lists)
    sampler_seed: int = 0
    prune_skip_max: float | None = None  # epoch skip rate that prunes; None: the run's watch.skip_rate_max

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> SweepSpec:
        d = dict(d)
        d["grid"] = [(k, list(v)) for k, v in d["grid"]]
        d["ranges"] = [tuple(r) for r in d.get("ranges", [])]
        return cls(**d)


# -- planning --------------------------------------------------------------------------------
def parse_axis(item: str) -> tuple[str, list[str]]:
    """`loss.preset=mse,v2.1` → ("loss.preset", ["mse", "v2.1"])."""
    if "=" not in item:
        raise UserError(f"--grid {item!r}: expected key=v1,v2,..., e.g. loss.preset=mse,v2.1")
    key, text = item.split("=", 1)
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not key.strip() or not values:
        raise UserError(f"--grid {item!r}: expected key=v1,v2,...")
    if len(set(values)) != len(values):
        raise UserError(f"--grid {item!r}: a value is repeated")
    return key.strip(), values


def parse_range(item: str) -> tuple[str, float, float, bool]:
    """`loss.lam_max=1e-3:0.05[:log]` → a float range Optuna samples (optuna search only)."""
    try:
        key, text = item.split("=", 1)
        parts = text.split(":")
        low, high = float(parts[0]), float(parts[1])
        log = parts[2:] == ["log"]
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log) or not low < high:
            raise ValueError
    except (ValueError, IndexError):
        raise UserError(f"--range {item!r}: expected key=LOW:HIGH or key=LOW:HIGH:log with LOW < HIGH") from None
    if log and low <= 0:
        raise UserError(f"--range {item!r}: a log range needs LOW > 0")
    return key.strip(), low, high, log


def grid_points(grid: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """Every combination of the axes as (label, overrides); the label names the configuration."""
    if not grid:
        return [("base", [])]
    keys = [k for k, _ in grid]
    points = []
    for values in itertools.product(*(v for _, v in grid)):
        overrides = [f"{k}={v}" for k, v in zip(keys, values)]
        points.append((" ".join(overrides), overrides))
    return points


def member_config(spec: SweepSpec, overrides: list[str], seed: int, name: str, threads: int) -> RunConfig:
    """The resolved config of one member: the file, the sweep's overrides, the configuration's,
    its seed and name; train.threads "auto" becomes an even share of the CPUs (auto measures the
    CPUs free at one moment, and N members starting one after another would each see a different
    share)."""
    extra = [f"train.seed={seed}", f"name={json.dumps(name)}"]
    cfg = load_config(spec.config, [*spec.overrides, *overrides, *extra])
    if cfg.train.threads == "auto" and threads:
        cfg = load_config(spec.config, [*spec.overrides, *overrides, *extra, f"train.threads={threads}"])
    return cfg


def run_name(sweep_name: str, overrides: list[str], seed: int) -> str:
    values = [o.split("=", 1)[1] for o in overrides]
    return "/".join([sweep_name, *values, f"s{seed}"])


def default_parallel() -> int:
    """One run per GPU; on a CPU, one per two cores (each then gets two torch threads)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, len(os.sched_getaffinity(0)) // 2)


def sweep_dir(db: Path, sweep_id: int | None = None) -> Path:
    base = db.parent / f"{db.stem}-sweeps"
    return base if sweep_id is None else base / str(sweep_id)


def create(db: Path, spec: SweepSpec, *, name: str, parallel: int) -> int:
    """Check every configuration resolves (a bad key or value fails here, before any row is
    written), then insert the sweep row and, for a grid, its configurations."""
    points = grid_points(spec.grid) if spec.search == "grid" else []
    for label, overrides in points or [("base", [])]:
        try:
            member_config(spec, overrides, spec.seeds[0], name, 0)
        except ConfigError as exc:
            raise UserError(f"{label}: {exc}") from None
    conn = connect(db)
    try:
        with transaction(conn):
            sweep_id = create_sweep(conn, name=name, search=spec.search, config_path=spec.config or "",
                                    spec=spec.to_dict(), parallel=parallel)
            for label, overrides in points:
                add_config(conn, sweep_id, label, overrides)
            if spec.search == "optuna":
                sweep_dir(db).mkdir(parents=True, exist_ok=True, mode=0o700)
                update_sweep(conn, sweep_id, study_storage=f"sqlite:///{sweep_dir(db) / 'optuna.db'}",
                             study_name=f"lvmd-sweep-{sweep_id}")
    finally:
        conn.close()
    return sweep_id


# -- the driver ------------------------------------------------------------------------------
class SweepLock:
    """One driver per sweep: an flock on <db>-sweeps/<id>/sweep.lock, released by the kernel
    when the driver dies (so a killed driver never blocks `lvmd sweep resume`)."""

    def __init__(self, folder: Path, sweep_id: int):
        self.path, self.sweep_id, self.fd = folder / LOCK_FILE, sweep_id, None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"sweep {self.sweep_id} already has a driver running") from None
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


class Driver:
    def __init__(self, db: Path, sweep_id: int, *, say: Callable[[str], None] = print):
        self.db, self.say = db, say
        conn = connect(db)
        try:
            self.sweep = get_sweep(conn, sweep_id)
        finally:
            conn.close()
        self.id = sweep_id
        self.spec = SweepSpec.from_dict(json.loads(self.sweep["spec_json"]))
        self.parallel = self.sweep["parallel"]
        self.threads = max(1, len(os.sched_getaffinity(0)) // self.parallel)
        self.data: dict = {}                  # loaded training data by data config (shared by members)
        self.checked: dict[int, int] = {}     # run id → epochs already judged by the pruner
        self.restart: set[int] = set()        # stopped/crashed members this driver restarts
        self.restarts: dict[int, int] = {}    # run id → restarts by this driver
        self.stop_asked = False
        self.search = None
        if self.spec.search == "optuna":
            from lvmd.run.sweep_search import OptunaSearch

            self.search = OptunaSearch(self.sweep, self.spec)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> str:
        with SweepLock(sweep_dir(self.db, self.id), self.id):
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                return self._loop()
            finally:
                for s, handler in old.items():
                    signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        self.stop_asked = True

    def _loop(self) -> str:
        conn = connect(self.db)
        try:
            update_sweep(conn, self.id, state="running", pid=os.getpid(), host=socket.gethostname(), ended_at=None)
            mark_stale_crashed(conn)
            # what a previous driver (or a reboot) left: restart it; pruned trials stay stopped
            pruned = {c["label"] for c in configs_of(conn, self.id) if c["state"] == "pruned"}
            self.restart = {r["id"] for r in members(conn, self.id)
                            if r["state"] in ("stopped", "crashed") and r["sweep_config"] not in pruned}
            if self.search:
                self.search.reconcile(conn)
            while not self.stop_asked:
                mark_stale_crashed(conn)
                runs = members(conn, self.id)
                # a member that crashes while this driver runs is restarted (a few times: a run that
                # crashes again and again needs a person); one a user stopped is not
                self.restart |= {r["id"] for r in runs if r["state"] == "crashed"
                                 and self.restarts.get(r["id"], 0) < MAX_RESTARTS}
                self._judge(conn, runs)
                configs = configs_of(conn, self.id)
                live = [r for r in runs if r["state"] in LIVE_STATES]
                todo = self._todo(configs, runs)
                if self.search and not todo and len(live) < self.parallel and self.search.wants_more(configs):
                    self.search.ask(conn, self.id)
                    continue
                if not live and not todo:
                    return self._end(conn, configs, runs)
                if len(live) < self.parallel and todo:
                    self._start(conn, *todo[0])
                    continue
                time.sleep(POLL_SECONDS)
            update_sweep(conn, self.id, state="stopped", ended_at=time.time())
            self.say(f"sweep {self.id}: driver stopped; its runs keep training. `lvmd sweep resume {self.id}` "
                     "continues the sweep")
            return "stopped"
        finally:
            conn.close()

    def _todo(self, configs: list[dict], runs: list[dict]) -> list[tuple[dict, int, dict | None]]:
        """(configuration, seed, run or None) of every slot to start or restart, in plan order."""
        latest = {(r["sweep_config"], r["sweep_seed"]): r for r in runs}
        todo = []
        for c in configs:
            if c["state"] != "open":
                continue
            for seed in self.spec.seeds:
                run = latest.get((c["label"], seed))
                if run is None or run["id"] in self.restart and run["state"] in ("stopped", "crashed"):
                    todo.append((c, seed, run))
        return todo

    def _start(self, conn, config: dict, seed: int, run: dict | None) -> None:
        label = config["label"]
        try:
            if run is None:
                run_id, how = self._start_new(config, seed), "started"
            else:
                self.restart.discard(run["id"])
                self.restarts[run["id"]] = self.restarts.get(run["id"], 0) + 1
                run_id, how = self._restart(conn, run), "restarted"
        except UserError as exc:   # a run row that exists is marked failed; the sweep goes on
            self.say(f"sweep {self.id}: {label} seed {seed}: {exc}")
            if run is not None:
                self.restart.discard(run["id"])
            elif not any(r["sweep_config"] == label and r["sweep_seed"] == seed for r in members(conn, self.id)):
                # failed before a row existed (its data): the configuration cannot run at all
                set_config(conn, self.id, label, "failed", reason=str(exc))
                if self.search:
                    self.search.tell(config, None, "failed")
            return
        self.say(f"sweep {self.id}: run {run_id} {how} ({label}, seed {seed})")

    def _start_new(self, config: dict, seed: int) -> int:
        from lvmd.data.train_data import load_train_data
        from lvmd.run import runner

        name = run_name(self.sweep["name"], config["overrides"], seed)
        cfg = member_config(self.spec, config["overrides"], seed, name, self.threads)
        key = cfg.data                      # frozen: members with the same data share one load
        if key not in self.data:
            self.data[key] = load_train_data(cfg, check="sample")   # bad files fail here, before a run row exists
            runner.make_evaluator(cfg, self.data[key], NullSink())
        runner.preflight(cfg, self.db)                 # profile, database and folder: before any row
        run_id, out_dir = runner.create(cfg, self.db, self.data[key], sweep=(self.id, config["label"], seed))
        spawned = daemon.spawn(self.db, {"id": run_id, "out_dir": str(out_dir)}, resume=False)
        daemon.wait_started(self.db, run_id, spawned, timeout=START_SECONDS)
        return run_id

    def _restart(self, conn, run: dict) -> int:
        """From its checkpoint; a run that died before writing one starts over under its id."""
        path = Path(run["out_dir"] or ".") / daemon.CHECKPOINT
        resume = path.exists()
        if not resume:
            truncate_after(conn, run["id"], 0, 0)
            record_state(conn, run["id"], "starting", {"reason": "sweep restart: no checkpoint yet"},
                         expect=("stopped", "crashed"), error=None, ended_at=None, heartbeat_at=time.time())
        else:
            daemon.resumable_checkpoint(conn, run, locked=False)
        spawned = daemon.spawn(self.db, run, resume=resume)
        daemon.wait_started(self.db, run["id"], spawned, timeout=START_SECONDS)
        return run["id"]

    # -- judging: pruning and completed configurations -----------------------------------------
    def _judge(self, conn, runs: list[dict]) -> None:
        by_config: dict[str, list[dict]] = {}
        for r in runs:
            by_config.setdefault(r["sweep_config"], []).append(r)
        for c in configs_of(conn, self.id):
            if c["state"] != "open":
                continue
            mine = by_config.get(c["label"], [])
            if self.search is not None:
                reason = self._guardrail_failure(conn, mine)
                if reason is not None:
                    self._prune(conn, c, mine, *reason)
                    continue
            done = {r["sweep_seed"]: r for r in mine if r["state"] in ("finished", "failed")}
            if len(done) == len(self.spec.seeds):
                self._complete(conn, c, list(done.values()))

    def _guardrail_failure(self, conn, runs: list[dict]) -> tuple[str, dict, dict] | None:
        """At each new epoch boundary of a member: a collapse warning, or the epoch's skip rate
        over the limit, fails the configuration. (reason, run, evidence) or None."""
        for r in runs:
            if r["epochs_done"] <= self.checked.get(r["id"], 0):
                continue
            self.checked[r["id"]] = r["epochs_done"]
            warnings = guardrail_events(conn, r["id"])
            if warnings:
                w = warnings[0]
                symptoms = ", ".join(f"{s['symptom']} {_num(s['value'])} (limit {_num(s['limit'])})"
                                     for s in w.get("symptoms", []))
                return (f"collapse warning at step {w['step']} (epoch {w['epoch'] + 1}): {symptoms}", r,
                        {"kind": "collapse_warning", "warning": w})
            epoch = last_epoch(conn, r["id"])
            limit = self.spec.prune_skip_max
            if limit is None:
                limit = json.loads(r["config_json"]).get("watch", {}).get("skip_rate_max", 0.10)
            if epoch and epoch["skip_rate"] is not None and epoch["skip_rate"] > limit:
                return (f"skip rate {epoch['skip_rate']:.1%} in epoch {epoch['epoch'] + 1} is over the limit "
                        f"{limit:.1%}", r, {"kind": "skip_rate", "skip_rate": epoch["skip_rate"], "limit": limit,
                                            "epoch": epoch["epoch"]})
        return None

    def _prune(self, conn, config: dict, runs: list[dict], reason: str, culprit: dict, evidence: dict) -> None:
        if culprit["state"] not in LIVE_STATES:
            reason += f" (run {culprit['id']} had {culprit['state']} before the sweep looked)"
        for r in runs:
            if r["state"] in LIVE_STATES:
                try:
                    enqueue(conn, r["id"], "stop", {"grace": 30, "by": f"sweep {self.id} pruner"})
                except CommandError:
                    pass                 # it ended meanwhile: nothing to stop
            record_pruned(conn, r["id"], {"sweep_id": self.id, "reason": reason, "culprit_run": culprit["id"],
                                          **evidence}, step=r["step"], epoch=r["epoch"])
        set_config(conn, self.id, config["label"], "pruned", reason=reason)
        if self.search:
            self.search.tell(config, None, "pruned")
        self.say(f"sweep {self.id}: pruned {config['label']}: {reason} (run {culprit['id']})")

    def _complete(self, conn, config: dict, runs: list[dict]) -> None:
        failed = [r for r in runs if r["state"] == "failed"]
        if failed:
            reason = f"run {failed[0]['id']} failed: {failed[0]['error']}"
            set_config(conn, self.id, config["label"], "failed", reason=reason)
            if self.search:
                self.search.tell(config, None, "failed")
            return
        column = OBJECTIVES[self.spec.objective]
        ids = {r["id"] for r in runs}
        values = [m[column] for m in member_values(conn, self.id) if m["run_id"] in ids and m[column] is not None]
        objective = sum(values) / len(values) if values else None
        set_config(conn, self.id, config["label"], "complete", objective=objective)
        if self.search:
            self.search.tell(config, objective, "complete" if objective is not None else "failed")
        shown = "–" if objective is None else f"{objective:+.4f}"
        self.say(f"sweep {self.id}: {config['label']} complete: mean {self.spec.objective} {shown} "
                 f"over {len(values)} seed(s)")

    def _end(self, conn, configs: list[dict], runs: list[dict]) -> str:
        waiting = [r for r in runs if r["state"] in ("stopped", "crashed")
                   and next(c for c in configs if c["label"] == r["sweep_config"])["state"] == "open"]
        state = "stopped" if waiting else "finished"
        update_sweep(conn, self.id, state=state, ended_at=time.time())
        counts = {s: sum(c["state"] == s for c in configs) for s in ("complete", "pruned", "failed", "open")}
        text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        self.say(f"sweep {self.id} {state}: {len(configs)} configurations ({text}), {len(runs)} runs")
        if waiting:
            ids = ", ".join(f"{r['id']} ({r['state']})" for r in waiting)
            self.say(f"  runs {ids} did not finish; `lvmd sweep resume {self.id}` continues them")
        return state


def _num(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def resume(db: Path, sweep_id: int, *, parallel: int | None = None, say: Callable[[str], None] = print) -> str:
    if parallel is not None:
        conn = connect(db)
        try:
            get_sweep(conn, sweep_id)
            update_sweep(conn, sweep_id, parallel=parallel)
        finally:
            conn.close()
    return Driver(db, sweep_id, say=say).run()
