#!/usr/bin/env python3
"""Time the full lvmd training step (guardrail telemetry packed on the device, block copies to
the host, the SQLite writer thread, the control poll) against a bare loop of the same model
and loss without telemetry. Both run interleaved in one process on the same model, so drift
in machine load hits both. Prints a table; target: throughput ratio ≥ 0.97. On CUDA it also
counts the host syncs of 2 telemetry blocks of lvmd steps (torch's sync debug mode).

    .venv/bin/python scripts/bench_trainer.py                 # default transformer and a tiny one
    .venv/bin/python scripts/bench_trainer.py --precision bf16 --rounds 8
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from lvmd.config import load_config, stage_for_epoch  # noqa: E402
from lvmd.train.control import Control  # noqa: E402
from lvmd.data.formats import build_windows, synth_articles  # noqa: E402
from lvmd.train.guardrails import guarded_loss  # noqa: E402
from lvmd.train.trainer import TrainData, Trainer  # noqa: E402
from store.db import connect  # noqa: E402
from store.runs import create_run  # noqa: E402
from store.writer import SqliteSink  # noqa: E402
from benchlib import count_host_syncs  # noqa: E402

MODELS = {
    "default": [],  # the SPEC transformer: 17.87M parameters at D=768
    "tiny": ["model.d_model=32", "model.nhead=2", "model.num_layers=1", "model.ff=64"],
}


def bare_step(t: Trainer, ctx, y, prev, stage) -> None:
    """What a training loop without telemetry does: forward, loss, backward, clip, step."""
    with torch.autocast(t.device.type, dtype=t.autocast_dtype or torch.float32, enabled=t.autocast_dtype is not None):
        raw, unit = t.model(ctx)
    total, _ = guarded_loss(raw, unit, y, prev, stage, t.cfg.loss, compat=t.cfg.compat)
    t.optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(t.params, t.cfg.train.grad_clip)
    t.optimizer.step()


def full_step(t: Trainer, ctx, y, prev, stage) -> None:
    """The lvmd step exactly as Trainer.run does it."""
    packed = t.train_step(ctx, y, prev, stage)
    t.step += 1
    t.telemetry.add((t.step, 0, time.time(), t.optimizer.param_groups[0]["lr"], stage.frac, stage.m_gap), packed)
    t.control.poll(t.step, 0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, overrides: list[str], args, data: TrainData, db: Path) -> dict:
    cfg = load_config(None, overrides + [f"train.batch_size={args.batch}", f"train.precision={args.precision}",
                                         f"train.device={args.device}"])
    conn = connect(db)
    run_id = create_run(conn, name=f"bench-{name}", preset=cfg.loss.preset, compat="none", config={}, data={})
    sink = SqliteSink(db, run_id, flush_seconds=cfg.train.flush_seconds)
    t = Trainer(cfg, data, sink, out_dir=db.parent / name, control=Control(sink, install_signals=False))
    split, stage, bs = t.train_split, stage_for_epoch(cfg.loss.ramp, 0), cfg.train.batch_size
    order = t.epoch_order(0)
    n_batches = len(split) // bs
    cursor = 0

    def batch():
        nonlocal cursor
        idx = order[(cursor % n_batches) * bs:(cursor % n_batches + 1) * bs]
        cursor += 1
        return split.contexts[idx], split.targets[idx], split.prev[idx], stage

    for _ in range(args.warmup):
        full_step(t, *batch())
        bare_step(t, *batch())
    times = {"full": 0.0, "bare": 0.0}
    for r in range(args.rounds):
        for kind in (("full", "bare") if r % 2 == 0 else ("bare", "full")):
            fn = full_step if kind == "full" else bare_step
            sync(t.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                fn(t, *batch())
            sync(t.device)
            times[kind] += time.perf_counter() - start
    # Host syncs over two telemetry blocks of lvmd steps: the design is one per block (the
    # device→host copy of the packed telemetry), none per step.
    sync_steps = 2 * cfg.train.telemetry_block
    syncs = count_host_syncs(lambda: [full_step(t, *batch()) for _ in range(sync_steps)], t.device)
    t.telemetry.flush()
    sink.close()
    n = args.rounds * args.steps
    params = sum(p.numel() for p in t.model.parameters())
    return {"model": name, "params": params, "bare_ms": 1e3 * times["bare"] / n, "full_ms": 1e3 * times["full"] / n,
            "ratio": times["bare"] / times["full"],
            "syncs": "-" if syncs is None else f"{syncs}/{sync_steps}"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="default,tiny", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=25, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=6, help="interleaved blocks of each kind")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    torch.manual_seed(0)
    arts = synth_articles(n_articles=60, min_chunks=20, max_chunks=30, dim=args.dim, seed=0)
    seqs = build_windows(arts)
    data = TrainData(train=seqs, val=seqs.subset(torch.arange(64).numpy()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(bench(name, MODELS[name], args, data, Path(tmp) / "bench.db"))
    print(f"\nbatch {args.batch}, D={args.dim}, {args.precision}, {args.rounds}×{args.steps} interleaved steps "
          f"per kind, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<9}{'params':>12}{'bare ms/step':>14}{'lvmd ms/step':>14}{'ratio':>8}{'host syncs':>12}"
          "  target ≥ 0.97")
    for r in rows:
        ok = "ok" if r["ratio"] >= 0.97 else "BELOW"
        print(f"{r['model']:<9}{r['params']:>12,}{r['bare_ms']:>14.2f}{r['full_ms']:>14.2f}{r['ratio']:>8.3f}"
              f"{r['syncs']:>12}  {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
