#!/usr/bin/env python3
"""Crash drill: real `lvmd start` daemons on a tiny model, killed with SIGKILL inside real
windows, each kill followed at once by `lvmd resume`, every run then left to finish. Prints a
table; target: every column N/N and no kill missed.

Kill windows (dealt from a shuffled deck, so every window gets its share): `train` (at a random
step boundary while it trains), `fivecat` (during an epoch-end or re-run 5CAT), `checkpoint`
(between a checkpoint's temp file and its rename), `commit` (inside a telemetry transaction).
Each uses store/holdpoints.py: the daemon holds at the n-th time it reaches the point and this
script kills it there. n is drawn from the occurrences the process is sure to reach (counted from the
run's progress when it starts: windows_left), in the first half of them when another kill
follows, so a kill does not wait for a window the run has already passed. A kill whose window
never came is reported as missed.

Columns: steps exactly once (1..total, no gap, no duplicate); epochs exactly once; every
epoch's 5CAT present exactly once; integrity_check ok; step_blocks equal to the steps; no temp
files left; every `lvmd resume` right after a kill exited 0; kills landed of those drawn.

    .venv/bin/python scripts/chaos.py --trials 20            # the issue's drill
    .venv/bin/python scripts/chaos.py --trials 2 --kinds fivecat,checkpoint --kills 2
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("train", "fivecat", "checkpoint", "commit")
EPOCHS = 4
CHECKPOINT_EVERY = 80
COMMIT_AFTER = (6, 12)    # the n-th telemetry commit of a process: past start-up (start and resume wait
                          # for it), seconds before its end
WAIT_SECONDS = 180.0


def config() -> list[str]:
    return ["model.kind=amn", "model.amn_d=8", "model.hidden=16", "train.threads=1", "train.batch_size=2",
            f"train.epochs={EPOCHS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", "eval.fivecat_every=1",
            "eval.max_samples=60", "eval.check_samples=30", "watch.action=warn"]


@dataclass
class Trial:
    number: int
    kills: list[str] = field(default_factory=list)
    resume_codes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)


def make_data(folder: Path) -> list[str]:
    from lvmd.data import formats as data

    arts = data.synth_articles(n_articles=24, min_chunks=12, max_chunks=20, dim=16, seed=7)
    data.save_articles(folder / "articles.npz", arts)
    data.write_splits(data.load_articles(folder / "articles.npz"), folder, context=5, gap=0, val=0.25, ood=0.0,
                      seed=0, source=str(folder / "articles.npz"))
    return [f"data.train={folder / 'train.npz'}", f"data.val={folder / 'val.npz'}",
            f"data.articles={folder / 'articles.npz'}"]


def lvmd(*args: str, env: dict | None = None, timeout: float = WAIT_SECONDS) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "lvmd", *args], capture_output=True, text=True, env=full,
                          timeout=timeout)


def row(db: Path) -> dict:
    conn = sqlite3.connect(db, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM runs WHERE id = 1").fetchone())
    finally:
        conn.close()


def last_step(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT COALESCE(max(step), 0) FROM steps WHERE run_id = 1").fetchone()[0]
    finally:
        conn.close()


def planned_steps(data: list[str]) -> int:
    """A new run's total steps: its epochs of batches of 2 over the training sequences."""
    import numpy as np

    train = next(item.split("=", 1)[1] for item in data if item.startswith("data.train="))
    with np.load(train) as npz:
        return EPOCHS * -(-len(npz["target_vectors"]) // 2)


def windows_left(db: Path | None, total: int = 0) -> dict[str, int]:
    """How many times a process started now is sure to reach each hold point (db None: a new
    run of `total` steps). Counted from runs.step, which is at or past the checkpoint a resume
    starts from, so these are lower bounds: a hold drawn from them is reached unless the
    process is killed first."""
    if db is None:
        return {"step": total, "fivecat": EPOCHS, "checkpoint": EPOCHS + 1, "commit": COMMIT_AFTER[1]}
    run = row(db)
    conn = sqlite3.connect(db, timeout=30)
    try:
        evals = conn.execute("SELECT COUNT(DISTINCT epoch) FROM evals WHERE run_id = 1 AND trigger = 'epoch'"
                             " AND error IS NULL").fetchone()[0]
    finally:
        conn.close()
    total, step = run["total_steps"], run["step"]
    per_epoch = max(1, total // EPOCHS)
    saves = {s for s in range(step + 1, total + 1) if s % CHECKPOINT_EVERY == 0 or s % per_epoch == 0}
    return {"step": total - step, "fivecat": max(0, EPOCHS - evals), "checkpoint": len(saves) + 1,  # + the final save
            "commit": COMMIT_AFTER[1]}


def hold_env(kind: str, holds: Path, rng: random.Random, db: Path | None, *, last: bool, total: int = 0) -> dict:
    """The hold for the next kill: at an occurrence the process is sure to reach, in the first
    half of what is left unless it is the trial's last kill (so the next kill has a window too).
    `train` holds at the n-th step boundary (a poll for the step, as this drill once did, is
    outrun by a tiny model on a loaded machine)."""
    if kind == "train":
        left = windows_left(db, total)["step"]
        n = rng.randint(1, max(1, int(left * (0.9 if last else 0.5))))
        return {"LVMD_HOLD": "step", "LVMD_HOLD_FILE": str(holds), "LVMD_HOLD_AFTER": str(n),
                "LVMD_HOLD_SECONDS": "120"}
    if kind == "commit":
        n = rng.randint(*COMMIT_AFTER) if last else rng.randint(COMMIT_AFTER[0], sum(COMMIT_AFTER) // 2)
    else:
        left = windows_left(db, total)[kind]
        if left < 1:
            return {"LVMD_HOLD": ""}           # no such window left: kill_in_window calls it missed
        n = rng.randint(1, left if last else max(1, left // 2))
    return {"LVMD_HOLD": kind, "LVMD_HOLD_FILE": str(holds), "LVMD_HOLD_AFTER": str(n), "LVMD_HOLD_SECONDS": "120"}


def kill_in_window(db: Path, holds: Path, seen: int) -> bool:
    """SIGKILL the run's daemon where it holds (every window is a hold point now); False if the
    run ended first (a miss)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        lines = holds.read_text().splitlines() if holds.exists() else []
        if len(lines) > seen:
            pid = int(lines[seen].split()[1])
            break
        if row(db)["state"] in ("finished", "failed", "crashed", "stopped") or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def wait_finished(db: Path) -> str:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        state = row(db)["state"]
        if state in ("finished", "failed", "crashed", "stopped"):
            return state
        time.sleep(0.2)
    return "timeout"


# step_blocks (the triggers' 64-step sums) against the same numbers summed from the steps now
BLOCKS_BY_HAND = ("SELECT run_id, epoch, step / 64, COUNT(*), MIN(step), MAX(step), MIN(pos), MAX(rho), MAX(rho_pre),"
                  " TOTAL(pos < 0), TOTAL(skip) FROM steps GROUP BY 1, 2, 3")
BLOCKS_KEPT = ("SELECT run_id, epoch, block, steps, first_step, last_step, pos_min, rho_max, rho_pre_max,"
               " pos_negative, sum_skip FROM step_blocks")


def verify(db: Path, trial: Trial) -> None:
    conn = sqlite3.connect(db, timeout=30)
    try:
        run = conn.execute("SELECT state, step, total_steps, out_dir FROM runs WHERE id = 1").fetchone()
        state, step, total, out_dir = run
        steps = [s for (s,) in conn.execute("SELECT step FROM steps WHERE run_id = 1 ORDER BY step")]
        epochs = [e for (e,) in conn.execute("SELECT epoch FROM epochs WHERE run_id = 1 ORDER BY epoch")]
        evals = [e for (e,) in conn.execute(
            "SELECT epoch FROM evals WHERE run_id = 1 AND trigger = 'epoch' ORDER BY epoch")]
        integrity = conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)] and \
            conn.execute("PRAGMA foreign_key_check").fetchall() == []
        blocks_off = conn.execute(f"SELECT (SELECT COUNT(*) FROM ({BLOCKS_BY_HAND} EXCEPT {BLOCKS_KEPT}))"
                                  f" + (SELECT COUNT(*) FROM ({BLOCKS_KEPT} EXCEPT {BLOCKS_BY_HAND}))").fetchone()[0]
    finally:
        conn.close()
    temps = sorted(p.name for p in Path(out_dir).glob(".*.tmp")) + sorted(p.name for p in Path(out_dir).glob(".*.pid.*"))
    trial.checks = {
        "finished": state == "finished",
        "steps exactly once": steps == list(range(1, total + 1)) and step == total,
        "epochs exactly once": epochs == list(range(EPOCHS)),
        "every epoch's eval": evals == list(range(EPOCHS)),
        "integrity ok": integrity,
        "step_blocks exact": blocks_off == 0,
        "no temp files left": not temps,
        "resumes exit 0": all(code == 0 for code in trial.resume_codes),
    }
    if not trial.checks["steps exactly once"]:
        trial.errors.append(f"steps: {len(steps)} rows, runs.step {step}, total {total}")
    if not trial.checks["every epoch's eval"]:
        trial.errors.append(f"epoch evals {evals}")
    if temps:
        trial.errors.append(f"temp files {temps}")
    if blocks_off:
        trial.errors.append(f"{blocks_off} step_blocks rows differ from the steps")


def one_trial(number: int, folder: Path, data: list[str], plan: list[str], rng: random.Random) -> Trial:
    """One run killed once per entry of `plan` (a kill window each), resumed at once each time."""
    trial = Trial(number)
    work = folder / f"trial{number:02d}"
    work.mkdir()
    db, holds = work / "chaos.db", work / "holds"
    total = planned_steps(data)
    proc = lvmd("start", *data, *config(), f"train.seed={number}", "--db", str(db),
                env=hold_env(plan[0], holds, rng, None, last=len(plan) == 1, total=total))
    if proc.returncode != 0:
        trial.errors.append(f"start: {proc.stderr.strip()}")
        return trial
    seen = 0
    for i, kind in enumerate(plan):
        if not kill_in_window(db, holds, seen):
            trial.kills.append(f"{kind}(missed)")
        else:
            trial.kills.append(kind)
        seen = len(holds.read_text().splitlines()) if holds.exists() else 0
        if row(db)["state"] == "finished":
            trial.kills += [f"{k}(missed)" for k in plan[i + 1:]]
            break
        nxt = hold_env(plan[i + 1], holds, rng, db, last=i + 2 == len(plan)) if i + 1 < len(plan) \
            else {"LVMD_HOLD": ""}
        proc = lvmd("resume", "1", "--db", str(db), env=nxt)           # right after the kill
        trial.resume_codes.append(proc.returncode)
        if proc.returncode != 0:
            trial.errors.append(f"resume after {kind}: {proc.stderr.strip()}")
            proc = lvmd("resume", "1", "--db", str(db), env=nxt)       # once more, to finish the trial
            if proc.returncode != 0:
                trial.errors.append(f"second resume: {proc.stderr.strip()}")
                return trial
    state = wait_finished(db)
    if state != "finished":
        trial.errors.append(f"ended {state}: {row(db)['error']}")
    verify(db, trial)
    return trial


def run_trials(trials: int, *, seed: int = 0, kinds: list[str] | None = None, kills: int = 2,
               folder: Path | None = None, log=print) -> list[Trial]:
    kinds = list(kinds or KINDS)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="lvmd-chaos-") as tmp:
        base = Path(folder or tmp)
        base.mkdir(parents=True, exist_ok=True)
        data_dir = base / "data"
        data_dir.mkdir(exist_ok=True)
        data = make_data(data_dir)
        results = []
        # a shuffled deck with every window equally often: 20 trials × 2 kills = 10 per window
        deck = kinds * -(-trials * kills // len(kinds))
        rng.shuffle(deck)
        for n in range(1, trials + 1):
            t = one_trial(n, base, data, deck[(n - 1) * kills:n * kills], rng)
            results.append(t)
            ok = all(t.checks.values()) and t.checks and not t.errors
            log(f"trial {n:2d}: kills {', '.join(t.kills) or '-':<32} {'ok' if ok else 'FAIL ' + '; '.join(t.errors)}")
        return results


def table(results: list[Trial]) -> str:
    columns = ["steps exactly once", "epochs exactly once", "every epoch's eval", "integrity ok",
               "step_blocks exact", "no temp files left", "resumes exit 0"]
    n = len(results)
    drawn = sum(len(t.kills) for t in results)
    missed = sum(k.endswith("(missed)") for t in results for k in t.kills)
    head = ["trials", *columns, "kills landed", "missed"]
    vals = [str(n), *(f"{sum(bool(t.checks.get(c)) for t in results)}/{n}" for c in columns),
            f"{drawn - missed}/{drawn}", str(missed)]
    width = [max(len(h), len(v)) for h, v in zip(head, vals)]
    by_kind = {k: (sum(t.kills.count(k) for t in results), sum(t.kills.count(f"{k}(missed)") for t in results))
               for k in KINDS}
    return "\n".join(["  ".join(h.ljust(w) for h, w in zip(head, width)),
                      "  ".join(v.ljust(w) for v, w in zip(vals, width)),
                      "landed by window: " + ", ".join(f"{k} {hit}" + (f" (+{miss} missed)" if miss else "")
                                                       for k, (hit, miss) in by_kind.items())])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--kills", type=int, default=2, help="kills per trial, each followed by a resume")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"kill windows to draw from ({','.join(KINDS)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep the trials' databases and folders here")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"--kinds: unknown {', '.join(bad)}")
    results = run_trials(args.trials, seed=args.seed, kinds=kinds, kills=args.kills,
                         folder=Path(args.keep) if args.keep else None)
    print(table(results))
    return 0 if all(all(t.checks.values()) and t.checks and not t.errors for t in results) else 1


if __name__ == "__main__":
    sys.exit(main())
