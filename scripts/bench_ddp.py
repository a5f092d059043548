#!/usr/bin/env python3
"""Data-parallel throughput: the lvmd training step on N = 1 process and on N ranks under
torchrun (gloo on CPU, nccl on CUDA), same model, same GLOBAL batch, side by side.

Per N it prints steps/s, samples/s (global and per rank) and the bytes each rank hands to
collectives per step: DDP's gradient buckets (counted by a DDP comm hook wrapping the default
all-reduce), the packed guardrail statistics (forward and backward all-reduce) and the control
broadcast (once per telemetry block). On CPU it also measures what crossed the loopback
interface per step (/proc/net/dev, every rank's traffic; other processes on the host add noise).

    .venv/bin/python scripts/bench_ddp.py                          # N = 1, 2 on CPU (gloo)
    .venv/bin/python scripts/bench_ddp.py --nprocs 1 2 4 --model default --steps 30
    .venv/bin/python scripts/bench_ddp.py --nprocs 1 8             # on an 8-GPU node (nccl)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "tiny": ["model.d_model=32", "model.nhead=2", "model.num_layers=1", "model.ff=64"],
    "small": ["model.d_model=128", "model.nhead=4", "model.num_layers=2", "model.ff=512"],
    "default": [],               # the SPEC transformer: 17.87M parameters at D=768
}


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])          # received bytes (= sent, on loopback)
    return 0


def worker(args) -> None:
    """One process of the measurement (all ranks under torchrun, or the single process)."""
    import torch

    from lvmd.config import load_config, stage_for_epoch
    from lvmd.data import stream
    from lvmd.data.formats import build_windows, synth_articles
    from lvmd.train import distributed
    from lvmd.train.control import Control
    from lvmd.train.dist_control import MESSAGE, FollowerControl, LeaderControl
    from lvmd.train.distributed import SUM_KEYS
    from lvmd.train.sink import NullSink
    from lvmd.train.trainer import TrainData, Trainer

    d = distributed.init()
    cfg = load_config(None, [*MODELS[args.model], f"train.batch_size={args.batch}", f"train.device={args.device}",
                             "model.dropout=0.0", f"train.threads={args.threads}"])
    arts = synth_articles(n_articles=args.articles, min_chunks=20, max_chunks=30, dim=args.dim, seed=0)
    seqs = build_windows(arts, context_len=5, gap=0)
    with tempfile.TemporaryDirectory() as tmp:
        control = Control(NullSink(), install_signals=False)
        if d is not None:
            every = cfg.train.telemetry_block
            control = LeaderControl(control, d, every=every) if d.main else FollowerControl(d, every=every,
                                                                                         install_signals=False)
        t = Trainer(cfg, TrainData(seqs, seqs), NullSink(), out_dir=tmp, control=control)
        bucket_bytes = [0]
        if d is not None:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            def counting_hook(state, bucket):
                bucket_bytes[0] += bucket.buffer().numel() * bucket.buffer().element_size()
                return default_hooks.allreduce_hook(state, bucket)

            t.net.register_comm_hook(None, counting_hook)
        stage = stage_for_epoch(cfg.loss.ramp, 0)
        order = t.epoch_order(0)

        def run(n: int, first: int) -> None:
            feed = stream.batches(t.train_split, order, cfg.train.batch_size, start=0, count=t.batches_per_epoch,
                                  shard=d.shard if d else None)
            for i in range(n):
                try:
                    batch = next(feed)
                except StopIteration:
                    feed = stream.batches(t.train_split, order, cfg.train.batch_size, start=0,
                                          count=t.batches_per_epoch, shard=d.shard if d else None)
                    batch = next(feed)
                packed = t.train_step(*batch, stage)
                t.telemetry.add((first + i, 0, 0.0, 0.0, stage.frac, stage.m_gap), packed)
                t.control.poll(first + i + 1, 0)
            t.telemetry.flush()
            if t.device.type == "cuda":
                torch.cuda.synchronize()

        run(args.warmup, 0)
        if d is not None:
            torch.distributed.barrier()
        lo0, hooks0, t0 = loopback_bytes(), bucket_bytes[0], time.perf_counter()
        run(args.steps, args.warmup)
        if d is not None:
            torch.distributed.barrier()
        elapsed, lo1 = time.perf_counter() - t0, loopback_bytes()
        world = d.world if d else 1
        if d is None or d.main:
            stats = len(SUM_KEYS) * 4 * 2 if d else 0          # float32, forward + backward all-reduce
            control = MESSAGE * 8 / cfg.train.telemetry_block if d else 0
            result = {"n": world, "steps_per_s": args.steps / elapsed, "batch": args.batch,
                      "params": sum(p.numel() for p in t.model.parameters()),
                      "grad_bytes": (bucket_bytes[0] - hooks0) / args.steps, "stats_bytes": stats,
                      "control_bytes": control, "loopback_bytes": (lo1 - lo0) / args.steps if d else 0,
                      "device": str(t.device)}
            Path(args.out).write_text(json.dumps(result))
        if d is not None:
            distributed.close()


def measure(n: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        me = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--model", args.model,
              "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--dim", str(args.dim), "--articles", str(args.articles), "--device", args.device,
              "--threads", str(args.threads)]
        argv = [sys.executable, *me] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc-per-node={n}", *me]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--batch", type=int, default=64, help="global batch (split over the ranks)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--articles", type=int, default=120)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    rows = [measure(n, args) for n in args.nprocs]
    base = rows[0]["steps_per_s"]
    print(f"model {args.model} ({rows[0]['params'] / 1e6:.2f} M params), D={args.dim}, global batch {args.batch}, "
          f"{args.steps} timed steps, {args.threads} thread(s) per process, device {rows[0]['device']}")
    print(f"{'N':>3} {'steps/s':>9} {'speed-up':>9} {'samples/s':>10} {'per rank':>9} {'grad B/step':>12} "
          f"{'stats B':>8} {'ctrl B':>7} {'loopback B/step':>16}")
    for r in rows:
        sps = r["steps_per_s"]
        print(f"{r['n']:>3} {sps:>9.2f} {sps / base:>8.2f}x {sps * r['batch']:>10.0f} {sps * r['batch'] / r['n']:>9.0f} "
              f"{r['grad_bytes']:>12,.0f} {r['stats_bytes']:>8.0f} {r['control_bytes']:>7.1f} "
              f"{r['loopback_bytes']:>16,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
