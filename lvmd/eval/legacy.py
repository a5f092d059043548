"""Load a model for evaluation from lvmd's own checkpoints and from the original project's
`best_model.pt` / `final_model.pt` (LEGACY.md). lvmd's models use the original's parameter
names, so an original checkpoint is a key-for-key load once its sizes are known.
"""
from __future__ import annotations

import importlib
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvmd.config import ModelConfig, config_from_dict
from lvmd.errors import UserError
from lvmd.train import checkpoint
from lvmd.train.models import build_model

LVMD_FORMAT = "lvmd-checkpoint-1"
KINDS = ("transformer", "lstm", "gru", "amn")


def load_predictor(path: str | Path, *, device: str = "cpu", trust: bool = False) -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, info) from either checkpoint format.
    info: format ("lvmd" | "lnsp"), kind, dim, model (ModelConfig), epoch (or None), path."""
    ckpt = _torch_load(Path(path), device, trust)
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a checkpoint (a {type(ckpt).__name__}, expected a dict)")
    if ckpt.get("format") == LVMD_FORMAT:
        model, info = _from_lvmd(ckpt, path)
    elif "model_state_dict" in ckpt:
        model, info = _from_original(ckpt, path)
    else:
        keys = ", ".join(sorted(map(str, ckpt))[:8])
        raise UserError(f"{path}: neither an lvmd checkpoint (format {LVMD_FORMAT!r}) nor an original one "
                        f"('model_state_dict'); keys: {keys}")
    return model.to(device).eval(), {**info, "path": str(path)}


def _torch_load(path: Path, device: str, trust: bool) -> Any:
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint file")
    checkpoint.unreadable(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        # a torch archive (zip) whose pickle holds objects weights_only refuses; junk fails here too
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path}: cannot read the checkpoint (not a torch checkpoint archive)") from None
        if not trust:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            what = f" (it holds {found.group(1)})" if found else ""
            raise UserError(f"{path}: holds Python objects beyond tensors and plain values{what}; loading it "
                            "runs code stored in the file. If you trust it, pass --trust-checkpoint") from None
    except Exception as exc:  # truncated, wrong device: one line, no traceback
        raise UserError(f"{path}: cannot read the checkpoint ({checkpoint.load_error(exc)})") from None
    # The user vouched for the file (--trust-checkpoint): still a weights_only load, with the
    # classes the file names allowed (e.g. an original checkpoint's argparse.Namespace `args`).
    # A name that is not a class (a function the pickle would call) stays refused.
    try:
        allowed = [_trusted_class(path, name) for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=device, weights_only=True)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot read the checkpoint ({_first_line(exc)})") from None


def _trusted_class(path: Path, name: str) -> type:
    """The class a trusted checkpoint names by `module.Qualname`; only classes are allowed."""
    module, _, qualname = name.rpartition(".")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"{path}: names {name}, which this Python cannot import") from None
    if not isinstance(found, type):
        raise UserError(f"{path}: its pickle calls {name} (not a class); lvmd does not run it even with "
                        "--trust-checkpoint") from None
    return found


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _from_lvmd(ckpt: dict, path) -> tuple[nn.Module, dict]:
    for key in ("config_json", "dim", "model_state"):
        if key not in ckpt:
            raise UserError(f"{path}: lvmd checkpoint without key {key!r}")
    try:
        cfg = config_from_dict(json.loads(ckpt["config_json"]))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: key 'config_json' is not valid JSON ({exc})") from None
    dim = int(ckpt["dim"])
    model = build_model(cfg.model, dim)
    _load_state(model, ckpt["model_state"], path, "model_state")
    return model, {"format": "lvmd", "kind": cfg.model.kind, "dim": dim, "model": cfg.model,
                   "epoch": ckpt.get("epoch"), "compat": cfg.compat, "context_len": ckpt.get("context_len")}


def _from_original(ckpt: dict, path) -> tuple[nn.Module, dict]:
    kind = str(ckpt.get("model_type", "")).lower()
    if kind not in KINDS:
        raise UserError(f"{path}: key 'model_type' is {ckpt.get('model_type')!r}; expected one of {', '.join(KINDS)}")
    state = ckpt["model_state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: key 'model_state_dict' is not a state dict")
    config = ckpt.get("model_config") or {}
    mcfg, dim = original_model_config(kind, state, config, path)
    model = build_model(mcfg, dim)
    _load_state(model, state, path, "model_state_dict")
    return model, {"format": "lnsp", "kind": kind, "dim": dim, "model": mcfg, "epoch": ckpt.get("epoch"),
                   "compat": "lnsp", "context_len": ckpt.get("context_len") or config.get("context_length")}


def original_model_config(kind: str, state: dict, config: dict, path: Any = "checkpoint") -> tuple[ModelConfig, int]:
    """Our ModelConfig and D for an original checkpoint. Sizes are read off the weights (they
    cannot disagree with them); what weights do not show (heads, dropout) comes from
    model_config, else the original's defaults."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise UserError(f"{path}: 'model_state_dict' has no {key!r} for a {kind} model")
        return tuple(state[key].shape)

    def count(pattern: str) -> int:
        return len({m.group(1) for k in state if (m := re.match(pattern, k))})

    dropout = float(config.get("dropout", 0.1))
    if kind == "transformer":
        d_model, dim = shape("input_proj.weight")
        mcfg = ModelConfig(kind=kind, d_model=d_model, nhead=int(config.get("nhead", 8)),
                           num_layers=count(r"transformer_decoder\.layers\.(\d+)\."),
                           ff=shape("transformer_decoder.layers.0.linear1.weight")[0], dropout=dropout)
        out_dim = shape("head.3.weight")[0]
    elif kind == "lstm":
        hidden4, dim = shape("lstm.weight_ih_l0")
        mcfg = ModelConfig(kind=kind, hidden=hidden4 // 4, lstm_layers=count(r"lstm\.weight_ih_l(\d+)$"),
                           lstm_dropout=float(config.get("dropout", 0.2)))
        out_dim = shape("output_proj.weight")[0]
    elif kind == "gru":
        d_model, dim = shape("input_proj.weight")
        mcfg = ModelConfig(kind=kind, d_model=d_model, num_layers=count(r"blocks\.(\d+)\."))
        out_dim = shape("output_proj.weight")[0]
    else:  # amn
        amn_d, dim = shape("context_encoder.weight")
        mcfg = ModelConfig(kind=kind, amn_d=amn_d, hidden=shape("residual_net.0.weight")[0])
        out_dim = shape("residual_net.6.weight")[0]
    if out_dim != dim:  # e.g. the original's 769-D "positional" inputs with 768-D outputs
        raise UserError(f"{path}: input D={dim} but output D={out_dim}; lvmd models map D to D "
                        "(checkpoints trained with an extra positional input dimension are not supported)")
    return mcfg, dim


def _load_state(model: nn.Module, state: dict, path, key: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:240]
        raise UserError(f"{path}: key {key!r} does not fit the model it describes ({detail})") from None
