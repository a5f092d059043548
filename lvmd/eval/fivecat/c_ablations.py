"""Test C, ablations: how much the prediction's cos with the target drops when the context is
shuffled, reversed, padded by repeating its last chunk, has its last chunk swapped for another
article's, or loses one chunk (leave-one-out). Each ablated context is one gather on the device."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from lvmd.eval.fivecat.arrays import Bank, Batched, mean, rowdot

COMPAT_SHUFFLE_SEED = 17     # the original shuffled with random.Random(17), one shuffle per sample


@dataclass
class Plan:
    perms: np.ndarray          # (n, T) shuffle order per sample
    cross: np.ndarray          # (n, D) what replaces ctx[-1] in "cross_article"
    cross_ok: np.ndarray       # (n,) False where no chunk of another article was found


def ablation_plan(ctx: np.ndarray, aid: np.ndarray, bank: Bank, *, lnsp: bool, seed: int) -> Plan:
    """The random parts of C (shuffle orders, cross-article chunks), drawn once for all samples."""
    n, t = ctx.shape[:2]
    if lnsp:  # the original: one random.Random(17) shuffle per sample; "cross" := ctx[0]
        rng = random.Random(COMPAT_SHUFFLE_SEED)
        perms = np.array([_shuffled(rng, t) for _ in range(n)], np.int64).reshape(n, t)
        return Plan(perms, ctx[:, 0].copy(), np.ones(n, bool))
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n, t)), axis=1)
    rows = bank.other_article_rows(aid, rng)
    ok = rows >= 0
    cross = np.where(ok[:, None], bank.unit(np.where(ok, rows, 0)), ctx[:, -1])
    return Plan(perms, cross.astype(np.float32), ok)


def _shuffled(rng: random.Random, t: int) -> list[int]:
    perm = list(range(t))
    rng.shuffle(perm)
    return perm


def _variant_names(t: int) -> list[str]:
    return ["shuffled", "reversed", "repeat_pad", "cross_article"] + [f"loo_{i}" for i in range(t)]


def _variant_slots(perms: np.ndarray) -> np.ndarray:
    """(V, n, T): which slot of [ctx_0 .. ctx_{T-1}, cross] fills each position of each ablated
    context, in _variant_names order. Every ablation is then one gather, on any device."""
    n, t = perms.shape
    last, cross = t - 1, t
    fixed = [list(range(t))[::-1],                                   # reversed
             [last] * t,                                             # repeat-pad: ctx[-1] x T
             list(range(t - 1)) + [cross]]                           # cross-article replaces ctx[-1]
    # leave-one-out: drop slot i, pad by repeating ctx[-1] (SPEC; the original's too)
    fixed += [[j for j in range(t) if j != i] + [last] for i in range(t)]
    slots = np.empty((1 + len(fixed), n, t), np.int64)
    slots[0] = perms                                                 # shuffled
    slots[1:] = np.asarray(fixed, np.int64)[:, None, :]
    return slots


def ablations(run: Batched, ctx: torch.Tensor, tgt: np.ndarray, yhat: np.ndarray, plan: Plan) -> dict[str, float]:
    """ctx on the device; the ablated contexts are gathered there in chunks of ~batch_size."""
    n, t, d = ctx.shape
    names = _variant_names(t)
    v = len(names)
    slots = torch.from_numpy(_variant_slots(plan.perms)).to(run.device)
    cross, tgt_dev = run.upload(plan.cross), run.upload(tgt)
    cos = torch.empty((v, n), dtype=torch.float32, device=run.device)
    step = max(1, run.batch_size // v)  # ~batch_size contexts per forward pass
    buf = torch.empty((v * min(step, n) * t, d), dtype=torch.float32, device=run.device)  # reused
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        b = hi - lo
        ext = torch.cat([ctx[lo:hi], cross[lo:hi, None]], dim=1).reshape(b * (t + 1), d)  # T+1 slots per sample
        flat = (slots[:, lo:hi] + (t + 1) * torch.arange(b, device=run.device)[None, :, None]).reshape(-1)
        part = torch.index_select(ext, 0, flat, out=buf[: v * b * t])
        preds = run(part.view(v * b, t, d)).view(v, b, d)
        cos[:, lo:hi] = torch.einsum("vnd,nd->vn", preds, tgt_dev[lo:hi])
    cos = cos.cpu().numpy()
    by = dict(zip(names, cos))
    base = rowdot(yhat, tgt)
    loo = cos[4:].mean(axis=0)  # per sample, the mean over the T leave-one-out contexts
    ok = plan.cross_ok
    return {"c_n": float(n), "cos": mean(base),
            "delta_shuffled": mean(by["shuffled"]) - mean(base),
            "delta_reversed": mean(by["reversed"]) - mean(base),
            "delta_leave_one_out": mean(loo) - mean(base),
            "delta_repeat_pad": mean(by["repeat_pad"]) - mean(base),
            "delta_cross_article": mean(by["cross_article"][ok]) - mean(base[ok])}
