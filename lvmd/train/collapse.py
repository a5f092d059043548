"""Collapse watch (SPEC §5): the live symptoms of a collapsing run, from host-side rows only.

Pure checks over the newest step rows and the epoch history, and CollapseWatch, which the
trainer feeds at its telemetry flushes and epoch ends (never per step, never device tensors).
A symptom that appears raises one `collapse_warning` event with its evidence and asks the
control for the configured action (watch.action: warn | pause | stop). A symptom that holds on
stays quiet until it has cleared once, so a resumed run is not paused again at once; a run
resumed in a new process restores the watch's history from its SQLite rows (restore).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from lvmd.config import RunConfig, stage_for_epoch
from lvmd.train.rho_cap import over_cap

# SPEC §5, "guardrails held: ρ ≤ 0.25 throughout": the limit when the loss runs uncapped (v1).
UNCAPPED_RHO_LIMIT = 0.25


@dataclass(frozen=True)
class Symptom:
    name: str            # val_cos_floor | val_cos_drop | skip_flood | rho_over_cap | r_at_5_floor
    value: float         # what was measured
    limit: float         # the configured threshold it crossed
    detail: dict = field(default_factory=dict)

    def evidence(self) -> dict:
        """For the event's JSON, which refuses NaN and infinity: those become text."""
        out = {"symptom": self.name, "value": self.value, "limit": self.limit, **self.detail}
        return {k: v if not isinstance(v, float) or math.isfinite(v) else str(v) for k, v in out.items()}


def rho_limit(cfg: RunConfig, epoch: int) -> float:
    """The cap ρ is held to at `epoch`: the ramp stage's, else loss.rho_cap, else SPEC's 0.25.
    rho_pre (before the cap) is compared with it, since ρ after the cap is clamped to it."""
    return stage_for_epoch(cfg.loss.ramp, epoch).rho_cap or cfg.loss.rho_cap or UNCAPPED_RHO_LIMIT


def step_symptoms(rows: Sequence[dict], cfg: RunConfig) -> list[Symptom]:
    """Skip flood and ρ over its cap in the newest watch.skip_window step rows past
    watch.warmup_steps; nothing until the window is full (a few early skips are not a flood)."""
    w = cfg.watch
    rows = [r for r in rows[-w.skip_window:] if r["step"] > w.warmup_steps]
    if len(rows) < w.skip_window:
        return []
    span = {"window": len(rows), "from_step": rows[0]["step"], "to_step": rows[-1]["step"]}
    found = []
    skip_rate = sum(r["skip"] > 0.5 for r in rows) / len(rows)
    if skip_rate > w.skip_rate_max:
        found.append(Symptom("skip_flood", skip_rate, w.skip_rate_max, span))
    # the guardrail's rule: on a capped run exactly the steps it flagged `attenuate` (lvmd.train.rho_cap)
    over = [r["rho_pre"] for r in rows if over_cap(r["rho_pre"], rho_limit(cfg, r["epoch"]))]
    share = len(over) / len(rows)
    if share > w.rho_over_cap_share:
        found.append(Symptom("rho_over_cap", share, w.rho_over_cap_share,
                             {**span, "cap": rho_limit(cfg, rows[-1]["epoch"]), "rho_pre_max": max(over)}))
    return found


def epoch_symptoms(history: Sequence[dict], cfg: RunConfig) -> list[Symptom]:
    """At the newest epoch: val cos under its floor or fallen from its best by more than
    watch.val_cos_drop, R@5 (when the epoch has one) under its floor."""
    if not history:
        return []
    w, last = cfg.watch, history[-1]
    at = {"epoch": last.get("epoch")}
    found = []
    cos = last.get("val_cos")
    if cos is not None:
        if cos < w.val_cos_floor:
            found.append(Symptom("val_cos_floor", cos, w.val_cos_floor, at))
        best = max((h for h in history if h.get("val_cos") is not None), key=lambda h: h["val_cos"])
        if best["val_cos"] - cos > w.val_cos_drop:
            found.append(Symptom("val_cos_drop", best["val_cos"] - cos, w.val_cos_drop,
                                 {**at, "val_cos": cos, "best": best["val_cos"], "best_epoch": best.get("epoch")}))
    r5 = last.get("r_at_5")
    if r5 is not None and r5 < w.r_at_5_floor:
        found.append(Symptom("r_at_5_floor", r5, w.r_at_5_floor, at))
    return found


class CollapseWatch:
    """Fed by the trainer: steps(rows) at each telemetry flush, epoch(row) at each epoch end.
    act(action, detail) is the control's `request` (pause or stop at the next step boundary)."""

    STEP_KEYS = ("step", "epoch", "skip", "rho_pre")
    EPOCH_KEYS = ("epoch", "step", "val_cos", "r_at_5")

    def __init__(self, cfg: RunConfig, sink, act: Callable[..., None] | None = None):
        self.cfg, self.sink, self.act = cfg, sink, act
        self.window: deque[dict] = deque(maxlen=cfg.watch.skip_window)
        self.history: list[dict] = []
        self.active: dict[str, set[str]] = {"steps": set(), "epoch": set()}
        self.warnings = 0

    def restore(self, epoch_rows: Sequence[dict], step_rows: Sequence[dict] = ()) -> None:
        """On resume in a new process: the epoch history and the newest step window of the run so
        far (oldest first), so "fallen from its best" still measures from the run's best epoch.
        Symptoms already present count as raised: quiet until they clear once, as in one process."""
        self.history = [{k: r.get(k) for k in self.EPOCH_KEYS} for r in epoch_rows]
        self.window.clear()
        self.window.extend({k: r[k] for k in self.STEP_KEYS} for r in step_rows)
        self.active = {"steps": {s.name for s in step_symptoms(list(self.window), self.cfg)},
                       "epoch": {s.name for s in epoch_symptoms(self.history, self.cfg)}}

    def steps(self, rows: Sequence[dict]) -> None:
        self.window.extend({k: r[k] for k in self.STEP_KEYS} for r in rows)
        self._raise("steps", step_symptoms(list(self.window), self.cfg), rows[-1])

    def epoch(self, row: dict) -> None:
        self.history.append({k: row.get(k) for k in self.EPOCH_KEYS})
        self._raise("epoch", epoch_symptoms(self.history, self.cfg), row)

    def _raise(self, scope: str, found: list[Symptom], at: dict) -> None:
        new = [s for s in found if s.name not in self.active[scope]]
        self.active[scope] = {s.name for s in found}
        if not new:
            return
        self.warnings += 1
        action = self.cfg.watch.action
        self.sink.event("collapse_warning", step=at["step"], epoch=at["epoch"],
                        detail={"action": action, "symptoms": [s.evidence() for s in new]})
        if action != "warn" and self.act is not None:
            self.act(action, trigger="watch", detail={"symptoms": [s.name for s in new]})
