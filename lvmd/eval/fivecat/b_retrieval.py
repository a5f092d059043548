"""Test B, retrieval within the target's article: R@1, R@5 and MRR of the target among every
chunk of its article (SPEC §4 B; never a 6-candidate R@5)."""
from __future__ import annotations

import numpy as np

import torch

from lvmd.eval.fivecat.arrays import Bank, Batched, l2n, mean

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
    product per article, the target's score read from that same product, so ties favour the
    target. Compat: lnsp_article_ranks."""
    ranks = np.empty(len(yhat), np.int64)
    for idx, start, end in _article_groups(aid, bank):
        if lnsp:
            ranks[idx] = lnsp_article_ranks(yhat[idx], tgt_rows[idx] - start, bank.art.vectors[start:end])
            continue
        chunks = bank.unit(np.arange(start, end))                          # (L, D)
        scores = np.einsum("gd,ld->gl", yhat[idx], chunks)  # (g, L); not BLAS: its threads thrash on tiny products
        target = scores[np.arange(len(idx)), tgt_rows[idx] - start]
        ranks[idx] = 1 + (scores > target[:, None]).sum(1)
    return ranks


def _article_groups(aid: np.ndarray, bank: Bank):
    """(sample indices, first bank row, end row) per article, articles in id order."""
    order = np.argsort(aid, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(aid[order])) + 1) if len(order) else []
    for idx in groups:
        start, end = bank.span(aid[idx[:1]])
        yield idx, int(start[0]), int(end[0])


def lnsp_predictions(run: Batched, ctx: torch.Tensor) -> np.ndarray:
    """compat: test B's predictions made as the original made them, so its ranks are the
    original's to the last bit: contexts already l2n-normalised (evaluate does that), one
    context per forward, the model's unit output l2n-normalised again on the host in float32
    (its predict). A batched forward differs in the last bits (≤ 1.2e-6), and the original's
    `sims > true` compares one quantity computed two ways, so those bits move ranks by one."""
    return l2n(run.one_by_one(ctx))


def lnsp_article_ranks(yhat: np.ndarray, targets: np.ndarray, article: np.ndarray) -> np.ndarray:
    """The original's test B, one sample at a time in its exact float32 arithmetic (its tie defect
    lives in the last bits, so no vectorised form would reproduce it): the article's vectors
    normalised twice as it did (once for the whole file, once per article), then per sample
    sims = article_vecs @ l2n(ŷ), true = float(np.dot(l2n(ŷ), l2n(target row))), rank =
    1 + #{sims > true}. A matrix-vector product per sample (BLAS gemv), as the original."""
    article_vecs = l2n(l2n(np.asarray(article, np.float32)))
    ranks = np.empty(len(yhat), np.int64)
    for i, (v, t) in enumerate(zip(np.asarray(yhat, np.float32), targets)):
        q = l2n(v)
        sims = article_vecs @ q
        true = float(np.dot(q, l2n(article_vecs[t])))
        ranks[i] = int(np.sum(sims > true) + 1)
    return ranks
