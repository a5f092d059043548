"""The guardrail controller (SPEC §3 G4, G5) and the combined P6b loss for one batch.

Everything here is branch-free on tensor values (torch.where, no .item()), so on a GPU the
step never waits for the host; Python `if`s only look at configuration.
"""
from __future__ import annotations

import torch

from lvmd.train import losses, rho_cap as cap_rule
from lvmd.config import LossConfig, RampStage

EPS = 1e-12

# Device-side telemetry packed per step, in this order (frac and m_gap are host constants
# and grad_norm is added by the trainer). Must stay a subset of store.schema.STEP_METRICS.
DEVICE_METRICS = ("lam", "rho", "rho_pre", "pos", "neg", "gap", "ratio", "neg_cos_rate", "skip",
                  "attenuate", "mse", "l_dir", "l_floor", "l_norm", "l_orth", "total")


def adaptive_lambda(mse: torch.Tensor, l_dir: torch.Tensor, frac: float, *, lam_min: float,
                    lam_max: float, rho_cap: float, rho_boost: float = 0.0):
    """G4: λ = clamp(mse·frac/Ldir, λmin, λmax); ρ = λ·Ldir/mse; if ρ > cap: λ ← λ·cap/ρ.

    "ρ > cap" is lvmd.train.rho_cap's rule: above cap·(1 + 2^-20), SPEC's `>` up to the float32
    rounding of ρ itself (a ρ equal to the cap in exact arithmetic is not attenuated when
    rounding puts it a float32 step over). The returned flag is stored per step and is what
    every count of attenuated steps counts.

    v2.2 (rho_boost > 0): first, if ρ < rho_boost·frac, scale λ up by frac/ρ (ρ as a target),
    clamped again to [λmin, λmax]. The cap comes last and only lowers λ, so λ ≤ λmax always
    (the cap may take λ under λmin, as G4 says: ρ ≤ cap wins over the floor).
    Returns (λ, ρ after the cap, ρ before the cap, attenuated flag); no gradient flows.
    rho_cap = 0 disables the cap (preset v1).
    """
    mse, l_dir = mse.detach(), l_dir.detach()
    lam = (mse * frac / l_dir.clamp_min(EPS)).clamp(lam_min, lam_max)
    rho = lam * l_dir / mse.clamp_min(EPS)
    if rho_boost > 0:
        low = rho < rho_boost * frac
        # SPEC §3 v2.2: λ is clamped to [λmin, λmax] after every scaling; the boost must not
        # take λ past λmax (mse·frac/Ldir alone can be 0.0455 > 0.03)
        lam = torch.where(low, lam * frac / rho.clamp_min(EPS), lam).clamp(lam_min, lam_max)
        rho = lam * l_dir / mse.clamp_min(EPS)
    rho_pre = rho
    if rho_cap > 0:
        attenuated = rho > cap_rule.threshold_f32(rho_cap)    # a float32 compare, exact as in double
        lam = torch.where(attenuated, lam * rho_cap / rho.clamp_min(EPS), lam)
        rho = torch.where(attenuated, torch.full_like(rho, rho_cap), rho)
    else:
        attenuated = torch.zeros_like(rho, dtype=torch.bool)
    return lam, rho, rho_pre, attenuated


def skip_batch(pos_mean: torch.Tensor, neg_mean: torch.Tensor, *, weak_pos: float, neg_floor: float
               ) -> torch.Tensor:
    """G5: the 'two negatives' collapse signature: pos̄ < 0, or pos̄ < weak_pos and neḡ < neg_floor."""
    return (pos_mean < 0) | ((pos_mean < weak_pos) & (neg_mean < neg_floor))


def guarded_loss(raw: torch.Tensor, unit: torch.Tensor, y_next: torch.Tensor, y_prev: torch.Tensor,
                 stage: RampStage, cfg: LossConfig, *, compat: str = "none"
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The P6b total loss for one batch and its telemetry (0-d tensors, DEVICE_METRICS keys).

    L = mse + (0 if skip else λ·Ldir) + β·Lfloor + η·Lnorm + κ·Lorth
    """
    raw, unit = raw.float(), unit.float()          # losses in fp32 even under bf16 autocast
    pos = losses.cosine(unit, y_next)              # (B,)
    neg = losses.cosine(unit, y_prev)              # (B,)
    terms = loss_terms(raw, unit, y_next, pos, neg, stage, cfg, compat=compat)
    gap, ratio = losses.gap_and_ratio(pos.detach(), neg.detach())
    stats = {"pos": pos.mean().detach(), "neg": neg.mean().detach(), "gap": gap.mean(), "ratio": ratio.mean(),
             "neg_cos_rate": (pos.detach() < 0).float().mean()}
    return combine(terms, stats, stage, cfg)


def loss_terms(raw: torch.Tensor, unit: torch.Tensor, y_next: torch.Tensor, pos: torch.Tensor,
               neg: torch.Tensor, stage: RampStage, cfg: LossConfig, *, compat: str = "none",
               reduce: losses.Reduce = torch.mean) -> dict[str, torch.Tensor]:
    """The differentiable terms of the loss, reduced over the batch by `reduce` (mean; or sum
    for one rank's share of a global batch, lvmd.train.distributed)."""
    return {
        "mse": losses.mse(raw, y_next, reduce),
        "l_dir": losses.directional(pos, neg, stage.m_gap, alpha=cfg.alpha, gamma=cfg.gamma,
                                    m_ratio=cfg.m_ratio, reduce=reduce),
        "l_floor": losses.positive_floor(pos, cfg.tau, reduce),
        # compat lnsp: the original regularised the already-normalised output (a no-op)
        "l_norm": losses.norm_penalty(unit if compat == "lnsp" else raw, reduce),
        "l_orth": losses.orthogonality(neg, reduce),
    }


def combine(terms: dict[str, torch.Tensor], stats: dict[str, torch.Tensor], stage: RampStage,
            cfg: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """G4 λ/ρ, G5 skip and the total from the batch's terms and its (detached) statistics
    pos̄, neḡ, gap̄, ratiō, neg_cos_rate: the same decisions whoever computed the batch values."""
    base, l_dir = terms["mse"], terms["l_dir"]
    if cfg.directional:
        lam, rho, rho_pre, attenuated = adaptive_lambda(
            base, l_dir, stage.frac, lam_min=cfg.lam_min, lam_max=cfg.lam_max,
            rho_cap=stage.rho_cap or cfg.rho_cap, rho_boost=cfg.rho_boost)
    else:
        lam = rho = rho_pre = torch.zeros_like(base)
        attenuated = torch.zeros_like(base, dtype=torch.bool)
    if cfg.skip:
        skip = skip_batch(stats["pos"], stats["neg"], weak_pos=cfg.skip_weak_pos, neg_floor=cfg.skip_neg)
    else:
        skip = torch.zeros_like(base, dtype=torch.bool)

    directional_term = torch.where(skip, torch.zeros_like(l_dir), lam * l_dir)
    total = (base + directional_term + cfg.beta * terms["l_floor"] + cfg.eta * terms["l_norm"]
             + cfg.kappa * terms["l_orth"])

    metrics = {
        "lam": lam, "rho": rho, "rho_pre": rho_pre, **stats,
        "skip": skip.float(), "attenuate": attenuated.float(), "mse": base.detach(),
        "l_dir": l_dir.detach(), "l_floor": terms["l_floor"].detach(), "l_norm": terms["l_norm"].detach(),
        "l_orth": terms["l_orth"].detach(), "total": total.detach(),
    }
    return total, metrics
