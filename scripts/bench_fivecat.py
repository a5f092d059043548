#!/usr/bin/env python3
"""Benchmark: lvmd's vectorised 5CAT against a naive one-sample-per-forward loop, same run.

    .venv/bin/python scripts/bench_fivecat.py [--samples 5000] [--dim 768] [--model mean|amn|transformer]
                                              [--device cpu|cuda] [--threads 1] [--repeat 3] [--forward-only]

Synthetic articles (lvmd.data.formats.synth_articles), VAL and OOD from two banks, each split
evaluated on --samples rows. Prints both times, the speedup and the largest difference
between the two implementations' numbers (they must agree), and the model's own limit: the
forward passes 5CAT makes (the same batch shapes, recorded from the run) timed bare, and 5CAT
total / forward only (target <= 1.15 for amn and the transformer on CPU). --forward-only prints
just that.

`naive_split` is also the reference the tests compare lvmd.eval.fivecat against: per sample, dict
lookups, one forward per context, written for clarity, not speed. Its compat branch follows
the structure of the original script (a loop per test taking the first N usable samples).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lvmd.data import formats as data  # noqa: E402

from lvmd.eval import fivecat  # noqa: E402
from lvmd.config import ModelConfig  # noqa: E402
from lvmd.train.models import build_model  # noqa: E402
from benchlib import count_host_syncs  # noqa: E402


# -- the naive reference ---------------------------------------------------------------------
def _u(x: np.ndarray) -> np.ndarray:
    return (x / max(float(np.linalg.norm(x)), 1e-12)).astype(np.float32)


class _Store:
    """(article, chunk) -> row, and each article's rows in chunk order: plain dicts."""

    def __init__(self, art: data.Articles):
        self.art = art
        self.row = {}
        self.rows_of_article: dict[int, list[int]] = {}
        for r, (a, c) in enumerate(zip(art.article_ids.tolist(), art.chunk_ids.tolist())):
            self.row[(a, c)] = r
            self.rows_of_article.setdefault(a, []).append(r)

    def vec(self, r: int) -> np.ndarray:
        return _u(self.art.vectors[r])

    def offset(self, a: int, t: int, k: int, by_position: bool) -> int | None:
        if not by_position:
            return self.row.get((a, t + k))
        r = self.row.get((a, t))
        rows = self.rows_of_article[a] if r is not None else []
        return r + k if r is not None and rows[0] <= r + k <= rows[-1] else None


def _mean(xs) -> float:
    return float(np.mean(xs, dtype=np.float64)) if len(xs) else math.nan


def naive_split(predict_one, seqs: data.Sequences, art: data.Articles, *, compat: str = "none",
                max_samples: int = 5000, seed: int = 0, bins=(0.45, 0.55), horizon: int = fivecat.HORIZON,
                store: _Store | None = None) -> dict[str, float]:
    """The metrics of one split, one sample and one forward at a time (same names as lvmd's)."""
    lnsp = compat == "lnsp"
    store = store or _Store(art)
    bank = fivecat.Bank(art)
    aid, tix = seqs.article_ids.tolist(), seqs.target_indices.tolist()
    m, t_len = len(seqs), seqs.context_len
    ctx_all = seqs.contexts
    if lnsp:
        ctx_all = ctx_all / np.linalg.norm(ctx_all, axis=-1, keepdims=True)

    def pred(ctx):
        return _u(predict_one(ctx))

    def can_A(i):
        return all(store.offset(aid[i], tix[i], k, lnsp) is not None for k in fivecat.OFFSETS)

    def can_B(i):
        rows = store.rows_of_article.get(aid[i], [])
        return (aid[i], tix[i]) in store.row and len(rows) >= fivecat.MIN_ARTICLE_CHUNKS

    steps = range(1, horizon + 1) if lnsp else range(horizon)

    def can_D(i):
        return all(store.offset(aid[i], tix[i], h, lnsp) is not None for h in steps)

    def pick(can):  # default: the first max_samples rows, each test uses those it can; compat: first N usable
        if lnsp:
            return [i for i in range(m) if can(i)][:max_samples]
        return [i for i in range(min(m, max_samples)) if can(i)]

    out: dict[str, float] = {}
    # A
    sel = pick(can_A)
    cos_k = {k: [] for k in fivecat.OFFSETS}
    for i in sel:
        y = pred(ctx_all[i])
        for k in fivecat.OFFSETS:
            cos_k[k].append(float(y @ store.vec(store.offset(aid[i], tix[i], k, lnsp))))
    means = {k: _mean(v) for k, v in cos_k.items()}
    out["a_n"] = float(len(sel))
    out |= {fivecat.offset_name(k): v for k, v in means.items()}
    out["margin"] = means[0] - max(v for k, v in means.items() if k != 0)
    if lnsp:
        out["margin_+1"] = means[1] - max(v for k, v in means.items() if k != 1)
    # B
    ranks = []
    for i in pick(can_B):
        y = pred(ctx_all[i])
        rows = store.rows_of_article[aid[i]]
        sims = np.stack([store.vec(r) for r in rows]) @ y
        target_row = store.row[(aid[i], tix[i])]
        true = float(y @ _u(store.vec(target_row))) if lnsp else sims[rows.index(target_row)]
        ranks.append(1 + int((sims > true).sum()))
    ranks = np.array(ranks, np.float64)
    out |= {"b_n": float(len(ranks)), "r_at_1": _mean(ranks == 1), "r_at_5": _mean(ranks <= 5),
            "mrr": _mean(1 / ranks)}
    # C (the random draws come from lvmd's plan so the two agree sample for sample)
    sel = pick(lambda i: True)
    ctx_c = ctx_all[sel]
    plan = fivecat.ablation_plan(ctx_c, seqs.article_ids[sel], bank, lnsp=lnsp, seed=seed)
    base, d = [], {n: [] for n in fivecat.ABLATIONS}
    cross_base = []
    for j, i in enumerate(sel):
        ctx, y_true = ctx_c[j], _u(seqs.targets[i])
        b = float(pred(ctx) @ y_true)
        base.append(b)
        d["shuffled"].append(float(pred(ctx[plan.perms[j]]) @ y_true))
        d["reversed"].append(float(pred(ctx[::-1]) @ y_true))
        loo = [float(pred(np.concatenate([ctx[:s], ctx[s + 1:], ctx[-1:]])) @ y_true) for s in range(t_len)]
        d["leave_one_out"].append(float(np.mean(loo)))
        d["repeat_pad"].append(float(pred(np.repeat(ctx[-1:], t_len, 0)) @ y_true))
        if plan.cross_ok[j]:
            cross = ctx.copy()
            cross[-1] = plan.cross[j]
            d["cross_article"].append(float(pred(cross) @ y_true))
            cross_base.append(b)
    out["c_n"], out["cos"] = float(len(sel)), _mean(base)
    for name in fivecat.ABLATIONS:
        ref = cross_base if name == "cross_article" else base
        out[f"delta_{name}"] = _mean(d[name]) - _mean(ref)
    # D
    sel = pick(can_D)
    per_step = [[] for _ in steps]
    for i in sel:
        ctx = ctx_all[i].copy()
        for h, step in enumerate(steps):
            y = pred(ctx)
            per_step[h].append(float(y @ store.vec(store.offset(aid[i], tix[i], step, lnsp))))
            ctx = np.concatenate([ctx[1:], y[None]])
    step_means = [_mean(v) for v in per_step]
    out |= {"d_n": float(len(sel)), "rollout": float(np.mean(step_means))}
    out |= {f"rollout_h{h + 1}": v for h, v in enumerate(step_means)}
    # E
    groups = {"low": [], "normal": [], "high": []}
    for i in pick(lambda i: True):
        ctx = ctx_all[i]
        coh = np.mean([float(_u(ctx[s]) @ _u(ctx[s + 1])) for s in range(t_len - 1)])
        c = float(pred(ctx) @ _u(seqs.targets[i]))
        groups["low" if coh < bins[0] else "normal" if coh <= bins[1] else "high"].append(c)
    for name, vals in groups.items():
        out[f"bin_{name}_n"], out[f"bin_{name}_mean"] = float(len(vals)), _mean(vals)
    return out


def one_at_a_time(predict, device="cpu"):
    """A predict for (T, D) numpy contexts: one forward per call, as a per-sample loop does."""
    calls = [0]

    def predict_one(ctx: np.ndarray) -> np.ndarray:
        calls[0] += 1
        with torch.no_grad():
            y = predict(torch.from_numpy(np.ascontiguousarray(ctx, dtype=np.float32))[None].to(device))
        y = y[-1] if isinstance(y, tuple) else y
        return y[0].float().cpu().numpy()

    return predict_one, calls


# -- the model's own limit: the same forward passes, bare -------------------------------------
class Recorder:
    """A predict that notes the shape of every batch 5CAT hands the model (and answers it)."""

    def __init__(self, predict):
        self.predict, self.shapes = predict, []

    def __call__(self, x):
        self.shapes.append(tuple(x.shape))
        return self.predict(x)


def forward_only(predict, shapes: list[tuple], device, repeat: int) -> float:
    """Seconds to run `predict` on unit contexts of exactly these batch shapes, under no_grad, one
    device sync at the end: the forward passes alone, as 5CAT makes them (median of `repeat`)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = {s: torch.nn.functional.normalize(torch.randn(s, generator=gen), dim=-1).to(device) for s in set(shapes)}
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in shapes:
                predict(inputs[s])
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- the benchmark -----------------------------------------------------------------------------
def make_data(samples: int, dim: int, seed: int):
    """Two banks (VAL and a noisier OOD source) with at least `samples` windows each."""
    n_articles = max(8, int(samples / 21 * 1.1) + 1)  # ~26 chunks, ~21 windows of 5+1 per article
    out = []
    for k, noise in enumerate((0.6, 0.8)):
        arts = data.synth_articles(n_articles=n_articles, dim=dim, noise=noise, seed=seed + k)
        out += [arts, data.build_windows(arts).subset(np.arange(samples))]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--samples", type=int, default=5000, help="rows per split (VAL and OOD)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--model", choices=("mean", "amn", "transformer"), default="mean",
                    help="mean: mean of the context (isolates 5CAT's own cost); amn, transformer: random-init "
                         "lvmd models of the default size")
    ap.add_argument("--device", default="cpu", help="where the model runs, for both implementations (cpu, cuda)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1: a fair, quiet box)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="batched runs to take the median of")
    ap.add_argument("--forward-only", action="store_true",
                    help="only 5CAT against its own forward passes (skip the naive loop): the ratio table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    val_arts, val, ood_arts, ood = make_data(args.samples, args.dim, args.seed)
    device = torch.device(args.device)
    if args.model == "mean":
        predict = lambda x: x.mean(dim=1)  # noqa: E731
    else:
        model = build_model(ModelConfig(kind=args.model), args.dim).to(device).eval()
        predict = lambda x: model(x)[1]  # noqa: E731

    times, fwd_times, recorder = [], [], Recorder(predict)
    for r in range(args.repeat):  # the batched run is short: the median of a few damps a busy box's noise
        if r % 2 and recorder.shapes:  # interleaved, in alternating order: a drift in the machine's load hits both
            fwd_times.append(forward_only(predict, recorder.shapes, device, 1))
        recorder.shapes.clear()
        t0 = time.perf_counter()
        fast = fivecat.evaluate(recorder, val, ood, val_arts, ood_articles=ood_arts, max_samples=args.samples,
                                seed=args.seed, device=device)
        _sync(device)
        times.append(time.perf_counter() - t0)
        if not r % 2:  # its forward passes alone, the same batch shapes
            fwd_times.append(forward_only(predict, recorder.shapes, device, 1))
    t_fast, t_fwd = float(np.median(times)), float(np.median(fwd_times))
    if args.forward_only:
        n_ctx = sum(s[0] for s in recorder.shapes)
        print(f"5CAT vs its own forward passes: {args.samples} VAL + {args.samples} OOD samples, D={args.dim}, "
              f"model={args.model}, device={device}, torch threads={args.threads}")
        print("| 5CAT total (s) | forward only (s) | ratio (target <= 1.15) | forward calls | contexts |")
        print("|---|---|---|---|---|")
        print(f"| {t_fast:.2f} | {t_fwd:.2f} | {t_fast / t_fwd:.3f} | {len(recorder.shapes)} | {n_ctx} |")
        return 0
    syncs = count_host_syncs(lambda: fivecat.evaluate(predict, val, ood, val_arts, ood_articles=ood_arts,
                                                      max_samples=args.samples, seed=args.seed, device=device),
                             device)

    predict_one, calls = one_at_a_time(predict, device)
    t0 = time.perf_counter()
    slow = {"VAL": naive_split(predict_one, val, val_arts, max_samples=args.samples, seed=args.seed),
            "OOD": naive_split(predict_one, ood, ood_arts, max_samples=args.samples, seed=args.seed)}
    t_slow = time.perf_counter() - t0

    diff = max(abs(fast.metrics[s][k] - v) for s in slow for k, v in slow[s].items()
               if math.isfinite(v) or math.isfinite(fast.metrics[s][k]))
    n = 2 * args.samples
    rows = [("implementation", "time (s)", "per sample (ms)", "forward calls", "speedup"),
            (f"lvmd fivecat.evaluate, batched (median of {args.repeat})", f"{t_fast:.2f}", f"{1e3 * t_fast / n:.3f}",
             "batches of 1024", f"{t_slow / t_fast:.1f}x"),
            ("naive loop, one sample per forward", f"{t_slow:.2f}", f"{1e3 * t_slow / n:.3f}", f"{calls[0]}", "1x")]
    print(f"5CAT bench: {args.samples} VAL + {args.samples} OOD samples, D={args.dim}, model={args.model}, "
          f"device={device}, torch threads={args.threads}")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows[1:]:
        print("| " + " | ".join(r) + " |")
    print(f"largest |difference| between the two implementations' metrics: {diff:.2e}")
    print(f"the same forward passes alone ({len(recorder.shapes)} calls, {sum(s[0] for s in recorder.shapes)} "
          f"contexts): {t_fwd:.2f} s; 5CAT total / forward only = {t_fast / t_fwd:.3f} (target <= 1.15)")
    if syncs is not None:  # a constant count (per split, not per batch) is the design
        print(f"host syncs in one batched evaluation (torch.cuda sync debug mode): {syncs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
