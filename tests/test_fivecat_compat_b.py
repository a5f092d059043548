"""5CAT test B under compat = "lnsp" against the original's own arithmetic (issue 13).

The reference below is written the way tools/tests/test_5to1_alignment.py did it: the articles
file L2-normalised once, each article's array normalised again, then one sample at a time in
float32 numpy: sims = article_vecs @ l2n(ŷ), true = float(np.dot(l2n(ŷ), l2n(target row))),
rank = 1 + #{sims > true}. lvmd's compat B must give the same R@1, R@5 and MRR (within 0.005)
on the same predictions, on 200 samples of the real fixture and on a synthetic set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ROOT
from lvmd.config import ModelConfig
from lvmd.data import formats as data
from lvmd.eval import fivecat
from lvmd.eval.fivecat.arrays import unit
from lvmd.eval.fivecat.b_retrieval import retrievable, retrieval
from lvmd.train.models import build_model

FIXTURE = ROOT / "tests" / "fixtures" / "wiki-minilm"
TOL = 0.005


def _l2(x, axis=-1, eps=1e-9):                       # the original's l2_normalize
    return x / (np.linalg.norm(x, axis=axis, keepdims=True) + eps)


def original_b(yhat: np.ndarray, aid: np.ndarray, tix: np.ndarray, arts: data.Articles) -> dict[str, float]:
    vectors = _l2(np.asarray(arts.vectors))                                   # load_articles_npz
    by_article = {}
    for a in np.unique(arts.article_ids):                                     # ArticleStore
        rows = np.flatnonzero(arts.article_ids == a)
        rows = rows[np.argsort(arts.chunk_ids[rows], kind="stable")]
        by_article[int(a)] = (_l2(np.stack([vectors[r] for r in rows])),
                              {int(c): j for j, c in enumerate(arts.chunk_ids[rows])})
    r1, r5, rr = [], [], []
    for v, a, t in zip(yhat, aid, tix):                                       # one sample at a time
        article_vecs, imap = by_article[int(a)]
        if article_vecs.shape[0] < 6 or int(t) not in imap:
            continue
        sims = article_vecs @ _l2(v)
        true_sim = float(np.dot(_l2(v), _l2(article_vecs[imap[int(t)]])))     # cosine(vhat, true_vec)
        rank = int(np.sum(sims > true_sim) + 1)
        r1.append(rank == 1)
        r5.append(rank <= 5)
        rr.append(1.0 / rank)
    return {"n": len(r1), "r_at_1": float(np.mean(r1)), "r_at_5": float(np.mean(r5)), "mrr": float(np.mean(rr))}


def lvmd_b(yhat: np.ndarray, aid: np.ndarray, tix: np.ndarray, arts: data.Articles) -> dict[str, float]:
    bank = fivecat.Bank(arts)
    rows = bank.rows(aid, tix)
    ok = retrievable(bank, aid, rows)
    m = retrieval(yhat[ok], aid[ok], rows[ok], bank, lnsp=True)
    return {"n": int(m["b_n"]), **{k: m[k] for k in ("r_at_1", "r_at_5", "mrr")}}


def predictions(kind: str, seqs: data.Sequences, arts: data.Articles) -> np.ndarray:
    """Unit float32 predictions as lvmd's evaluator hands them to B (F.normalize of a model's output)."""
    bank = fivecat.Bank(arts)
    target = arts.vectors[bank.rows(seqs.article_ids, seqs.target_indices)]
    if kind == "oracle":           # the true chunk itself: where the original's tie defect shows most
        out = torch.from_numpy(target.copy())
    elif kind == "near":
        rng = np.random.default_rng(5)
        out = torch.from_numpy((target + 0.05 * rng.standard_normal(target.shape)).astype(np.float32))
    else:                          # a real (untrained, seeded) model's predictions
        torch.manual_seed(0)
        model = build_model(ModelConfig(kind=kind, d_model=16, nhead=2, num_layers=1, ff=32, hidden=16, amn_d=8),
                            seqs.dim).eval()
        with torch.no_grad():
            out = model(torch.from_numpy(seqs.contexts))[1]
    return torch.nn.functional.normalize(out.float(), dim=-1).numpy()


def fixture_200() -> tuple[data.Sequences, data.Articles]:
    arts = data.load_articles(FIXTURE / "articles.npz")
    train, val = data.load_sequences(FIXTURE / "train.npz"), data.load_sequences(FIXTURE / "val.npz")
    seqs = data.Sequences(contexts=np.concatenate([train.contexts, val.contexts])[:200],
                          targets=np.concatenate([train.targets, val.targets])[:200],
                          article_ids=np.concatenate([train.article_ids, val.article_ids])[:200],
                          target_indices=np.concatenate([train.target_indices, val.target_indices])[:200],
                          path=str(FIXTURE / "train+val"))
    return seqs, arts


def synthetic() -> tuple[data.Sequences, data.Articles]:
    arts = data.synth_articles(n_articles=40, min_chunks=8, max_chunks=30, dim=64, seed=11)
    return data.build_windows(arts), arts


@pytest.mark.parametrize("source", ["fixture", "synthetic"])
@pytest.mark.parametrize("kind", ["oracle", "near", "amn", "transformer"])
def test_compat_b_matches_the_originals_per_sample_arithmetic(source, kind):
    seqs, arts = fixture_200() if source == "fixture" else synthetic()
    yhat = predictions(kind, seqs, arts)
    want = original_b(yhat, seqs.article_ids, seqs.target_indices, arts)
    got = lvmd_b(yhat, seqs.article_ids, seqs.target_indices, arts)
    assert got["n"] == want["n"] and want["n"] >= (190 if source == "fixture" else 150)
    for key in ("r_at_1", "r_at_5", "mrr"):
        assert got[key] == pytest.approx(want[key], abs=TOL), (key, got, want)


def test_the_originals_tie_defect_is_reproduced_not_fixed():
    """A perfect prediction loses to its own target row often under the original's arithmetic
    (26 to 42 % in the review); lvmd's default ranks it first every time."""
    seqs, arts = fixture_200()
    yhat = predictions("oracle", seqs, arts)
    compat = lvmd_b(yhat, seqs.article_ids, seqs.target_indices, arts)
    bank = fivecat.Bank(arts)
    rows = bank.rows(seqs.article_ids, seqs.target_indices)
    ok = retrievable(bank, seqs.article_ids, rows)
    right = retrieval(yhat[ok], seqs.article_ids[ok], rows[ok], bank, lnsp=False)
    assert right["r_at_1"] == 1.0
    assert 0.3 < compat["r_at_1"] < 0.95 and compat["r_at_5"] == 1.0
    assert compat["r_at_1"] == pytest.approx(original_b(yhat, seqs.article_ids, seqs.target_indices, arts)["r_at_1"],
                                             abs=TOL)


def test_compat_ranks_never_beat_the_correct_ranks_by_more_than_the_target_itself():
    seqs, arts = synthetic()
    bank = fivecat.Bank(arts)
    rows = bank.rows(seqs.article_ids, seqs.target_indices)
    yhat = unit(seqs.targets + 0.5 * seqs.contexts[:, -1])
    right = fivecat.article_ranks(yhat, seqs.article_ids, rows, bank, lnsp=False)
    lnsp = fivecat.article_ranks(yhat, seqs.article_ids, rows, bank, lnsp=True)
    assert set(np.unique(lnsp - right)) <= {0, 1}


# -- issue 23: compat B exact, end to end through a checkpoint -------------------------------
def near_tie_files(tmp_path) -> tuple[str, str]:
    """Articles whose chunks come in near-duplicate pairs (the second = the first + 1e-7 noise),
    so a chunk beside the target scores within a few ulps of it: ranks that hang on the last bit."""
    base = data.synth_articles(n_articles=24, min_chunks=8, max_chunks=14, dim=48, seed=3)
    rng = np.random.default_rng(4)
    vecs = np.repeat(base.vectors, 2, axis=0)
    vecs[1::2] += 1e-7 * rng.standard_normal(vecs[1::2].shape).astype(np.float32)
    aids = np.repeat(base.article_ids, 2)
    chunks = np.concatenate([np.arange(n) for n in np.unique(aids, return_counts=True)[1]])
    arts = data.Articles(vecs.astype(np.float32), aids, chunks)
    data.save_articles(tmp_path / "articles.npz", arts)
    data.save_sequences(tmp_path / "val.npz", data.build_windows(arts))
    return str(tmp_path / "articles.npz"), str(tmp_path / "val.npz")


def original_checkpoint(tmp_path, kind: str, dim: int) -> str:
    """A checkpoint in the original's own layout (LEGACY.md), from a seeded untrained model."""
    torch.manual_seed(1)
    mcfg = ModelConfig(kind=kind, d_model=32, nhead=4, num_layers=2, ff=128, hidden=32, amn_d=16)
    model = build_model(mcfg, dim)
    path = tmp_path / f"{kind}_best_model.pt"
    torch.save({"epoch": 3, "model_type": kind, "model_state_dict": model.state_dict(),
                "model_config": {"input_dim": dim, "nhead": 4, "dropout": 0.1, "output_dim": dim}}, path)
    return str(path)


def reference_ranks(model, val: data.Sequences, arts: data.Articles, max_samples: int) -> np.ndarray:
    """The original's test B in its own arithmetic (SPEC §4, lvmd/docs/fivecat_compat.md): the
    whole file's contexts l2-normalised, then one sample at a time: a forward of that context
    alone, its unit output l2-normalised on the host (predict), the article's vectors normalised
    once for the file and once per article, sims = article_vecs @ l2n(ŷ), true =
    float(np.dot(l2n(ŷ), l2n(target row))), rank = 1 + #{sims > true}; the first max_samples usable."""
    contexts = _l2(np.asarray(val.contexts))
    vectors = _l2(np.asarray(arts.vectors))
    ranks = []
    for i in range(len(val)):
        if len(ranks) == max_samples:
            break
        rows = np.flatnonzero(arts.article_ids == val.article_ids[i])
        article_vecs = _l2(vectors[rows])
        j = np.flatnonzero(arts.chunk_ids[rows] == val.target_indices[i])
        if len(rows) < 6 or not len(j):
            continue
        with torch.no_grad():
            out = model(torch.from_numpy(contexts[i][None]).to(dtype=torch.float32))[1]
        vhat = _l2(out.detach().cpu().numpy()[0])
        sims = article_vecs @ _l2(vhat)
        true = float(np.dot(_l2(vhat), _l2(article_vecs[j[0]])))
        ranks.append(int(np.sum(sims > true) + 1))
    return np.array(ranks)


@pytest.mark.parametrize("kind", ["transformer", "amn", "lstm", "gru"])
def test_compat_b_ranks_equal_the_originals_one_at_a_time_ranks_row_for_row(tmp_path, monkeypatch, kind):
    """Issue 23: `lvmd eval --compat lnsp` on an original checkpoint ranks every B row exactly
    as the original's one-at-a-time float32 arithmetic does: 0 rows differ. Before, B used the
    batched predictions (and F.normalize/unit): on these near-ties dozens of rows differed."""
    from lvmd.eval import legacy
    from lvmd.eval.fivecat import b_retrieval

    apath, vpath = near_tie_files(tmp_path)
    arts, val = data.load_articles(apath), data.load_sequences(vpath)
    model, info = legacy.load_predictor(original_checkpoint(tmp_path, kind, val.dim))
    assert info["format"] == "lnsp"
    seen = []
    real = b_retrieval.article_ranks
    monkeypatch.setattr(b_retrieval, "article_ranks",
                        lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    n = 300
    result = fivecat.evaluate(lambda x: model(x)[1], val, None, arts, compat="lnsp", max_samples=n)
    want = reference_ranks(model, val, arts, n)
    got = seen[0]
    assert len(want) == n and len(got) == n
    assert int((got != want).sum()) == 0
    assert result.metrics["VAL"]["r_at_1"] == np.mean(want == 1)
    assert result.metrics["VAL"]["mrr"] == pytest.approx(np.mean(1.0 / want), rel=0, abs=1e-15)
    # the data is such that the last bits matter: the batched predictions rank rows differently
    with torch.no_grad():
        batched = torch.nn.functional.normalize(model(torch.from_numpy(_l2(val.contexts)))[1], dim=-1).numpy()
    bank = fivecat.Bank(arts)
    rows = bank.rows(val.article_ids, val.target_indices)
    ok = np.flatnonzero(retrievable(bank, val.article_ids, rows))[:n]
    old = real(batched[ok], val.article_ids[ok], rows[ok], bank, lnsp=True)
    assert (old != want).sum() > 0
