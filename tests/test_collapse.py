"""Collapse watch (SPEC §5): the pure checks, the edge-triggered watcher, and a trainer it stops."""
from __future__ import annotations

import json

import pytest

from conftest import TINY_MODEL, data_overrides
from lvmd.train.collapse import UNCAPPED_RHO_LIMIT, CollapseWatch, epoch_symptoms, rho_limit, step_symptoms
from lvmd.config import load_config
from lvmd.train.control import Control
from lvmd.train.sink import ListSink


def cfg(*overrides: str):
    return load_config(None, ["watch.warmup_steps=0", *overrides])


def steps(n: int, *, skip_every: int = 0, rho_pre: float = 0.1, epoch: int = 0, start: int = 1) -> list[dict]:
    return [{"step": start + i, "epoch": epoch, "skip": float(bool(skip_every) and i % skip_every == 0),
             "rho_pre": rho_pre} for i in range(n)]


def names(found) -> list[str]:
    return [s.name for s in found]


def test_step_checks_wait_for_a_full_window_then_flag_skip_floods():
    c = cfg("watch.skip_window=20", "watch.skip_rate_max=0.10")
    assert step_symptoms(steps(19, skip_every=1), c) == []              # window not full yet
    assert step_symptoms(steps(20, skip_every=20), c) == []             # 5 % skips: fine
    (flood,) = step_symptoms(steps(20, skip_every=5), c)                # 20 % skips
    assert flood.name == "skip_flood" and flood.value == pytest.approx(0.2) and flood.limit == 0.10
    assert flood.detail == {"window": 20, "from_step": 1, "to_step": 20}


def test_step_checks_only_look_at_the_newest_window_past_the_warmup():
    c = cfg("watch.skip_window=20")
    assert step_symptoms(steps(10, skip_every=1) + steps(20, start=11), c) == []
    warm = cfg("watch.skip_window=20", "watch.warmup_steps=10")
    assert step_symptoms(steps(25, skip_every=1), warm) == []          # 15 steps past the warmup: not full
    assert names(step_symptoms(steps(30, skip_every=1), warm)) == ["skip_flood"]
    assert load_config(None, []).watch.warmup_steps == 500


def test_rho_is_held_to_the_cap_in_force_and_to_spec_when_uncapped():
    v21 = cfg()
    assert rho_limit(v21, 0) == 0.25
    v22 = cfg("loss.preset=v2.2")
    assert (rho_limit(v22, 0), rho_limit(v22, 9)) == (0.35, 0.50)     # the ramp stage's own cap
    assert rho_limit(cfg("loss.rho_cap=0"), 0) == UNCAPPED_RHO_LIMIT == 0.25
    c = cfg("watch.skip_window=10", "watch.rho_over_cap_share=0.05")
    assert step_symptoms(steps(10, rho_pre=0.25), c) == []             # at the cap is not over it
    (over,) = step_symptoms(steps(9, rho_pre=0.1) + steps(1, rho_pre=float("inf"), start=10), c)
    assert over.name == "rho_over_cap" and over.value == pytest.approx(0.1) and over.detail["cap"] == 0.25
    json.dumps(over.evidence(), allow_nan=False)                        # the event's JSON refuses inf
    c22 = cfg("loss.preset=v2.2", "watch.skip_window=10")
    assert step_symptoms(steps(10, rho_pre=0.4, epoch=9), c22) == []   # under v2.2's late cap of 0.50
    assert names(step_symptoms(steps(10, rho_pre=0.4, epoch=0), c22)) == ["rho_over_cap"]


def test_epoch_checks_val_cos_floor_drop_from_best_and_r_at_5():
    c = cfg("watch.val_cos_floor=0.05", "watch.val_cos_drop=0.15", "watch.r_at_5_floor=0.5")
    healthy = [{"epoch": 0, "val_cos": 0.40, "r_at_5": 0.7}, {"epoch": 1, "val_cos": 0.47, "r_at_5": 0.8}]
    assert epoch_symptoms(healthy, c) == [] and epoch_symptoms([], c) == []
    falling = healthy + [{"epoch": 2, "val_cos": 0.30, "r_at_5": None}]
    (drop,) = epoch_symptoms(falling, c)
    assert drop.name == "val_cos_drop" and drop.value == pytest.approx(0.17)
    assert drop.detail == {"epoch": 2, "val_cos": 0.30, "best": 0.47, "best_epoch": 1}
    collapsed = healthy + [{"epoch": 2, "val_cos": -0.05, "r_at_5": 0.2}]     # v1 at epoch 3
    assert names(epoch_symptoms(collapsed, c)) == ["val_cos_floor", "val_cos_drop", "r_at_5_floor"]


def test_the_watch_warns_once_per_onset_and_asks_for_the_action():
    sink, asked = ListSink(), []
    c = cfg("watch.skip_window=10", "watch.action=pause")
    watch = CollapseWatch(c, sink, act=lambda action, **kw: asked.append((action, kw)))
    watch.steps(steps(10, rho_pre=5.0))
    watch.steps(steps(10, rho_pre=5.0, start=11))                       # still over: no second warning
    assert len(sink.events) == 1 and asked == [("pause", {"trigger": "watch", "detail": {"symptoms": ["rho_over_cap"]}})]
    event = sink.events[0]
    assert event["kind"] == "collapse_warning" and event["step"] == 10 and event["detail"]["action"] == "pause"
    assert event["detail"]["symptoms"][0]["rho_pre_max"] == 5.0
    watch.steps(steps(10, start=21))                                    # cleared
    watch.steps(steps(10, rho_pre=5.0, start=31))                       # and back: warns again
    assert len(sink.events) == 2 and len(asked) == 2
    watch.epoch({"epoch": 0, "step": 40, "val_cos": -0.1})
    assert sink.events[-1]["detail"]["symptoms"][0]["symptom"] == "val_cos_floor" and len(asked) == 3


def test_restore_measures_the_drop_from_the_best_epoch_before_the_resume():
    c = cfg("watch.val_cos_drop=0.15", "watch.skip_window=10", "watch.action=stop")
    sink, asked = ListSink(), []
    watch = CollapseWatch(c, sink, act=lambda action, **kw: asked.append(action))
    before = [{"epoch": 0, "step": 10, "val_cos": 0.47, "r_at_5": None},
              {"epoch": 1, "step": 20, "val_cos": 0.40, "r_at_5": None}]
    watch.restore(before, steps(10, rho_pre=5.0, start=11))   # the run so far, oldest first
    assert sink.events == [] and asked == []                  # restoring raises nothing
    watch.steps(steps(5, rho_pre=5.0, start=21))              # still over its cap: already raised
    assert sink.events == []
    watch.epoch({"epoch": 2, "step": 30, "val_cos": 0.30})
    (drop,) = sink.events[0]["detail"]["symptoms"]            # 0.47 → 0.30, not 0.30 → 0.30
    assert drop["symptom"] == "val_cos_drop" and drop["best"] == 0.47 and drop["best_epoch"] == 0
    assert asked == ["stop"]
    fresh = CollapseWatch(c, ListSink())
    fresh.epoch({"epoch": 2, "step": 30, "val_cos": 0.30})
    assert fresh.sink.events == []                            # what a resume without restore missed


def test_warn_only_asks_for_nothing():
    sink, asked = ListSink(), []
    watch = CollapseWatch(cfg("watch.action=warn"), sink, act=lambda *a, **k: asked.append(a))
    watch.epoch({"epoch": 0, "step": 5, "val_cos": -0.2, "r_at_5": 0.1})
    assert len(sink.events) == 1 and asked == []


def test_an_injected_collapse_stops_the_trainer_at_the_next_boundary(tiny_data, tmp_path):
    from lvmd.data.train_data import load_train_data
    from lvmd.train.trainer import Trainer

    c = load_config(None, [*data_overrides(tiny_data), *TINY_MODEL, "train.epochs=50", "loss.lam_min=10",
                           "loss.lam_max=10", "loss.rho_cap=0", "watch.skip_window=4", "watch.warmup_steps=0",
                           "watch.rho_over_cap_share=0.5", "watch.action=stop", "train.telemetry_block=4"])
    sink = ListSink()
    control = Control(sink, install_signals=False)
    trainer = Trainer(c, load_train_data(c), sink, out_dir=tmp_path, control=control,
                      watch=CollapseWatch(c, sink, act=control.request))
    assert trainer.run() == "stopped"
    (warning,) = [e for e in sink.events if e["kind"] == "collapse_warning"]
    assert "rho_over_cap" in [s["symptom"] for s in warning["detail"]["symptoms"]]
    stopping = [e for e in sink.events if e["kind"] == "state" and e["detail"]["state"] == "stopping"]
    # stopped at the boundary right after the flush that saw it, with a checkpoint there
    assert stopping[0]["detail"]["trigger"] == "watch" and stopping[0]["step"] == warning["step"] >= 4
    assert len(sink.steps) == warning["step"] and (tmp_path / "last.pt").exists()
