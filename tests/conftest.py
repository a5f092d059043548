"""Shared fixtures: a tiny synthetic dataset on disk and a helper that runs the real `lvmd`."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # 2-core CI: keep in-process tests from fighting subprocesses

# A model small enough that a 2-epoch run takes about a second on one core. Precision and
# threads are pinned (their defaults are "auto"): the same numbers on every CPU.
TINY_MODEL = ["model.d_model=16", "model.nhead=2", "model.num_layers=1", "model.ff=32",
              "model.hidden=16", "model.amn_d=8", "train.threads=1", "train.precision=fp32"]


def lvmd(*args: str, cwd: str | Path | None = None, check: bool = False, timeout: float = 120,
         env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI as a subprocess and capture its output."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "lvmd", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"lvmd {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def synth_splits(out: Path, *, n_articles: int, min_chunks: int, max_chunks: int, seed: int, val: float,
                 ood: float) -> Path:
    """articles.npz + train/val[/ood].npz in `out` from synthetic articles, D=16."""
    from lvmd.data import formats as data

    arts = data.synth_articles(n_articles=n_articles, min_chunks=min_chunks, max_chunks=max_chunks, dim=16, seed=seed)
    data.save_articles(out / "articles.npz", arts)
    data.write_splits(data.load_articles(out / "articles.npz"), out, context=5, gap=0, val=val, ood=ood, seed=0,
                      source=str(out / "articles.npz"))
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """articles.npz + train/val/ood.npz from 30 synthetic articles, D=16."""
    return synth_splits(tmp_path_factory.mktemp("tiny_data"), n_articles=30, min_chunks=12, max_chunks=24, seed=1,
                        val=0.2, ood=0.2)


@pytest.fixture(scope="session")
def synth200(tmp_path_factory) -> Path:
    """200 synthetic articles made by the real `lvmd data synth` + `lvmd data windows` (~210
    steps an epoch at batch 16: a run is still training when a test acts on it)."""
    out = tmp_path_factory.mktemp("synth200")
    lvmd("data", "synth", "--out", str(out / "articles.npz"), "--articles", "200", "--dim", "16", check=True)
    lvmd("data", "windows", str(out / "articles.npz"), "--out", str(out), check=True)
    return out


@pytest.fixture
def db(tmp_path):
    """The test's database path; every daemon its runs name that is still alive at the end is
    killed by its own pid."""
    from store.runs import pid_alive

    path = tmp_path / "t.db"
    yield str(path)
    if path.exists():
        for (pid,) in query(path, "SELECT pid FROM runs WHERE state NOT IN ('stopped', 'finished', 'failed', 'crashed')"):
            if pid and pid_alive(pid) and pid != os.getpid():
                os.kill(pid, signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """predicate()'s first truthy value within `timeout` s (deadlines are generous: CI is loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def data_overrides(d: Path, *, articles: bool = False) -> list[str]:
    extra = [f"data.articles={d / 'articles.npz'}", f"data.ood={d / 'ood.npz'}"] if articles else []
    return [f"data.train={d / 'train.npz'}", f"data.val={d / 'val.npz'}", *extra]


def rows(db, sql: str, *params) -> list[dict]:
    """query() as dicts."""
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def query(db, sql: str, *params) -> list[tuple]:
    """Rows of one query on a fresh connection (what another process would see)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def new_run(path, *, state: str = "running"):
    """A run row in a fresh database at `path` and the trainer's real writer for it."""
    from store.db import connect
    from store.runs import create_run
    from store.writer import SqliteSink

    conn = connect(path)
    run_id = create_run(conn, name="r", preset="v2.1", compat="none", config={}, data={}, state=state)
    conn.close()
    return run_id, SqliteSink(path, run_id, flush_seconds=0.0)


@pytest.fixture(autouse=True)
def _tui_state(tmp_path, monkeypatch):
    """The TUI remembers charts per database in a file of the user's (tui/prefs.py): a test's own."""
    monkeypatch.setenv("LVMD_TUI_STATE", str(tmp_path / "tui-state.json"))
