"""Per-step telemetry on its way from the device to the sink: one packed tensor per step waits on
the device and a block of them is copied to the host at once (train.telemetry_block steps or
train.flush_seconds, whichever first), so a GPU step never waits for the host. A non-finite
value stops the rows at the last finite step and raises TrainingDiverged (SQLite has no NaN)."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from lvmd.train.guardrails import DEVICE_METRICS
from store.schema import STEP_METRICS

PACKED = DEVICE_METRICS + ("grad_norm",)          # order of the per-step device tensor


class TrainingDiverged(RuntimeError):
    pass


class EpochStats:
    """Aggregates of one epoch's step rows, fed block by block on the host."""

    def __init__(self):
        self.n = self.skips = self.attenuates = 0
        self.total = self.mse = 0.0
        self.rho_max = -math.inf
        self.pos_min = math.inf

    def add(self, m: dict) -> None:
        self.n += 1
        self.skips += int(m["skip"])
        self.attenuates += int(m["attenuate"])
        self.total += m["total"]
        self.mse += m["mse"]
        self.rho_max = max(self.rho_max, m["rho"])
        self.pos_min = min(self.pos_min, m["pos"])

    def row(self) -> dict:
        n = max(self.n, 1)
        return {"train_loss": self.total / n, "train_mse": self.mse / n, "skip_rate": self.skips / n,
                "attenuate_rate": self.attenuates / n,
                "rho_max": self.rho_max if self.n else None, "pos_min": self.pos_min if self.n else None}


class TelemetryBuffer:
    """Packed per-step tensors wait on the device; one stack + host copy per block."""

    def __init__(self, sink, *, block: int, flush_seconds: float,
                 on_rows: Callable[[list[dict]], None] | None = None):
        self.sink, self.block, self.flush_seconds, self.on_rows = sink, block, flush_seconds, on_rows
        self.host: list[tuple] = []          # (step, epoch, t, lr, frac, m_gap)
        self.device: list[torch.Tensor] = []  # (len(PACKED),) each
        self.stats = EpochStats()
        self._last_flush = time.monotonic()

    def add(self, host: tuple, packed: torch.Tensor) -> None:
        self.host.append(host)
        self.device.append(packed)
        if len(self.device) >= self.block or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> list[dict]:
        self._last_flush = time.monotonic()
        if not self.device:
            return []
        values = torch.stack(self.device).float().cpu().tolist()   # the one device→host copy
        rows, metrics, diverged = [], [], None
        for (step, epoch, t, lr, frac, m_gap), vals in zip(self.host, values):
            if not all(map(math.isfinite, vals)):
                diverged = dict(zip(PACKED, vals), step=step)
                break  # SQLite has no NaN; rows stop at the last finite step
            m = dict(zip(PACKED, vals), frac=frac, m_gap=m_gap)
            rows.append((step, epoch, t, lr, *(m[k] for k in STEP_METRICS)))
            metrics.append({"step": step, "epoch": epoch, **m})
            self.stats.add(m)
        self.host.clear()
        self.device.clear()
        self.sink.log_steps(rows)
        for m in metrics:
            if m["skip"]:
                self.sink.event("skip", step=m["step"], epoch=m["epoch"],
                                detail={"pos": m["pos"], "neg": m["neg"], "gap": m["gap"]})
            if m["attenuate"]:
                self.sink.event("attenuate", step=m["step"], epoch=m["epoch"],
                                detail={"rho_pre": m["rho_pre"], "rho_cap": m["rho"], "lam": m["lam"]})
        if self.on_rows:
            self.on_rows(metrics)
        if diverged:
            bad = [k for k in PACKED if not math.isfinite(diverged[k])]
            raise TrainingDiverged(f"non-finite {', '.join(bad)} at step {diverged['step']} "
                                   f"(mse={diverged['mse']}, grad_norm={diverged['grad_norm']}); "
                                   "lower train.lr or check the data")
        return metrics


class SilentTelemetry(TelemetryBuffer):
    """Ranks > 0 under torchrun: the step values are global and rank 0 records them."""

    def add(self, host: tuple, packed: torch.Tensor) -> None:
        pass
