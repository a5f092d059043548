"""One pure function per loss term of P6b (SPEC §3). Inputs are per-sample tensors; outputs
are 0-d tensors. No Python branching on tensor values, so they run on any device without a
host sync."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

RATIO_EPS = 1e-6
# `reduce` turns the per-element terms into the batch value: the mean (default) in one process;
# lvmd.train.distributed passes torch.sum so that ranks can add their shares of a global batch.
Reduce = Callable[[torch.Tensor], torch.Tensor]


def mse(raw: torch.Tensor, target: torch.Tensor, reduce: Reduce = torch.mean) -> torch.Tensor:
    """Base loss: mean over B×D of (raw − y)². Its scale is ≈ (2 − 2cos)/D, ~1e-3 at D=768."""
    return reduce((raw - target).pow(2))


def cosine(pred_unit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, D), (B, D) → (B,) cosine; pred is already unit length, target is normalised here."""
    return (pred_unit * F.normalize(target, dim=-1)).sum(-1)


def gap_and_ratio(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gap = pos - neg
    return gap, gap / (pos.abs() + neg.abs() + RATIO_EPS)


def directional(pos: torch.Tensor, neg: torch.Tensor, m_gap: float, *, alpha: float, gamma: float,
                m_ratio: float, reduce: Reduce = torch.mean) -> torch.Tensor:
    """G1 scale-aware directional loss:
    mean[ α·sp(γ(m_gap − gap))/γ + (1−α)·sp(γ(m_ratio − ratio))/γ ]."""
    gap, ratio = gap_and_ratio(pos, neg)
    gap_term = F.softplus(gamma * (m_gap - gap)) / gamma
    ratio_term = F.softplus(gamma * (m_ratio - ratio)) / gamma
    return reduce(alpha * gap_term + (1.0 - alpha) * ratio_term)


def positive_floor(pos: torch.Tensor, tau: float, reduce: Reduce = torch.mean) -> torch.Tensor:
    """G2: mean relu(τ − pos)²: zero once every prediction is at least τ toward its target."""
    return reduce(F.relu(tau - pos).pow(2))


def norm_penalty(vec: torch.Tensor, reduce: Reduce = torch.mean) -> torch.Tensor:
    """G3: mean (‖v‖ − 1)². lvmd applies it to the raw output; compat lnsp to the unit output,
    where it is identically ~0 (the original's no-op)."""
    return reduce((vec.norm(dim=-1) - 1.0).pow(2))


def orthogonality(neg: torch.Tensor, reduce: Reduce = torch.mean) -> torch.Tensor:
    """v2.2: mean neg², pushing the prediction orthogonal to y_prev."""
    return reduce(neg.pow(2))
