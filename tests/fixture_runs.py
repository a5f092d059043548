"""A run as the daemon writes it (steps, skip and attenuate events, epochs, 5CAT evaluations with
gates and metrics), through store's real writer, with distinct numbers in every column: the
fixture of the web view and TensorBoard export tests."""
from __future__ import annotations

import random
import time
from pathlib import Path

from store.db import connect
from store.runs import create_run
from store.schema import STEP_FLAGS, STEP_METRICS
from store.writer import SqliteSink

STEPS_PER_EPOCH = 50
CONFIG = {"name": "fixture", "train": {"lr": 5e-4, "epochs": 3, "batch_size": 16},
          "model": {"kind": "amn", "d_model": 16}, "loss": {"rho_cap": 0.25, "ramp": [{"until": 100, "frac": 0.1}]}}


def write_run(path: str | Path, *, name: str = "fixture", state: str = "running", steps: int = 120,
              seed: int = 0) -> int:
    """A run of `steps` steps (from 1) in `state`, heartbeating now from this process's pid."""
    rng = random.Random(seed)
    conn = connect(path)
    run_id = create_run(conn, name=name, preset="v2.1", compat="none", config={**CONFIG, "name": name}, data={},
                        total_epochs=3, total_steps=3 * STEPS_PER_EPOCH, state=state)
    conn.close()
    sink = SqliteSink(path, run_id, flush_seconds=0.0)
    t0 = time.time() - steps
    rows = []
    for s in range(1, steps + 1):
        metrics = {m: (float(rng.random() < 0.1) if m in STEP_FLAGS else rng.uniform(-1, 1)) for m in STEP_METRICS}
        rows.append((s, (s - 1) // STEPS_PER_EPOCH, t0 + s, 5e-4 * (1 - s / 1000), *metrics.values()))
        if metrics["skip"]:
            sink.event("skip", step=s, epoch=(s - 1) // STEPS_PER_EPOCH,
                       detail={"pos": metrics["pos"], "neg": metrics["neg"], "gap": metrics["gap"]})
        if metrics["attenuate"]:
            sink.event("attenuate", step=s, epoch=(s - 1) // STEPS_PER_EPOCH,
                       detail={"rho_pre": metrics["rho_pre"], "rho_cap": metrics["rho"], "lam": metrics["lam"]})
    sink.log_steps(rows)
    sink.event("checkpoint", step=steps, detail={"which": "last"})        # not a skip/attenuate: not mirrored
    for e in range(steps // STEPS_PER_EPOCH):
        end = (e + 1) * STEPS_PER_EPOCH
        sink.epoch({"epoch": e, "step": end, "t": t0 + end, "duration_s": 12.5 + e, "train_loss": rng.random(),
                    "val_cos": 0.45 + 0.01 * e, "val_prev_cos": 0.47, "val_margin": -0.035 + 0.01 * e,
                    "r_at_5": rng.random(), "skip_rate": rng.random()})
        passed = e % 2
        sink.write_eval({"epoch": e, "step": end, "trigger": "epoch", "finished_at": t0 + end + 1,
                         "duration_s": 3.0, "gates_passed": 2 + passed, "gates_total": 5,
                         "verdict_3of5": passed, "verdict_all5": 0},
                        [{"split": "VAL", "gate": "A", "metric": "m_0", "value": 0.5, "threshold": 0.5, "op": ">=",
                          "passed": passed},
                         {"split": "OOD", "gate": "B", "metric": "r_at_5", "value": 0.6, "threshold": 0.7,
                          "op": ">=", "passed": 1 - passed}],
                        [("VAL", "m_0", rng.random()), ("VAL", "r_at_5", rng.random()), ("OOD", "m_0", rng.random())])
    sink.update_run(step=steps, epoch=(steps - 1) // STEPS_PER_EPOCH, heartbeat_at=time.time())
    sink.close()
    return run_id
