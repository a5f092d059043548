"""Soak: one real training run writing its telemetry while 20 reader processes watch the same
database (issue 13 K). Prints a table: steps/s, the largest -wal seen and lock errors, first with
no readers, then with them.

    .venv/bin/python scripts/soak_readers.py                     # 2 min alone, then 10 min with 20 readers
    .venv/bin/python scripts/soak_readers.py --minutes 2 --baseline-minutes 1

The writer is a real `lvmd run` (a tiny amn model on synthetic D=16 data, so it commits
about a hundred step rows a second: a harder case for the -wal than a real model). Readers are a
third the TUI's real tail (tui.tail.DbTail: one long-lived read connection, woken by the -wal
changing), a third what `lvmd status` reads and a third what `lvmd report` reads (every step row,
binned), each once a second on a new read-only connection.
Targets: 0 lock errors, -wal <= 16 MB, steps/s with readers >= 90 % of without. On a shared
machine the reader processes also take CPU from the trainer: read the loss with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY_MODEL = ["model.kind=amn", "model.d_model=16", "model.nhead=2", "model.num_layers=1", "model.ff=32",
              "model.hidden=16", "model.amn_d=8", "train.threads=1"]
LOCK_WORDS = ("locked", "busy")


# -- readers (each its own process) --------------------------------------------------------------
def reader_tail(db: str, until: float) -> dict:
    from tui.tail import DbTail, TailFailed, TailView

    counts = {"updates": 0, "errors": 0, "lock_errors": 0, "messages": []}

    def post(msg):
        if isinstance(msg, TailFailed):
            counts["errors"] += 1
            counts["lock_errors"] += any(w in msg.error for w in LOCK_WORDS)
            counts["messages"] = (counts["messages"] + [msg.error])[-3:]
        else:
            counts["updates"] += 1

    tail = DbTail(db, post, view=TailView(run_id=1))
    thread = threading.Thread(target=tail.run, daemon=True)
    thread.start()
    time.sleep(max(0.0, until - time.time()))
    tail.stop()
    thread.join(timeout=10)
    return counts


def reader_status(db: str, until: float, *, report: bool = False) -> dict:
    from lvmd.cli.daemon import status_of
    from store.db import connect
    from store.report import report_data
    from store.runs import list_runs, stale_runs

    counts = {"updates": 0, "errors": 0, "lock_errors": 0, "messages": []}
    while time.time() < until:
        try:
            conn = connect(db, readonly=True)
            try:
                if report:    # what `lvmd report 1` reads: every step row, binned, and the views
                    report_data(conn, 1, bins=60)
                else:
                    stale_runs(conn)
                    [status_of(conn, run) for run in list_runs(conn)]
            finally:
                conn.close()
            counts["updates"] += 1
        except Exception as exc:  # count, never stop: the point is to see them
            counts["errors"] += 1
            counts["lock_errors"] += any(w in str(exc) for w in LOCK_WORDS)
            counts["messages"] = (counts["messages"] + [str(exc)])[-3:]
        time.sleep(1.0)
    return counts


# -- the driver ----------------------------------------------------------------------------------
def make_data(folder: Path) -> list[str]:
    from lvmd.data import formats as data

    arts = data.synth_articles(n_articles=400, min_chunks=20, max_chunks=40, dim=16, seed=1)
    data.save_articles(folder / "articles.npz", arts)
    data.write_splits(data.load_articles(folder / "articles.npz"), folder, context=5, gap=0, val=0.05, ood=0.05,
                      seed=0, source=str(folder / "articles.npz"))
    return [f"data.train={folder / 'train.npz'}", f"data.val={folder / 'val.npz'}"]


def last_step(db: Path) -> tuple[int, float]:
    if not db.exists():
        return 0, 0.0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT step, t FROM steps WHERE run_id = 1 ORDER BY step DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, 0.0)
    except sqlite3.OperationalError:        # not migrated yet
        return 0, 0.0
    finally:
        conn.close()


def watch_phase(db: Path, seconds: float, trainer: subprocess.Popen) -> dict:
    """steps/s (from the step rows' own times) and the largest -wal over `seconds`."""
    wal = Path(f"{db}-wal")
    s0, t0 = last_step(db)
    biggest, end = 0, time.monotonic() + seconds
    while time.monotonic() < end and trainer.poll() is None:
        biggest = max(biggest, wal.stat().st_size if wal.exists() else 0)
        time.sleep(0.2)
    s1, t1 = last_step(db)
    return {"steps": s1 - s0, "steps_per_s": (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0,
            "wal_max_mb": biggest / 2**20, "wal_end_mb": (wal.stat().st_size if wal.exists() else 0) / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="with readers (default 10)")
    ap.add_argument("--baseline-minutes", type=float, default=2.0, help="alone first (default 2)")
    ap.add_argument("--readers", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--reader", choices=("tail", "status", "report"), help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reader:            # one reader process
        if args.reader == "tail":
            counts = reader_tail(args.db, args.until)
        else:
            counts = reader_status(args.db, args.until, report=args.reader == "report")
        counts["cpu_s"] = time.process_time()      # what this reader took from the machine
        Path(args.out).write_text(json.dumps(counts))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="lvmd-soak-"))
    db = tmp / "soak.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    overrides = make_data(tmp)
    log = open(tmp / "run.log", "w")
    trainer = subprocess.Popen([sys.executable, "-m", "lvmd", "run", *overrides, *TINY_MODEL, "train.epochs=100000",
                                "--quiet", "--db", str(db)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        while last_step(db)[0] < 200:   # warmed up and writing
            if trainer.poll() is not None:
                raise SystemExit(f"the run exited: {(tmp / 'run.log').read_text()[-2000:]}")
            time.sleep(0.5)
        load0 = os.getloadavg()[0]
        alone = watch_phase(db, args.baseline_minutes * 60, trainer)
        until = time.time() + args.minutes * 60
        readers = []
        for i in range(args.readers):
            kind = ("tail", "status", "report")[i % 3]
            out = tmp / f"reader{i}.json"
            readers.append((kind, out, subprocess.Popen(
                [sys.executable, __file__, "--reader", kind, "--db", str(db), "--until", str(until), "--out", str(out)],
                env=env)))
        load1 = os.getloadavg()[0]
        together = watch_phase(db, args.minutes * 60, trainer)
        load2 = os.getloadavg()[0]
        for _, _, proc in readers:
            proc.wait(timeout=120)
    finally:
        if trainer.poll() is None:
            trainer.send_signal(signal.SIGTERM)
            trainer.wait(timeout=120)
        log.close()
    counts = [json.loads(out.read_text()) if out.exists() else {"errors": 1, "lock_errors": 0, "updates": 0,
                                                                  "messages": ["reader died"]}
              for _, out, _ in readers]
    run_log = (tmp / "run.log").read_text()
    writer_lock_errors = sum(run_log.count(w) for w in ("database is locked", "database is busy"))
    reader_errors = sum(c["errors"] for c in counts)
    lock_errors = sum(c["lock_errors"] for c in counts) + writer_lock_errors
    loss = 1 - together["steps_per_s"] / alone["steps_per_s"] if alone["steps_per_s"] else float("nan")
    conn = sqlite3.connect(db)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()

    kinds = [("tail", "status", "report")[i % 3] for i in range(args.readers)]
    print(f"\nsoak: 1 writer (a real `lvmd run`, tiny amn) + {args.readers} readers "
          f"({kinds.count('tail')} TUI tails, {kinds.count('status')} status loops, {kinds.count('report')} report "
          f"loops); "
          f"{os.cpu_count()} CPUs, load average {load0:.1f} → {load1:.1f} → {load2:.1f}")
    print(f"{'phase':<16}{'minutes':>8}{'steps':>9}{'steps/s':>9}{'max WAL MB':>12}{'end WAL MB':>12}"
          f"{'lock errors':>13}{'reader reads':>14}")
    print(f"{'no readers':<16}{args.baseline_minutes:>8.1f}{alone['steps']:>9}{alone['steps_per_s']:>9.1f}"
          f"{alone['wal_max_mb']:>12.2f}{alone['wal_end_mb']:>12.2f}{'-':>13}{'-':>14}")
    print(f"{f'{args.readers} readers':<16}{args.minutes:>8.1f}{together['steps']:>9}{together['steps_per_s']:>9.1f}"
          f"{together['wal_max_mb']:>12.2f}{together['wal_end_mb']:>12.2f}{lock_errors:>13}"
          f"{sum(c['updates'] for c in counts):>14}")
    print(f"throughput loss with readers: {100 * loss:.1f} %   (target <= 10 %)")
    print(f"max WAL: {max(alone['wal_max_mb'], together['wal_max_mb']):.2f} MB   (target <= 16 MB)")
    print(f"lock errors: {lock_errors}, other reader errors: {reader_errors - sum(c['lock_errors'] for c in counts)}"
          f"   (target 0); integrity_check: {integrity}")
    minutes = args.minutes
    for kind in ("tail", "status", "report"):
        cpu = [c.get("cpu_s", 0.0) for k, c in zip(kinds, counts) if k == kind]
        if cpu:
            print(f"  {kind:<7} readers: {len(cpu)}, CPU {sum(cpu):.0f} s in all "
                  f"({100 * sum(cpu) / (minutes * 60):.0f} % of one core), {max(cpu):.1f} s the most")
    for c in counts:
        for m in c["messages"]:
            print(f"  reader error: {m}")
    if args.keep:
        print(f"kept {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if lock_errors == 0 and integrity == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
