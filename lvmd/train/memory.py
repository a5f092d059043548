"""Does the model fit? Its parameters are counted on PyTorch's meta device (shapes, no storage),
so a `model.d_model=65536 model.ff=1048576` is the config's one-line error before a run row
exists, not an out-of-memory kill minutes later. Training keeps four copies of every parameter
(weights, gradients, AdamW's two moments); activations and data come on top and are not counted,
so this refuses only what can never fit."""
from __future__ import annotations

import torch

from lvmd.config import ConfigError, ModelConfig
from lvmd.train.models import build_model, count_parameters

BYTES_PER_PARAMETER = 4 * 4      # float32 weights, gradients, exp_avg, exp_avg_sq


def parameters_of(cfg: ModelConfig, dim: int) -> int:
    with torch.device("meta"):
        return count_parameters(build_model(cfg, dim))


def available_bytes(device: torch.device) -> int | None:
    """Memory free for the model on `device` (None: unknown, then nothing is refused)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_model_fits(cfg: ModelConfig, dim: int, device: torch.device) -> None:
    params = parameters_of(cfg, dim)
    need, have = params * BYTES_PER_PARAMETER, available_bytes(device)
    if have is not None and need > have:
        raise ConfigError(f"model: a {cfg.kind} with these sizes has {params:,} parameters, which need "
                          f"{_gb(need)} for weights, gradients and AdamW's moments; {device} has {_gb(have)} "
                          f"free. Lower model.d_model, model.ff, model.hidden or the layer counts")


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"
