"""Memory-mapped sequence files (numpy only, so data is checked before torch is imported).

lvmd writes sequence NPZs with np.savez (uncompressed), so each array is a plain .npy stored
inside the zip and can be memory-mapped in place: nothing is read until rows are needed. The
train split is opened this way whenever its file allows it; the trainer then copies it to the
device, or streams it per batch when it is larger than train.device_data_budget
(lvmd/data/stream.py). A compressed or pickled file is read into memory as before.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from lvmd.data import formats as datamod
from lvmd.data.formats import DataError, Sequences

CHECK_ROWS = 1 << 15     # rows per chunk when a mapped file is checked (bounded memory)


# -- memory-mapping an uncompressed NPZ ----------------------------------------------------------
def map_member(path: str | Path, key: str) -> np.ndarray | None:
    """The array `key` of an NPZ as a (copy-on-write) memory map; None if it is absent, compressed
    or not a plain numeric array (the caller then reads the file normally)."""
    name = f"{key}.npy"
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(name)
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)                          # the zip local file header
        if local[:4] != b"PK\x03\x04":
            return None
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if dtype.hasobject or fortran:
            return None
        # copy-on-write: torch can wrap it (no read-only warning); the file is never written
        return np.memmap(path, dtype=dtype, mode="c", offset=fh.tell(), shape=shape)


def load_train_split(path: str | Path, *, allow_pickle: bool = False, max_rows: int = 0) -> Sequences:
    """The train split with contexts and targets memory-mapped (float32; checked chunk by chunk
    with formats.load_sequences' own checks, so memory stays bounded), the first `max_rows`
    as views. A file that cannot be mapped is read by formats.load_sequences."""
    arrays = _map_arrays(path)
    rows = lambda a: a[:max_rows] if max_rows else a            # noqa: E731 (views of the map)
    if arrays is None:
        seqs = datamod.load_sequences(path, allow_pickle=allow_pickle)
        return seqs.subset(np.arange(min(max_rows, len(seqs)))) if max_rows else seqs
    ckey, contexts, tkey, targets = arrays
    for key, arr, ndim, what in ((ckey, contexts, 3, "(M, T, D)"), (tkey, targets, 2, "(M, D)")):
        for lo in range(0, len(arr), CHECK_ROWS):
            datamod._check_vectors(path, key, arr[lo:lo + CHECK_ROWS], ndim, what)
    m = len(targets)
    with np.load(path, allow_pickle=allow_pickle) as npz:   # ids are small: read them
        art = datamod._check_ids(path, "article_ids", npz["article_ids"], m) if "article_ids" in npz.files else None
        idx = datamod._check_ids(path, "target_indices", npz["target_indices"], m) \
            if "target_indices" in npz.files else None
        if (art is None or idx is None) and "metadata" in npz.files:
            art, idx = datamod._ids_from_metadata(npz, path, allow_pickle, m, art, idx)
    cut = (lambda a: None if a is None else rows(a))              # noqa: E731
    return Sequences(rows(contexts), rows(targets), cut(art), cut(idx), str(path))


def _map_arrays(path) -> tuple[str, np.ndarray, str, np.ndarray] | None:
    """(contexts key, map, targets key, map) when both map as float32 (M,T,D) and (M,D)."""
    try:
        ctx = _first_mapped(path, datamod.SEQUENCE_KEYS["contexts"])
        tgt = _first_mapped(path, datamod.SEQUENCE_KEYS["targets"])
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    if ctx is None or tgt is None or ctx[1].dtype != np.float32 or tgt[1].dtype != np.float32 \
            or ctx[1].ndim != 3 or tgt[1].ndim != 2 or len(ctx[1]) == 0:
        return None
    if tgt[1].shape != (ctx[1].shape[0], ctx[1].shape[2]):
        raise DataError(f"{path}: {ctx[0]!r} has shape {ctx[1].shape} but {tgt[0]!r} has {tgt[1].shape}")
    return ctx[0], ctx[1], tgt[0], tgt[1]


def _first_mapped(path, names) -> tuple[str, np.ndarray] | None:
    for name in names:
        arr = map_member(path, name)
        if arr is not None:
            return name, arr
    return None
