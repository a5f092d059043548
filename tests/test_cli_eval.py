"""`lvmd eval` as a real subprocess: the table, strict JSON, exit codes 0 / 2 / 1."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from conftest import lvmd
from lvmd.train import checkpoint
from lvmd.cli import eval as cli_eval
from lvmd.errors import UserError
from lvmd.config import ModelConfig, config_from_dict, config_to_json
from lvmd.train.models import build_model

D = 16  # conftest's tiny_data
AMN = {"kind": "amn", "amn_d": 8, "hidden": 16}
# thresholds any finite numbers pass: only NaN (no samples) can fail a gate
LAX = """[lax]
bin_low = -1.0
bin_high = 1.0
e_max_delta = 2.0
[lax.VAL]
m0 = -1.0
margin = -2.0
r_at_1 = 0.0
r_at_5 = 0.0
mrr = 0.0
shuffled = 2.0
reversed = 2.0
leave_one_out = 2.0
repeat_pad = 2.0
cross_article = 2.0
rollout = -1.0
"""


@pytest.fixture(scope="module")
def files(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_eval")
    torch.manual_seed(0)
    model = build_model(ModelConfig(**AMN), D)
    checkpoint.save(out / "ours.pt", {"config_json": config_to_json(config_from_dict({"model": AMN})), "dim": D,
                                      "model_state": model.state_dict()})
    torch.save({"epoch": 1, "model_type": "amn", "model_state_dict": model.state_dict(),
                "model_config": {"input_dim": D, "output_dim": D}, "args": argparse.Namespace(lr=5e-4)},
               out / "pickled_best_model.pt")
    (out / "lax.toml").write_text(LAX + LAX.split("[lax.VAL]")[1].join(["[lax.OOD]", ""]))
    return out


def data_args(d):
    return ["--val", str(d / "val.npz"), "--ood", str(d / "ood.npz"), "--articles", str(d / "articles.npz"),
            "--max-samples", "80"]


def run_in_process(argv: list[str]) -> int:
    """`lvmd eval` without a second interpreter start (only this command's parser)."""
    parser = argparse.ArgumentParser(prog="lvmd")
    cli_eval.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def strict_json(path):
    def no_constants(token):
        raise AssertionError(f"non-JSON token {token} in {path}")
    return json.loads(path.read_text(), parse_constant=no_constants)


def test_exit_2_when_fewer_than_3_gates_pass_with_valid_json(tiny_data, files):
    out = files / "result.json"
    proc = lvmd("eval", str(files / "ours.pt"), *data_args(tiny_data), "--json", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "gate" in proc.stdout and "3-of-5 rule (seed): FAIL" in proc.stdout and "m_+1" in proc.stdout
    doc = strict_json(out)
    assert doc["schema"] == "lvmd-5cat-1" and doc["checkpoint_format"] == "lvmd" and doc["dim"] == D
    assert doc["gates_passed"] < 3 and doc["verdict_3of5"] is False and doc["gates_total"] == 5
    assert doc["metrics"]["VAL"]["bin_normal_mean"] is None  # NaN (an empty bin) is written as null
    assert {c["gate"] for c in doc["checks"]} == set("ABCDE") and doc["metrics"]["OOD"]["a_n"] > 0


def test_exit_0_when_the_3_of_5_verdict_passes(tiny_data, files):
    out = files / "lax.json"
    proc = lvmd("eval", str(files / "ours.pt"), *data_args(tiny_data), "--profile", str(files / "lax.toml"),
                "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = strict_json(out)
    assert doc["profile"] == "lax" and doc["verdict_3of5"] is True and doc["gates_passed"] >= 3


def test_original_checkpoint_needs_trust_then_evaluates_under_compat(tiny_data, files):
    path = str(files / "pickled_best_model.pt")
    refused = lvmd("eval", path, *data_args(tiny_data))
    assert refused.returncode == 1 and "--trust-checkpoint" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and refused.stdout == ""
    out = files / "lnsp.json"  # in-process from here: the same main(), without a second interpreter start
    code = run_in_process(["eval", path, *data_args(tiny_data), "--trust-checkpoint", "--compat", "lnsp", "--json", str(out)])
    assert code in (0, 2)
    doc = strict_json(out)
    assert doc["checkpoint_format"] == "lnsp" and doc["compat"] == "lnsp"
    assert "margin_+1" in doc["metrics"]["VAL"] and doc["checks"][1]["metric"] == "margin_+1"


def test_bad_input_exits_1_with_one_line_naming_file_and_key(tiny_data, files):
    val = np.load(tiny_data / "val.npz")
    np.savez(files / "no_targets.npz", context_sequences=val["context_sequences"], article_ids=val["article_ids"])
    args = data_args(tiny_data)
    args[1] = str(files / "no_targets.npz")
    proc = lvmd("eval", str(files / "ours.pt"), *args)
    assert proc.returncode == 1
    assert proc.stderr.startswith("lvmd: error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "no_targets.npz" in proc.stderr and "'target_vectors'" in proc.stderr

    np.savez(files / "wide.npz", **{k: val[k] for k in val.files if k not in ("context_sequences", "target_vectors")},
             context_sequences=np.pad(val["context_sequences"], ((0, 0), (0, 0), (0, 16))),
             target_vectors=np.pad(val["target_vectors"], ((0, 0), (0, 16))))
    args[1] = str(files / "wide.npz")
    with pytest.raises(UserError, match=r"ours.pt is a D=16 model but .*wide.npz has D=32"):
        run_in_process(["eval", str(files / "ours.pt"), *args])
