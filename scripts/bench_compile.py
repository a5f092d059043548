#!/usr/bin/env python3
"""What `train.compile = "auto"` answers on this machine: the real probe (lvmd.train.compiling)
on lvmd's own training step, eager against torch.compile, for the demo's amn (D=384) and SPEC's
default transformer (D=768), fp32 and bf16, on a run long enough that the probe compiles.

    .venv/bin/python scripts/bench_compile.py [--models amn,transformer] [--precisions fp32,bf16]
                                              [--threads 1] [--device cpu|cuda] [--batch 32]

Prints one row per (model, precision): eager and compiled ms/step (medians of the probe's
alternating rounds), the time saved, the compile's own time and the decision with its reason.
bf16 rows run only where bf16 runs (hardware.resolve_precision says why not otherwise).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lvmd.config import load_config, stage_for_epoch  # noqa: E402
from lvmd.data.formats import build_windows, synth_articles  # noqa: E402
from lvmd.data.train_data import TrainData  # noqa: E402
from lvmd.errors import UserError  # noqa: E402
from lvmd.train import compiling  # noqa: E402
from lvmd.train.sink import NullSink  # noqa: E402
from lvmd.train.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"amn": (ROOT / "lvmd" / "demo" / "demo.toml", 384), "transformer": (None, 768)}


def probe(model: str, precision: str, args, tmp: str) -> dict:
    config, dim = MODELS[model]
    arts = synth_articles(n_articles=40, min_chunks=12, max_chunks=20, dim=dim, seed=0)
    seqs = build_windows(arts)
    cfg = load_config(config, [f"model.kind={model}", f"train.batch_size={args.batch}", f"train.precision={precision}",
                               f"train.threads={args.threads}", f"train.device={args.device}", "train.compile=off"])
    t = Trainer(cfg, TrainData(seqs, seqs, articles=arts), NullSink(), out_dir=tmp)
    batch = tuple(x[:args.batch] for x in (t.train_split.contexts, t.train_split.targets, t.train_split.prev))
    stage = stage_for_epoch(cfg.loss.ramp, 0)
    started = time.perf_counter()
    _, d = compiling.resolve("auto", net=t.net, model=t.model, optimizer=t.optimizer, device=t.device,
                             step=lambda net: t.train_step(*batch, stage, net=net),
                             key=(model, precision), total_steps=10 ** 9)
    return {"model": model, "precision": t.hardware.precision, "eager": d.eager_ms, "compiled": d.compiled_ms,
            "compile_s": d.compile_s, "probe_s": time.perf_counter() - started, "decision": d.state, "why": d.why}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="amn,transformer")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for precision in args.precisions.split(","):
                try:
                    rows.append(probe(model, precision, args, tmp))
                except UserError as exc:
                    print(f"{model} {precision}: skipped ({exc})")
                    continue
                print(rows[-1]["why"], flush=True)
    print(f"\ntorch {torch.__version__}, device {args.device}, {args.threads} thread(s), batch {args.batch}")
    print("| model | precision | eager ms/step | compiled ms/step | time saved | compiling took | probe in all | auto says |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        saved = f"{1 - r['compiled'] / r['eager']:+.0%}" if r["compiled"] else "–"
        comp = f"{r['compiled']:.1f}" if r["compiled"] else "–"
        took = f"{r['compile_s']:.0f} s" if r["compile_s"] is not None else "–"
        print(f"| {r['model']} | {r['precision']} | {r['eager']:.1f} | {comp} | {saved} | {took} | "
              f"{r['probe_s']:.0f} s | {r['decision']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
