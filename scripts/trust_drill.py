#!/usr/bin/env python3
"""Trust drill (issue 20): what lvmd reads is data, never authority. Each case plays one way a
hostile or unlucky user breaks that, with a fresh variation each try, against real `lvmd`
processes on a tiny model, and checks lvmd held. Prints a table: case, tries, held.

Cases (a table of functions; more rows are added with @case):
  signal: reused pid       the daemon died and its pid now names another process (a `sleep`
                           this drill starts): `lvmd stop` (grace or --force) must not signal it
  signal: forged row       a runs row pointing at a victim (pid) or at another run's live daemon
                           (pid + folder): nothing is signalled but the run's own proven daemon
  signal: forged folder    run.json + a pidfile naming the victim with its true start time, the
                           lock held by another process: --force kills nothing
  checkpoint: copied       another run's last.pt (same database, or run 1 of another database)
                           in the run's folder: resume refuses, naming both, changes nothing
  best.pt: copied          another run's best.pt: `lvmd predict --run` refuses it
  folder: foreign          out_dir pointed at a user's folder, a copy of another run's folder or
                           another database's run 1: refused, nothing written, the user's
                           `.best.pt.123.tmp` kept
  opt-in: planted          data.allow_pickle planted in a stored field (spec overrides, spec
                           config file, sweep_configs, a member's config_json, config_json +
                           run.json) over a pickle that would create a marker: never unpickled
  db: replaced             the database renamed away / replaced by another database or by a
                           copy of itself under a live daemon: it stops with one line, the file
                           now at the path is untouched, the file it opened holds every step
  db: wal removed          the -wal deleted under a live daemon: it stops with one line, the
                           database stays readable with every step, and resumes
  stop racing resume       `lvmd stop` 0-3 s after `lvmd resume`: once the resume has begun, the
                           stop lands (the resumed daemon stops at its first step boundary)
  resume: fails            the resumed daemon killed while starting, or refused (data changed):
                           the run is stopped/crashed again when `lvmd resume` returns

Everything happens in a temp folder; the only processes signalled are ones this drill started
(its `sleep` victims, and its daemons through lvmd's own proven `lvmd stop --force`).

    .venv/bin/python scripts/trust_drill.py                     # every case, 3 tries each
    .venv/bin/python scripts/trust_drill.py --tries 1 --cases "db: replaced,signal: forged row"
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = ["model.d_model=16", "model.nhead=2", "model.num_layers=1", "model.ff=32", "model.hidden=16",
         "model.amn_d=8", "train.threads=1", "train.precision=fp32", "eval.fivecat_every=0"]
LONG = [*MODEL, "train.batch_size=2", "train.epochs=1000", "train.max_steps=100000"]
ONE_EPOCH = [*MODEL, "train.batch_size=16", "train.epochs=1"]
WAIT = 120.0

CASES: list[tuple[str, Callable]] = []


def case(name: str):
    def add(fn):
        CASES.append((name, fn))
        return fn
    return add


class NotHeld(Exception):
    """A check failed: lvmd did not hold."""


def check(ok, what: str) -> None:
    if not ok:
        raise NotHeld(what)


@dataclass
class Try:
    """One try's folder, its databases and what it started (ended by pid at the end)."""
    folder: Path
    rng: random.Random
    data: list[str]
    articles: Path
    victims: list[subprocess.Popen] = field(default_factory=list)
    daemons: list[tuple[Path, int]] = field(default_factory=list)     # (db, run id) started here
    held_fds: list[int] = field(default_factory=list)

    # -- lvmd and the database ------------------------------------------------------------------
    def lvmd(self, *args: str, env: dict | None = None, timeout: float = WAIT) -> subprocess.CompletedProcess:
        full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        return subprocess.run([sys.executable, "-m", "lvmd", *args], capture_output=True, text=True, env=full,
                              timeout=timeout, cwd=self.folder)

    def popen(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        return subprocess.Popen([sys.executable, "-m", "lvmd", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=full, cwd=self.folder)

    def db(self, name: str = "x.db") -> Path:
        return self.folder / name

    def row(self, db: Path, run_id: int = 1) -> dict:
        return self.rows(db, "SELECT * FROM runs WHERE id = ?", run_id)[0]

    @staticmethod
    def rows(db: Path, text: str, *params) -> list[dict]:
        conn = sqlite3.connect(db, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(text, params)]
        finally:
            conn.close()

    @staticmethod
    def sql(db: Path, text: str, *params) -> None:
        conn = sqlite3.connect(db, timeout=30)
        conn.execute(text, params)
        conn.commit()
        conn.close()

    def steps(self, db: Path, run_id: int = 1) -> list[int]:
        return [r["step"] for r in self.rows(db, "SELECT step FROM steps WHERE run_id = ? ORDER BY step", run_id)]

    def contiguous(self, db: Path, run_id: int = 1) -> bool:
        s = self.steps(db, run_id)
        return s == list(range(1, len(s) + 1))

    def wait(self, predicate, what: str, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise NotHeld(f"timed out waiting for {what}")

    # -- runs -------------------------------------------------------------------------------------
    def finished_run(self, db: Path, *extra: str) -> dict:
        """A one-epoch run in the foreground (last.pt and best.pt), marked stopped."""
        proc = self.lvmd("run", *self.data, *ONE_EPOCH, *extra, "--quiet", "--db", str(db))
        if proc.returncode != 0:
            raise RuntimeError(f"setup run failed: {proc.stderr.strip()}")
        run_id = self.rows(db, "SELECT max(id) AS id FROM runs")[0]["id"]
        self.sql(db, "UPDATE runs SET state = 'stopped' WHERE id = ?", run_id)
        return self.row(db, run_id)

    def live_run(self, db: Path, min_steps: int = 4) -> dict:
        proc = self.lvmd("start", *self.data, *LONG, "--db", str(db), timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"setup start failed: {proc.stderr.strip()}")
        run_id = self.rows(db, "SELECT max(id) AS id FROM runs")[0]["id"]
        self.daemons.append((db, run_id))
        self.wait(lambda: len(self.steps(db, run_id)) >= min_steps, "some steps")
        return self.row(db, run_id)

    def victim(self) -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "600"])
        self.victims.append(proc)
        return proc

    # -- the end of a try: only what this try started ---------------------------------------------
    def close(self, genuine: dict[tuple[Path, int], dict]) -> None:
        for fd in self.held_fds:
            os.close(fd)
        for db, run_id in self.daemons:
            row = genuine.get((db, run_id))
            if row is not None and db.exists():         # undo a forgery, so the proven stop can act
                self.sql(db, "UPDATE runs SET pid = ?, out_dir = ?, host = ?, state = 'running' WHERE id = ? "
                             "AND state NOT IN ('stopped', 'finished', 'failed', 'crashed')",
                         row["pid"], row["out_dir"], row["host"], run_id)
            if db.exists():
                self.lvmd("stop", str(run_id), "--force", "--db", str(db))
        for proc in self.victims:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def pid_alive(pid: int) -> bool:
    from store.runs import pid_alive as alive

    return alive(pid)


def line_of(proc: subprocess.CompletedProcess) -> str:
    """The line that says why (a refused signal's reason before the final error), else the last."""
    lines = proc.stderr.strip().splitlines() or [proc.stdout.strip()]
    return next((ln for ln in lines if "not signalled" in ln or "not its daemon" in ln), lines[-1])


# -- signals ------------------------------------------------------------------------------------------
@case("signal: reused pid")
def reused_pid(t: Try, genuine: dict) -> str:
    db = t.db()
    run = t.live_run(db)
    genuine[(db, run["id"])] = run
    os.kill(run["pid"], signal.SIGKILL)                          # our own daemon, which we started
    t.wait(lambda: not pid_alive(run["pid"]), "the daemon to die")
    t.daemons.remove((db, run["id"]))
    victim = t.victim()                                          # the pid "reused" by an unrelated process
    t.sql(db, "UPDATE runs SET pid = ?, heartbeat_at = ? WHERE id = ?", victim.pid, time.time(), run["id"])
    how = t.rng.choice([["--grace", f"{t.rng.uniform(0.3, 2.0):.1f}"], ["--force"]])
    proc = t.lvmd("stop", str(run["id"]), *how, "--db", str(db))
    check(victim.poll() is None, f"the victim was killed by `lvmd stop {' '.join(how)}`")
    return f"stop {' '.join(how)} → exit {proc.returncode}: {line_of(proc)[:90]}"


@case("signal: forged row")
def forged_row(t: Try, genuine: dict) -> str:
    db = t.db()
    run = t.live_run(db)
    genuine[(db, run["id"])] = run
    victim = t.victim()
    kind = t.rng.choice(["pid", "pid+grace", "copy of a live run"])
    if kind == "copy of a live run":                            # a second row copying run 1's pid and folder
        conn = sqlite3.connect(db, timeout=30)
        conn.execute("INSERT INTO runs (name, preset, compat, state, config_json, out_dir, host, pid, created_at,"
                     " heartbeat_at) SELECT 'copy', preset, compat, 'running', config_json, out_dir, host, pid,"
                     " created_at, ? FROM runs WHERE id = ?", (time.time(), run["id"]))
        conn.commit()
        conn.close()
        target, how = str(run["id"] + 1), ["--force"]
    else:
        os.kill(run["pid"], signal.SIGSTOP)                      # hangs: the grace runs out
        t.sql(db, "UPDATE runs SET pid = ? WHERE id = ?", victim.pid, run["id"])
        target, how = str(run["id"]), (["--force"] if kind == "pid" else ["--grace", "1"])
    try:
        proc = t.lvmd("stop", target, *how, "--db", str(db))
    finally:
        if kind != "copy of a live run":
            os.kill(run["pid"], signal.SIGCONT)
    check(victim.poll() is None, f"{kind}: the victim was signalled")
    check(pid_alive(run["pid"]), f"{kind}: run {run['id']}'s daemon was killed through a forged row")
    check(proc.returncode != 0 or "not signalled" in proc.stderr, f"{kind}: no reason given: {proc.stderr}")
    return f"{kind}: {line_of(proc)[:100]}"


@case("signal: forged folder")
def forged_folder(t: Try, genuine: dict) -> str:
    from lvmd.run.runlock import process_start_time

    db = t.db()
    run = t.finished_run(db)
    victim = t.victim()
    db_id = t.rows(db, "SELECT value FROM db_properties WHERE key = 'db_id'")[0]["value"]
    forged = t.folder / f"forged-{t.rng.randrange(10**6)}"
    forged.mkdir()
    (forged / "run.json").write_text(json.dumps({"db": str(db), "db_id": db_id, "run_id": run["id"]}))
    (forged / "daemon.pid").write_text(f"{victim.pid} {process_start_time(victim.pid)}\n")
    fd = os.open(forged / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)                               # held by this drill, not by the victim
    t.held_fds.append(fd)
    t.sql(db, "UPDATE runs SET state = 'running', pid = ?, out_dir = ?, heartbeat_at = ? WHERE id = ?",
          victim.pid, str(forged), time.time(), run["id"])
    how = t.rng.choice([["--force"], ["--grace", "0.5"]])
    proc = t.lvmd("stop", str(run["id"]), *how, "--db", str(db))
    check(victim.poll() is None, f"stop {' '.join(how)} killed the forged pid")
    return f"stop {' '.join(how)}: {line_of(proc)[:100]}"


# -- checkpoints and folders ----------------------------------------------------------------------------
@case("checkpoint: copied")
def copied_checkpoint(t: Try, genuine: dict) -> str:
    db = t.db()
    a = t.finished_run(db)
    source = t.rng.choice(["another run", "run 1 of another database", "another run's best.pt"])
    if source == "run 1 of another database":
        b = t.finished_run(t.db("other.db"))
    else:
        b = t.finished_run(db, f"train.seed={t.rng.randrange(1, 999)}")
    last = Path(a["out_dir"], "last.pt")
    shutil.copyfile(Path(b["out_dir"], "best.pt" if "best" in source else "last.pt"), last)
    before = (last.read_bytes(), t.steps(db, a["id"]), sorted(p.name for p in last.parent.iterdir()))
    how = t.rng.choice([["--foreground", "--quiet"], []])
    proc = t.lvmd("resume", str(a["id"]), *how, "--db", str(db))
    line = line_of(proc)
    check(proc.returncode != 0 and "a checkpoint of run" in line and f"not of run {a['id']}" in line,
          f"{source}: resume did not refuse it: {line or proc.stdout}")
    after = (last.read_bytes(), t.steps(db, a["id"]), sorted(p.name for p in last.parent.iterdir() if p.name != "daemon.log"))
    check(after[:2] == before[:2], f"{source}: the refused resume changed the checkpoint or the steps")
    check(t.row(db, a["id"])["state"] == "stopped", f"{source}: the run was left {t.row(db, a['id'])['state']}")
    return f"{source}: {line[:100]}"


@case("best.pt: copied")
def copied_best(t: Try, genuine: dict) -> str:
    db = t.db()
    a = t.finished_run(db)
    other = t.rng.choice([db, t.db("other.db")])
    b = t.finished_run(other, f"train.seed={t.rng.randrange(1, 999)}")
    shutil.copyfile(Path(b["out_dir"], "best.pt"), Path(a["out_dir"], "best.pt"))
    proc = t.lvmd("predict", "--run", str(a["id"]), "--which", "best", "--articles", str(t.articles),
                  "--context", "0,1,2,3,4", "--db", str(db))
    check(proc.returncode != 0 and "a checkpoint of run" in line_of(proc), f"predict used it: {proc.stdout[:200]}")
    return line_of(proc)[:110]


@case("folder: foreign")
def foreign_folder(t: Try, genuine: dict) -> str:
    db = t.db()
    a = t.finished_run(db)
    kind = t.rng.choice(["a user's folder", "a copy of another run's folder", "another database's run 1"])
    target = t.folder / f"target-{t.rng.randrange(10**6)}"
    if kind == "a user's folder":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    elif kind == "a copy of another run's folder":
        b = t.finished_run(db, "train.seed=3")
        shutil.copytree(b["out_dir"], target)
    else:
        b = t.finished_run(t.db("other.db"))
        shutil.copytree(b["out_dir"], target)
    (target / f".best.pt.{t.rng.randrange(1000)}.tmp").write_bytes(b"the user's")
    listing = sorted((p.name, p.read_bytes()) for p in target.iterdir() if p.is_file())
    t.sql(db, "UPDATE runs SET out_dir = ? WHERE id = ?", str(target), a["id"])
    how = t.rng.choice([["--foreground", "--quiet"], []])
    proc = t.lvmd("resume", str(a["id"]), *how, "--db", str(db))
    check(proc.returncode != 0, f"{kind}: resume used it ({proc.stdout.strip()})")
    check(sorted((p.name, p.read_bytes()) for p in target.iterdir() if p.is_file()) == listing,
          f"{kind}: something was written into or removed from it")
    check(t.row(db, a["id"])["state"] == "stopped", f"{kind}: the run was left {t.row(db, a['id'])['state']}")
    return f"{kind}: {line_of(proc)[:100]}"


# -- opt-ins -----------------------------------------------------------------------------------------------
class Plant:
    """Unpickling it creates a folder: proof that code from the data file ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path, 0o700, True))


def planted_data(t: Try, out: Path, marker: Path | None) -> list[str]:
    import numpy as np

    from lvmd.data import formats as data

    out.mkdir(exist_ok=True)
    for split in ("train", "val"):
        s = data.load_sequences(Path(t.data[0 if split == "train" else 1].split("=", 1)[1]))
        meta = np.array([Plant(str(marker)) if marker else {"article_index": int(a), "target_chunk_index": int(i)}
                         for a, i in zip(s.article_ids, s.target_indices)], dtype=object)
        np.savez(out / f"{split}.npz", context_sequences=s.contexts, target_vectors=s.targets, metadata=meta)
    return [f"data.train={out / 'train.npz'}", f"data.val={out / 'val.npz'}"]


@case("opt-in: planted")
def planted_optin(t: Try, genuine: dict) -> str:
    from lvmd.run.sweep_plan import SweepSpec
    from store.db import connect
    from store.sweeps import add_config, create_sweep

    marker = t.folder / f"code-ran-{t.rng.randrange(10**6)}"
    evil = planted_data(t, t.folder / "evil", marker)
    where = t.rng.choice(["sweeps.spec_json overrides", "sweeps.spec_json config file", "sweep_configs overrides",
                          "runs.config_json + run.json"])
    db = t.db()
    if where.startswith("runs"):
        setup = t.lvmd("run", *planted_data(t, t.folder / "benign", None), *ONE_EPOCH, "--allow-pickle", "--quiet",
                       "--db", str(db))
        if setup.returncode != 0:
            raise RuntimeError(f"setup run failed: {setup.stderr.strip()}")
        run = t.row(db)
        cfg = json.loads(run["config_json"])
        cfg["data"].update(train=evil[0].split("=", 1)[1], val=evil[1].split("=", 1)[1], allow_pickle=True)
        t.sql(db, "UPDATE runs SET state = 'stopped', config_json = ? WHERE id = 1", json.dumps(cfg))
        owner = Path(run["out_dir"], "run.json")
        owner.write_text(json.dumps({**json.loads(owner.read_text()), "data": {"allow_pickle": True}}))
        for name in ("last.pt", "best.pt"):                     # else the checkpoint's identity refuses first
            Path(run["out_dir"], name).unlink(missing_ok=True)
        proc = t.lvmd("resume", "1", *t.rng.choice([["--foreground", "--quiet"], []]), "--allow-data-change",
                      "--db", str(db))
    else:
        config, overrides, config_overrides = None, [*evil, *ONE_EPOCH], []
        if where.endswith("overrides") and where.startswith("sweeps"):
            overrides.append("data.allow_pickle=true")
        elif where.endswith("config file"):
            config = t.folder / "sweep.toml"
            config.write_text("[data]\nallow_pickle = true\n")
        else:
            config_overrides = ["data.allow_pickle=true"]
        conn = connect(db)
        spec = SweepSpec(config=str(config) if config else None, overrides=overrides, grid=[], seeds=[0])
        sweep_id = create_sweep(conn, name="planted", search="grid", config_path=str(config or ""),
                                spec=spec.to_dict(), parallel=1)
        add_config(conn, sweep_id, "base", config_overrides)
        conn.close()
        proc = t.lvmd("sweep", "resume", str(sweep_id), "--db", str(db))
    check(not marker.exists(), f"{where}: the planted pickle ran")
    check(proc.returncode != 0 and "--allow-pickle" in line_of(proc), f"{where}: no opt-in asked for: {line_of(proc)}")
    return f"{where}: {line_of(proc)[:90]}"


# -- the database under a live daemon ----------------------------------------------------------------------
def daemon_line(log: Path, words: str) -> bool:
    return log.exists() and words in log.read_text(errors="replace")


@case("db: replaced")
def db_replaced(t: Try, genuine: dict) -> str:
    from store.db import connect

    db, moved, other = t.db(), t.db("moved.db"), t.db("other.db")
    run = t.live_run(db, min_steps=t.rng.randint(3, 30))
    log = Path(run["out_dir"], "daemon.log")
    kind = t.rng.choice(["renamed away", "replaced by another database", "replaced by its own backup"])
    if kind == "replaced by another database":
        connect(other).close()
    elif kind == "replaced by its own backup":
        t.lvmd("backup", str(db), str(other))
    other_before = t.rows(other, "SELECT count(*) AS n, (SELECT count(*) FROM steps) AS s FROM runs")[0] \
        if other.exists() else None
    os.rename(db, moved)
    if other_before is not None:
        os.rename(other, db)
    words = "was moved or deleted" if other_before is None else "was replaced by another file"
    t.wait(lambda: daemon_line(log, words), "the daemon's line", 60)
    t.wait(lambda: not pid_alive(run["pid"]), "the daemon to exit", 60)
    t.daemons.remove((db, run["id"]))
    if other_before is not None:
        check(t.lvmd("check", str(db)).returncode == 0, f"{kind}: the file now at the path fails `lvmd check`")
        now = t.rows(db, "SELECT count(*) AS n, (SELECT count(*) FROM steps) AS s FROM runs")[0]
        check(now == other_before, f"{kind}: the daemon wrote into the file now at the path ({other_before} → {now})")
    mine = t.row(moved, run["id"])
    check(t.lvmd("check", str(moved)).returncode == 0, f"{kind}: the file it opened fails `lvmd check`")
    check(mine["state"] == "stopped" and t.contiguous(moved) and len(t.steps(moved)) == mine["step"],
          f"{kind}: the file it opened says {mine['state']} at step {mine['step']} with {len(t.steps(moved))} steps")
    return f"{kind}: stopped at step {mine['step']}, every step in the file it opened"


@case("db: wal removed")
def wal_removed(t: Try, genuine: dict) -> str:
    db = t.db()
    run = t.live_run(db, min_steps=t.rng.randint(3, 30))
    log = Path(run["out_dir"], "daemon.log")
    Path(f"{db}-wal").unlink()
    t.wait(lambda: daemon_line(log, "-wal was deleted under the daemon"), "the daemon's line", 60)
    t.wait(lambda: not pid_alive(run["pid"]), "the daemon to exit", 60)
    check(t.lvmd("check", str(db)).returncode == 0, "the database fails `lvmd check` after its -wal went")
    row = t.row(db, run["id"])
    check(row["state"] == "stopped" and t.contiguous(db) and len(t.steps(db)) == row["step"],
          f"it says {row['state']} at step {row['step']} with {len(t.steps(db))} steps")
    proc = t.lvmd("resume", str(run["id"]), "--db", str(db), timeout=300)
    check(proc.returncode == 0 and f"resumed from step {row['step']}" in proc.stdout,
          f"it does not resume where it stopped: {proc.stdout.strip()} {line_of(proc)}")
    return f"stopped at step {row['step']}, every step kept, resumed"


# -- stop racing resume; failed resumes ------------------------------------------------------------------
@case("stop racing resume")
def stop_racing_resume(t: Try, genuine: dict) -> str:
    db = t.db()
    run = t.live_run(db)
    t.lvmd("stop", str(run["id"]), "--db", str(db))
    at = t.row(db, run["id"])["step"]
    delay = t.rng.uniform(0.0, 3.0)
    resume = t.popen("resume", str(run["id"]), "--db", str(db))
    time.sleep(delay)
    typed = time.time()
    stop = t.lvmd("stop", str(run["id"]), "--db", str(db))
    out, err = resume.communicate(timeout=300)
    began = t.rows(db, "SELECT t FROM events WHERE run_id = ? AND kind = 'state' AND detail LIKE '%\"resume\": true%' "
                       "ORDER BY id DESC LIMIT 1", run["id"])
    after_begin = bool(began) and began[0]["t"] <= typed
    final = t.row(db, run["id"])
    if stop.returncode == 0:
        check(final["state"] == "stopped" and final["step"] <= at + 2 and t.contiguous(db),
              f"the stop said done but the run is {final['state']} at step {final['step']} (resumed at {at})")
        return f"stop {delay:.1f} s after resume: landed at step {final['step']} (resumed at {at})"
    check(not after_begin, f"stop typed {delay:.1f} s after the resume began was refused: {line_of(stop)}")
    return f"stop {delay:.1f} s after resume, before it began: {line_of(stop)[:60]}"


@case("resume: fails")
def failed_resume(t: Try, genuine: dict) -> str:
    db = t.db()
    run = t.live_run(db)
    t.lvmd("stop", str(run["id"]), "--db", str(db))
    kind = t.rng.choice(["daemon killed while starting", "data file changed", "checkpoint truncated"])
    env = None
    if kind == "daemon killed while starting":
        holds = t.folder / "holds"
        env = {"LVMD_HOLD": "resume-start", "LVMD_HOLD_FILE": str(holds), "LVMD_HOLD_SECONDS": "120"}
    elif kind == "data file changed":
        path = Path(t.data[1].split("=", 1)[1])
        local = t.folder / "val.npz"
        shutil.copyfile(path, local)
        cfg = json.loads(run["config_json"])
        with open(local, "ab") as fh:
            fh.write(b"\0")
        cfg["data"]["val"] = str(local)
        t.sql(db, "UPDATE runs SET config_json = ? WHERE id = ?", json.dumps(cfg), run["id"])
    else:
        last = Path(run["out_dir"], "last.pt")
        last.write_bytes(last.read_bytes()[: t.rng.randrange(0, 2000)])
    resume = t.popen("resume", str(run["id"]), "--db", str(db), env=env)
    if env is not None:
        line = t.wait(lambda: holds.exists() and holds.read_text().strip(), "the daemon to hold", 300)
        pid = int(line.split()[1])
        t.wait(lambda: t.row(db, run["id"])["pid"] == pid, "the daemon's own row")
        os.kill(pid, signal.SIGKILL)                             # our daemon, held at our holdpoint
    out, err = resume.communicate(timeout=300)
    state = t.row(db, run["id"])["state"]
    check(resume.returncode != 0, f"{kind}: resume said it worked: {out.strip()}")
    check(state in ("stopped", "crashed"), f"{kind}: the run was left {state} when `lvmd resume` returned")
    return f"{kind}: {state}; {(err.strip().splitlines() or [''])[-1][:80]}"


# -- the table -----------------------------------------------------------------------------------------------
def make_data(folder: Path) -> tuple[list[str], Path]:
    from lvmd.data import formats as data

    arts = data.synth_articles(n_articles=24, min_chunks=12, max_chunks=20, dim=16, seed=11)
    data.save_articles(folder / "articles.npz", arts)
    data.write_splits(data.load_articles(folder / "articles.npz"), folder, context=5, gap=0, val=0.25, ood=0.0,
                      seed=0, source=str(folder / "articles.npz"))
    return [f"data.train={folder / 'train.npz'}", f"data.val={folder / 'val.npz'}"], folder / "articles.npz"


def say(text: str) -> None:
    print(text, flush=True)


def run(cases: list[str], tries: int, seed: int, keep: Path | None, log=say) -> list[tuple[str, int, int, list]]:
    rng = random.Random(seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="lvmd-trust-") as tmp:
        base = keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        (base / "data").mkdir(exist_ok=True)
        data, articles = make_data(base / "data")
        for name, fn in CASES:
            if name not in cases:
                continue
            held, notes = 0, []
            for n in range(1, tries + 1):
                folder = base / f"{name.replace(':', '').replace(' ', '-').replace('.', '')}-{n}"
                folder.mkdir()
                t = Try(folder, random.Random(rng.random()), data, articles)
                genuine: dict = {}
                started = time.monotonic()
                try:
                    note, ok = fn(t, genuine), True
                except NotHeld as exc:
                    note, ok = f"NOT HELD: {exc}", False
                except Exception as exc:           # the drill's own trouble is reported, not hidden
                    note, ok = f"ERROR: {type(exc).__name__}: {exc} {traceback.format_exc(limit=3)}", False
                finally:
                    t.close(genuine)
                held += ok
                notes.append(note)
                log(f"{name} #{n} ({time.monotonic() - started:.0f} s): {note}")
            results.append((name, tries, held, notes))
    return results


def table(results) -> str:
    width = max(len("case"), *(len(r[0]) for r in results))
    lines = [f"{'case':<{width}}  tries  held", f"{'-' * width}  -----  ----"]
    lines += [f"{name:<{width}}  {tries:>5}  {held:>4}" for name, tries, held, _ in results]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries", type=int, default=3, help="tries per case, each a fresh variation")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep every try's databases and folders here (a new folder)")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()] or [n for n, _ in CASES]
    unknown = [n for n in names if n not in dict(CASES)]
    if unknown:
        ap.error(f"--cases: unknown {', '.join(unknown)} (known: {', '.join(n for n, _ in CASES)})")
    results = run(names, args.tries, args.seed, Path(args.keep) if args.keep else None)
    print(table(results))
    return 0 if all(held == tries for _, tries, held, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
