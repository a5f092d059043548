"""A sweep's plan: its spec (stored as sweeps.spec_json), the grid, each member's resolved
config, and creating the sweep row. lvmd/run/sweep.py drives it."""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lvmd.config import ConfigError, RunConfig, load_config
from lvmd.errors import UserError
from store.db import connect, transaction
from store.sweeps import add_config, create_sweep, update_sweep


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


def member_config(spec: SweepSpec, overrides: list[str], seed: int, name: str, threads: int, *,
                  allow_pickle: bool = False) -> RunConfig:
    """The resolved config of one member: the file, the sweep's overrides, the configuration's,
    its seed and name; train.threads "auto" becomes an even share of the CPUs (auto measures the
    CPUs free at one moment, and N members starting one after another would each see a different
    share). data.allow_pickle is the driver's own opt-in, whatever the stored spec, the stored
    configurations or the config file (which a resumed sweep reads again) say: opt-ins that run
    code come from the command line of the command that acts (DESIGN rule 11)."""
    extra = [f"train.seed={seed}", f"name={json.dumps(name)}", f"data.allow_pickle={str(allow_pickle).lower()}"]
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
