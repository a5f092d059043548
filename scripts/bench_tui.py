"""Benchmark the TUI on a long run, and draw lvmd/docs/tui.svg from realistic data.

    .venv/bin/python scripts/bench_tui.py                  # 1,000,000 step rows: the table below
    .venv/bin/python scripts/bench_tui.py --steps 200000   # quicker
    .venv/bin/python scripts/bench_tui.py --screenshot lvmd/docs/tui.svg

Measures, on a database written through store's writer:
  first paint   app start → the run screen's charts drawn: a long run's first picture is a
                preview from 8192 sampled steps (index seeks), then every row's min/max
  full detail   app start → the charts drawn from every row
  latency       a writer thread commits one step row → the status bar has painted that step
                (p50 / p95 over --commits rows, spaced 0.25–0.45 s apart)
  idle CPU      process CPU time / wall time over --idle-s seconds with no commits (the app,
                its tail thread and the file watcher together), as % of one core
  zoom          `z` pressed → the charts drawn for the newest quarter of the steps; then `z` × 3
                → the whole run drawn again (its bins were kept, so only new rows are read)
  metric        `m`, `rho pre`, enter in the ρ chart → that chart drawn from the new column (the
                series is read again with it: a sampled picture first, then every row)
The charts run as a user leaves them: one slot holds a picked metric (grad norm in the λ slot,
remembered in the TUI's state file), the loss chart is on a log scale and every chart draws its
tick labels.
  CPU live      the TUI following a run that a writer process feeds (--live-rate steps/s, flushed
                every 0.5 s as the trainer does, heartbeat every 2 s), as % of one core
  CPU paused    the same run paused: the writer only heartbeats every 2 s, as a paused daemon does;
                beside it, the CPU of an idle `python -c "import time; time.sleep(60)"` over the
                same seconds (what "nothing" costs on this machine)
The app runs headless (App.run_test), so terminal output costs are not included.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from store.db import connect  # noqa: E402
from store.runs import create_run, database_id, get_run, update_run  # noqa: E402
from store.schema import STEP_METRICS  # noqa: E402
from store.writer import SqliteSink  # noqa: E402

V21_RAMP = [{"until": 3, "m_gap": 0.02, "frac": 0.10, "rho_cap": 0.0}, {"until": 6, "m_gap": 0.03, "frac": 0.15, "rho_cap": 0.0},
            {"until": 9, "m_gap": 0.04, "frac": 0.20, "rho_cap": 0.0}, {"until": 10**9, "m_gap": 0.05, "frac": 0.25, "rho_cap": 0.0}]
# the seed's expected margin by epoch (SPEC §5), the shape a healthy v2.1 run follows
MARGIN_PATH = (-0.042, -0.035, -0.027, -0.021, -0.012, -0.004, 0.006, 0.014, 0.024, 0.031, 0.038, 0.044)


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def step_rows(epoch: int, steps: np.ndarray, total: int, t0: float, rng: np.random.Generator) -> tuple[list, list]:
    """One epoch of P6b v2.1 telemetry shaped like SPEC §3: ρ follows the ramp's frac under the
    0.25 cap, pos̄ climbs, the gap turns positive, rare two-negative skips and ρ spikes."""
    n, u = len(steps), steps / total
    stage = next(s for s in V21_RAMP if epoch < s["until"])
    pos = 0.50 - 0.24 * np.exp(-u / 0.15) + rng.normal(0, 0.02, n)
    gap = -0.05 + 0.095 * u ** 1.2 + rng.normal(0, 0.012, n)
    skip = rng.random(n) < 0.004 * math.exp(-epoch / 3)
    pos[skip], gap[skip] = 0.03, 0.09  # the collapse signature G5 skips: pos̄ < .05 and neḡ < −.05
    neg = pos - gap
    ratio = gap / (np.abs(pos) + np.abs(neg) + 1e-6)
    mse = (2 - 2 * pos) / 768 * (1 + rng.normal(0, 0.04, n))
    l_dir = 0.7 * softplus(4 * (stage["m_gap"] - gap)) / 4 + 0.3 * softplus(4 * (0.05 - ratio)) / 4
    lam = np.clip(mse * stage["frac"] / l_dir, 1e-4, 0.02)
    rho_pre = lam * l_dir / mse * (1 + np.where(rng.random(n) < 0.0003, 0.9, 0.0))  # rare spikes above the cap
    attenuate = rho_pre > 0.25
    lam = np.where(attenuate, lam * 0.25 / rho_pre, lam)
    rho = np.minimum(rho_pre, 0.25)
    l_floor = np.maximum(0.10 - pos, 0) ** 2
    l_norm = 1e-3 * np.exp(-u / 0.05) + 1e-5
    total_loss = mse + np.where(skip, 0, lam * l_dir) + 1e-3 * l_floor + 1e-3 * l_norm
    cols = {
        "lam": lam, "rho": rho, "rho_pre": rho_pre, "frac": np.full(n, stage["frac"]), "m_gap": np.full(n, stage["m_gap"]),
        "pos": pos, "neg": neg, "gap": gap, "ratio": ratio,
        "neg_cos_rate": np.clip(0.09 * np.exp(-u / 0.1) + 0.01 + rng.normal(0, 0.004, n), 0, 1),
        "skip": skip.astype(float), "attenuate": attenuate.astype(float), "mse": mse, "l_dir": l_dir,
        "l_floor": l_floor, "l_norm": l_norm, "l_orth": np.zeros(n), "total": total_loss,
        "grad_norm": 0.4 + 0.3 * np.exp(-u / 0.1) + np.abs(rng.normal(0, 0.05, n)),
    }
    lr = 5e-4 * (0.5 if epoch >= 8 else 1.0)
    rows = list(zip(steps.tolist(), [epoch] * n, (t0 + steps * 0.02).tolist(), [lr] * n,
                    *(cols[k].tolist() for k in STEP_METRICS)))
    events = [("skip", int(s), {"pos": 0.03, "neg": -0.06, "gap": 0.09}) for s in steps[skip]]
    events += [("attenuate", int(s), {"rho_pre": float(r), "rho_cap": 0.25}) for s, r in zip(steps[attenuate], rho_pre[attenuate])]
    return rows, sorted(events, key=lambda e: e[1])


def gate_rows(epoch: int, rng: random.Random) -> list[dict]:
    """A 5CAT result that improves with the epochs: A and C pass late, B never fully, D and E pass."""
    g = epoch / 11
    spec = [("A", "m_0", 0.44 + 0.09 * g, 0.50, 0.48, ">="), ("A", "margin", -0.04 + 0.08 * g, 0.12, 0.10, ">="),
            ("B", "r_at_1", 0.35 + 0.2 * g, 0.60, 0.55, ">="), ("B", "r_at_5", 0.62 + 0.2 * g, 0.95, 0.92, ">="),
            ("B", "mrr", 0.5 + 0.2 * g, 0.80, 0.75, ">="),
            ("C", "delta_shuffled", -0.08 - 0.1 * g, -0.15, -0.15, "<="), ("C", "delta_reversed", -0.06 - 0.08 * g, -0.10, -0.10, "<="),
            ("C", "delta_leave_one_out", -0.05 - 0.05 * g, -0.08, -0.08, "<="), ("C", "delta_repeat_pad", 0.02, 0.05, 0.05, "<="),
            ("C", "delta_cross_article", 0.01, 0.05, 0.05, "<="), ("D", "rollout", 0.40 + 0.1 * g, 0.45, 0.42, ">=")]
    rows = []
    for split, shift in (("VAL", 0.0), ("OOD", -0.02)):
        for gate, metric, value, thr_val, thr_ood, op in spec:
            v = value + shift + rng.gauss(0, 0.005)
            thr = thr_val if split == "VAL" else thr_ood
            rows.append({"split": split, "gate": gate, "metric": metric, "value": v, "threshold": thr, "op": op,
                         "passed": int(v >= thr if op == ">=" else v <= thr)})
        rows.append({"split": split, "gate": "E", "metric": "bin_normal_n", "value": 400.0, "threshold": 1, "op": ">=", "passed": 1})
    rows.append({"split": "VAL-OOD", "gate": "E", "metric": "normal_delta", "value": 0.021, "threshold": 0.05, "op": "<=", "passed": 1})
    return rows


def gates_passed(rows: list[dict]) -> int:
    """A gate passes when every one of its checks passed (VAL and OOD)."""
    return sum(all(r["passed"] for r in rows if r["gate"] == gate) for gate in "ABCDE")


def write_demo_run(db: Path, *, name: str, epochs: int = 12, steps_per_epoch: int = 2000, upto_epoch: int | None = None,
                   seed: int = 0, state: str | None = None, evals: bool = True) -> int:
    """A run written the way the daemon writes it (SqliteSink); upto_epoch < epochs leaves it mid-run.
    Returns the run id."""
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    conn = connect(db)
    total = epochs * steps_per_epoch
    config = {"name": name, "loss": {"preset": "v2.1", "rho_cap": 0.25, "ramp": V21_RAMP}, "train": {"epochs": epochs}}
    run_id = create_run(conn, name=name, preset="v2.1", compat="none", config=config, data={},
                        total_epochs=epochs, total_steps=total, state="running")
    sink = SqliteSink(db, run_id)
    done = epochs if upto_epoch is None else upto_epoch
    t0 = time.time() - (done + 0.5) * steps_per_epoch * 0.02
    for epoch in range(done + (0 if upto_epoch is None else 1)):
        partial = upto_epoch is not None and epoch == upto_epoch
        steps = np.arange(epoch * steps_per_epoch, (epoch + (0.5 if partial else 1)) * steps_per_epoch, dtype=np.int64)
        rows, events = step_rows(epoch, steps, total, t0, rng)
        for i in range(0, len(rows), 50_000):
            sink.log_steps(rows[i:i + 50_000])
        for kind, step, detail in events:
            sink.event(kind, step=step, epoch=epoch, detail=detail, t=t0 + step * 0.02)
        if partial:
            break
        end = int(steps[-1])
        margin = MARGIN_PATH[min(epoch, len(MARGIN_PATH) - 1)] + prng.gauss(0, 0.002)
        val_cos = 0.40 + 0.09 * (1 - math.exp(-epoch / 3))
        sink.epoch({"epoch": epoch, "step": end, "t": t0 + end * 0.02, "duration_s": steps_per_epoch * 0.02,
                    "val_cos": val_cos, "val_prev_cos": val_cos - margin, "val_margin": margin,
                    "r_at_5": 0.62 + 0.02 * epoch, "skip_rate": 0.002, "rho_max": 0.25, "pos_min": 0.03})
        sink.event("checkpoint", step=end, epoch=epoch, detail={"which": "last"}, t=t0 + end * 0.02)
        if evals:
            gates = gate_rows(epoch, prng)
            passed = gates_passed(gates)
            sink.write_eval({"epoch": epoch, "step": end, "trigger": "epoch", "splits": "VAL,OOD", "profile": "gtr-t5",
                             "gates_passed": passed, "gates_total": 5, "verdict_3of5": int(passed >= 3),
                             "verdict_all5": int(passed == 5), "finished_at": t0 + end * 0.02}, gates, [])
    last_step = int(steps[-1])
    sink.update_run(step=last_step, epoch=min(done, epochs), heartbeat_at=time.time(),
                    state=state or ("finished" if upto_epoch is None else "running"))
    sink.close()
    conn.close()
    return run_id


# -- measurements --------------------------------------------------------------------------------
async def measure(db: Path, run_id: int, *, commits: int, idle_s: float) -> dict[str, float]:
    from tui.app import LvmdTui
    from tui.run_screen import RunScreen
    from tui.widgets.chart import Chart
    from tui.widgets.status import StatusBar

    painted: dict[str, float] = {}
    shown_steps: dict[int, float] = {}

    # instrument render(): "on screen" means Textual asked the widget to paint it
    original_chart, original_status = Chart.render, StatusBar.render

    def chart_render(self):
        out = original_chart(self)
        if self.plot.traces and self.plot.traces[-1].points:
            now = time.perf_counter()
            painted.setdefault("first", now)
            if not self.plot.x_label.startswith("≈"):
                painted.setdefault("exact", now)
            painted.setdefault("zoomed" if self.plot.x_label.startswith("steps") else "whole", now)
            if self.plot.title == "ρ pre":
                painted.setdefault("picked_first", now)
                if not self.plot.x_label.startswith("≈"):
                    painted.setdefault("picked_exact", now)
        return out

    def status_render(self):
        out = original_status(self)
        if self.run is not None and self.run.latest:
            shown_steps.setdefault(self.run.latest["step"], time.perf_counter())
        return out

    Chart.render, StatusBar.render = chart_render, status_render
    try:
        started = time.perf_counter()
        app = LvmdTui(db, run_id=run_id)
        async with app.run_test(size=(120, 36)) as pilot:
            while "exact" not in painted and time.perf_counter() - started < 60:
                await asyncio.sleep(0.005)
            first_paint, full_paint = painted["first"] - started, painted["exact"] - started
            await pilot.pause(1.0)
            assert isinstance(app.screen, RunScreen)

            last = app.screen.snapshot.series.last_step
            latencies = []
            sink = SqliteSink(db, run_id, flush_seconds=0.0)
            row = [0.0] * len(STEP_METRICS)
            for i in range(commits):
                await asyncio.sleep(random.uniform(0.25, 0.45))
                step = last + 1 + i
                committed = threading.Event()
                t_commit: list[float] = []

                def write():
                    sink.log_steps([(step, 11, time.time(), 5e-4, *row)])
                    sink.flush()
                    t_commit.append(time.perf_counter())
                    committed.set()

                threading.Thread(target=write).start()
                deadline = time.perf_counter() + 10
                while step not in shown_steps and time.perf_counter() < deadline:
                    await asyncio.sleep(0.002)
                while not committed.is_set():
                    await asyncio.sleep(0.001)
                latencies.append(shown_steps.get(step, math.inf) - t_commit[0])
            sink.close()

            await pilot.pause(2.0)  # let the last wake-ups settle
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(idle_s)
            idle_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)

            zoom = {}
            for label, presses in (("zoomed", 1), ("whole", 3)):
                painted.pop(label, None)
                pressed = time.perf_counter()
                await pilot.press(*["z"] * presses)
                while label not in painted and time.perf_counter() - pressed < 60:
                    await asyncio.sleep(0.002)
                zoom[label] = painted.get(label, math.inf) - pressed

            picked = {}  # the metric picker: ρ pre into the ρ chart, timed from enter
            await pilot.press("1", "m")
            await pilot.pause(0.5)
            await pilot.press(*"rho pre")
            pressed = time.perf_counter()
            await pilot.press("enter")
            while "picked_exact" not in painted and time.perf_counter() - pressed < 60:
                await asyncio.sleep(0.002)
            picked = {k: painted.get(f"picked_{k}", math.inf) - pressed for k in ("first", "exact")}
    finally:
        Chart.render, StatusBar.render = original_chart, original_status
    latencies.sort()
    return {"first_paint_s": first_paint, "full_paint_s": full_paint, "latency_p50_s": statistics.median(latencies),
            "latency_p95_s": latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)],
            "idle_cpu": idle_cpu, "zoom_in_s": zoom["zoomed"], "zoom_out_s": zoom["whole"],
            "picked_first_s": picked["first"], "picked_exact_s": picked["exact"]}


def writer(db: str, run_id: int, mode: str, rate: float) -> None:
    """The daemon's side of the CPU measurements (run in a child process until killed)."""
    conn = connect(db)
    update_run(conn, run_id, state="paused" if mode == "paused" else "running", heartbeat_at=time.time())
    conn.close()
    sink = SqliteSink(Path(db), run_id, flush_seconds=0.5)
    reader = connect(db, readonly=True)
    step = reader.execute("SELECT MAX(step) FROM steps WHERE run_id = ?", (run_id,)).fetchone()[0] + 1
    reader.close()
    row = [0.1] * len(STEP_METRICS)
    next_beat = 0.0
    while True:
        now = time.time()
        if mode == "live":
            sink.log_steps([(step, 11, now, 5e-4, *row)])
            step += 1
        if now >= next_beat:
            sink.update_run(heartbeat_at=now, step=step - 1)
            next_beat = now + 2.0
        time.sleep(1.0 / rate if mode == "live" else 0.5)


def child_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_cpu(db: Path, run_id: int, *, seconds: float, rate: float) -> dict[str, float]:
    """% of a core the TUI uses following the run live, then paused; and an idle sleeper's."""
    from tui.app import LvmdTui
    from tui.run_screen import RunScreen

    out: dict[str, float] = {}
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(120, 36)) as pilot:
        while not (isinstance(app.screen, RunScreen) and app.screen.snapshot is not None):
            await asyncio.sleep(0.05)
        for mode in ("live", "paused"):
            child = subprocess.Popen([sys.executable, __file__, "--writer", mode, str(db), str(run_id), str(rate)])
            sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            try:
                await pilot.pause(3.0)  # the state change and the first commits have been drawn
                cpu0, wall0, idle0 = time.process_time(), time.perf_counter(), child_cpu_s(sleeper.pid)
                await asyncio.sleep(seconds)
                wall = time.perf_counter() - wall0
                out[f"{mode}_cpu"] = (time.process_time() - cpu0) / wall
                out[f"{mode}_idle_python"] = (child_cpu_s(sleeper.pid) - idle0) / wall
            finally:
                for proc in (child, sleeper):
                    proc.kill()
                    proc.wait()
    return out


async def screenshot(db: Path, run_id: int, baseline_id: int, out: Path) -> None:
    from store.commands import ack, complete, enqueue
    from tui.app import LvmdTui

    conn = connect(db)  # a checkpoint asked for from the TUI and done by the daemon, as it would be
    command = enqueue(conn, run_id, "checkpoint", issued_by="tui")
    ack(conn, command, get_run(conn, run_id)["step"])
    complete(conn, command, result={"checkpoint": "runs/2/last.pt"})
    conn.close()
    app = LvmdTui(db, run_id=run_id, baseline_id=baseline_id)
    async with app.run_test(size=(120, 34)) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            if getattr(app.screen, "snapshot", None) is not None and app.screen.baseline is not None:
                break
        await pilot.pause(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        app.save_screenshot(out.name, str(out.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000, help="step rows in the benchmark run")
    ap.add_argument("--commits", type=int, default=40)
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--screenshot", type=Path, help="write an SVG of the run screen here instead")
    ap.add_argument("--cpu-s", type=float, default=20.0, help="seconds per CPU measurement (live, paused)")
    ap.add_argument("--live-rate", type=float, default=20.0, help="steps/s the writer commits in the live case")
    ap.add_argument("--writer", nargs=4, metavar=("MODE", "DB", "RUN", "RATE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.writer:
        mode, db, run, rate = args.writer
        writer(db, int(run), mode, float(rate))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        os.environ["LVMD_TUI_STATE"] = str(Path(tmp) / "tui-state.json")  # the charts as a user left them
        if args.screenshot:
            base = write_demo_run(db, name="v2.1-seed0", epochs=12, steps_per_epoch=1500, seed=0)
            live = write_demo_run(db, name="v2.1-seed1", epochs=12, steps_per_epoch=1500, upto_epoch=8, seed=1)
            asyncio.run(screenshot(db, live, base, args.screenshot))
            print(f"wrote {args.screenshot}")
            return 0
        t0 = time.perf_counter()
        run_id = write_demo_run(db, name="long", epochs=12, steps_per_epoch=max(1, args.steps // 12),
                                upto_epoch=None, seed=0, state="running")
        conn = connect(db)
        update_run(conn, run_id, heartbeat_at=time.time())
        db_id = database_id(conn)
        conn.close()
        from tui import prefs

        prefs.save(db_id, prefs.ChartPrefs(slots={"lam": "steps.grad_norm"}))
        print(f"wrote {args.steps:,} step rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        r = asyncio.run(measure(db, run_id, commits=args.commits, idle_s=args.idle_s))
        r |= asyncio.run(measure_cpu(db, run_id, seconds=args.cpu_s, rate=args.live_rate))
    print(f"| measure (steps={args.steps:,}) | result | target |")
    print("|---|---|---|")
    print(f"| first paint | {r['first_paint_s']:.2f} s | ≤ 1 s |")
    print(f"| full-detail paint | {r['full_paint_s']:.2f} s | – |")
    print(f"| commit → screen p50 | {r['latency_p50_s'] * 1000:.0f} ms | ≤ 500 ms |")
    print(f"| commit → screen p95 | {r['latency_p95_s'] * 1000:.0f} ms | ≤ 500 ms |")
    print(f"| idle CPU | {100 * r['idle_cpu']:.1f} % of a core | ≤ 5 % |")
    print(f"| CPU following a live run ({args.live_rate:g} steps/s) | {100 * r['live_cpu']:.1f} % of a core"
          f" (idle python beside it: {100 * r['live_idle_python']:.1f} %) | – |")
    print(f"| CPU with the run paused (heartbeat every 2 s) | {100 * r['paused_cpu']:.1f} % of a core"
          f" (idle python beside it: {100 * r['paused_idle_python']:.1f} %) | ≤ 3 % |")
    print(f"| zoom in (z: newest 1/4) → drawn | {r['zoom_in_s']:.2f} s | – |")
    print(f"| zoom out (z z z: whole run) → drawn | {r['zoom_out_s']:.2f} s | – |")
    print(f"| metric picked (m, rho pre, enter) → first picture | {r['picked_first_s']:.2f} s | – |")
    print(f"| metric picked → every row's min/max | {r['picked_exact_s']:.2f} s | – |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
