"""What the benchmark scripts share."""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch


def count_host_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """How many synchronising CUDA calls fn() makes (None off CUDA): in torch's sync debug mode
    every such call (.item(), .cpu(), .tolist(), nonzero, ...) warns once."""
    if device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
