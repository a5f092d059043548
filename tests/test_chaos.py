"""The short version of scripts/chaos.py: real daemons SIGKILLed inside each kill window (during
an epoch-end 5CAT, between a checkpoint's temp file and its rename, inside a telemetry
transaction, while training), `lvmd resume` at once after each kill, every run finished."""
from __future__ import annotations

import importlib.util
import random
import sys

from conftest import ROOT


def _chaos():
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = mod           # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_kills_in_every_window_lose_nothing_and_leave_nothing(tmp_path):
    chaos = _chaos()
    chaos.EPOCHS = 3                     # shorter than the drill's; the holds are drawn from what is left
    data = chaos.make_data(tmp_path)
    rng = random.Random(3)
    plans = [["fivecat", "checkpoint"], ["commit", "train"]]
    trials = [chaos.one_trial(n, tmp_path, data, plan, rng) for n, plan in enumerate(plans, 1)]
    print(chaos.table(trials))
    for t in trials:
        assert not t.errors and t.checks and all(t.checks.values()), (t.kills, t.errors, t.checks)
    assert trials[0].kills == ["fivecat", "checkpoint"] and trials[1].kills == ["commit", "train"]   # none missed
    assert "kills landed" in chaos.table(trials) and "missed" in chaos.table(trials)
    assert sum(len(t.resume_codes) for t in trials) >= 3
