"""Test D, rollout: feed each prediction back as context for HORIZON steps and score step h
against the chunk h-1 after the target."""
from __future__ import annotations

import numpy as np
import torch

from lvmd.eval.fivecat.arrays import Bank, Batched, mean

HORIZON = 5


def rollout(run: Batched, ctx: torch.Tensor, first: torch.Tensor, future: np.ndarray,
             bank: Bank) -> dict[str, float]:
    """Predict, append the prediction, slide; step h is scored against future[:, h-1]
    (chunk t+h-1; compat: t+h). Rows go in batches through all steps, in one window buffer on
    the device (ctx and first, the step-1 predictions, are there too)."""
    n, t, d = ctx.shape
    steps = future.shape[1]
    chunks = run.upload(bank.unit(future))    # (n, H, D) unit; one copy: a pageable copy per batch would sync
    cos = torch.empty((steps, n), dtype=torch.float32, device=run.device)
    window = torch.empty((min(run.batch_size, n), t + steps - 1, d), dtype=torch.float32, device=run.device)
    for lo in range(0, n, run.batch_size):
        hi = min(n, lo + run.batch_size)
        w = window[: hi - lo]
        w[:, :t] = ctx[lo:hi]
        pred = first[lo:hi]
        for h in range(steps):
            if h:
                pred = run(w[:, h:h + t])
            cos[h, lo:hi] = (pred * chunks[lo:hi, h]).sum(-1)
            if h + 1 < steps:
                w[:, t + h] = pred
    per_step = [mean(c) for c in cos.cpu().numpy()]
    out = {"d_n": float(n), "rollout": float(np.mean(per_step))}
    return out | {f"rollout_h{h + 1}": v for h, v in enumerate(per_step)}
