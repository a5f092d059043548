import numpy as np
import pytest

from lvmd.data import formats as data
from lvmd.data.formats import DataError


@pytest.fixture
def arts():
    return data.synth_articles(n_articles=8, min_chunks=7, max_chunks=12, dim=8, seed=3)


def test_windows_never_cross_articles_and_targets_follow_context(arts):
    for gap in (0, 1):
        s = data.build_windows(arts, context_len=5, gap=gap)
        assert len(s) == sum(max(0, n - 5 - gap) for n in np.bincount(arts.article_ids))
        rows = arts.rows_of(s.article_ids, s.target_indices)
        assert (rows >= 0).all() and np.array_equal(arts.vectors[rows], s.targets)
        for k in range(5):  # context slot k is chunk t - gap - 5 + k of the SAME article
            r = arts.rows_of(s.article_ids, s.target_indices - gap - 5 + k)
            assert (r >= 0).all() and np.array_equal(arts.vectors[r], s.contexts[:, k])


def test_split_is_disjoint_by_article():
    ids = np.repeat(np.arange(50), 3)
    tr, va, oo = data.split_articles(ids, val_frac=0.2, ood_frac=0.1, seed=0)
    assert len(tr) + len(va) + len(oo) == 50
    assert not set(tr) & set(va) and not set(tr) & set(oo) and not set(va) & set(oo)


def test_round_trip_and_original_aliases(tmp_path, arts):
    data.save_articles(tmp_path / "a.npz", arts)
    back = data.load_articles(tmp_path / "a.npz")
    assert np.array_equal(back.vectors, arts.vectors)
    np.savez(tmp_path / "orig.npz", embeddings=arts.vectors, article_ids=arts.article_ids.astype(np.int32),
             seq_idx=arts.chunk_ids.astype(np.int32), concept_texts=np.array([f"t{i}" for i in range(len(arts))]))
    orig = data.load_articles(tmp_path / "orig.npz")
    assert np.array_equal(orig.vectors, arts.vectors) and orig.texts[3] == "t3"
    s = data.build_windows(arts)
    np.savez(tmp_path / "s.npz", contexts=s.contexts, targets=s.targets)
    assert data.load_sequences(tmp_path / "s.npz").article_ids is None


def _bad(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return p


@pytest.mark.parametrize("mutate, words", [
    (lambda a: {"vectors": a.vectors, "article_indices": a.article_ids}, ["chunk_indices", "missing"]),
    (lambda a: {"vectors": a.vectors * 2, "article_indices": a.article_ids, "chunk_indices": a.chunk_ids},
     ["vectors", "unit length"]),
    (lambda a: {"vectors": np.where(np.arange(len(a))[:, None] == 2, np.nan, a.vectors),
                "article_indices": a.article_ids, "chunk_indices": a.chunk_ids}, ["NaN"]),
    (lambda a: {"vectors": a.vectors[:, :, None], "article_indices": a.article_ids, "chunk_indices": a.chunk_ids},
     ["2-D"]),
    (lambda a: {"vectors": a.vectors, "article_indices": a.article_ids[:-1], "chunk_indices": a.chunk_ids},
     ["article_indices", "shape"]),
])
def test_bad_articles_name_file_key_problem(tmp_path, arts, mutate, words):
    p = _bad(tmp_path, **mutate(arts))
    with pytest.raises(DataError) as err:
        data.load_articles(p)
    assert str(p) in str(err.value) and all(w in str(err.value) for w in words)


def test_bad_sequences(tmp_path, arts):
    s = data.build_windows(arts)
    with pytest.raises(DataError, match="D=8 but"):
        data.load_sequences(_bad(tmp_path, context_sequences=s.contexts, target_vectors=s.targets[:, :4] / np.linalg.norm(s.targets[:, :4], axis=1, keepdims=True)))
    with pytest.raises(DataError, match="rows but"):
        data.load_sequences(_bad(tmp_path, context_sequences=s.contexts, target_vectors=s.targets[:-1]))
    with pytest.raises(DataError, match="no such file"):
        data.load_sequences(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable NPZ"):
        data.load_sequences(tmp_path / "junk.npz")


def test_pickled_metadata_needs_explicit_opt_in(tmp_path, arts):
    s = data.build_windows(arts)
    meta = np.array([{"article_index": int(a), "target_chunk_index": int(t)}
                     for a, t in zip(s.article_ids, s.target_indices)], dtype=object)
    p = tmp_path / "orig_seq.npz"
    np.savez(p, context_sequences=s.contexts, target_vectors=s.targets, metadata=meta)
    with pytest.raises(DataError, match="allow-pickle"):
        data.load_sequences(p)
    got = data.load_sequences(p, allow_pickle=True)
    assert np.array_equal(got.article_ids, s.article_ids) and np.array_equal(got.target_indices, s.target_indices)


def test_prev_true_is_the_chunk_before_the_target(arts):
    s = data.build_windows(arts, gap=1)
    prev = data.prev_vectors(s, "true", arts)
    assert np.array_equal(prev, arts.vectors[arts.rows_of(s.article_ids, s.target_indices - 1)])
    assert not np.array_equal(prev, s.contexts[:, -2])       # on gap=1 data ctx[-2] is 3 chunks back
    assert np.array_equal(data.prev_vectors(s, "ctx-2", None), s.contexts[:, -2])
    with pytest.raises(DataError, match="data.articles"):
        data.prev_vectors(s, "true", None)
