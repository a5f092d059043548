"""Test A, the offset sweep: mean cos of the prediction with chunks t-3 .. t+3; it should peak
at the target (offset 0), and the margin is the peak minus the best other offset."""
from __future__ import annotations

import numpy as np

from lvmd.eval.fivecat.arrays import Bank, mean

OFFSETS = (-3, -2, -1, 0, 1, 2, 3)


def offset_name(k: int) -> str:
    return "m_0" if k == 0 else f"m_{k:+d}"


def offset_sweep(yhat: np.ndarray, rows: np.ndarray, bank: Bank, *, lnsp: bool) -> dict[str, float]:
    means = {k: mean(bank.cos(yhat, rows[:, j])) for j, k in enumerate(OFFSETS)}
    out = {"a_n": float(len(yhat))} | {offset_name(k): v for k, v in means.items()}
    out["margin"] = _margin(means, 0)
    if lnsp:
        out["margin_+1"] = _margin(means, 1)  # what the original gated on
    return out


def _margin(means: dict[int, float], peak: int) -> float:
    return means[peak] - max(v for k, v in means.items() if k != peak)  # NaN propagates
