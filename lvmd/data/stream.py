"""Data larger than device memory: a train split over train.device_data_budget is streamed to
the device per batch from its memory map (lvmd/data/mapped.py), with the same epoch order and
the same numbers as the in-memory path.

The trainer asks `batches(split, order, ...)` for an epoch's batches. An in-memory DeviceSplit
indexes its device tensors exactly as before. A StreamedSplit gathers a batch's rows from the
map on the host, copies them into pinned memory, sends them with a non-blocking copy, and
prepares the NEXT batch on a helper thread while the current one trains.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from lvmd.data.formats import Sequences


# -- splits the trainer steps through ------------------------------------------------------------
def split_bytes(seqs: Sequences) -> int:
    """What a split costs on the device: contexts, targets and y_prev."""
    return int(seqs.contexts.nbytes + 2 * seqs.targets.nbytes)


def device_budget(setting: int, device: torch.device) -> float:
    """train.device_data_budget in bytes; 0 = auto: half the GPU's memory, no limit elsewhere."""
    if setting > 0:
        return float(setting)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2
    return float("inf")


@dataclass
class StreamedSplit:
    contexts: np.ndarray     # (M, T, D) memory map (or array) on the host
    targets: np.ndarray      # (M, D)
    prev: np.ndarray         # (M, D): y_prev per loss.prev (a view of contexts for ctx-2)
    device: torch.device

    def __len__(self) -> int:
        return self.targets.shape[0]

    def fetch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows `idx` on the device: gathered on the host, pinned, copied without blocking."""
        out = []
        for arr in (self.contexts, self.targets, self.prev):
            host = torch.from_numpy(np.take(arr, idx, axis=0))
            if self.device.type == "cuda":
                host = host.pin_memory()
            out.append(host.to(self.device, non_blocking=True))
        return out[0], out[1], out[2]


def streamed(seqs: Sequences, prev: np.ndarray, device: torch.device) -> StreamedSplit:
    return StreamedSplit(seqs.contexts, seqs.targets, prev, device)


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
            yield split.contexts[idx], split.targets[idx], split.prev[idx]
        return
    order = order.cpu()                                   # once per epoch
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lvmd-prefetch") as pool:
        pending = pool.submit(split.fetch, rows(start).numpy()) if start < count else None
        for b in range(start, count):
            current = pending.result()
            pending = pool.submit(split.fetch, rows(b + 1).numpy()) if b + 1 < count else None
            yield current
