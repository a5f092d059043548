"""Test B, retrieval within the target's article: R@1, R@5 and MRR of the target among every
chunk of its article (SPEC §4 B; never a 6-candidate R@5)."""
from __future__ import annotations

import numpy as np

from lvmd.eval.fivecat.arrays import Bank, mean, rowdot, unit

MIN_ARTICLE_CHUNKS = 6       # B ranks only within articles of at least this many chunks


def retrievable(bank: Bank, aid: np.ndarray, tgt_rows: np.ndarray) -> np.ndarray:
    start, end = bank.span(aid)
    return (tgt_rows >= 0) & (end - start >= MIN_ARTICLE_CHUNKS)


def retrieval(yhat: np.ndarray, aid: np.ndarray, tgt_rows: np.ndarray, bank: Bank, *,
               lnsp: bool) -> dict[str, float]:
    ranks = article_ranks(yhat, aid, tgt_rows, bank, lnsp=lnsp).astype(np.float64)
    return {"b_n": float(len(ranks)), "r_at_1": mean(ranks == 1), "r_at_5": mean(ranks <= 5),
            "mrr": mean(1.0 / ranks)}


def article_ranks(yhat: np.ndarray, aid: np.ndarray, tgt_rows: np.ndarray, bank: Bank, *, lnsp: bool) -> np.ndarray:
    """rank = 1 + #chunks of the article scoring strictly higher than the target; one matrix
    product per article. Default: the target's score is read from that same product, so ties
    favour the target. Compat: the target's score is a separately computed float (the
    original's defect: rounding alone ranks a perfect prediction 2nd about half the time)."""
    ranks = np.empty(len(yhat), np.int64)
    order = np.argsort(aid, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(aid[order])) + 1) if len(order) else []
    for idx in groups:
        start, end = bank.span(aid[idx[:1]])
        chunks = bank.unit(np.arange(start[0], end[0]))                   # (L, D)
        scores = np.einsum("gd,ld->gl", yhat[idx], chunks)  # (g, L); not BLAS: its threads thrash on tiny products
        if lnsp:
            target = rowdot(yhat[idx], unit(chunks[tgt_rows[idx] - start[0]]))
        else:
            target = scores[np.arange(len(idx)), tgt_rows[idx] - start[0]]
        ranks[idx] = 1 + (scores > target[:, None]).sum(1)
    return ranks
