"""Loading checkpoints for evaluation (lvmd/eval/legacy.py): lvmd's own and the original's."""
from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import pytest
import torch

from lvmd.train import checkpoint

from lvmd.data import formats as data

from lvmd.eval import fivecat
from lvmd.config import ModelConfig, config_from_dict, config_to_json
from lvmd.errors import UserError
from lvmd.eval.legacy import load_predictor
from lvmd.train.models import build_model

D = 16
TINY = {"transformer": dict(d_model=16, nhead=2, num_layers=2, ff=32),
        "lstm": dict(hidden=12, lstm_layers=2), "gru": dict(d_model=12, num_layers=2),
        "amn": dict(amn_d=8, hidden=16)}
# what the original wrote as model_config for each kind (LEGACY.md); sizes come from the weights
ORIGINAL_CONFIG = {"transformer": {"input_dim": D, "d_model": 16, "nhead": 2, "num_layers": 2, "dropout": 0.1,
                                   "output_dim": D},
                   "lstm": {"input_dim": D, "hidden_dim": 12, "num_layers": 2, "output_dim": D},
                   "gru": {"input_dim": D, "d_model": 12, "num_layers": 2, "output_dim": D},
                   "amn": {"input_dim": D, "d_model": 8, "hidden_dim": 16, "output_dim": D}}


def make_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(kind=kind, **TINY[kind]), D).eval()


def save_original(path, kind, model, **extra):
    torch.save({"epoch": 3, "model_type": kind, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": {}, "val_loss": 0.001, "val_cosine": 0.5,
                "model_config": ORIGINAL_CONFIG[kind], "args": {"lr": 5e-4, "device": "cpu", "resume": None},
                **extra}, path)
    return path


def save_lvmd(path, kind, model):
    cfg = config_from_dict({"model": {"kind": kind, **TINY[kind]}})
    checkpoint.save(path, {"config_json": config_to_json(cfg), "dim": D, "model_state": model.state_dict(),
                           "optimizer_state": {}, "epoch": 1})
    return path


@pytest.mark.parametrize("kind", ["transformer", "lstm", "gru", "amn"])
def test_original_checkpoints_load_to_the_same_function(tmp_path, kind):
    model = make_model(kind)
    loaded, info = load_predictor(save_original(tmp_path / "best_model.pt", kind, model))
    assert (info["format"], info["kind"], info["dim"], info["epoch"]) == ("lnsp", kind, D, 3)
    assert not loaded.training
    x = torch.randn(7, 5, D)
    with torch.no_grad():
        assert torch.allclose(loaded(x)[1], model(x)[1], atol=1e-6)


def test_original_and_lvmd_checkpoints_of_the_same_weights_evaluate_the_same(tmp_path):
    arts = data.synth_articles(n_articles=16, min_chunks=12, max_chunks=16, dim=D, seed=2)
    ids = np.unique(arts.article_ids)
    val, ood = data.build_windows(arts, article_subset=ids[:8]), data.build_windows(arts, article_subset=ids[8:])
    model = make_model("transformer", seed=1)
    results = []
    for path in (save_original(tmp_path / "orig.pt", "transformer", model),
                 save_lvmd(tmp_path / "ours.pt", "transformer", model)):
        loaded, info = load_predictor(path)
        results.append(fivecat.evaluate(lambda x: loaded(x)[1], val, ood, arts, max_samples=60))
    assert info["format"] == "lvmd" and info["model"] == ModelConfig(kind="transformer", **TINY["transformer"])
    same = [{k: v for k, v in r.to_dict().items() if k != "duration_s"} for r in results]  # NaN -> None
    assert same[0] == same[1] and same[0]["metrics"]["VAL"]["a_n"] > 0


def test_a_pickled_checkpoint_is_refused_unless_trusted(tmp_path):
    path = save_original(tmp_path / "pickled.pt", "amn", make_model("amn"),
                         args=argparse.Namespace(lr=5e-4))  # an object weights_only refuses
    with pytest.raises(UserError) as err:
        load_predictor(path)
    assert "--trust-checkpoint" in str(err.value) and "\n" not in str(err.value)
    _, info = load_predictor(path, trust=True)
    assert info["kind"] == "amn"


class _CallsAFunction:
    """Unpickles by calling a function (os.getpid here; a hostile file's would be worse)."""

    def __reduce__(self):
        return os.getpid, ()


def test_a_trusted_checkpoint_is_still_never_allowed_to_call_a_function(tmp_path):
    path = save_original(tmp_path / "calls.pt", "amn", make_model("amn"), args=_CallsAFunction())
    with pytest.raises(UserError) as err:
        load_predictor(path, trust=True)
    assert "getpid (not a class)" in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_unusable_files_fail_in_one_line_naming_the_problem(tmp_path):
    amn = make_model("amn")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": amn.state_dict()}, tmp_path / "nokeys.pt")
    save_original(tmp_path / "kind.pt", "amn", amn, model_type="mlp")
    state = amn.state_dict()
    state.pop("query_encoder.bias")
    torch.save({"model_type": "amn", "model_state_dict": state}, tmp_path / "missing.pt")
    lstm = build_model(ModelConfig(kind="lstm", hidden=8, lstm_layers=1), D + 1)
    wide = {k: v for k, v in lstm.state_dict().items() if not k.startswith("output_proj")}
    wide |= {"output_proj.weight": torch.zeros(D, 8), "output_proj.bias": torch.zeros(D)}  # 17-D in, 16-D out
    torch.save({"model_type": "lstm", "model_state_dict": wide}, tmp_path / "769.pt")
    cases = {"absent.pt": "no such checkpoint file", "junk.pt": "cannot read the checkpoint",
             "nokeys.pt": "neither an lvmd checkpoint", "kind.pt": "'model_type' is 'mlp'",
             "missing.pt": "query_encoder.bias", "769.pt": "input D=17 but output D=16"}
    for name, message in cases.items():
        with pytest.raises(UserError) as err:
            load_predictor(tmp_path / name)
        assert message in str(err.value) and name in str(err.value) and "\n" not in str(err.value), name


def test_the_weights_decide_sizes_the_original_config_left_out(tmp_path):
    model = make_model("gru")
    path = save_original(tmp_path / "gru.pt", "gru", model, model_config={})
    _, info = load_predictor(path)
    assert dataclasses.asdict(info["model"]) == dataclasses.asdict(ModelConfig(kind="gru", **TINY["gru"]))
