#!/usr/bin/env python3
"""Time the full lvmd training step (guardrail telemetry packed on the device, block copies to
the host, the SQLite writer thread, the control poll) against a bare loop of the same model
and loss without telemetry. Both run interleaved in one process on the same model, so drift
in machine load hits both. Prints a table; target: throughput ratio ≥ 0.97. On CUDA it also
counts the host syncs of 2 telemetry blocks of lvmd steps (torch's sync debug mode).

    .venv/bin/python scripts/bench_trainer.py                 # default transformer and a tiny one
    .venv/bin/python scripts/bench_trainer.py --precision bf16 --rounds 8
    .venv/bin/python scripts/bench_trainer.py --grid --steps 10 --rounds 3   # precision x threads x load

--grid: ms/step of lvmd steps for the demo config (amn, D=384) and the default transformer
(D=768), fp32 and bf16, threads 1 and 2, on a quiet machine and beside two busy loops, side by
side in one run. "auto" is resolved each round as a run would resolve it (lvmd.train.hardware)
and gets the time of the count it picked in that round; the table says how far each row is from
the best row of its setting (model and load).
"""
from __future__ import annotations

import argparse
import math
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
from lvmd.data.train_data import TrainData  # noqa: E402
from lvmd.train.trainer import Trainer  # noqa: E402
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
                                         f"train.device={args.device}", "train.compile=off"])  # eager both
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


ROOT = Path(__file__).resolve().parents[1]
GRID_MODELS = {"demo amn": (ROOT / "lvmd" / "demo" / "demo.toml", 384), "default transformer": (None, 768)}


def grid_trainer(config: Path | None, data: TrainData, precision: str, args, tmp: str):
    """A Trainer with the config's model, loss and train settings on the synthetic data; a
    four-batch cycle to step through."""
    from lvmd.train.sink import NullSink

    cfg = load_config(config, [f"train.batch_size={args.batch}", f"train.precision={precision}",
                               "train.threads=1", "train.device=cpu", "train.compile=off"])
    t = Trainer(cfg, data, NullSink(), out_dir=tmp)
    split, stage, bs = t.train_split, stage_for_epoch(cfg.loss.ramp, 0), cfg.train.batch_size
    order = t.epoch_order(0)
    batches = [tuple(x[order[i * bs:(i + 1) * bs]] for x in (split.contexts, split.targets, split.prev)) + (stage,)
               for i in range(4)]
    for i in range(args.warmup):
        full_step(t, *batches[i % 4])
    return t, batches


def grid(args) -> int:
    """Each (model, precision) trains one model; thread settings take turns on it, round after
    round (interleaved, so a change in machine load hits every setting alike); median ms/step."""
    import statistics
    import subprocess

    from lvmd.train import hardware

    datasets = {}
    for name, (_, dim) in GRID_MODELS.items():
        arts = synth_articles(n_articles=40, min_chunks=20, max_chunks=30, dim=dim, seed=0)
        seqs = build_windows(arts)
        datasets[name] = TrainData(train=seqs, val=seqs.subset(torch.arange(64).numpy()), articles=arts)
    print(f"torch {torch.__version__}, {hardware.usable_cpus()} usable CPUs, native bf16: "
          f"{hardware.cpu_has_native_bf16()}, batch {args.batch}; per cell the median of {args.rounds} "
          f"interleaved rounds of {args.steps} steps after {args.warmup} warm-up steps")
    print(f"{'setting':<15}{'model':<21}{'precision':<10}{'threads':<12}{'ms/step':>9}{'vs best':>9}")
    for setting in ("quiet", "2 busy loops"):
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 if setting != "quiet" else 0)]
        try:
            time.sleep(1.0 if loops else 0)
            for name, (config, _) in GRID_MODELS.items():
                cells: dict[tuple[str, str], list[float]] = {}
                auto_used: dict[str, list[int]] = {}
                for precision in ("fp32", "bf16"):
                    with tempfile.TemporaryDirectory() as tmp:
                        t, batches = grid_trainer(config, datasets[name], precision, args, tmp)
                        for _ in range(args.rounds):
                            this_round = {}
                            for n in (1, 2):
                                torch.set_num_threads(n)
                                start = time.perf_counter()
                                for i in range(args.steps):
                                    full_step(t, *batches[i % 4])
                                this_round[n] = 1e3 * (time.perf_counter() - start) / args.steps
                                cells.setdefault((precision, str(n)), []).append(this_round[n])
                            # auto is a choice, not another computation: it gets the time of the
                            # count it picks now, measured in this round (a separate block would
                            # add only load noise)
                            n = hardware.auto_threads()
                            auto_used.setdefault(precision, []).append(n)
                            cells.setdefault((precision, "auto"), []).append(this_round.get(n, math.nan))
                medians = {k: statistics.median(v) for k, v in cells.items()}
                best = min(medians.values())
                for (precision, threads), ms in medians.items():
                    label = f"auto={'/'.join(map(str, sorted(set(auto_used[precision]))))}" if threads == "auto" else threads
                    print(f"{setting:<15}{name:<21}{precision:<10}{label:<12}{ms:>9.1f}{ms / best - 1:>+9.0%}",
                          flush=True)
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
    return 0


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
    p.add_argument("--grid", action="store_true", help="precision x threads x load table (CPU)")
    args = p.parse_args()
    if args.grid:
        return grid(args)
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
