"""Precision and threads chosen from what the machine offers (lvmd/train/hardware.py): the CPU
capability answer is faked both ways, so the choice is tested for AVX2-only and AVX512-BF16
CPUs on whichever machine runs the suite."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
import torch

from lvmd.config import ModelConfig, load_config
from lvmd.errors import UserError
from lvmd.train import hardware
from tests.conftest import ROOT, TINY_MODEL, data_overrides, lvmd

CPU = torch.device("cpu")
TINY_AMN = ModelConfig(kind="amn", amn_d=8)


@pytest.fixture
def fake_cpu(monkeypatch):
    """fake_cpu(native_bf16, trial_error): what the capability probe and the bf16 trial say."""
    def set_answers(native: bool, trial_error: str = "") -> None:
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(hardware, "bf16_trial", lambda *a: trial_error)
    return set_answers


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_takes_bf16_only_where_the_cpu_has_it(fake_cpu, native, expected):
    fake_cpu(native)
    precision, why = hardware.resolve_precision("auto", CPU, TINY_AMN, 16, 5)
    assert precision == expected and why.startswith("precision auto: " + expected)


def test_auto_falls_back_to_fp32_where_the_model_fails_in_bf16(fake_cpu):
    fake_cpu(True, "could not create a primitive descriptor for the LSTM forward propagation primitive")
    precision, why = hardware.resolve_precision("auto", CPU, ModelConfig(kind="lstm"), 16, 5)
    assert precision == "fp32" and "bf16 lstm fails here" in why


def test_an_explicit_bf16_that_cannot_run_is_refused_in_one_line(fake_cpu):
    fake_cpu(False, "could not create a primitive descriptor for the LSTM forward propagation primitive")
    with pytest.raises(UserError) as err:
        hardware.resolve_precision("bf16", CPU, ModelConfig(kind="lstm"), 16, 5)
    assert str(err.value).startswith("train.precision: 'bf16' cannot run model.kind=lstm on cpu here (could not")
    assert "\n" not in str(err.value)


def test_explicit_bf16_runs_emulated_when_the_model_works(fake_cpu):
    fake_cpu(False)  # slow without native support, but it runs: the user asked for it
    assert hardware.resolve_precision("bf16", CPU, TINY_AMN, 16, 5)[0] == "bf16"


def test_the_bf16_trial_is_real_and_leaves_the_random_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    hardware.bf16_trial.cache_clear()
    assert hardware.bf16_trial(ModelConfig(kind="gru", hidden=16), 16, 5, "cpu") in ("", hardware.bf16_trial(
        ModelConfig(kind="gru", hidden=16), 16, 5, "cpu"))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("cpus, busy, threads", [(2, 0.0, 2), (2, 0.4, 2), (2, 1.6, 1), (2, 7.0, 1),
                                                 (16, 3.4, 13), (1, 0.0, 1)])
def test_auto_threads_leave_the_busy_cpus_to_their_owners(cpus, busy, threads):
    assert hardware.auto_threads(cpus, busy) == threads


def test_ranks_on_one_host_share_the_free_cpus(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert [hardware.auto_threads(16, 0.0), hardware.auto_threads(2, 0.0), hardware.auto_threads(2, 1.0)] == [8, 1, 1]


def test_busy_cpus_sees_a_busy_loop():
    """A real busy loop pinned to one of our CPUs: at least that CPU reads busy."""
    import os
    cpu = sorted(os.sched_getaffinity(0))[0]
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        import time
        time.sleep(0.3)
        loaded = hardware.busy_cpus(0.5)
    finally:
        loop.kill()
        loop.wait()
    assert loaded >= 0.8


def test_usable_cpus_honour_a_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")   # 1.5 CPUs
    assert hardware.usable_cpus(tmp_path) == min(2, hardware.usable_cpus(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert hardware.usable_cpus(tmp_path) == hardware.usable_cpus(tmp_path / "none")


def test_config_defaults_are_auto_and_bad_values_name_the_key():
    cfg = load_config(None, [])
    assert (cfg.train.precision, cfg.train.threads) == ("auto", "auto")
    for bad, words in (("train.threads=lots", "train.threads: 'lots'"), ("train.threads=-2", "train.threads: -2"),
                       ("train.precision=fp16", "train.precision: 'fp16'")):
        with pytest.raises(UserError, match=words):
            load_config(None, [bad])


def test_the_run_row_holds_the_resolved_choice_and_status_shows_it(tiny_data, tmp_path):
    db = tmp_path / "x.db"
    overrides = [o for o in TINY_MODEL if not o.startswith(("train.threads", "train.precision"))]
    proc = lvmd("run", *data_overrides(tiny_data), *overrides, "model.kind=amn", "train.epochs=1",
                "train.max_steps=3", "--quiet", "--db", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    device, precision, threads = sqlite3.connect(db).execute("SELECT device, precision, threads FROM runs").fetchone()
    expected = "bf16" if hardware.cpu_has_native_bf16() else "fp32"
    assert (device, precision) == ("cpu", expected) and 1 <= threads <= hardware.usable_cpus()
    status = lvmd("status", "1", "--db", str(db), cwd=tmp_path)
    assert f"cpu {expected} {threads} thread" in status.stdout


def test_a_refused_precision_leaves_no_database_behind(tiny_data, tmp_path, monkeypatch):
    """The refusal comes before the run row: run in-process with the trial answering a failure."""
    from lvmd.cli.main import main

    monkeypatch.setattr(hardware, "bf16_trial", lambda *a: "could not create a primitive descriptor")
    monkeypatch.chdir(tmp_path)
    code = main(["run", *data_overrides(tiny_data), *TINY_MODEL, "model.kind=lstm", "train.precision=bf16",
                 "--quiet", "--db", str(tmp_path / "x.db")])
    assert code == 1 and not (tmp_path / "x.db").exists() and not (tmp_path / "x-runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["run", "train.epoch=3"], "train.epoch: unknown key"),
    (["run", "train.lr=abc"], "train.lr: expected a finite number, got 'abc'"),
    (["run", "data.train=/no/such.npz", "data.val=/no/such.npz"], "/no/such.npz: no such file"),
    (["start", "model.kind=lstmm"], "model.kind: 'lstmm' is not allowed"),
])
def test_config_and_data_errors_come_before_torch_is_imported(tmp_path, argv, message):
    code = ("import sys\nfrom lvmd.cli.main import main\n"
            f"rc = main({argv!r} + ['--db', {str(tmp_path / 'x.db')!r}])\n"
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["1", "False"] and message in out.stderr, out.stderr
    assert not (tmp_path / "x.db").exists()
