"""The data report's statistics of one split, in one pass over its windows, chunk by chunk, in
bounded memory (lvmd/eval/datareport.py prints them; what each number means is there).

Nothing is loaded whole: the windows are read CHUNK_ROWS at a time from their (memory-mapped)
file, the articles bank's rows are gathered by index, and every vector is renormalised as it is
gathered (float16 files hold vectors 1e-3 off unit length). Means are running float64 sums,
standard errors Chan's merge of (n, mean, M2); with one chunk both are the very operations the
whole-array code did, so a split that fits one chunk gives the same bits. What grows with the
split: one float32 coherence per window (for exact quantiles) and the bank's index arrays.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from lvmd.data import formats as data
from lvmd.errors import UserError
from lvmd.eval import fivecat

DISTANCES = (1, 2, 3)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
RANDOM_PAIRS = 20000
CHUNK_ROWS = 8192        # windows (or bank row pairs) per chunk: ~125 MB of contexts at D=768


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", a, b)


class Mean:
    """A running mean (float64 sum) and, for the paired differences, Chan's (n, mean, M2)."""

    def __init__(self):
        self.n, self.total, self.m2, self.mean = 0, 0.0, 0.0, 0.0

    def add(self, x: np.ndarray, spread: bool = False) -> None:
        if not x.size:
            return
        s = float(np.add.reduce(np.asarray(x, np.float64)))
        n = x.size
        if spread:
            mean = float(np.add.reduce(x, dtype=np.float64)) / n
            m2 = float(np.add.reduce(np.square(x - np.float64(mean))))   # float64, as np.std
            if self.n == 0:
                self.mean, self.m2 = mean, m2
            else:
                delta, both = mean - self.mean, self.n + n
                self.mean += delta * n / both
                self.m2 += m2 + delta * delta * self.n * n / both
        self.total += s
        self.n += n

    def value(self) -> float:
        return self.total / self.n if self.n else math.nan

    def se(self) -> float:
        """Standard error of the mean (population std / sqrt n), as np.std(x) / sqrt(n)."""
        return math.sqrt(self.m2 / self.n) / math.sqrt(self.n) if self.n > 1 else math.nan


class BankRows:
    """Row lookups (the Articles.rows_of rule, its sort done once) and unit rows of a bank."""

    def __init__(self, arts: data.Articles):
        self.arts = arts
        self.keys = data._pair_keys(arts.article_ids, arts.chunk_ids)
        self.order = np.argsort(self.keys, kind="stable")
        self.sorted = self.keys[self.order]

    def rows(self, aid: np.ndarray, chunk: np.ndarray) -> np.ndarray:
        if not len(self.sorted):
            return np.full(len(aid), -1, np.int64)
        want = data._pair_keys(np.asarray(aid, np.int64), np.asarray(chunk, np.int64))
        pos = np.searchsorted(self.sorted, want).clip(0, len(self.sorted) - 1)
        return np.where(self.sorted[pos] == want, self.order[pos], -1)

    def vec(self, rows: np.ndarray) -> np.ndarray:
        return unit(self.arts.vectors[rows])

    def pair_mean(self, a: np.ndarray, b: np.ndarray, chunk_rows: int) -> float:
        """Mean cos of bank rows a[i], b[i], gathered chunk by chunk."""
        acc = Mean()
        for lo in range(0, len(a), chunk_rows):
            acc.add(rowdot(self.vec(a[lo:lo + chunk_rows]), self.vec(b[lo:lo + chunk_rows])))
        return acc.value()


def window_rows(m: int, max_windows: int, seed: int) -> np.ndarray | None:
    """The windows the statistics read: None for all, else a seeded sorted sample."""
    if not max_windows or max_windows >= m:
        return None
    return np.sort(np.random.default_rng(seed).choice(m, max_windows, replace=False))


def windows(seqs: data.Sequences, rows: np.ndarray | None, chunk_rows: int):
    """(file rows, unit contexts, unit targets, article ids, target indices) chunk by chunk; rows
    not yet checked (a mapped split) are checked as they are read."""
    m = len(seqs) if rows is None else len(rows)
    for lo in range(0, m, chunk_rows):
        idx = np.arange(lo, min(lo + chunk_rows, m)) if rows is None else rows[lo:lo + chunk_rows]
        pick = slice(idx[0], idx[-1] + 1) if rows is None else idx
        ctx, tgt = np.asarray(seqs.contexts[pick]), np.asarray(seqs.targets[pick])
        if seqs.unchecked is not None:
            seqs.unchecked.rows(idx, ctx, tgt)
        yield (idx, unit(np.asarray(ctx, np.float32)), unit(np.asarray(tgt, np.float32)),
               np.asarray(seqs.article_ids[pick]), np.asarray(seqs.target_indices[pick]))


def infer_gap(seqs: data.Sequences, bank: BankRows, max_gap: int = 3) -> int:
    """The gap that puts ctx[-1] at chunk t-1-gap of the target's article (checked, not trusted)."""
    probe = np.arange(min(len(seqs), 500))
    last = unit(np.asarray(seqs.contexts[probe[0]:probe[-1] + 1, -1], np.float32)) if len(probe) else None
    for gap in range(max_gap + 1):
        rows = bank.rows(seqs.article_ids[probe], seqs.target_indices[probe] - 1 - gap)
        ok = rows >= 0
        if ok.mean() > 0.9 and (rowdot(bank.vec(rows[ok]), last[ok]) > 0.999).mean() > 0.9:
            return gap
    raise UserError(f"{seqs.path}: ctx[-1] is not the chunk 1..{max_gap + 1} before the target in "
                    f"{bank.arts.path}; the files do not belong together")


def split_stats(seqs: data.Sequences, arts: data.Articles, bins: tuple[float, float], seed: int = 0, *,
                max_windows: int = 0, chunk_rows: int = 0, tell: Callable[[str], None] | None = None) -> dict:
    """Every statistic of one split in one pass (see the module docstring); tell(text) after
    each chunk. max_windows: a seeded sample of that many windows instead of all."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    bank = BankRows(arts)
    gap = infer_gap(seqs, bank)
    rows = window_rows(len(seqs), max_windows, seed)
    fwd = {d: Mean() for d in DISTANCES}
    bwd = {d: Mean() for d in DISTANCES}
    diff = {d: Mean() for d in DISTANCES}
    last_tgt, last_prev, p2, m1, mean_ctx = Mean(), Mean(), Mean(), Mean(), Mean()
    coh, articles, done = [], [], 0
    total = len(seqs) if rows is None else len(rows)
    for _, ctx, tgt, aid, t in windows(seqs, rows, chunk_rows):
        p = t - 1 - gap                                                      # anchor chunk of each window
        anchor = bank.rows(aid, p)
        for d in DISTANCES:
            f_rows, b_rows = bank.rows(aid, p + d), bank.rows(aid, p - d)
            ok = (anchor >= 0) & (f_rows >= 0) & (b_rows >= 0)
            a = bank.vec(anchor[ok])
            f, b = rowdot(a, bank.vec(f_rows[ok])), rowdot(a, bank.vec(b_rows[ok]))
            fwd[d].add(f)
            bwd[d].add(b)
            diff[d].add(f - b, spread=True)
        last = ctx[:, -1]
        last_tgt.add(rowdot(last, tgt))
        last_prev.add(rowdot(last, ctx[:, -2]))
        f2, b1 = bank.rows(aid, p + 2), bank.rows(aid, p - 1)
        ok = (anchor >= 0) & (f2 >= 0) & (b1 >= 0)
        a = bank.vec(anchor[ok])
        p2.add(rowdot(a, bank.vec(f2[ok])))
        m1.add(rowdot(a, bank.vec(b1[ok])))
        mc = ctx.mean(axis=1)
        mc /= np.linalg.norm(mc, axis=1, keepdims=True)
        mean_ctx.add(rowdot(mc, tgt))
        coh.append(fivecat.coherence(ctx))
        articles.append(np.unique(aid))
        done += len(ctx)
        if tell is not None:
            tell(f"{done}/{total} windows")
    aids = np.unique(np.concatenate(articles)) if articles else np.zeros(0, np.int64)
    out: dict = {"windows": len(seqs), "articles": int(len(aids)), "gap": gap}
    if rows is not None:
        out["windows_read"] = int(len(rows))
    for d in DISTANCES:
        out[f"d{d}"] = {"forward": fwd[d].value(), "backward": bwd[d].value(), "diff": diff[d].value(),
                        "se": diff[d].se(), "n": diff[d].n}
    out["unequal"] = {"cos_last_target": last_tgt.value(), "target_distance": 1 + gap,
                      "cos_last_prev": last_prev.value(), "prev_distance": 1}
    out["p6_pair"] = {"cos_p_plus_2": p2.value(), "cos_p_minus_1": m1.value(), "n": p2.n}
    out["levels"] = levels(bank, aids, seed, chunk_rows)
    out["baselines"] = {"copy_last": out["unequal"]["cos_last_target"], "mean_context": mean_ctx.value()}
    c = np.concatenate(coh) if coh else np.zeros(0, np.float32)
    low, high = bins
    out["coherence"] = {"mean": _mean(c), **{f"q{int(q * 100):02d}": float(np.quantile(c, q)) for q in QUANTILES},
                        "bins": [low, high], "low": _mean(c < low), "normal": _mean((c >= low) & (c <= high)),
                        "high": _mean(c > high)}
    return out


def levels(bank: BankRows, article_ids: np.ndarray, seed: int, chunk_rows: int = 0) -> dict:
    """Mean cos of adjacent chunks, and of seeded random pairs within / across these articles."""
    arts, chunk_rows = bank.arts, chunk_rows or CHUNK_ROWS
    rows = np.flatnonzero(np.isin(arts.article_ids, article_ids))
    a = arts.article_ids[rows]
    adj = np.flatnonzero(a[1:] == a[:-1])
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(rows), (2, RANDOM_PAIRS))
    other = a[i] != a[j]
    # the partner within the same article is drawn from that article's rows; neighbours excluded
    start = np.searchsorted(a, a[i], "left")
    k = start + (rng.random(RANDOM_PAIRS) * (np.searchsorted(a, a[i], "right") - start)).astype(np.int64)
    within = np.abs(k - i) > 1
    return {"adjacent": bank.pair_mean(rows[adj], rows[adj + 1], chunk_rows),
            "same_article_random": bank.pair_mean(rows[i[within]], rows[k[within]], chunk_rows),
            "other_article_random": bank.pair_mean(rows[i[other]], rows[j[other]], chunk_rows)}


def _mean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(x.mean()) if x.size else math.nan
