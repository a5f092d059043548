"""What this machine runs well: the device, bf16 only where it is native, and a thread count
from the CPUs this process may use. Resolved when a run is created (so a choice that cannot
run is refused before the run row exists) and again in each process that trains it; the
resolved values go into the run row.

Why not torch's defaults: bf16 on a CPU without AVX512-BF16/AMX is emulated (3-30x slower) and
oneDNN's bf16 LSTM fails outright on AVX2-only CPUs; torch's thread count is every core, which
collapses throughput (10x measured) when other processes load those cores.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lvmd.config import ModelConfig, RunConfig, usable_cpus  # noqa: F401 (hardware.usable_cpus)
from lvmd.errors import UserError
from lvmd.train.models import build_model


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    precision: str      # fp32 | bf16: what autocast uses
    threads: int        # torch CPU threads in force
    why: str            # one line: how precision and threads were chosen

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: {name!r} asked for but CUDA is not available here")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("train.device: 'mps' asked for but MPS is not available here")
    return torch.device(name)


# -- CPUs ----------------------------------------------------------------------------------
# usable_cpus (affinity capped by a cgroup quota) lives in lvmd.config: a new run's train.threads is
# bounded by it when the config is loaded, before torch.
def busy_cpus(window_s: float = 0.25, stat: Path = Path("/proc/stat")) -> float:
    """How many of this process's CPUs other work keeps busy, measured over `window_s` from
    /proc/stat (the load average lags a minute behind); the 1-minute load average where there
    is no /proc/stat."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        before = _cpu_times(stat, cpus)
        time.sleep(window_s)
        after = _cpu_times(stat, cpus)
    except (OSError, AttributeError, ValueError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    busy = 0.0
    for cpu, (idle0, total0) in before.items():
        idle1, total1 = after.get(cpu, (idle0, total0))
        if total1 > total0:
            busy += 1.0 - (idle1 - idle0) / (total1 - total0)
    return busy


def _cpu_times(stat: Path, cpus: set[str]) -> dict[str, tuple[int, int]]:
    """(idle + iowait, total) jiffies of each CPU in `cpus`."""
    out = {}
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if name in cpus:
            ticks = [int(f) for f in fields[:8]]
            out[name] = (ticks[3] + ticks[4], sum(ticks))
    if not out:
        raise ValueError("no per-CPU lines")
    return out


def auto_threads(cpus: int | None = None, busy: float | None = None) -> int:
    """The usable CPUs that other work leaves free, at least 1. Under contention fewer threads
    win by far: torch's threads wait on each other at every op, and one descheduled thread
    stalls the rest (issue 12: 413 ms/step on all cores of a loaded 2-core box, 31.5 ms/step
    on one)."""
    cpus = usable_cpus() if cpus is None else cpus
    busy = busy_cpus() if busy is None else busy
    # torchrun's ranks on this host share the free CPUs (they start together, so each sees the
    # others as idle)
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(cpus, cpus - int(busy + 0.5)) // ranks_here)


def resolve_threads(spec: int | str) -> tuple[int, str]:
    """train.threads: "auto", 0 (torch's default) or a count."""
    if spec == "auto":
        cpus, busy = usable_cpus(), busy_cpus()
        n = auto_threads(cpus, busy)
        return n, f"threads auto: {n} of {cpus} usable CPUs ({busy:.1f} busy with other work)"
    if spec == 0:
        return torch.get_num_threads(), f"threads {torch.get_num_threads()} (torch's default)"
    return int(spec), f"threads {spec} (set)"


# -- precision -----------------------------------------------------------------------------
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX, as torch's CPU capability probe reports them."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


@functools.lru_cache(maxsize=8)
def bf16_trial(model_cfg: ModelConfig, dim: int, context: int, device_name: str) -> str:
    """'' if one bf16 forward/backward of this model runs on this device, else the error's
    first line (oneDNN's bf16 LSTM fails on AVX2-only CPUs). Cached: once per process."""
    device = torch.device(device_name)
    state = torch.random.get_rng_state()  # the trial must not move the run's random stream
    try:
        model = build_model(model_cfg, dim).to(device)
        x = torch.randn(2, context, dim, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            raw, _ = model(x)
        raw.float().square().mean().backward()
        return ""
    except RuntimeError as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        torch.random.set_rng_state(state)


def resolve_precision(requested: str, device: torch.device, model_cfg: ModelConfig, dim: int,
                      context: int) -> tuple[str, str]:
    """(fp32 | bf16, why). "auto" takes bf16 only where it is native and this model runs in it;
    an explicit "bf16" this device/model cannot run is refused with one line."""
    if requested == "fp32":
        return "fp32", "fp32 (set)"
    if requested == "auto" and not native_bf16(device):
        return "fp32", f"precision auto: fp32 (no native bf16 on {device.type})"
    error = bf16_trial(model_cfg, dim, context, str(device))
    if not error:
        return "bf16", "bf16 (set)" if requested == "bf16" else f"precision auto: bf16 (native on {device.type})"
    if requested == "auto":
        return "fp32", f"precision auto: fp32 (bf16 {model_cfg.kind} fails here: {error})"
    raise UserError(f"train.precision: 'bf16' cannot run model.kind={model_cfg.kind} on {device.type} here "
                    f"({error}); use fp32 or auto")


def resolve(cfg: RunConfig, dim: int, context: int) -> Hardware:
    """Device, precision and threads for this process. Sets torch's thread count."""
    threads, why_threads = resolve_threads(cfg.train.threads)
    torch.set_num_threads(threads)
    device = pick_device(cfg.train.device)
    precision, why_precision = resolve_precision(cfg.train.precision, device, cfg.model, dim, context)
    return Hardware(device, precision, threads, f"{why_precision}; {why_threads}")
