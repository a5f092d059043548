"""Shared fixtures: a tiny synthetic dataset on disk and a helper that runs the real `lvmd`."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """articles.npz + train/val/ood.npz from 30 synthetic articles, D=16."""
    from lvmd.data import formats as data

    out = tmp_path_factory.mktemp("tiny_data")
    arts = data.synth_articles(n_articles=30, min_chunks=12, max_chunks=24, dim=16, seed=1)
    data.save_articles(out / "articles.npz", arts)
    data.write_splits(data.load_articles(out / "articles.npz"), out, context=5, gap=0, val=0.2, ood=0.2, seed=0,
                 source=str(out / "articles.npz"))
    return out


def data_overrides(d: Path, *, articles: bool = False) -> list[str]:
    extra = [f"data.articles={d / 'articles.npz'}", f"data.ood={d / 'ood.npz'}"] if articles else []
    return [f"data.train={d / 'train.npz'}", f"data.val={d / 'val.npz'}", *extra]


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
