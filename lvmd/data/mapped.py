"""Memory-mapped data files (numpy only, so data is checked before torch is imported).

lvmd writes its NPZs with np.savez (uncompressed), so each array is a plain .npy stored inside
the zip and can be memory-mapped in place: nothing is read until rows are needed, and what is
read stays in the page cache rather than in the process's own memory. Every file a run uses is
opened this way whenever the file allows it (a compressed or pickled file is read into memory
as before):
- the train split: only its first data.max_train rows are ever touched; its vectors are checked
  on a sample up front (formats.sample_rows: a few runs of rows) and every other row the first
  time a batch draws it (RowCheck), so a start reads the sample, not the split;
- val, OOD and the articles banks: checked whole, chunk by chunk (bounded memory); or, when
  the caller passes `deferred`, on a sample now and whole later (FullCheck, on a helper thread
  while torch loads: lvmd.data.train_data).
"""
from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np

from lvmd.data import formats as datamod
from lvmd.data.formats import Articles, DataError, Sequences
from store.paths import not_regular

# -- memory-mapping an uncompressed NPZ ----------------------------------------------------------
def map_member(path: str | Path, key: str) -> np.ndarray | None:
    """The array `key` of an NPZ as a (copy-on-write) memory map; None if it is absent, compressed
    or not a plain numeric array (the caller then reads the file normally)."""
    if not_regular(path) is not None:   # a FIFO would block the zip reader: formats' loader names it
        return None
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


def _maps(path, keys) -> dict[str, np.ndarray]:
    """{key: map} of the members that map (an unreadable zip maps nothing: the loader reports it)."""
    out = {}
    for key in keys:
        try:
            arr = map_member(path, key)
        except (OSError, ValueError, zipfile.BadZipFile):
            return {}
        if arr is not None:
            out[key] = arr
    return out


def _float32(maps: dict) -> dict:
    """Only float32 vectors stay maps (anything else is converted in memory by the loader)."""
    return {k: a for k, a in maps.items() if a.dtype == np.float32 or a.dtype.kind in "US"}


def load_sequences(path: str | Path, *, allow_pickle: bool = False, deferred: list | None = None) -> Sequences:
    """A val/OOD split: contexts and targets mapped when the file allows, checked whole (deferred:
    on a sample, the maps appended to `deferred` for a FullCheck)."""
    keys = datamod.SEQUENCE_KEYS["contexts"] + datamod.SEQUENCE_KEYS["targets"]
    maps = _float32(_maps(path, keys)) if Path(path).exists() else {}
    seqs = datamod.load_sequences(path, allow_pickle=allow_pickle, mapped=maps, full_check=deferred is None)
    _defer(deferred, path, maps, {"contexts": seqs.contexts, "targets": seqs.targets})
    return seqs


def load_articles(path: str | Path, *, deferred: list | None = None) -> Articles:
    """An articles bank: vectors (and texts) mapped when the file allows, checked whole (deferred:
    on a sample, the map appended to `deferred` for a FullCheck)."""
    keys = datamod.ARTICLE_KEYS["vectors"] + datamod.ARTICLE_KEYS["texts"] + datamod.ARTICLE_KEYS["titles"]
    maps = _float32(_maps(Path(path), keys)) if Path(path).exists() else {}
    arts = datamod.load_articles(path, mapped=maps, full_check=deferred is None)
    _defer(deferred, path, maps, {"vectors": arts.vectors})
    return arts


def _defer(deferred: list | None, path, maps: dict, arrays: dict) -> None:
    """The mapped vector arrays (those only sample-checked) onto the deferred list."""
    if deferred is None:
        return
    for key, arr in maps.items():
        if any(a is arr for a in arrays.values()):
            deferred.append((str(path), key, arr))


class FullCheck:
    """The whole-file check of maps that were only sample-checked, on a daemon thread (numpy
    releases the GIL in the check's arithmetic, so it runs beside the import of torch). wait()
    joins it and raises the DataError it found (the file, the key and the row)."""

    def __init__(self, arrays: list[tuple[str, str, np.ndarray]]):
        self.arrays, self.error = arrays, None
        self.thread = threading.Thread(target=self._run, name="lvmd-data-check", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for path, key, arr in self.arrays:
                datamod.check_all_rows(path, key, arr)
        except Exception as exc:          # reported by wait(), in the thread that trains
            self.error = exc

    @property
    def failed(self) -> bool:
        return not self.thread.is_alive() and self.error is not None

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


# -- the train split -----------------------------------------------------------------------------
class RowCheck:
    """The rows of a mapped train split that have not been checked yet (finite, unit length).
    The trainer's batch feed (lvmd.data.stream) checks a batch's rows the first time it draws
    them; a bad one raises DataError naming the file, the key and the row."""

    def __init__(self, path: str, ckey: str, tkey: str, m: int):
        self.path, self.ckey, self.tkey = path, ckey, tkey
        self.pending = np.ones(m, bool)
        self.left = m

    @property
    def done(self) -> bool:
        return self.left == 0

    def rows(self, idx: np.ndarray, ctx: np.ndarray, tgt: np.ndarray) -> None:
        """Check rows `idx` of the split, given as gathered (ctx, tgt), unless already checked."""
        todo = self.pending[idx]
        if not todo.any():
            return
        if not todo.all():
            idx, ctx, tgt = idx[todo], ctx[todo], tgt[todo]
        datamod.check_rows(self.path, self.ckey, ctx, index=idx)
        datamod.check_rows(self.path, self.tkey, tgt, index=idx)
        fresh = np.unique(idx)
        self.left -= len(fresh)
        self.pending[fresh] = False


def load_train_split(path: str | Path, *, allow_pickle: bool = False, max_rows: int = 0) -> Sequences:
    """The train split with contexts and targets memory-mapped: only its first `max_rows` rows (all
    when 0) are ever read, a sample of them now (formats.sample_rows) and the rest when
    training draws them (Sequences.unchecked). A file that cannot be mapped is read and checked
    whole by formats.load_sequences."""
    arrays = _map_arrays(path)
    if arrays is None:
        seqs = datamod.load_sequences(path, allow_pickle=allow_pickle)
        return seqs.subset(np.arange(min(max_rows, len(seqs)))) if max_rows else seqs
    ckey, contexts, tkey, targets = arrays
    total = len(targets)
    m = min(max_rows, total) if max_rows else total
    contexts, targets = contexts[:m], targets[:m]                 # views: rows past m are never touched
    check = RowCheck(str(path), ckey, tkey, m)
    sample = datamod.sample_rows(m)
    check.rows(sample, contexts[sample], targets[sample])
    ids = {k: a for k, a in _maps(path, ("article_ids", "target_indices")).items() if a.dtype.kind in "iu"}
    with np.load(path, allow_pickle=allow_pickle) as npz:        # ids: mapped and cut when they can be
        def read(key):
            if key not in npz.files:
                return None
            arr = ids[key] if key in ids else npz[key]
            if arr.shape != (total,):
                datamod._check_ids(path, key, arr, total)            # raises: names the shape
            return datamod._check_ids(path, key, np.asarray(arr[:m]), m)
        art, idx = read("article_ids"), read("target_indices")
        if (art is None or idx is None) and "metadata" in npz.files:
            art, idx = datamod._ids_from_metadata(npz, path, allow_pickle, total, art, idx)
            art, idx = art[:m], idx[:m]
    return Sequences(contexts, targets, art, idx, str(path), unchecked=check)


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
