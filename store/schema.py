"""Numbered migrations (PRAGMA user_version) and the column lists other layers share.

Never edit a migration that has shipped: add a new one at the end of MIGRATIONS.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # imported in migrate(): light commands on a current file skip its ~0.2 s
    import sqlite_utils

# The per-step guardrail telemetry (SPEC §3 G6), in the order the trainer packs it into one
# device tensor per step. Each becomes a REAL column of `steps`; flags are stored as 0/1.
STEP_METRICS: tuple[str, ...] = (
    "lam",           # λ_eff after clamp and cap
    "rho",           # ρ = λ·Ldir/mse after the cap (directional share of the loss)
    "rho_pre",       # ρ before the cap (what the clamp alone gave)
    "frac",          # ramp's target share
    "m_gap",         # ramp's gap margin
    "pos",           # mean cos(ŷ, y_next)
    "neg",           # mean cos(ŷ, y_prev)
    "gap",           # mean (pos - neg)
    "ratio",         # mean gap / (|pos| + |neg| + 1e-6)
    "neg_cos_rate",  # share of samples with pos < 0
    "skip",          # 1 when G5 dropped the directional term for this batch
    "attenuate",     # 1 when the ρ cap scaled λ down
    "mse",           # base loss
    "l_dir",         # G1 directional loss (before λ)
    "l_floor",       # G2 positive floor
    "l_norm",        # G3 norm regulariser
    "l_orth",        # v2.2 orthogonality term (0 for other presets)
    "total",         # the loss that was back-propagated
    "grad_norm",     # total grad norm before clipping
)
STEP_FLAGS = ("skip", "attenuate")
STEP_COLUMNS: tuple[str, ...] = ("run_id", "step", "epoch", "t", "lr") + STEP_METRICS

RUN_STATES = (
    "starting", "running", "paused", "evaluating", "stopping",
    "stopped", "finished", "failed", "crashed",
)
TERMINAL_STATES = ("stopped", "finished", "failed", "crashed")
COMMAND_VERBS = ("pause", "resume", "eval", "checkpoint", "stop")
COMMAND_STATES = ("pending", "acked", "done", "failed")
SWEEP_STATES = ("running", "stopped", "finished")          # stopped: its driver ended before every run did
SWEEP_CONFIG_STATES = ("open", "complete", "pruned", "failed")


def _m001_core(db: sqlite_utils.Database) -> None:
    db["runs"].create({
        "id": int, "name": str, "preset": str, "compat": str, "state": str,
        "config_json": str, "data_json": str, "out_dir": str,
        "host": str, "pid": int, "created_at": float, "updated_at": float,
        "started_at": float, "ended_at": float, "heartbeat_at": float,
        "epoch": int, "step": int, "total_epochs": int, "total_steps": int,
        "error": str, "lvmd_version": str,
    }, pk="id", not_null={"name", "state", "config_json", "created_at"})
    db["steps"].create({c: (float if c in ("t", "lr") + STEP_METRICS else int) for c in STEP_COLUMNS},
                       foreign_keys=[("run_id", "runs", "id")],
                       not_null=set(STEP_COLUMNS))
    db["steps"].create_index(["run_id", "step"], unique=True)
    db["events"].create({
        "id": int, "run_id": int, "step": int, "epoch": int, "t": float,
        "kind": str, "detail": str,
    }, pk="id", foreign_keys=[("run_id", "runs", "id")], not_null={"run_id", "t", "kind"})
    db["events"].create_index(["run_id", "kind"])
    db["epochs"].create({
        "run_id": int, "epoch": int, "step": int, "t": float, "duration_s": float,
        "train_loss": float, "train_mse": float, "val_loss": float, "val_cos": float,
        "val_prev_cos": float, "val_margin": float, "r_at_1": float, "r_at_5": float,
        "mrr": float, "lr": float, "skip_rate": float, "rho_max": float, "pos_min": float,
        "attenuate_rate": float,
    }, pk=("run_id", "epoch"), foreign_keys=[("run_id", "runs", "id")])
    db["evals"].create({
        "id": int, "run_id": int, "epoch": int, "step": int, "trigger": str,
        "splits": str, "profile": str, "compat": str, "max_samples": int,
        "started_at": float, "finished_at": float, "duration_s": float,
        "gates_passed": int, "gates_total": int, "verdict_3of5": int, "verdict_all5": int,
        "error": str,
    }, pk="id", foreign_keys=[("run_id", "runs", "id")])
    db["evals"].create_index(["run_id", "epoch"])
    db["gates"].create({
        "eval_id": int, "split": str, "gate": str, "metric": str,
        "value": float, "threshold": float, "op": str, "passed": int,
    }, foreign_keys=[("eval_id", "evals", "id")], not_null={"eval_id", "split", "gate", "metric"})
    db["gates"].create_index(["eval_id"])
    db["eval_metrics"].create({
        "eval_id": int, "split": str, "name": str, "value": float,
    }, foreign_keys=[("eval_id", "evals", "id")], not_null={"eval_id", "split", "name"})
    db["eval_metrics"].create_index(["eval_id", "split", "name"])
    db["commands"].create({
        "id": int, "run_id": int, "verb": str, "args": str,
        "issued_at": float, "issued_by": str, "user": str, "host": str, "pid": int,
        "state": str, "acked_at": float, "acked_step": int, "done_at": float, "result": str,
    }, pk="id", foreign_keys=[("run_id", "runs", "id")],
        not_null={"run_id", "verb", "issued_at", "state"})
    db["commands"].create_index(["run_id", "state"])


def _m002_report_views(db: sqlite_utils.Database) -> None:
    """Post-run views (store/views.py VIEWS_V1): v_run_summary, v_gates, v_epoch_steps,
    v_skip_rate_by_epoch, v_guardrail_checks."""
    from store.views import VIEWS_V1, create_views

    create_views(db.conn, VIEWS_V1)


def _m003_staged_rho_caps(db: sqlite_utils.Database) -> None:
    """v_guardrail_checks holds ρ to the cap in force at each step (store/views.py VIEWS_V2)."""
    from store.views import VIEWS_V2, create_views

    create_views(db.conn, VIEWS_V2)


def _m004_run_hardware(db: sqlite_utils.Database) -> None:
    """What the run trains on, as resolved on the machine (train.precision/threads may say auto):
    device (cpu, cuda, ...), precision (fp32 | bf16), threads (torch CPU threads)."""
    for column, kind in (("device", str), ("precision", str), ("threads", int)):
        db["runs"].add_column(column, kind)


def _m005_world_size(db: sqlite_utils.Database) -> None:
    """runs.world_size: how many processes (torchrun ranks) train the run; 1 for a single one.
    Per-rank throughput = steps/s × batch_size / world_size (batch_size is the global batch)."""
    db.conn.execute("ALTER TABLE runs ADD COLUMN world_size INTEGER NOT NULL DEFAULT 1")


def _m006_system_samples(db: sqlite_utils.Database) -> None:
    """What the daemon samples of its machine every few seconds (lvmd/run/sysmon.py): one row per
    device and sample. device: 'process' (util = % of one core, mem = RSS), 'host' (util = % of
    all cores busy, mem = used), 'gpu0'… (util %, memory used/total, temperature °C)."""
    db["system_samples"].create({
        "run_id": int, "t": float, "device": str, "name": str, "util": float,
        "mem_used": float, "mem_total": float, "temp_c": float,
    }, foreign_keys=[("run_id", "runs", "id")], not_null={"run_id", "t", "device"})
    db["system_samples"].create_index(["run_id", "t"])


def _m007_sweeps(db: sqlite_utils.Database) -> None:
    """Sweeps (lvmd sweep): a `sweeps` row, one `sweep_configs` row per configuration (a grid
    point or an Optuna trial) and, on each member run, runs.sweep_id / sweep_config / sweep_seed;
    the view v_sweep_summary (store/views.py VIEWS_SWEEPS). Self-contained: needs only m001."""
    from store.views import VIEWS_SWEEPS, create_views

    db["sweeps"].create({
        "id": int, "name": str, "state": str, "search": str, "config_path": str, "spec_json": str,
        "parallel": int, "study_storage": str, "study_name": str, "host": str, "pid": int,
        "created_at": float, "updated_at": float, "ended_at": float,
    }, pk="id", not_null={"name", "state", "search", "spec_json", "created_at"})
    db["sweep_configs"].create({
        "sweep_id": int, "label": str, "overrides_json": str, "trial": int, "state": str,
        "objective": float, "reason": str, "created_at": float,
    }, pk=("sweep_id", "label"), foreign_keys=[("sweep_id", "sweeps", "id")],
        not_null={"sweep_id", "label", "overrides_json", "state", "created_at"})
    # ALTER TABLE ADD COLUMN may carry REFERENCES when the default is NULL (no table rebuild)
    db.execute("ALTER TABLE runs ADD COLUMN sweep_id INTEGER REFERENCES sweeps(id)")
    db.execute("ALTER TABLE runs ADD COLUMN sweep_config TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN sweep_seed INTEGER")
    db.execute("CREATE INDEX idx_runs_sweep ON runs (sweep_id, sweep_config, sweep_seed)")
    create_views(db.conn, VIEWS_SWEEPS)


def _m008_database_id(db: sqlite_utils.Database) -> None:
    """A random id per database file, so run folders are keyed by the database itself (two
    databases with one stem in one folder never share one). Old files get theirs here; their
    runs keep the out_dir their rows name."""
    import uuid

    db.conn.execute("CREATE TABLE IF NOT EXISTS db_properties (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.conn.execute("INSERT OR IGNORE INTO db_properties (key, value) VALUES ('db_id', ?)", (uuid.uuid4().hex,))


def _m009_step_blocks(db: sqlite_utils.Database) -> None:
    """step_blocks: the steps summed per run, epoch and 64 steps, kept by triggers
    (store/step_blocks.py); the step views read it (store/views.py VIEWS_V3)."""
    from store.step_blocks import create_step_blocks
    from store.views import VIEWS_V3, create_views

    create_step_blocks(db.conn)
    create_views(db.conn, VIEWS_V3)


def _m010_one_count_rule(db: sqlite_utils.Database) -> None:
    """v_guardrail_checks counts the trainer's attenuate flag and judges ρ against its cap by the
    guardrail's relative rule (store/views.py VIEWS_V4). Views only: needs m009's step_blocks."""
    from store.views import VIEWS_V4, create_views

    create_views(db.conn, VIEWS_V4)


def _m011_data_hashes(db: sqlite_utils.Database) -> None:
    """data_hashes: the sha256 of each data file (by absolute path) with its stat when hashed
    (device, inode, size, mtime_ns, ctime_ns) and when hashing began (store/data_hashes.py,
    lvmd/data/hashes.py). Self-contained: needs no other table."""
    db.conn.execute("CREATE TABLE IF NOT EXISTS data_hashes (path TEXT PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
                    " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
                    " sha256 TEXT NOT NULL, hashed_ns INTEGER NOT NULL)")


def _m012_run_compile(db: sqlite_utils.Database) -> None:
    """runs.compile (on | off) and runs.compile_why (one line: the probe's timings, or why it
    was not asked): whether the training forward runs under torch.compile (train.compile, decided
    in the process that trains). Self-contained: needs only m001, and adds only the columns a
    file lacks (a file rebuilt from an older schema may keep them)."""
    have = {row[1] for row in db.conn.execute("PRAGMA table_info(runs)")}
    for column in ("compile", "compile_why"):
        if column not in have:
            db.conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")


def _m013_compile_probes(db: sqlite_utils.Database) -> None:
    """compile_probes: train.compile=auto's answer per key (what the probe's timing depends on,
    hashed), so a resume or the next run with the same key skips the probe (store/compile_probes.py,
    lvmd/train/compiling.py). Self-contained: needs no other table."""
    db.conn.execute("CREATE TABLE IF NOT EXISTS compile_probes (key_hash TEXT PRIMARY KEY, key_json TEXT NOT NULL,"
                    " outcome TEXT NOT NULL, compiled INTEGER NOT NULL, why TEXT NOT NULL, eager_ms REAL,"
                    " compiled_ms REAL, compile_s REAL, run_id INTEGER, probed_at REAL NOT NULL)")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m001_core,
    _m002_report_views,
    _m003_staged_rho_caps,
    _m004_run_hardware,
    _m005_world_size,
    _m006_system_samples,
    _m007_sweeps,
    _m008_database_id,
    _m009_step_blocks,
    _m010_one_count_rule,
    _m011_data_hashes,
    _m012_run_compile,
    _m013_compile_probes,
]


def check_ours(conn: sqlite3.Connection, path: Path | str = "<db>") -> int:
    """The file's schema version, after refusing a newer lvmd's file and another program's
    database (tables but no lvmd version): lvmd never writes into either, not even WAL mode."""
    from store.db import StoreError

    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(f"{path}: schema version {version} is newer than this lvmd ({len(MIGRATIONS)}); "
                         "upgrade lvmd")
    if version == 0:
        foreign = conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' LIMIT 1").fetchall()
        if foreign:
            raise StoreError(f"{path}: not an lvmd database (it holds another program's table "
                             f"{foreign[0][0]!r})")
    return version


def migrate(conn: sqlite3.Connection, path: Path | str = "<db>") -> int:
    """Bring the file up to the newest schema; returns the version. Safe to race: the
    version is re-read under the write lock, so two processes never apply one twice."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == len(MIGRATIONS):
        return version
    check_ours(conn, path)
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    from store.db import transaction

    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, len(MIGRATIONS)):
            MIGRATIONS[number](db)
            conn.execute(f"PRAGMA user_version={number + 1}")
    return len(MIGRATIONS)
