#!/usr/bin/env python3
"""Benchmark: how long `lvmd pause` and `lvmd stop` wait to be acknowledged during a 5CAT.

    .venv/bin/python scripts/bench_command_ack.py [--lvmd ROOT] [--pauses 2] [--threads 1]
                                                  [--work DIR] [key=value ...]

Starts the README demo's run with SPEC's default transformer (lvmd/demo/demo.toml,
model.kind=transformer, as the issue-22 sweep ran it), asks for a 5CAT with `lvmd eval-now`, and
once the evaluation is under way (its first stage written) sends `pause`, then `resume`; after
--pauses of those, the same with `stop`. The ack latency is commands.acked_at − issued_at (one
host's clock: the CLI writes one, the daemon the other); the 5CAT's length is evals.duration_s.
Before issue 22 a command waited for the whole evaluation; after it, for one batch of
predictions at most. --lvmd ROOT runs another checkout's lvmd (e.g. an export of an older
commit) with this script, to measure before and after on one machine. Only the CLI and SQL are
used, so any lvmd version with eval-now works. Extra key=value arguments override the config.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "lvmd", *args], cwd=root, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise SystemExit(f"lvmd {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def one(db: Path, sql: str, *params):
    conn = sqlite3.connect(db, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else dict(row)
    finally:
        conn.close()


def wait(what: str, predicate, timeout: float = 1800.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def newest_command(db: Path, verb: str) -> dict:
    return one(db, "SELECT * FROM commands WHERE verb = ? ORDER BY id DESC LIMIT 1", verb)


def start_5cat(root: Path, db: Path, run: str) -> dict:
    """eval-now, then wait until that evaluation has written its first stage; its command row."""
    cli(root, "eval-now", run, "--db", str(db), "--no-wait")
    cmd = newest_command(db, "eval")
    wait("the eval to be taken", lambda: one(db, "SELECT state FROM commands WHERE id = ?", cmd["id"])["state"] != "pending")
    acked = one(db, "SELECT acked_at FROM commands WHERE id = ?", cmd["id"])["acked_at"]
    wait("the 5CAT's first stage", lambda: one(
        db, "SELECT id FROM events WHERE kind = 'eval_progress' AND t > ? LIMIT 1", acked))
    return cmd


def ack_latency(root: Path, db: Path, run: str, verb: str) -> tuple[float, dict]:
    cli(root, verb, run, "--db", str(db), "--no-wait")
    cmd = newest_command(db, verb)
    acked = wait(f"the {verb} to be acknowledged", lambda: one(
        db, "SELECT * FROM commands WHERE id = ? AND acked_at IS NOT NULL", cmd["id"]), every=0.02)
    progress = one(db, "SELECT detail FROM events WHERE kind = 'eval_progress' AND t <= ? ORDER BY id DESC LIMIT 1",
                   acked["acked_at"])
    return acked["acked_at"] - acked["issued_at"], json.loads(progress["detail"]) if progress else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lvmd", default=str(HERE), help="checkout whose lvmd to run (default: this one)")
    ap.add_argument("--pauses", type=int, default=2)
    ap.add_argument("--threads", default="1", help="train.threads (default 1)")
    ap.add_argument("--work", help="folder for the database and the demo's sequences (default: a temp folder)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()
    root = Path(args.lvmd).resolve()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_ack_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "seqs"
    if not (data / "val.npz").exists():
        cli(HERE, "data", "sequences", str(HERE / "lvmd/demo/wiki-minilm"), "--out", str(data))
    demo = HERE / "lvmd/demo/wiki-minilm"
    db = work / f"ack-{root.name}.db"
    for leftover in work.glob(f"{db.name}*"):
        leftover.unlink() if leftover.is_file() else None
    overrides = [f"data.train={data / 'train.npz'}", f"data.val={data / 'val.npz'}", f"data.ood={data / 'ood.npz'}",
                 f"data.articles={demo / 'articles.npz'}", f"data.ood_articles={demo / 'ood_articles.npz'}",
                 "model.kind=transformer", "train.epochs=100", "eval.fivecat_every=0",
                 f"train.threads={args.threads}", "name=ack", *args.overrides]
    out = cli(root, "start", str(HERE / "lvmd/demo/demo.toml"), *overrides, "--db", str(db)).stdout
    run = out.split()[1]
    rows = []
    try:
        for i in range(args.pauses):
            start_5cat(root, db, run)
            latency, where = ack_latency(root, db, run, "pause")
            wait("paused", lambda: one(db, "SELECT state FROM runs WHERE id = ?", run)["state"] == "paused")
            cli(root, "resume", run, "--db", str(db))
            rows.append(("pause", i + 1, latency, where))
            # the evaluation carries on (after) or is over (before): wait for its row before the next
            wait("the 5CAT to be written", lambda: one(db, "SELECT COUNT(*) AS n FROM evals")["n"] > i)
        start_5cat(root, db, run)
        latency, where = ack_latency(root, db, run, "stop")
        rows.append(("stop", 1, latency, where))
        wait("stopped", lambda: one(db, "SELECT state FROM runs WHERE id = ?", run)["state"] in ("stopped", "crashed"))
    finally:
        state = one(db, "SELECT state, pid FROM runs WHERE id = ?", run)
        if state and state["state"] not in ("stopped", "finished", "failed", "crashed"):
            cli(root, "stop", run, "--db", str(db), "--force", check=False)
    evals = one(db, "SELECT COUNT(*) AS n, AVG(duration_s) AS mean, MAX(duration_s) AS worst FROM evals")
    hw = one(db, "SELECT device, precision, threads FROM runs WHERE id = ?", run)
    load = os.getloadavg()[0]
    print(f"lvmd at {root} · default transformer on the demo data · {hw['device']} {hw['precision']}, "
          f"{hw['threads']} thread(s) · load average {load:.1f} on {os.cpu_count()} CPUs")
    if evals["n"]:
        print(f"5CAT (eval.max_samples as demo.toml): {evals['n']} written, mean {evals['mean']:.1f} s, "
              f"max {evals['worst']:.1f} s")
    print(f"\n| command | try | ack latency | 5CAT stage when acked |\n|---|---|---|---|")
    for verb, i, latency, where in rows:
        stage = f"{where.get('done')}/{where.get('total')} {where.get('stage')}" if where else "–"
        print(f"| {verb} | {i} | {latency:.2f} s | {stage} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
