"""Does `lvmd export RUN --tensorboard DIR --follow` slow the trainer? The same training run alone
and with a follower mirroring it live, alternately, in pairs; prints steps/s of each run and
the follower's CPU time.

    .venv/bin/python scripts/bench_follow.py                  # 3 pairs of 3,000-step runs
    .venv/bin/python scripts/bench_follow.py --pairs 2 --steps 2000

The trainer is a real `lvmd start` daemon on a tiny amn model and synthetic D=16 data, so it
commits about a hundred step rows a second: the follower's worst case (most rows to copy per
second, least trainer time to hide them in). steps/s is store.runs.active_rate over all of the
run's steps (pauses for 5CAT are left out). Target: with >= 97 % of alone. On a shared machine
other processes' load moves both columns: alternate, and read the medians.
"""
from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from store.runs import active_rate  # noqa: E402

LVMD = [sys.executable, "-m", "lvmd"]
TINY = ["model.kind=amn", "model.d_model=16", "model.nhead=2", "model.num_layers=1", "model.ff=32", "model.hidden=16",
        "model.amn_d=8", "train.threads=1", "train.precision=fp32", "train.batch_size=16", "train.epochs=100000",
        "eval.fivecat_every=0"]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rows(db: Path, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def one_run(data: Path, db: Path, steps: int, follow: bool, tb: Path) -> dict:
    out = subprocess.run([*LVMD, "start", *TINY, f"train.max_steps={steps}", f"data.train={data / 'train.npz'}",
                          f"data.val={data / 'val.npz'}", "--db", str(db)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    run_id = int(re.match(r"run (\d+) ", out)[1])
    follower, follower_cpu, mirrored = None, None, None
    if follow:
        follower = subprocess.Popen([*LVMD, "export", str(run_id), "--tensorboard", str(tb), "--follow", "--force",
                                     "--db", str(db)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
    while rows(db, "SELECT state FROM runs WHERE id = ?", run_id)[0][0] not in ("finished", "stopped", "failed",
                                                                                  "crashed"):
        if follower is not None and follower.poll() is None:
            follower_cpu = cpu_seconds(follower.pid)
        time.sleep(0.5)
    if follower is not None:
        err = follower.communicate(timeout=120)[1]
        found = re.search(r"^wrote run \d+ .*: (\d+) steps,", err, re.M)
        mirrored = int(found[1]) if found else None
        if follower.returncode != 0 or mirrored != steps:
            print(f"follower of run {run_id} exited {follower.returncode}: {err.strip()}", flush=True)
    rate = active_rate(rows(db, "SELECT step, t FROM steps WHERE run_id = ?", run_id))
    return {"run": run_id, "follow": follow, "steps/s": rate, "follower_cpu_s": follower_cpu, "mirrored": mirrored,
            "load": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lvmd-bench-follow-") as tmp:
        tmp = Path(tmp)
        subprocess.run([*LVMD, "data", "synth", "--out", str(tmp / "articles.npz"), "--articles", "400", "--dim", "16"],
                       cwd=ROOT, check=True, capture_output=True)
        subprocess.run([*LVMD, "data", "windows", str(tmp / "articles.npz"), "--out", str(tmp)], cwd=ROOT, check=True,
                       capture_output=True)
        results = []
        for pair in range(args.pairs):
            for follow in ((False, True) if pair % 2 == 0 else (True, False)):
                results.append(one_run(tmp, tmp / "bench.db", args.steps, follow, tmp / "tb"))
                r = results[-1]
                print(f"run {r['run']:>2}  {'with follower' if follow else 'alone        '}  {r['steps/s']:7.1f} steps/s"
                      + (f"  follower {r['follower_cpu_s']:.2f} s CPU, mirrored {r['mirrored']} steps" if follow else "")
                      + f"  load {r['load']:.1f}", flush=True)
    alone = [r["steps/s"] for r in results if not r["follow"]]
    beside = [r["steps/s"] for r in results if r["follow"]]
    print(f"\n| {args.steps}-step runs | n | median steps/s | min | max |\n|---|---|---|---|---|")
    for name, values in (("alone", alone), ("with --follow beside", beside)):
        print(f"| {name} | {len(values)} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    print(f"\nwith/alone (medians): {statistics.median(beside) / statistics.median(alone):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
