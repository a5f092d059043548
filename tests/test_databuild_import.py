"""lvmd data import-lnsp: the original's files, including its windows that straddle two articles."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import lvmd
from lvmd.data import formats as data
from lvmd.data import build as databuild
from lvmd.errors import UserError

T, D = 5, 16
LENGTHS = [8, 7, 9]  # chunks per article


def original_files(folder: Path, *, gap: int, article_of: str) -> tuple[Path, Path, int]:
    """An articles file and a sequence file in the original's layout (LEGACY.md): windows taken
    over the flat article-sorted array with stride 1, ids in a pickled `metadata` object array.
    Returns the paths and how many windows lie inside one article."""
    rng = np.random.default_rng(3)
    n = sum(LENGTHS)
    vecs = rng.standard_normal((n, D)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    art = np.repeat(np.arange(len(LENGTHS)), LENGTHS).astype(np.int32)
    chunk = np.concatenate([np.arange(k) for k in LENGTHS]).astype(np.int32)
    arts_path = folder / "wikipedia_articles.npz"
    np.savez(arts_path, vectors=vecs, article_indices=art, chunk_indices=chunk,
             cpe_ids=np.array([f"cpe-{i}" for i in range(n)]), concept_texts=np.array([f"text {i}" for i in range(n)]),
             article_titles=np.array([f"title {a}" for a in art]))
    ctx, tgt, meta, inside = [], [], [], 0
    for s in range(n - (T + gap)):
        rows = list(range(s, s + T)) + [s + T + gap]
        crosses = len(set(art[rows].tolist())) > 1
        inside += not crosses
        owner = rows[-1] if article_of == "target" else rows[0]
        ctx.append(vecs[rows[:T]])
        tgt.append(vecs[rows[-1]])
        meta.append({"article_index": int(art[owner]), "target_chunk_index": int(chunk[rows[-1]]),
                     "crosses_article": crosses, "p6_offset": gap})
    seq_path = folder / f"training_sequences_ctx5{'_p6' if gap else ''}.npz"
    np.savez(seq_path, context_sequences=np.array(ctx), target_vectors=np.array(tgt),
             metadata=np.array(meta, dtype=object), context_length=T, vector_dim=D)
    return arts_path, seq_path, inside


def test_without_allow_pickle_the_metadata_is_refused_in_one_line(tmp_path):
    arts, seqs, _ = original_files(tmp_path, gap=0, article_of="target")
    proc = lvmd("data", "import-lnsp", "--articles", str(arts), "--sequences", str(seqs), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "--allow-pickle" in proc.stderr


@pytest.mark.parametrize("gap,article_of", [(0, "target"), (1, "first")])
def test_straddling_windows_are_dropped_and_counted(tmp_path, gap, article_of):
    arts, seqs, inside = original_files(tmp_path, gap=gap, article_of=article_of)
    total = sum(LENGTHS) - (T + gap)
    proc = lvmd("data", "import-lnsp", "--articles", str(arts), "--sequences", str(seqs), "--allow-pickle",
                "--out", str(tmp_path / "o"), check=True)
    rep = json.loads(proc.stdout)["files"][seqs.name]
    assert rep == {"windows": total, "kept": inside, "dropped_straddling": total - inside, "gap": gap}
    assert inside == sum(k - (T + gap) for k in LENGTHS) and total - inside > 0

    # lvmd's own files: no pickle needed, every kept window inside one article
    out_seqs = data.load_sequences(tmp_path / "o" / seqs.name)
    out_arts = data.load_articles(tmp_path / "o" / "articles.npz")
    assert len(out_seqs) == inside and out_arts.texts[0] == "text 0"
    assert databuild.window_matches(out_seqs, out_arts, gap=gap).all()
    assert not databuild.window_matches(data.load_sequences(seqs, allow_pickle=True), out_arts, gap=gap).all()


def test_a_forced_wrong_gap_matches_no_window_and_says_so(tmp_path):
    arts, seqs, _ = original_files(tmp_path, gap=1, article_of="target")
    with pytest.raises(UserError, match="none of its 18 windows"):
        databuild.import_lnsp(arts, [seqs], tmp_path / "o", allow_pickle=True, gap=0)
