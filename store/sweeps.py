"""Rows of `sweeps` and `sweep_configs`, and the sweep columns of `runs` (migration 7).

A sweep is a set of configurations × seeds; every member is an ordinary run (its own row, lock
and daemon) tagged with runs.sweep_id, sweep_config (the configuration's label) and sweep_seed.
Plain functions over a connection; the planning and the driving are lvmd/run/sweep.py's.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from typing import Any

from store.runs import insert_event
from store.schema import SWEEP_CONFIG_STATES, SWEEP_STATES


class UnknownSweep(LookupError):
    pass


def create_sweep(conn: sqlite3.Connection, *, name: str, search: str, config_path: str, spec: dict,
                 parallel: int) -> int:
    now = time.time()
    cur = conn.execute(
        "INSERT INTO sweeps (name, state, search, config_path, spec_json, parallel, host, pid, created_at,"
        " updated_at) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
        (name, search, config_path, json.dumps(spec, sort_keys=True), parallel, socket.gethostname(),
         os.getpid(), now, now))
    return int(cur.lastrowid)


def update_sweep(conn: sqlite3.Connection, sweep_id: int, **fields: Any) -> None:
    if "state" in fields and fields["state"] not in SWEEP_STATES:
        raise ValueError(f"sweeps.state: {fields['state']!r} is not one of {', '.join(SWEEP_STATES)}")
    fields.setdefault("updated_at", time.time())
    cols = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE sweeps SET {cols} WHERE id = ?", (*fields.values(), sweep_id))


def get_sweep(conn: sqlite3.Connection, ref: str | int | None) -> dict:
    """A sweep by id, or (None) the newest one."""
    if ref is None:
        row = conn.execute("SELECT * FROM sweeps ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise UnknownSweep("no sweeps in this database yet")
        return dict(row)
    if not (str(ref).isascii() and str(ref).isdigit()):
        raise UnknownSweep(f"sweep id {ref!r}: expected a number")
    row = conn.execute("SELECT * FROM sweeps WHERE id = ?", (int(ref),)).fetchone() if int(ref) < 2**63 else None
    if row is None:
        raise UnknownSweep(f"no sweep {ref} in this database")
    return dict(row)


def list_sweeps(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM sweeps ORDER BY id")]


# -- configurations ------------------------------------------------------------------------------
def add_config(conn: sqlite3.Connection, sweep_id: int, label: str, overrides: list[str], *,
               trial: int | None = None) -> None:
    conn.execute("INSERT OR IGNORE INTO sweep_configs (sweep_id, label, overrides_json, trial, state, created_at)"
                 " VALUES (?, ?, ?, ?, 'open', ?)", (sweep_id, label, json.dumps(overrides), trial, time.time()))


def configs_of(conn: sqlite3.Connection, sweep_id: int) -> list[dict]:
    rows = conn.execute("SELECT * FROM sweep_configs WHERE sweep_id = ? ORDER BY created_at, rowid", (sweep_id,))
    return [{**dict(r), "overrides": json.loads(r["overrides_json"])} for r in rows]


def set_config(conn: sqlite3.Connection, sweep_id: int, label: str, state: str, *, objective: float | None = None,
               reason: str | None = None) -> None:
    if state not in SWEEP_CONFIG_STATES:
        raise ValueError(f"sweep_configs.state: {state!r} is not one of {', '.join(SWEEP_CONFIG_STATES)}")
    conn.execute("UPDATE sweep_configs SET state = ?, objective = ?, reason = ? WHERE sweep_id = ? AND label = ?",
                 (state, objective, reason, sweep_id, label))


# -- member runs ---------------------------------------------------------------------------------
def tag_run(conn: sqlite3.Connection, run_id: int, sweep_id: int, label: str, seed: int) -> None:
    conn.execute("UPDATE runs SET sweep_id = ?, sweep_config = ?, sweep_seed = ? WHERE id = ?",
                 (sweep_id, label, seed, run_id))


def members(conn: sqlite3.Connection, sweep_id: int) -> list[dict]:
    """The sweep's runs (oldest first) with their number of finished epochs."""
    rows = conn.execute(
        "SELECT r.*, (SELECT COUNT(*) FROM epochs e WHERE e.run_id = r.id) AS epochs_done"
        " FROM runs r WHERE r.sweep_id = ? ORDER BY r.id", (sweep_id,))
    return [dict(r) for r in rows]


def record_pruned(conn: sqlite3.Connection, run_id: int, detail: dict, *, step: int | None, epoch: int | None
                  ) -> None:
    """A `pruned` event on a member run: why the sweep stopped it (or discounted it)."""
    insert_event(conn, run_id, "pruned", detail, step=step, epoch=epoch)


def guardrail_events(conn: sqlite3.Connection, run_id: int) -> list[dict]:
    """The run's collapse warnings, oldest first (step, epoch and the evidence)."""
    rows = conn.execute("SELECT step, epoch, detail FROM events WHERE run_id = ? AND kind = 'collapse_warning'"
                        " ORDER BY id", (run_id,))
    return [{"step": r["step"], "epoch": r["epoch"], **json.loads(r["detail"] or "{}")} for r in rows]


def last_epoch(conn: sqlite3.Connection, run_id: int) -> dict | None:
    row = conn.execute("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch DESC LIMIT 1", (run_id,)).fetchone()
    return None if row is None else dict(row)


def sweep_summary(conn: sqlite3.Connection, sweep_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM v_sweep_summary WHERE sweep_id = ?", (sweep_id,))]


def member_values(conn: sqlite3.Connection, sweep_id: int) -> list[dict]:
    """Per member run: its sweep tags, state and v_run_summary's last-epoch numbers (what
    `lvmd compare --sweep` aggregates over seeds)."""
    rows = conn.execute(
        "SELECT r.sweep_config AS config, r.sweep_seed AS seed, r.state, s.*"
        " FROM runs r JOIN v_run_summary s ON s.run_id = r.id WHERE r.sweep_id = ? ORDER BY r.id", (sweep_id,))
    return [dict(r) for r in rows]


# -- what a view of sweeps shows (the TUI's sweep groups) -------------------------------------------
def has_sweeps(conn: sqlite3.Connection) -> bool:
    """Does the file have migration 7's tables? A read-only reader (the TUI) never migrates, so a
    file written by an older lvmd has neither `sweeps` nor runs.sweep_id."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sweeps'").fetchone() is not None


def sweep_progress(conn: sqlite3.Connection) -> list[dict]:
    """Per sweep: runs planned, finished, training, configurations pruned, and the best
    configuration so far by mean last-epoch margin over its finished seeds (as v_sweep_summary
    ranks them). The TUI's tail reads this on every commit, so it reads runs and the last epoch
    rows through their indexes only, never v_run_summary (which reads every member's steps)."""
    if not has_sweeps(conn):
        return []
    out = []
    for s in list_sweeps(conn):
        seeds = len(json.loads(s["spec_json"]).get("seeds", [])) or 1
        configs = dict(conn.execute("SELECT label, state FROM sweep_configs WHERE sweep_id = ?"
                                    " ORDER BY created_at, label", (s["id"],)).fetchall())
        states = dict(conn.execute(
            "SELECT CASE WHEN state IN ('finished', 'stopped', 'failed', 'crashed') THEN state ELSE 'live' END,"
            " COUNT(*) FROM runs WHERE sweep_id = ? GROUP BY 1", (s["id"],)).fetchall())
        finished = conn.execute(
            "SELECT r.sweep_config, COUNT(*), AVG(e.val_margin) FROM runs r LEFT JOIN epochs e ON e.run_id = r.id"
            " AND e.epoch = (SELECT MAX(epoch) FROM epochs WHERE run_id = r.id)"
            " WHERE r.sweep_id = ? AND r.state = 'finished' GROUP BY r.sweep_config", (s["id"],)).fetchall()
        done = {label: (label, n, margin) for label, n, margin in finished if margin is not None}
        # in creation order, then by margin (a stable sort): ties go to the older configuration, as
        # in v_sweep_summary
        ranked = sorted((done[c] for c, state in configs.items() if c in done and state != "pruned"),
                        key=lambda c: c[2], reverse=True)
        out.append({"id": s["id"], "name": s["name"], "search": s["search"], "state": s["state"],
                    "planned": len(configs) * seeds, "finished": states.get("finished", 0),
                    "training": states.get("live", 0), "pruned": sum(v == "pruned" for v in configs.values()),
                    "best": ranked[0][0] if ranked else None,
                    "best_margin": ranked[0][2] if ranked else None,
                    "best_n": ranked[0][1] if ranked else 0})
    return out


BASELINE = "loss.preset=mse"  # what `lvmd compare --sweep` holds a configuration against by default


def baseline_label(overrides: dict[str, dict[str, str]], label: str, baseline: str) -> str | None:
    """The configuration a sweep's `label` is compared with (`lvmd compare --sweep`, the TUI's
    grey band): `baseline` itself when it is a label, else its key=value swapped into label's own
    overrides (v2.1 with prev=true → mse with prev=true: margins on different y_prev do not
    compare). `overrides`: label → {key: value} of every configuration; None when none matches."""
    if baseline in overrides:
        return baseline
    key, _, value = baseline.partition("=")
    if key not in overrides.get(label, {}):
        return None
    want = {**overrides[label], key: value}
    return next((c for c, o in overrides.items() if o == want), None)


def baseline_config(conn: sqlite3.Connection, sweep_id: int, label: str, baseline: str = BASELINE) -> str | None:
    """baseline_label over the sweep's configurations; None also when it is `label` itself."""
    overrides = {c["label"]: dict(o.split("=", 1) for o in c["overrides"]) for c in configs_of(conn, sweep_id)}
    found = baseline_label(overrides, label, baseline)
    return None if found == label else found


EPOCH_BAND_COLUMNS = ("val_margin", "val_cos", "r_at_5", "skip_rate", "rho_max")


def epoch_band(conn: sqlite3.Connection, sweep_id: int, config: str, column: str = "val_margin") -> list[dict]:
    """A configuration's `column` per epoch over its seeds: mean, min, max and how many seeds
    reached that epoch (an overlay: the mean line with a band)."""
    if column not in EPOCH_BAND_COLUMNS:
        raise ValueError(f"epoch_band: {column!r} is not one of {', '.join(EPOCH_BAND_COLUMNS)}")
    rows = conn.execute(
        f"SELECT e.epoch, AVG(e.{column}) AS mean, MIN(e.{column}) AS lo, MAX(e.{column}) AS hi, COUNT(*) AS n"
        " FROM epochs e JOIN runs r ON r.id = e.run_id WHERE r.sweep_id = ? AND r.sweep_config = ?"
        " GROUP BY e.epoch ORDER BY e.epoch", (sweep_id, config))
    return [dict(r) for r in rows]
