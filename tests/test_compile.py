"""train.compile (issue 23): auto compiles the training forward only where a probe of this step
says it pays; the decision and its reason reach the run row, the hardware event and `lvmd status`.

Every test here compiles the same tiny amn with the same batch, so inductor compiles it once per
process and the rest are dynamo cache hits (a cold compile costs minutes on a loaded 2-core box)."""
from __future__ import annotations

import json
import sqlite3
import threading
import time

import numpy as np
import pytest
import torch

from lvmd.config import load_config
from lvmd.data.train_data import load_train_data
from lvmd.train import compiling
from lvmd.train.sink import ListSink
from lvmd.train.trainer import Trainer
from store.schema import STEP_METRICS
from tests.conftest import TINY_MODEL, data_overrides, lvmd, new_run, query

COMPILED = torch._dynamo.eval_frame.OptimizedModule
AUTO = [o for o in TINY_MODEL if not o.startswith("train.compile")]    # conftest pins it off


def _cfg(tiny_data, *extra):
    # batch 8 and full batches only (max_steps inside epoch 1): one graph, the one test_host_syncs compiles
    return load_config(None, [*data_overrides(tiny_data), *AUTO, "model.kind=amn", "train.epochs=1",
                              "train.batch_size=8", "train.max_steps=12", *extra])


def _trainer(cfg, tmp_path, sink=None) -> Trainer:
    return Trainer(cfg, load_train_data(cfg), sink or ListSink(), out_dir=tmp_path)


def _totals(sink: ListSink) -> np.ndarray:
    col = 4 + STEP_METRICS.index("total")            # rows: step, epoch, t, lr, *STEP_METRICS
    return np.array([r[col] for r in sink.steps])


def test_where_the_probe_says_yes_the_forward_is_compiled_and_trains_to_the_same_loss(tiny_data, tmp_path,
                                                                                       monkeypatch):
    whole_epoch = "train.max_steps=0"                 # 247 rows: 30 batches of 8, then one of 7
    eager_sink = ListSink()
    eager = _trainer(_cfg(tiny_data, "train.compile=off", whole_epoch), tmp_path / "e", eager_sink)
    assert eager.net is eager.model and eager.hardware.compile == "off"
    eager.run()
    monkeypatch.setenv(compiling.FORCE_ENV, "yes")   # the documented seam: the probe's answer
    sink = ListSink()
    trainer = _trainer(_cfg(tiny_data, whole_epoch), tmp_path / "c", sink)
    assert isinstance(trainer.net, COMPILED) and trainer.net._orig_mod is trainer.model
    assert trainer.hardware.compile == "on" and "LVMD_COMPILE_PROBE=yes" in trainer.hardware.compile_why
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert trainer.run() == "finished"
    # one graph for every batch size: the epoch's last, smaller batch compiled nothing new
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 1
    got, want = _totals(sink), _totals(eager_sink)
    assert len(got) == len(want) == trainer.total_steps
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)   # fp32; inductor fuses, so not bit for bit
    # eval stays eager; the checkpoint holds the bare module's keys (no _orig_mod. prefix)
    state = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["model_state"]
    assert set(state) == set(eager.model.state_dict())


def test_where_the_probe_says_no_the_model_stays_eager(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv(compiling.FORCE_ENV, "no")
    trainer = _trainer(_cfg(tiny_data), tmp_path)
    assert trainer.net is trainer.model and trainer.hardware.compile == "off"
    assert "LVMD_COMPILE_PROBE=no" in trainer.hardware.compile_why


def test_the_real_probe_times_both_and_leaves_the_weights_as_they_were(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv(compiling.FORCE_ENV, raising=False)
    trainer = _trainer(_cfg(tiny_data, "train.compile=off"), tmp_path)
    batch = tuple(x[:8] for x in (trainer.train_split.contexts, trainer.train_split.targets, trainer.train_split.prev))
    from lvmd.config import stage_for_epoch
    stage = stage_for_epoch(trainer.cfg.loss.ramp, 0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.random.get_rng_state()
    common = dict(model=trainer.model, optimizer=trainer.optimizer, device=trainer.device,
                  step=lambda net: trainer.train_step(*batch, stage, net=net), key=("test", tmp_path.name))
    # a run too short to earn back a compile: decided from eager timing alone, nothing compiled
    net, short = compiling.resolve("auto", net=trainer.net, total_steps=10, **common)
    assert net is trainer.model and not short.compiled and "cannot pay back" in short.why
    # a long run: the real probe compiles, times both and answers either way, with its evidence
    net, long = compiling.resolve("auto", net=trainer.net, total_steps=10 ** 9, **common)
    assert isinstance(long.compiled, bool) and "ms/step vs eager" in long.why and "compiling took" in long.why
    assert isinstance(net, COMPILED) == long.compiled
    assert long.why.startswith(f"compile auto: {long.state} (probe: compiled ")
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not trainer.optimizer.state and torch.equal(torch.random.get_rng_state(), rng)
    # the heartbeat goes on while the probe holds the loop: its first step waits for a beat
    beat = threading.Event()

    def waits_for_a_beat(net):
        assert beat.wait(30), "no heartbeat while the probe ran"
        return trainer.train_step(*batch, stage, net=net)

    compiling.resolve("auto", net=trainer.net, total_steps=10, beat=beat.set,
                      **{**common, "step": waits_for_a_beat, "key": ("beat",)})
    # cached per process: the same question is not asked twice
    again = compiling.resolve("auto", net=trainer.net, total_steps=10 ** 9, **common)[1]
    assert again == long


def test_on_and_off_are_obeyed_and_bad_values_name_the_key(tiny_data, tmp_path):
    from lvmd.errors import UserError

    assert isinstance(_trainer(_cfg(tiny_data, "train.compile=on"), tmp_path).net, COMPILED)
    with pytest.raises(UserError, match="train.compile: 'maybe'"):
        load_config(None, ["train.compile=maybe"])


def test_the_decision_reaches_the_run_row_the_event_and_status(tiny_data, tmp_path):
    db = tmp_path / "x.db"
    proc = lvmd("run", *data_overrides(tiny_data), *AUTO, "model.kind=amn", "train.epochs=1", "--quiet",
                "--db", str(db), cwd=tmp_path)           # auto, a run of seconds: stays eager, says why
    assert proc.returncode == 0, proc.stderr
    conn = sqlite3.connect(db)
    state, why = conn.execute("SELECT compile, compile_why FROM runs").fetchone()
    assert state == "off" and why.startswith("compile auto: off (the run's") and "cannot pay back" in why
    detail = json.loads(conn.execute("SELECT detail FROM events WHERE kind = 'hardware'").fetchone()[0])
    assert (detail["compile"], detail["compile_why"]) == (state, why)
    status = lvmd("status", "1", "--db", str(db), cwd=tmp_path)
    assert f"compile    off: {why}" in status.stdout


def _counting_step(calls: list):
    """A stand-in step for the probe's bookkeeping: it counts the calls and never runs the module
    it is handed, so nothing compiles (the real probe's timing is the test above)."""
    def step(net):
        calls.append(net)
        time.sleep(0.0005)
    return step


def test_the_probe_answer_is_kept_in_the_database_and_a_new_process_skips_the_probe(tmp_path, monkeypatch):
    monkeypatch.delenv(compiling.FORCE_ENV, raising=False)
    run_id, sink = new_run(tmp_path / "x.db")
    model = torch.nn.Linear(4, 4)
    calls: list = []
    common = dict(model=model, optimizer=torch.optim.AdamW(model.parameters()), device=torch.device("cpu"),
                  step=_counting_step(calls), total_steps=10 ** 9, memory=compiling.ProbeMemory(sink, run_id))
    key = {"model": "m", "threads": 1}
    try:
        _, first = compiling.resolve("auto", net=model, key=key, **common)
        assert calls and first.outcome == "timed" and "(probe: compiled " in first.why
        rows = query(tmp_path / "x.db", "SELECT outcome, compiled, eager_ms, compiled_ms, run_id FROM compile_probes")
        assert rows == [("timed", int(first.compiled), first.eager_ms, first.compiled_ms, run_id)]

        compiling._decided.clear()          # what a resume or the next run starts with: nothing in memory
        calls.clear()
        net, kept = compiling.resolve("auto", net=model, key=key, **common)
        assert not calls, "the kept answer was probed again"
        assert kept.compiled == first.compiled and (kept.eager_ms, kept.compiled_ms) == (first.eager_ms, first.compiled_ms)
        assert "kept from the probe of" in kept.why and f"in run {run_id}" in kept.why and "=again re-probes" in kept.why
        assert isinstance(net, COMPILED) == kept.compiled
        # the same kept timing tells a short run to stay eager, still without a probe
        compiling._decided.clear()
        short = compiling.resolve("auto", net=model, key=key, **{**common, "total_steps": 3})[1]
        assert not calls and not short.compiled and "cannot pay back" in short.why and "kept from" in short.why

        compiling._decided.clear()          # another key (here: threads) is another question
        compiling.resolve("auto", net=model, key={**key, "threads": 2}, **common)
        assert calls
        assert query(tmp_path / "x.db", "SELECT count(*) FROM compile_probes") == [(2,)]

        calls.clear()                       # a row that is not what a probe writes is not believed
        conn = sqlite3.connect(tmp_path / "x.db")
        with conn:
            conn.execute("UPDATE compile_probes SET compiled_ms = -1, compiled = 1")
        conn.close()
        compiling._decided.clear()
        assert compiling.resolve("auto", net=model, key=key, **common)[1].outcome == "timed" and calls

        calls.clear()                       # LVMD_COMPILE_PROBE=again asks afresh, past both caches
        monkeypatch.setenv(compiling.FORCE_ENV, "again")
        compiling.resolve("auto", net=model, key=key, **common)
        assert calls
    finally:
        sink.close()
        compiling._decided.clear()


def test_a_second_run_in_the_same_database_takes_the_first_runs_probe(tiny_data, tmp_path):
    db = tmp_path / "x.db"
    for _ in range(2):                      # two processes; the run is seconds long: the 'short' answer
        proc = lvmd("run", *data_overrides(tiny_data), *AUTO, "model.kind=amn", "train.epochs=1", "--quiet",
                    "--db", str(db), cwd=tmp_path, env={compiling.FORCE_ENV: ""})
        assert proc.returncode == 0, proc.stderr
    (first, second) = [w for (w,) in query(db, "SELECT compile_why FROM runs ORDER BY id")]
    assert "cannot pay back" in first and "kept from" not in first
    assert "cannot pay back" in second and "kept from the probe of" in second and "in run 1" in second
    assert query(db, "SELECT outcome, compiled, run_id FROM compile_probes") == [("short", 0, 1)]
