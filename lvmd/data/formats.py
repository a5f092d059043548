"""Articles and sequence NPZ files (SPEC §1): load + validate, build windows, split, synth.

Files lvmd writes never need pickle. The original's sequence files keep article ids and
target indices in a pickled `metadata` object array; reading it runs code from the file, so
it happens only with allow_pickle=True (the user's explicit opt-in).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvmd.errors import UserError
from store.paths import not_regular, replaceable

UNIT_NORM_TOL = 1e-2
CHECK_ROWS = 1 << 14     # rows per chunk when a memory-mapped array is checked (bounded memory)
SAMPLE_BLOCKS, SAMPLE_BLOCK_ROWS = 16, 32   # a map's up-front sample: 16 runs of 32 rows, evenly spaced

ARTICLE_KEYS = {
    "vectors": ("vectors", "embeddings", "X"),
    "article_ids": ("article_indices", "article_ids"),
    "chunk_ids": ("chunk_indices", "seq_idx"),
    "texts": ("texts", "concept_texts"),
    "titles": ("article_titles",),
}
SEQUENCE_KEYS = {
    "contexts": ("context_sequences", "contexts", "context", "X"),
    "targets": ("target_vectors", "targets", "target", "y"),
    "article_ids": ("article_ids",),
    "target_indices": ("target_indices",),
}


class DataError(UserError, ValueError):
    """Bad data file; the message names the file, the key and the problem."""


class PickleRefused(DataError):
    """A file whose needed content is pickled, read without the user's --allow-pickle."""


@dataclass
class Articles:
    vectors: np.ndarray       # (N, D) float32, unit rows, ordered by (article, chunk)
    article_ids: np.ndarray   # (N,) int64
    chunk_ids: np.ndarray     # (N,) int64
    texts: np.ndarray | None = None   # (N,) str
    titles: np.ndarray | None = None  # (N,) str: the article title of each row
    path: str = ""

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def rows_of(self, article_ids: np.ndarray, chunk_ids: np.ndarray) -> np.ndarray:
        """Row index of each (article, chunk) pair; -1 where the bank has no such chunk."""
        keys = _pair_keys(self.article_ids, self.chunk_ids)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        want = _pair_keys(np.asarray(article_ids, np.int64), np.asarray(chunk_ids, np.int64))
        pos = np.searchsorted(sorted_keys, want).clip(0, len(sorted_keys) - 1)
        found = sorted_keys[pos] == want
        return np.where(found, order[pos], -1)


@dataclass
class Sequences:
    contexts: np.ndarray      # (M, T, D) float32
    targets: np.ndarray       # (M, D) float32
    article_ids: np.ndarray | None = None     # (M,) int64
    target_indices: np.ndarray | None = None  # (M,) int64: the target's chunk index in its article
    path: str = ""
    unchecked: object = None  # lvmd.data.mapped.RowCheck: rows of a mapped split checked when first drawn

    @property
    def dim(self) -> int:
        return int(self.targets.shape[1])

    @property
    def context_len(self) -> int:
        return int(self.contexts.shape[1])

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, rows: np.ndarray) -> "Sequences":
        pick = (lambda a: None if a is None else a[rows])
        return Sequences(self.contexts[rows], self.targets[rows], pick(self.article_ids),
                         pick(self.target_indices), self.path)


def _pair_keys(article_ids: np.ndarray, chunk_ids: np.ndarray) -> np.ndarray:
    # one int64 per (article, chunk); chunk indices fit in 32 bits in any real corpus
    return article_ids.astype(np.int64) * (1 << 32) + chunk_ids.astype(np.int64)


# -- loading ---------------------------------------------------------------------------
def _open_npz(path: str | Path, allow_pickle: bool = False):
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if (why := not_regular(path)) is not None:   # a FIFO would block np.load
        raise DataError(why)
    try:
        return np.load(path, allow_pickle=allow_pickle)
    except Exception as exc:  # zip errors, bad headers: one line, not a traceback
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from None


def _pick(npz, path, field: str, aliases: tuple[str, ...], required: bool, mapped: dict | None = None):
    for key in aliases:
        if key in npz.files:
            if mapped and mapped.get(key) is not None:
                return key, mapped[key]
            try:
                return key, npz[key]
            except ValueError:
                raise DataError(f"{path}: key {key!r} is an object array that needs pickle; "
                                "lvmd does not unpickle data files") from None
    if required:
        raise DataError(f"{path}: missing key {aliases[0]!r} (also accepted: {', '.join(aliases[1:]) or 'none'});"
                        f" keys present: {', '.join(npz.files)}")
    return None, None


def sample_rows(m: int) -> np.ndarray:
    """The rows of an m-row map checked up front: SAMPLE_BLOCKS runs of SAMPLE_BLOCK_ROWS
    consecutive rows from the first to the last (a few seeks, even on a cold disk)."""
    starts = np.linspace(0, max(m - SAMPLE_BLOCK_ROWS, 0), SAMPLE_BLOCKS).astype(np.int64)
    return np.unique((starts[:, None] + np.arange(SAMPLE_BLOCK_ROWS)).ravel().clip(0, m - 1))


def check_all_rows(path, key: str, arr: np.ndarray) -> None:
    """check_rows over a whole (mapped) array, CHECK_ROWS at a time: bounded memory."""
    for lo in range(0, len(arr), CHECK_ROWS):
        check_rows(path, key, arr[lo:lo + CHECK_ROWS], first=lo)


def _check_vectors(path, key: str, arr: np.ndarray, ndim: int, what: str, full: bool = True) -> np.ndarray:
    if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: key {key!r}: expected a {ndim}-D float array {what}, "
                        f"got shape {arr.shape} dtype {arr.dtype}")
    if arr.shape[0] == 0:
        raise DataError(f"{path}: key {key!r}: is empty")
    if isinstance(arr, np.memmap) and arr.dtype == np.float32:   # a map: checked chunk by chunk, kept a map
        if full:
            check_all_rows(path, key, arr)
        else:                                                     # the caller checks the rest later
            rows = sample_rows(len(arr))
            check_rows(path, key, arr[rows], index=rows)
        return arr
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=tuple(range(1, arr.ndim))).sum())
        raise DataError(f"{path}: key {key!r}: {bad} rows hold NaN or inf")
    norms = np.linalg.norm(arr, axis=-1)
    off = np.abs(norms - 1.0) > UNIT_NORM_TOL
    if off.any():
        raise DataError(f"{path}: key {key!r}: {int(off.sum())} vectors are not unit length "
                        f"(norms {norms.min():.3f}..{norms.max():.3f}; tolerance {UNIT_NORM_TOL})")
    return arr


def check_rows(path, key: str, rows: np.ndarray, *, first: int = 0, index: np.ndarray | None = None) -> None:
    """Every vector of `rows` (n, [T,] D) finite and of unit length; the error names the file's
    row: first + position, or index[position]. One pass: a NaN or inf makes the squared norm
    NaN or inf, which fails the length test too, so only a failing row is looked at twice."""
    sq = np.einsum("...d,...d->...", rows, rows).reshape(len(rows), -1)     # no temporary of rows' size
    low, high = (1.0 - UNIT_NORM_TOL) ** 2, (1.0 + UNIT_NORM_TOL) ** 2
    ok = ((sq >= low) & (sq <= high)).all(axis=1)
    if ok.all():
        return
    at = int(np.argmin(ok))
    row = int(index[at]) if index is not None else first + at
    if not np.isfinite(rows[at]).all():
        raise DataError(f"{path}: key {key!r}: row {row} holds NaN or inf")
    norms = np.sqrt(sq[at])
    worst = norms[np.argmax(np.abs(norms - 1.0))]
    raise DataError(f"{path}: key {key!r}: row {row} holds a vector of norm {worst:.3f}, not unit length "
                    f"(tolerance {UNIT_NORM_TOL})")


def _check_ids(path, key: str, arr: np.ndarray, n: int) -> np.ndarray:
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: key {key!r}: expected ({n},) integers, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64)


def load_articles(path: str | Path, *, mapped: dict | None = None, full_check: bool = True) -> Articles:
    """mapped: {key: memory map} of members to use in place of reading them (lvmd.data.mapped);
    full_check False: a map's vectors are checked on a sample only (the caller checks the rest)."""
    npz = _open_npz(path)
    with npz:
        vkey, vectors = _pick(npz, path, "vectors", ARTICLE_KEYS["vectors"], True, mapped)
        vectors = _check_vectors(path, vkey, vectors, 2, "(N, D)", full_check)
        n = len(vectors)
        akey, art = _pick(npz, path, "article_ids", ARTICLE_KEYS["article_ids"], True)
        ckey, chunk = _pick(npz, path, "chunk_ids", ARTICLE_KEYS["chunk_ids"], True)
        art, chunk = _check_ids(path, akey, art, n), _check_ids(path, ckey, chunk, n)
        texts = titles = None
        tkey, texts = _pick(npz, path, "texts", ARTICLE_KEYS["texts"], False, mapped)
        if texts is not None and texts.shape != (n,):
            raise DataError(f"{path}: key {tkey!r}: expected ({n},) strings, got shape {texts.shape}")
        hkey, titles = _pick(npz, path, "titles", ARTICLE_KEYS["titles"], False, mapped)
        if titles is not None and titles.shape != (n,):
            titles = None  # some files hold one title per article rather than per row; unused then
    keys = _pair_keys(art, chunk)
    if (keys[1:] > keys[:-1]).all():        # ordered by (article, chunk) and unique: lvmd's own files
        return Articles(vectors, art, chunk, texts, titles, str(path))
    if len(np.unique(keys)) != n:
        raise DataError(f"{path}: keys {akey!r}/{ckey!r}: some (article, chunk) pairs occur twice")
    order = np.lexsort((chunk, art))
    if not (order == np.arange(n)).all():  # keep rows ordered by (article, chunk)
        vectors, art, chunk = vectors[order], art[order], chunk[order]
        texts = None if texts is None else texts[order]
        titles = None if titles is None else titles[order]
    return Articles(vectors, art, chunk, texts, titles, str(path))


def load_sequences(path: str | Path, *, allow_pickle: bool = False, mapped: dict | None = None,
                   full_check: bool = True) -> Sequences:
    """mapped: {key: memory map} of members to use in place of reading them (lvmd.data.mapped);
    full_check False: a map's vectors are checked on a sample only (the caller checks the rest)."""
    npz = _open_npz(path, allow_pickle=allow_pickle)
    with npz:
        ckey, ctx = _pick(npz, path, "contexts", SEQUENCE_KEYS["contexts"], True, mapped)
        ctx = _check_vectors(path, ckey, ctx, 3, "(M, T, D)", full_check)
        tkey, tgt = _pick(npz, path, "targets", SEQUENCE_KEYS["targets"], True, mapped)
        tgt = _check_vectors(path, tkey, tgt, 2, "(M, D)", full_check)
        if tgt.shape[0] != ctx.shape[0]:
            raise DataError(f"{path}: {ckey!r} has {ctx.shape[0]} rows but {tkey!r} has {tgt.shape[0]}")
        if tgt.shape[1] != ctx.shape[2]:
            raise DataError(f"{path}: {ckey!r} has D={ctx.shape[2]} but {tkey!r} has D={tgt.shape[1]}")
        m = len(tgt)
        art = idx = None
        if "article_ids" in npz.files:
            art = _check_ids(path, "article_ids", npz["article_ids"], m)
        if "target_indices" in npz.files:
            idx = _check_ids(path, "target_indices", npz["target_indices"], m)
        if (art is None or idx is None) and "metadata" in npz.files:
            art, idx = _ids_from_metadata(npz, path, allow_pickle, m, art, idx)
    return Sequences(ctx, tgt, art, idx, str(path))


def _ids_from_metadata(npz, path, allow_pickle: bool, m: int, art, idx):
    if not allow_pickle:
        raise PickleRefused(f"{path}: article ids and target indices are only in the pickled 'metadata' key; "
                        "reading it runs code stored in the file. If you trust the file, pass --allow-pickle "
                        "(config: data.allow_pickle = true)")
    meta = npz["metadata"]
    if meta.shape != (m,):
        raise DataError(f"{path}: key 'metadata': expected ({m},) records, got shape {meta.shape}")

    def field(names):
        out = np.empty(m, np.int64)
        for i, rec in enumerate(meta):
            for name in names:
                if isinstance(rec, dict) and name in rec:
                    out[i] = int(rec[name])
                    break
            else:
                raise DataError(f"{path}: key 'metadata'[{i}]: none of {', '.join(names)} present")
        return out

    if art is None:
        art = field(("article_index", "article_id"))
    if idx is None:
        idx = field(("target_chunk_index", "target_idx"))
    return art, idx


# -- writing (atomic: temp file + rename) ------------------------------------------------
def _atomic_savez(path: str | Path, **arrays) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        if (why := replaceable(path)) is not None:      # never rename over a device node or FIFO
            raise DataError(why)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_articles(path, art: Articles) -> None:
    arrays = dict(vectors=art.vectors.astype(np.float32), article_indices=art.article_ids,
                  chunk_indices=art.chunk_ids)
    if art.texts is not None:
        arrays["texts"] = np.asarray(art.texts, dtype=str)
    if art.titles is not None:
        arrays["article_titles"] = np.asarray(art.titles, dtype=str)
    _atomic_savez(path, **arrays)


def save_sequences(path, seqs: Sequences, meta: dict | None = None) -> None:
    arrays = dict(context_sequences=seqs.contexts.astype(np.float32),
                  target_vectors=seqs.targets.astype(np.float32))
    if seqs.article_ids is not None:
        arrays["article_ids"] = seqs.article_ids
    if seqs.target_indices is not None:
        arrays["target_indices"] = seqs.target_indices
    if meta:
        arrays["meta_json"] = np.array(json.dumps(meta, sort_keys=True))
    _atomic_savez(path, **arrays)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- building sequences ------------------------------------------------------------------
def window_starts(art: Articles, context_len: int, gap: int) -> np.ndarray:
    """Rows where a window of `context_len` consecutive chunks of ONE article starts and its
    target chunk (last + 1 + gap) exists in the same article."""
    span = context_len + gap + 1  # rows from the first context chunk to the target
    n = len(art)
    if n < span:
        return np.zeros(0, np.int64)
    first = np.arange(n - span + 1)
    ok = np.ones(len(first), bool)
    for k in range(1, span):
        ok &= art.article_ids[first + k] == art.article_ids[first]
        ok &= art.chunk_ids[first + k] == art.chunk_ids[first] + k
    return first[ok]


def build_windows(art: Articles, *, context_len: int = 5, gap: int = 0,
                  article_subset: np.ndarray | None = None) -> Sequences:
    starts = window_starts(art, context_len, gap)
    if article_subset is not None:
        starts = starts[np.isin(art.article_ids[starts], article_subset)]
    ctx_rows = starts[:, None] + np.arange(context_len)[None, :]   # (M, T)
    tgt_rows = starts + context_len + gap                            # (M,)
    return Sequences(art.vectors[ctx_rows], art.vectors[tgt_rows], art.article_ids[tgt_rows],
                     art.chunk_ids[tgt_rows], art.path)


def split_articles(article_ids: np.ndarray, *, val_frac: float, ood_frac: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint train / val / ood sets of article ids (seeded shuffle of the unique ids)."""
    ids = np.unique(article_ids)
    rng = np.random.default_rng(seed)
    ids = ids[rng.permutation(len(ids))]
    n_val = int(round(len(ids) * val_frac))
    n_ood = int(round(len(ids) * ood_frac))
    val, ood, train = ids[:n_val], ids[n_val:n_val + n_ood], ids[n_val + n_ood:]
    return np.sort(train), np.sort(val), np.sort(ood)


def prev_vectors(seqs: Sequences, mode: str, articles: Articles | None) -> np.ndarray:
    """y_prev per SPEC §3: ctx[:, -2] (the original's) or the chunk just before the target."""
    if mode == "ctx-2":
        return seqs.contexts[:, -2]
    rows = prev_rows(seqs, mode, articles)
    return articles.vectors[rows]


def prev_rows(seqs: Sequences, mode: str, articles: Articles | None) -> np.ndarray:
    """prev = "true": the bank row of the chunk just before each target (checked to exist)."""
    if seqs.article_ids is None or seqs.target_indices is None:
        raise DataError(f"{seqs.path}: prev = \"true\" needs article_ids and target_indices in the sequence file")
    if articles is None:
        raise DataError("prev = \"true\" needs data.articles (the chunk before each target is looked up there)")
    rows = articles.rows_of(seqs.article_ids, seqs.target_indices - 1)
    if (rows < 0).any():
        raise DataError(f"{articles.path}: {int((rows < 0).sum())} targets of {seqs.path} have no previous "
                        "chunk in the articles file")
    return rows


# -- synthetic data ----------------------------------------------------------------------
def synth_articles(*, n_articles: int = 120, min_chunks: int = 12, max_chunks: int = 40, dim: int = 64,
                   step: float = 0.5, momentum: float = 0.8, noise: float = 0.6, seed: int = 0) -> Articles:
    """Per article a slow random walk on the unit sphere (with momentum, so the next chunk is
    predictable from the context's trend) plus isotropic noise on each emitted chunk."""
    rng = np.random.default_rng(seed)
    vecs, arts, chunks = [], [], []

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    for a in range(n_articles):
        n = int(rng.integers(min_chunks, max_chunks + 1))
        pos = unit(rng.standard_normal(dim))
        vel = unit(rng.standard_normal(dim))
        for c in range(n):
            vecs.append(unit(pos + noise * rng.standard_normal(dim) / np.sqrt(dim)))  # noise ≈ `noise` in norm
            arts.append(a)
            chunks.append(c)
            vel = unit(momentum * vel + (1 - momentum) * unit(rng.standard_normal(dim)))
            pos = unit(pos + step * vel)
    return Articles(np.asarray(vecs, np.float32), np.asarray(arts, np.int64), np.asarray(chunks, np.int64),
                    None, None, "")


def write_splits(arts: Articles, out: Path, *, context: int, gap: int, val: float, ood: float,
                 seed: int, source: str) -> dict[str, int]:
    """train/val[/ood] sequence files split by article id; returns rows per split."""
    if not (0 < val < 1 and 0 <= ood < 1 and val + ood < 1):
        raise UserError(f"data windows: --val {val} and --ood {ood} must be shares in (0, 1) summing below 1")
    train_ids, val_ids, ood_ids = split_articles(arts.article_ids, val_frac=val, ood_frac=ood, seed=seed)
    counts = {}
    meta = {"context": context, "gap": gap, "seed": seed, "val": val, "ood": ood, "articles": source,
            "articles_sha256": file_sha256(source) if Path(source).exists() else ""}
    for split, ids in (("train", train_ids), ("val", val_ids), ("ood", ood_ids)):
        if split == "ood" and ood == 0:
            continue
        seqs = build_windows(arts, context_len=context, gap=gap, article_subset=ids)
        if len(seqs) == 0:
            raise UserError(f"data windows: split {split!r} has no windows of {context}+1+{gap} chunks "
                            f"({len(ids)} articles); use more articles or a smaller --context")
        save_sequences(out / f"{split}.npz", seqs, {**meta, "split": split,
                                                         "article_ids": [int(i) for i in ids]})
        counts[split] = len(seqs)
    return counts
