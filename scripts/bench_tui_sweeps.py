"""Benchmark what sweeps cost the TUI's tail: it reads the sweeps' progress on every commit.

    .venv/bin/python scripts/bench_tui_sweeps.py                    # 8 configurations × 3 seeds × 20,000 steps
    .venv/bin/python scripts/bench_tui_sweeps.py --steps 100000     # longer runs

Builds a database written through store's writer: one sweep of --configs × --seeds member runs,
each --steps step rows and --epochs epoch rows, finished. Then, on the TUI's read-only
connection, the median over --repeat reads (ms) of:
  progress          store.sweeps.sweep_progress: runs and last-epoch rows, through indexes
  v_sweep_summary   the view per sweep (what sweep_progress read before: every member's steps)
  tail, runs screen DbTail's whole read for the runs screen (run list + sweeps)
  tail, a member    DbTail's whole read with a member open (its run, seed band, baseline band)
  no sweeps         sweep_progress on a database that has never held one
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from store import reader  # noqa: E402
from store.db import connect  # noqa: E402
from store.runs import create_run  # noqa: E402
from store.schema import STEP_METRICS  # noqa: E402
from store.sweeps import add_config, create_sweep, list_sweeps, sweep_progress, sweep_summary, tag_run  # noqa: E402
from store.writer import SqliteSink  # noqa: E402
from tui.tail import DbTail, TailView  # noqa: E402


def build(db: Path, configs: int, seeds: int, steps: int, epochs: int) -> int:
    """The sweep's database; returns a member run of a non-baseline configuration."""
    rng = np.random.default_rng(0)
    conn = connect(db)
    sweep = create_sweep(conn, name="bench", search="grid", config_path="", spec={"seeds": list(range(seeds))},
                         parallel=2)
    labels = ["loss.preset=mse"] + [f"loss.preset=v2.1 loss.lam={i}" for i in range(1, configs)]
    for label in labels:
        add_config(conn, sweep, label, label.split())
    member = None
    for label in labels:
        for seed in range(seeds):
            run_id = create_run(conn, name=f"{label}/s{seed}", preset="v2.1", compat="none", config={}, data={},
                                total_epochs=epochs, total_steps=steps, state="finished")
            tag_run(conn, run_id, sweep, label, seed)
            member = member or (run_id if label != labels[0] else None)
            sink = SqliteSink(db, run_id)
            per_epoch = steps // epochs
            values = rng.random((steps, len(STEP_METRICS)))
            rows = [(s, s // per_epoch, float(s), 5e-4, *map(float, values[s])) for s in range(steps)]
            for i in range(0, steps, 50_000):
                sink.log_steps(rows[i:i + 50_000])
            for e in range(epochs):
                sink.epoch({"epoch": e, "step": (e + 1) * per_epoch - 1, "t": time.time(),
                            "val_margin": -0.04 + 0.01 * e + 0.005 * rng.standard_normal(), "val_cos": 0.45})
            sink.close()
    conn.close()
    return member


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db, empty = Path(tmp) / "sweep.db", Path(tmp) / "empty.db"
        t0 = time.perf_counter()
        member = build(db, args.configs, args.seeds, args.steps, args.epochs)
        built = time.perf_counter() - t0
        connect(empty).close()
        conn, bare = connect(db, readonly=True), connect(empty, readonly=True)
        tail = DbTail(db, lambda _m: None)

        def tail_read(view: TailView):
            with reader.read_snapshot(conn):
                tail._read(conn, view)

        tail_read(TailView(run_id=member))  # the member's first read fills its trackers; later reads are incremental
        results = [
            ("progress", median_ms(lambda: sweep_progress(conn), args.repeat)),
            ("v_sweep_summary", median_ms(lambda: [sweep_summary(conn, s["id"]) for s in list_sweeps(conn)],
                                          max(3, args.repeat // 5))),
            ("tail, runs screen", median_ms(lambda: tail_read(TailView()), args.repeat)),
            ("tail, a member", median_ms(lambda: tail_read(TailView(run_id=member)), args.repeat)),
            ("no sweeps", median_ms(lambda: sweep_progress(bare), args.repeat)),
        ]
        conn.close()
        bare.close()
    runs = args.configs * args.seeds
    print(f"{runs} runs ({args.configs} configurations × {args.seeds} seeds) × {args.steps:,} steps × "
          f"{args.epochs} epochs; built in {built:.1f} s")
    print(f"{'read':<20}{'median ms':>10}")
    for name, ms in results:
        print(f"{name:<20}{ms:>10.3f}")


if __name__ == "__main__":
    main()
