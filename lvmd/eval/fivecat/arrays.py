"""Array plumbing shared by the five tests: the batched predictor on its device, index
arithmetic on an articles bank, and small numpy helpers (unit rows, row dots, NaN-safe means)."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from lvmd.data.formats import Articles
from lvmd.errors import UserError

Predict = Callable[[torch.Tensor], Any]


class Batched:
    """Calls `predict` on batches of at most batch_size contexts on `device`; returns unit
    float32 rows there (F.normalize: the same clamp at 1e-12 as _unit)."""

    def __init__(self, predict: Predict, batch_size: int, dim: int, device: str | torch.device):
        self.predict, self.batch_size, self.dim = predict, batch_size, dim
        self.device = torch.device(device)

    def upload(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)

    def __call__(self, ctx: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(ctx), self.dim), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for lo in range(0, len(ctx), self.batch_size):
                batch = ctx[lo:lo + self.batch_size].contiguous()
                y = self.predict(batch)
                y = y[-1] if isinstance(y, (tuple, list)) else y  # a model's (raw, unit)
                if tuple(y.shape) != (len(batch), self.dim):
                    raise UserError(f"the model returned shape {tuple(y.shape)} for contexts of shape "
                                    f"{tuple(batch.shape)}; expected ({len(batch)}, {self.dim})")
                out[lo:lo + len(batch)] = y.detach()  # casts and moves: a predictor may answer on the CPU
        return torch.nn.functional.normalize(out, dim=-1)

    def one_by_one(self, ctx: torch.Tensor) -> np.ndarray:
        """The predictor's own output for each context alone (a forward per row, as the original
        script's predict did), copied to the host as float32 and not normalised again: compat's
        test B, where the last bits decide its ranks (a batched forward rounds differently)."""
        out = np.empty((len(ctx), self.dim), np.float32)
        with torch.no_grad():
            for i in range(len(ctx)):
                y = self.predict(ctx[i:i + 1].contiguous())
                y = y[-1] if isinstance(y, (tuple, list)) else y
                if tuple(y.shape) != (1, self.dim):
                    raise UserError(f"the model returned shape {tuple(y.shape)} for one context; expected (1, {self.dim})")
                out[i] = y.detach().float().cpu().numpy()[0]
        return out


class Bank:
    """Index arithmetic on an Articles bank ordered by (article, chunk); never copies it whole."""

    def __init__(self, art: Articles):
        self.art = art

    def rows(self, aid: np.ndarray, chunk: np.ndarray) -> np.ndarray:
        return self.art.rows_of(aid, chunk) if len(aid) else np.zeros(0, np.int64)

    def span(self, aid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) rows of each article (start == end where the bank lacks it)."""
        ids = self.art.article_ids
        return np.searchsorted(ids, aid, "left"), np.searchsorted(ids, aid, "right")

    def offset_rows(self, aid: np.ndarray, t: np.ndarray, ks, *, by_position: bool) -> np.ndarray:
        """(n, len(ks)) bank rows of chunk t+k, -1 where missing. by_position (compat): the
        k-th row after the target's row within its article, as the original counted."""
        ks = np.asarray(ks, np.int64)
        if not by_position:
            return self.rows(np.repeat(aid, len(ks)), (t[:, None] + ks).ravel()).reshape(len(aid), len(ks))
        r0 = self.rows(aid, t)
        start, end = self.span(aid)
        rows = r0[:, None] + ks
        ok = (r0[:, None] >= 0) & (rows >= start[:, None]) & (rows < end[:, None])
        return np.where(ok, rows, -1)

    def unit(self, rows: np.ndarray) -> np.ndarray:
        return unit(self.art.vectors[rows])

    def cos(self, unit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """cos(unit_rows[i], chunk rows[i]) without normalising a copy of the chunks."""
        v = self.art.vectors[rows]
        return rowdot(unit_rows, v) / np.maximum(norms(v), np.float32(1e-12))

    def other_article_rows(self, aid: np.ndarray, rng: np.random.Generator, tries: int = 64) -> np.ndarray:
        """A random bank row from another article per sample (-1 if none turned up)."""
        n_rows = len(self.art)
        rows = rng.integers(0, n_rows, len(aid))
        for _ in range(tries):
            bad = self.art.article_ids[rows] == aid
            if not bad.any():
                return rows
            rows[bad] = rng.integers(0, n_rows, int(bad.sum()))
        return np.where(self.art.article_ids[rows] == aid, -1, rows)


def take(x, idx: np.ndarray):
    """x[idx] for a numpy array or a tensor, as a view (no copy of a large context array) when
    idx is a run of rows."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and (np.diff(idx) == 1).all():
        return x[idx[0]: idx[-1] + 1]
    return x[torch.from_numpy(idx).to(x.device)] if isinstance(x, torch.Tensor) else x[idx]


def norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("...d,...d->...", x, x))  # einsum: no squared temporary


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(norms(x), np.float32(1e-12))[..., None]


def l2n(x: np.ndarray) -> np.ndarray:
    """The original's l2_normalize: x / (‖x‖ + 1e-9) with np.linalg.norm, float32 in, float32
    out. compat only: its rounding differs from unit()'s in the last bit, and test B's ranks
    hang on that bit."""
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-9)


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", a, b)


def mean(x: np.ndarray) -> float:
    return float(np.mean(x, dtype=np.float64)) if len(x) else math.nan
