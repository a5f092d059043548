"""The train split on the device, or streamed to it per batch when it is larger than
train.device_data_budget, with the same epoch order and the same numbers either way.

The trainer asks `batches(split, order, ...)` for an epoch's batches.
- In memory (DeviceSplit): the split's tensors on the device, indexed by the batch's slice of
  the order. On the CPU they wrap the memory map itself (nothing is copied; pages come from the
  page cache as rows are drawn); on a GPU the split is uploaded once, checked chunk by chunk on
  the way.
- Streamed (StreamedSplit): a batch's rows are gathered from the map straight into one of two
  reusable host buffers (torch.index_select(out=...): only the batch's rows are read), which are
  pinned on CUDA and copied on a side stream while the previous batch trains (double buffering:
  a buffer is refilled only once the copy out of it has finished). The gather runs one batch
  ahead on a helper thread.

y_prev with loss.prev = "ctx-2" is the batch's own contexts[:, -2] (a view: no copy of the
split's column); with "true" it is gathered per batch from the articles bank by row index.

Rows of a memory-mapped split are checked (finite, unit length) the first time they are drawn
(lvmd.data.mapped.RowCheck): a bad row stops the run naming the row and the file.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from lvmd.data import formats as datamod
from lvmd.data.formats import Articles, Sequences

UPLOAD_ROWS = 1 << 14        # rows per chunk when a split is uploaded to a GPU (and checked)
SLOTS = 2                    # host buffers a streamed split cycles through (double buffering)


# -- how big, and where ----------------------------------------------------------------------------
def split_bytes(seqs: Sequences, prev: str = "true") -> int:
    """What a split costs on the device: contexts, targets and y_prev (a view of the contexts,
    free, for prev = ctx-2)."""
    return int(seqs.contexts.nbytes + (1 if prev == "ctx-2" else 2) * seqs.targets.nbytes)


def device_budget(setting: int, device: torch.device) -> float:
    """train.device_data_budget in bytes; 0 = auto: half the GPU's memory, no limit elsewhere."""
    if setting > 0:
        return float(setting)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2
    return float("inf")


def _host(x: np.ndarray) -> torch.Tensor:
    """A tensor over the array's own memory (a memory map stays a map)."""
    return torch.from_numpy(x) if x.flags.writeable else torch.from_numpy(np.array(x))


# -- in memory -------------------------------------------------------------------------------------
@dataclass
class DeviceSplit:
    contexts: torch.Tensor   # (M, T, D)
    targets: torch.Tensor    # (M, D)
    prev: torch.Tensor       # (M, D): y_prev per loss.prev (for ctx-2 a view of contexts[:, -2])
    check: object = None     # mapped.RowCheck of rows not checked yet (CPU: checked as drawn)

    def __len__(self) -> int:
        return self.targets.shape[0]


def to_device(seqs: Sequences, prev: str, articles: Articles | None, device: torch.device) -> DeviceSplit:
    """The split on `device`. CPU: tensors over the arrays (a map is not copied), rows checked as
    they are drawn. GPU: uploaded chunk by chunk, each chunk checked on the host on its way."""
    check = getattr(seqs, "unchecked", None)
    if device.type == "cpu":
        ctx, tgt = _host(seqs.contexts), _host(seqs.targets)
    else:
        ctx = torch.empty(seqs.contexts.shape, dtype=torch.float32, device=device)
        tgt = torch.empty(seqs.targets.shape, dtype=torch.float32, device=device)
        for lo in range(0, len(seqs), UPLOAD_ROWS):
            rows = np.arange(lo, min(lo + UPLOAD_ROWS, len(seqs)))
            c, t = np.asarray(seqs.contexts[lo:rows[-1] + 1]), np.asarray(seqs.targets[lo:rows[-1] + 1])
            if check is not None:
                check.rows(rows, c, t)
            ctx[lo:lo + len(rows)].copy_(torch.from_numpy(np.ascontiguousarray(c, np.float32)))
            tgt[lo:lo + len(rows)].copy_(torch.from_numpy(np.ascontiguousarray(t, np.float32)))
        check = None
    if prev == "ctx-2":
        y_prev = ctx[:, -2]
    else:
        y_prev = torch.from_numpy(np.ascontiguousarray(datamod.prev_vectors(seqs, prev, articles))).to(device)
    return DeviceSplit(ctx, tgt, y_prev, check)


# -- streamed --------------------------------------------------------------------------------------
@dataclass
class _Slot:
    """One reusable host buffer set (pinned on CUDA) and the event of the last copy out of it."""
    ctx: torch.Tensor
    tgt: torch.Tensor
    prev: torch.Tensor | None
    copied: object = None    # torch.cuda.Event once a copy has been queued


@dataclass
class StreamedSplit:
    contexts: np.ndarray          # (M, T, D) memory map (or array) on the host
    targets: np.ndarray           # (M, D)
    prev_rows: np.ndarray | None  # (M,) bank row of each y_prev (prev = true); None: contexts[:, -2]
    bank: np.ndarray | None       # (N, D) the articles' vectors prev_rows index
    device: torch.device
    check: object = None          # mapped.RowCheck of rows not checked yet
    _slots: list = field(default_factory=list, repr=False)
    _copy_stream: object = field(default=None, repr=False)

    def __post_init__(self):
        self._ctx, self._tgt = _host(self.contexts), _host(self.targets)
        self._bank = None if self.bank is None else _host(self.bank)
        self._rows = None if self.prev_rows is None else torch.from_numpy(self.prev_rows)
        if self.device.type == "cuda":
            self._copy_stream = torch.cuda.Stream(self.device)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def _slot(self, k: int, n: int) -> _Slot:
        while len(self._slots) <= k:
            self._slots.append(None)
        s = self._slots[k]
        if s is None or s.ctx.shape[0] < n:
            pin = self.device.type == "cuda"
            t, d = self._ctx.shape[1:]
            s = self._slots[k] = _Slot(torch.empty((n, t, d), pin_memory=pin), torch.empty((n, d), pin_memory=pin),
                                       None if self._rows is None else torch.empty((n, d), pin_memory=pin))
        elif s.copied is not None:
            s.copied.synchronize()       # the copy out of this buffer is done: it may be refilled
        return s

    def gather(self, idx: np.ndarray, slot: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The rows `idx` on the host, in buffer `slot` (only those rows of the map are read)."""
        n, s, ti = len(idx), self._slot(slot, len(idx)), torch.from_numpy(np.asarray(idx, np.int64))
        ctx, tgt = s.ctx[:n], s.tgt[:n]
        torch.index_select(self._ctx, 0, ti, out=ctx)
        torch.index_select(self._tgt, 0, ti, out=tgt)
        if self.check is not None:
            self.check.rows(ti.numpy(), ctx.numpy(), tgt.numpy())
            if self.check.done:
                self.check = None
        prev = None
        if self._rows is not None:
            prev = s.prev[:n]
            torch.index_select(self._bank, 0, self._rows[ti], out=prev)
        return ctx, tgt, prev

    def fetch(self, idx: np.ndarray, slot: int = 0) -> tuple:
        """The rows `idx` on the device (contexts, targets, y_prev); on CUDA the copy is queued
        on the side stream and the returned event says when it has landed."""
        ctx, tgt, prev = self.gather(idx, slot)
        if self.device.type != "cuda":
            return (ctx, tgt, ctx[:, -2] if prev is None else prev), None
        s = self._slots[slot]
        with torch.cuda.stream(self._copy_stream):
            out = [x.to(self.device, non_blocking=True) for x in (ctx, tgt) + (() if prev is None else (prev,))]
            s.copied = torch.cuda.Event()
            s.copied.record(self._copy_stream)
        y_prev = out[0][:, -2] if prev is None else out[2]
        return (out[0], out[1], y_prev), s.copied


def streamed(seqs: Sequences, prev: str, articles: Articles | None, device: torch.device) -> StreamedSplit:
    rows = bank = None
    if prev != "ctx-2":
        rows, bank = datamod.prev_rows(seqs, prev, articles), articles.vectors
    return StreamedSplit(seqs.contexts, seqs.targets, rows, bank, device, getattr(seqs, "unchecked", None))


# -- an epoch's batches ----------------------------------------------------------------------------
def batches(split, order: torch.Tensor, batch_size: int, *, start: int, count: int,
            shard: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[tuple]:
    """(contexts, targets, y_prev) of batches start, start+1, … of the epoch `order`.

    In memory: the device tensors indexed by the batch's slice of the order, as the trainer
    always did (bit-for-bit). Streamed: the same rows, fetched from the host one batch ahead."""
    def rows(b: int) -> torch.Tensor:
        idx = order[b * batch_size:(b + 1) * batch_size]
        return shard(idx) if shard is not None else idx

    if not isinstance(split, StreamedSplit):
        for b in range(start, count):
            idx = rows(b)
            ctx, tgt = split.contexts[idx], split.targets[idx]
            if split.check is not None:          # CPU, over a map: rows are checked when first drawn
                split.check.rows(idx.numpy(), ctx.numpy(), tgt.numpy())
                if split.check.done:
                    split.check = None
            yield ctx, tgt, split.prev[idx]
        return
    order = order.cpu()                                   # once per epoch
    cuda = split.device.type == "cuda"
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lvmd-prefetch") as pool:
        pending = pool.submit(split.fetch, rows(start).numpy(), start % SLOTS) if start < count else None
        for b in range(start, count):
            current, landed = pending.result()
            # the buffer refilled next is the one batch b-1 came from: that step is done
            pending = pool.submit(split.fetch, rows(b + 1).numpy(), (b + 1) % SLOTS) if b + 1 < count else None
            if cuda:   # the step waits for its batch's copy; the allocator learns who uses the memory
                main = torch.cuda.current_stream(split.device)
                main.wait_event(landed)
                for x in current:
                    x.record_stream(main)
            yield current
