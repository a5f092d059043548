"""The range of every numeric config key, and the host facts a new run is held to. Data only and
pure functions (lvmd.config raises its ConfigError from them): an absurd number is its key's
one-line error at load, never an OverflowError in SQLite or a host out of threads later."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

# (low, high, low_open): inclusive unless low_open. The bounds that depend on the data (batch vs
# rows, total steps) are lvmd.config.check_fits'; the model's memory is lvmd.train.memory's.
MAX_EPOCHS = 100_000
MAX_STEPS = 10**9            # total optimizer steps of one run (epochs × batches, or max_steps)
MAX_THREADS = 4096           # a stored config's ceiling; a new run's is the usable CPUs (check_host)
MAX_NAME = 200
_INT = 2**63 - 1             # SQLite's INTEGER
Bounds = tuple[float, float, bool]
RANGES: dict[str, Bounds] = {
    "data.max_train": (0, 10**12, False),
    "model.d_model": (1, 65_536, False), "model.nhead": (1, 1024, False), "model.num_layers": (1, 1024, False),
    "model.ff": (1, 1 << 20, False), "model.dropout": (0, 1, False), "model.hidden": (1, 1 << 20, False),
    "model.lstm_layers": (1, 1024, False), "model.lstm_dropout": (0, 1, False), "model.amn_d": (1, 65_536, False),
    "loss.alpha": (0, 1, False), "loss.gamma": (0, 1000, True), "loss.m_ratio": (-2, 2, False),
    "loss.tau": (0, 2, False), "loss.beta": (0, 1000, False), "loss.eta": (0, 1000, False),
    "loss.kappa": (0, 1000, False), "loss.lam_min": (0, 1000, True), "loss.lam_max": (0, 1000, True),
    "loss.rho_cap": (0, 100, False), "loss.rho_boost": (0, 100, False), "loss.skip_weak_pos": (-2, 2, False),
    "loss.skip_neg": (-2, 2, False),
    "train.epochs": (1, MAX_EPOCHS, False), "train.batch_size": (1, 1 << 24, False), "train.lr": (0, 1e6, True),
    "train.weight_decay": (0, 10, False), "train.grad_clip": (0, 1e6, False), "train.plateau_factor": (0, 1, True),
    "train.plateau_patience": (0, MAX_EPOCHS, False), "train.seed": (0, _INT, False),
    "train.checkpoint_every": (0, MAX_STEPS, False), "train.telemetry_block": (1, 65_536, False),
    "train.flush_seconds": (0, 3600, True), "train.last_slot_noise": (0, 1, False),
    "train.noise_sigma": (0, 10, False), "train.swap_share": (0, 1, False), "train.max_steps": (0, MAX_STEPS, False),
    "train.device_data_budget": (0, 2**62, False),
    "eval.fivecat_every": (0, MAX_EPOCHS, False), "eval.max_samples": (1, 10**8, False),
    "eval.check_samples": (1, 10**8, False),
    "watch.val_cos_floor": (-1, 1, False), "watch.val_cos_drop": (0, 2, False), "watch.skip_window": (1, 10**7, False),
    "watch.warmup_steps": (0, MAX_STEPS, False), "watch.skip_rate_max": (0, 1, False),
    "watch.rho_over_cap_share": (0, 1, False), "watch.r_at_5_floor": (0, 1, False),
}
RAMP_RANGES: dict[str, Bounds] = {"until": (1, 10**9, False), "m_gap": (-2, 2, False), "frac": (0, 1, False),
                                  "rho_cap": (0, 100, False)}


def out_of_range(key: str, value: Any, bounds: Bounds) -> str | None:
    """The one-line complaint about `value` for `key`, or None when it is within `bounds`."""
    low, high, low_open = bounds
    if (value <= low if low_open else value < low) or value > high:
        shown = f"{value!r}" if len(repr(value)) <= 24 else f"{repr(value)[:20]}… ({len(repr(value))} digits)"
        return f"{key}: {shown} is out of range; allowed {'>' if low_open else '>='} {low:g} and <= {high:g}"
    return None


def name_ok(name: str) -> bool:
    """A run name people can read and type: printable (str.isprintable refuses tabs, newlines and
    the bidirectional controls that make `evil` read as `live`), 1 to MAX_NAME characters."""
    return 0 < len(name) <= MAX_NAME and name.isprintable() and name == name.strip()


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
