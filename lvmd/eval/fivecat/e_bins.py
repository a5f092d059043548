"""Test E, coherence bins: cos with the target by how coherent the context is (mean cos of
adjacent context chunks), low / normal / high; VAL and OOD should agree in the normal bin."""
from __future__ import annotations

import numpy as np

from lvmd.eval.fivecat.arrays import mean, norms

COMPAT_BINS = (0.45, 0.55)   # the original's hard-coded coherence bins, whatever the embedder


def coherence(ctx: np.ndarray) -> np.ndarray:
    """Mean cos of adjacent context pairs, per sample: (n, T, D) -> (n,)."""
    n = norms(ctx)                                                            # (n, T)
    dots = np.einsum("ntd,ntd->nt", ctx[:, :-1], ctx[:, 1:])                   # (n, T-1)
    return (dots / np.maximum(n[:, :-1] * n[:, 1:], 1e-24)).mean(axis=1)


def bins(ctx: np.ndarray, cos: np.ndarray, bins: tuple[float, float]) -> dict[str, float]:
    coh = coherence(ctx)
    low, high = bins
    masks = {"low": coh < low, "normal": (coh >= low) & (coh <= high), "high": coh > high}
    out: dict[str, float] = {}
    for name, mask in masks.items():
        out[f"bin_{name}_n"] = float(mask.sum())
        out[f"bin_{name}_mean"] = mean(cos[mask])
    return out
