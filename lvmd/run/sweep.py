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
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Callable

from lvmd.errors import UserError
from lvmd.data.formats import PickleRefused
from lvmd.run import daemon
from lvmd.run.runlock import folder_refusal, refuse
from lvmd.run.sweep_plan import (SweepSpec, create, default_parallel, grid_points, member_config,  # noqa: F401
                                 parse_axis, parse_range, run_name, sweep_dir)
from lvmd.train.sink import NullSink
from store.commands import CommandError, enqueue
from store.db import connect
from store.runs import LIVE_STATES, begin_resume, database_id, mark_stale_crashed, record_state, truncate_after
from store.sweeps import (
    configs_of,
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
    """`allow_pickle` is the opt-in of the command that runs the driver (`lvmd sweep --allow-pickle`,
    or the config file it was given now; `lvmd sweep resume --allow-pickle`): every member is
    created and started with it, never with what the database says."""

    def __init__(self, db: Path, sweep_id: int, *, say: Callable[[str], None] = print, allow_pickle: bool = False):
        self.db, self.say, self.allow_pickle = db, say, allow_pickle
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
            return self._drive(conn)
        except NeedsOptIn:
            update_sweep(conn, self.id, state="stopped", ended_at=time.time())
            raise
        finally:
            conn.close()

    def _drive(self, conn) -> str:
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
        except NeedsOptIn:
            raise
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
        cfg = member_config(self.spec, config["overrides"], seed, name, self.threads, allow_pickle=self.allow_pickle)
        key = cfg.data                      # frozen: members with the same data share one load
        if key not in self.data:
            try:
                self.data[key] = load_train_data(cfg, check="sample")   # bad files fail here, before a run row exists
            except PickleRefused as exc:       # not the configuration's fault: the opt-in is missing
                raise NeedsOptIn(f"sweep {self.id}: {config['label']}: {exc}; `lvmd sweep resume {self.id} "
                                 "--allow-pickle` reads it (never taken from the database)") from None
            runner.make_evaluator(cfg, self.data[key], NullSink())
        runner.preflight(cfg, self.db)                 # profile, database and folder: before any row
        run_id, out_dir = runner.create(cfg, self.db, self.data[key], sweep=(self.id, config["label"], seed))
        spawned = daemon.spawn(self.db, {"id": run_id, "out_dir": str(out_dir)}, resume=False,
                               allow_pickle=self.allow_pickle)
        daemon.wait_started(self.db, run_id, spawned, timeout=START_SECONDS)
        return run_id

    def _restart(self, conn, run: dict) -> int:
        """From its checkpoint; a run that died before writing one starts over under its id."""
        path = Path(run["out_dir"] or ".") / daemon.CHECKPOINT
        resume = path.exists()
        owner = {"db": str(self.db), "db_id": database_id(conn), "run_id": run["id"]}
        refuse(folder_refusal(Path(run["out_dir"]), owner))       # before its log is opened in it
        if not resume:
            truncate_after(conn, run["id"], 0, 0)
            record_state(conn, run["id"], "starting", {"reason": "sweep restart: no checkpoint yet"},
                         expect=("stopped", "crashed"), error=None, ended_at=None, heartbeat_at=time.time())
        else:
            daemon.resumable_checkpoint(conn, run, locked=False)
            if not begin_resume(conn, run["id"], pid=os.getpid()):
                raise UserError(f"run {run['id']} is already being resumed")
        spawned = daemon.spawn(self.db, run, resume=resume, begun=resume, allow_pickle=self.allow_pickle)
        daemon.wait_started(self.db, run["id"], spawned, timeout=START_SECONDS, resume=resume)
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


class NeedsOptIn(UserError):
    """A member's data needs an opt-in the driver's command line did not give."""


def members_needing_pickle(conn, sweep_id: int) -> list[int]:
    """Members created with data.allow_pickle: the stored flag is no authority, but it says which
    runs' data were read with the opt-in, so a resume without it can name them."""
    return [r["id"] for r in members(conn, sweep_id)
            if r["state"] not in ("finished", "failed")
            and (json.loads(r["config_json"] or "{}").get("data") or {}).get("allow_pickle") is True]


def resume(db: Path, sweep_id: int, *, parallel: int | None = None, say: Callable[[str], None] = print,
           allow_pickle: bool = False) -> str:
    """A new driver for the sweep. Opt-ins come from this command line only: without
    --allow-pickle, a sweep whose members were created with it is refused, naming them."""
    conn = connect(db)
    try:
        get_sweep(conn, sweep_id)
        need = [] if allow_pickle else members_needing_pickle(conn, sweep_id)
        if need:
            raise UserError(f"sweep {sweep_id}: runs {', '.join(map(str, need))} were created with --allow-pickle "
                            "(their data's pickled metadata runs code when read); `lvmd sweep resume "
                            f"{sweep_id} --allow-pickle` continues them (the opt-in is never taken from the database)")
        if parallel is not None:
            update_sweep(conn, sweep_id, parallel=parallel)
    finally:
        conn.close()
    return Driver(db, sweep_id, say=say, allow_pickle=allow_pickle).run()
