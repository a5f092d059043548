"""`lvmd sweep --search optuna`: configurations sampled by an Optuna study (ask/tell: the runs
are separate daemons, so the driver asks for a trial, starts its seeds, and tells the mean
objective, or PRUNED / FAIL, when they end).

The study lives beside the lvmd database, in <db>-sweeps/optuna.db (Optuna's RDB storage),
named lvmd-sweep-<id>; sweeps.study_storage and study_name say where. Not inside the lvmd
file because (1) that file's schema is lvmd's numbered migrations under PRAGMA user_version,
which an lvmd build checks and refuses when newer, while Optuna brings its own tables and
Alembic versions; (2) SQLAlchemy's connections would contend for the write lock with the
telemetry writers of every member run (each commits every 0.5 s). Every outcome the study holds
is mirrored in the lvmd file (sweep_configs: trial number, state, objective, prune reason), so
comparisons and reports never need the study file.
"""
from __future__ import annotations

import sqlite3

from store.sweeps import add_config, configs_of

TRIAL_STATES = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}


class OptunaSearch:
    def __init__(self, sweep: dict, spec):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)   # the driver prints its own lines
        self.optuna, self.spec, self.sweep_id = optuna, spec, sweep["id"]
        self.study = optuna.create_study(
            storage=sweep["study_storage"], study_name=sweep["study_name"], direction="maximize",
            load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=spec.sampler_seed))
        self.ranges = {key: (low, high, log) for key, low, high, log in spec.ranges}
        if not self.study.trials:                             # first start: the trials to try first
            for overrides in spec.enqueue:
                self.study.enqueue_trial(self._params(overrides))

    def _params(self, overrides: list[str]) -> dict:
        params = {}
        for item in overrides:
            key, value = item.split("=", 1)
            params[key] = float(value) if key in self.ranges else value
        return params

    def wants_more(self, configs: list[dict]) -> bool:
        return sum(c["trial"] is not None for c in configs) < self.spec.trials

    def ask(self, conn: sqlite3.Connection, sweep_id: int) -> None:
        """A new trial and its configuration row (label `#N key=value ...`)."""
        trial = self.study.ask()
        overrides = [f"{key}={trial.suggest_categorical(key, values)}" for key, values in self.spec.grid]
        for key, (low, high, log) in self.ranges.items():
            overrides.append(f"{key}={trial.suggest_float(key, low, high, log=log):.6g}")
        trial.set_user_attr("lvmd_sweep_id", sweep_id)
        add_config(conn, sweep_id, f"#{trial.number} " + " ".join(overrides), overrides, trial=trial.number)

    def tell(self, config: dict, value: float | None, state: str) -> None:
        trial_state = getattr(self.optuna.trial.TrialState, TRIAL_STATES[state])
        self.study.tell(config["trial"], value if state == "complete" else None, state=trial_state,
                        skip_if_finished=True)

    def reconcile(self, conn: sqlite3.Connection) -> None:
        """After a driver died: a trial asked but never written to sweep_configs failed; a
        configuration judged but never told is told now."""
        configs = {c["trial"]: c for c in configs_of(conn, self.sweep_id) if c["trial"] is not None}
        running = self.optuna.trial.TrialState.RUNNING
        for t in self.study.get_trials(deepcopy=False, states=(running,)):
            c = configs.get(t.number)
            if c is None:
                self.study.tell(t.number, state=self.optuna.trial.TrialState.FAIL, skip_if_finished=True)
            elif c["state"] != "open":
                self.tell(c, c["objective"], c["state"])