"""Run configuration: frozen dataclasses loaded from TOML plus `key=value` overrides.

Layering, lowest first: dataclass defaults < compat defaults < loss preset < file < overrides.
Every error names the key, the value and what is allowed (ConfigError, one line).
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from lvmd.bounds import (MAX_NAME, MAX_STEPS, MAX_THREADS, RAMP_RANGES, RANGES, Bounds,  # noqa: F401 (re-exported)
                         name_ok, out_of_range, usable_cpus)
from lvmd.errors import UserError
from store.paths import not_regular


class ConfigError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class RampStage:
    until: int          # the stage holds while epoch < until (epochs counted from 0); the last stage's is ignored
    m_gap: float        # G1 gap margin
    frac: float         # target directional share (v2.2: ρ target)
    rho_cap: float = 0.0  # per-stage ρ cap (v2.2); 0 = use loss.rho_cap


V21_RAMP = (RampStage(3, 0.02, 0.10), RampStage(6, 0.03, 0.15), RampStage(9, 0.04, 0.20), RampStage(10**9, 0.05, 0.25))
# v1 (SPEC §3), the documented original: e<2: .02/.10, e<5: .04/.20, else .05/.25.
V1_RAMP = (RampStage(2, 0.02, 0.10), RampStage(5, 0.04, 0.20), RampStage(10**9, 0.05, 0.25))
# v2.2: epochs 1–2, 3–4, 5–8, 9+ in the original's 1-based count = e<2, e<4, e<8, rest.
V22_RAMP = (RampStage(2, 0.02, 0.15, 0.35), RampStage(4, 0.04, 0.25, 0.45),
            RampStage(8, 0.06, 0.35, 0.50), RampStage(10**9, 0.07, 0.35, 0.50))


@dataclass(frozen=True)
class DataConfig:
    train: str = ""          # sequence NPZ (lvmd's own or the original's)
    val: str = ""            # sequence NPZ for per-epoch validation and 5CAT VAL
    ood: str = ""            # optional sequence NPZ for 5CAT OOD
    articles: str = ""       # articles NPZ: needed for prev="true", the R@5 check and 5CAT
    ood_articles: str = ""   # articles of the OOD set when they live in another file
    allow_pickle: bool = False  # read the original's pickled `metadata` (runs code from the file)
    max_train: int = 0       # use only the first N training sequences (0 = all)


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "transformer"   # transformer | lstm | gru | amn
    d_model: int = 512          # transformer / gru width; amn attention width is amn_d
    nhead: int = 8
    num_layers: int = 4         # transformer layers / gru blocks / lstm layers (lstm default 2)
    ff: int = 2048
    dropout: float = 0.1
    hidden: int = 512           # lstm hidden size / amn MLP hidden size
    lstm_layers: int = 2
    lstm_dropout: float = 0.2
    amn_d: int = 256


@dataclass(frozen=True)
class LossConfig:
    preset: str = "v2.1"        # mse | v1 | v2.1 | v2.2
    directional: bool = True    # False = plain MSE (telemetry still computed)
    alpha: float = 0.7          # G1 mix of gap vs ratio term
    gamma: float = 4.0          # G1 softplus sharpness
    m_ratio: float = 0.05       # G1 ratio margin
    tau: float = 0.10           # G2 positive floor
    beta: float = 1e-3          # G2 weight
    eta: float = 1e-3           # G3 weight
    kappa: float = 0.0          # v2.2 orthogonality weight
    lam_min: float = 1e-4       # G4 clamp
    lam_max: float = 0.02
    rho_cap: float = 0.25       # G4 cap (0 = no cap)
    rho_boost: float = 0.0      # v2.2: scale λ up when ρ < rho_boost·target (0 = off)
    skip: bool = True           # G5
    skip_weak_pos: float = 0.05  # G5: pos̄ < this and neḡ < skip_neg is a collapse sign
    skip_neg: float = -0.05
    prev: str = "ctx-2"         # y_prev: ctx-2 (original) | true (chunk before the target)
    ramp: tuple[RampStage, ...] = V21_RAMP


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    seed: int = 0
    device: str = "auto"        # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"     # auto (bf16 where native, else fp32) | fp32 | bf16 (autocast)
    threads: int | str = "auto"  # torch CPU threads: auto (the usable CPUs left free) | N | 0 (torch's default)
    best_metric: str = "val_loss"  # val_loss (the original's) | margin
    checkpoint_every: int = 0   # also checkpoint every N steps (0 = at epoch ends only)
    telemetry_block: int = 64   # steps per device→host copy of telemetry
    flush_seconds: float = 0.5  # SQLite commit interval
    last_slot_noise: float = 0.0  # share of rows whose ctx[-1] is corrupted (compat lnsp: 0.15)
    noise_sigma: float = 0.03
    swap_share: float = 0.05    # of the corrupted rows, share whose ctx[-1] is replaced by ctx[-2]
    max_steps: int = 0          # stop after N optimizer steps (0 = no limit)
    # Several processes (torchrun, `--nproc N`): batch_size above is the GLOBAL batch, split over
    # the ranks, so N ranks take the same steps as one process (lvmd/train/distributed.py).
    backend: str = "auto"       # auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    device_data_budget: int = 0  # bytes of a split kept on the device; larger splits stream from
                                 # a memory map (0 = auto: half the GPU's memory; no limit on CPU)


@dataclass(frozen=True)
class EvalConfig:
    fivecat_every: int = 1      # full 5CAT every N epochs (0 = never)
    profile: str = "gtr-t5"     # threshold profile
    max_samples: int = 5000
    check_samples: int = 2000   # per-epoch cheap check (margin, R@5) sample cap


@dataclass(frozen=True)
class WatchConfig:
    action: str = "warn"        # warn | pause | stop
    val_cos_floor: float = 0.05  # val cos below this is a collapse sign
    val_cos_drop: float = 0.15  # ... or falling by more than this from its best
    skip_window: int = 200      # steps in the skip-rate window
    warmup_steps: int = 500     # step checks ignore steps up to this one (an untrained model skips often)
    skip_rate_max: float = 0.10
    rho_over_cap_share: float = 0.05
    r_at_5_floor: float = 0.50


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    compat: str = "none"        # none | lnsp (reproduce the original, defects included)
    out_dir: str = ""           # checkpoints and logs; default <db dir>/<db file name>-runs-<db id>/<run id>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "compat": ("none", "lnsp"),
    "model.kind": ("transformer", "lstm", "gru", "amn"),
    "loss.preset": ("mse", "v1", "v2.1", "v2.2"),
    "loss.prev": ("ctx-2", "true"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.backend": ("auto", "gloo", "nccl"),
    "train.best_metric": ("val_loss", "margin"),
    "watch.action": ("warn", "pause", "stop"),
}

# What each preset changes from LossConfig's defaults (which are v2.1's).
PRESETS: dict[str, dict[str, Any]] = {
    "v2.1": {},
    "mse": {"directional": False, "beta": 0.0, "eta": 0.0, "skip": False},
    "v1": {"alpha": 1.0, "gamma": 8.0, "lam_max": 0.05, "rho_cap": 0.0, "skip": False,
           "beta": 0.0, "eta": 0.0, "ramp": V1_RAMP},
    "v2.2": {"lam_max": 0.03, "tau": 0.12, "beta": 2e-3, "kappa": 5e-4, "rho_boost": 0.8,
             "ramp": V22_RAMP},
}
COMPAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "lnsp": {"train": {"last_slot_noise": 0.15}},
}


# -- loading ---------------------------------------------------------------------------
def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The resolved config from a TOML file (or None) and `section.key=value` overrides."""
    user: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        why = not_regular(path)
        if why is not None:                   # a FIFO would block the read below
            raise ConfigError(f"{why}; a config is a TOML file")
        try:
            user = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a TOML text file (not UTF-8)") from None
        except OSError as exc:  # a directory, no permission, ...
            raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from None
        _resolve_paths(user, path.resolve().parent)     # a path in a file is relative to that file
    for item in overrides:
        key, value = parse_override(item)
        if not isinstance(value, str) and _hint(key) is str:
            value = item.split("=", 1)[1].strip()   # loss.prev=true is the string "true", not TOML's bool
        if key in PATH_KEYS and isinstance(value, str) and value:
            value = str((Path.cwd() / value).resolve())  # a path typed on the command line: to where it is typed
        _set_dotted(user, key, value)
    cfg = config_from_dict(user)
    check_host(cfg)
    return cfg


def check_host(cfg: RunConfig) -> None:
    """What a NEW run may ask of this host (a stored config is not held to it: it may resume on
    a larger machine than the one it was made on, or be read for its checkpoint)."""
    threads, cpus = cfg.train.threads, usable_cpus()
    if isinstance(threads, int) and threads > cpus:
        raise ConfigError(f"train.threads: {threads} is more than the {cpus} usable CPUs of this host; "
                          f"choose auto or 1 to {cpus}")


def check_fits(cfg: RunConfig, train_rows: int) -> None:
    """The bounds that depend on the data: a batch no larger than the training split (a larger
    one is a single step an epoch that silently trains on less than asked), and a total step
    count within MAX_STEPS."""
    if cfg.train.batch_size > train_rows:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than the {train_rows} training "
                          f"sequences of data.train; choose 1 to {train_rows}")
    steps = cfg.train.epochs * -(-train_rows // cfg.train.batch_size)
    if cfg.train.max_steps:
        steps = min(steps, cfg.train.max_steps)
    if steps > MAX_STEPS:
        raise ConfigError(f"train.epochs: {cfg.train.epochs} epochs of {-(-train_rows // cfg.train.batch_size)} "
                          f"steps is {steps} steps, over the {MAX_STEPS:,} a run may take; lower train.epochs "
                          f"or set train.max_steps")


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=3")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as model.kind=lstm
    return key, value


def config_from_dict(user: dict[str, Any]) -> RunConfig:
    """Apply compat defaults and the loss preset under `user`, then build and validate."""
    compat = user.get("compat", "none")
    preset = user.get("loss", {}).get("preset", "v2.1") if isinstance(user.get("loss"), dict) else "v2.1"
    _check_choice("compat", compat)
    _check_choice("loss.preset", preset)
    merged: dict[str, Any] = {}
    for layer in (COMPAT_DEFAULTS[compat], {"loss": PRESETS[preset]}, user):
        _deep_merge(merged, layer)
    cfg = _build(RunConfig, merged, "")
    validate(cfg)
    return cfg


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_json(cfg: RunConfig) -> str:
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"{key}: unknown key; allowed here: {', '.join(sorted(names))}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{prefix.rstrip('.')}: missing {', '.join(missing)} (each needs {', '.join(required)}; "
                          f"got {data!r})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):
            return value
        return _build(hint, value, key + ".")
    if typing.get_origin(hint) is tuple:  # the ramp: a list of tables
        (item_type, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{key}: expected a non-empty list of tables, got {value!r}")
        return tuple(item if isinstance(item, item_type) else _build(item_type, item, f"{key}[{i}].")
                     for i, item in enumerate(value))
    if typing.get_origin(hint) is types.UnionType:  # e.g. int | str: the first type that takes it
        for option in typing.get_args(hint):
            if isinstance(value, option) and not isinstance(value, bool):
                return value
        names = " or ".join("an integer" if t is int else "a string" for t in typing.get_args(hint))
        raise ConfigError(f"{key}: expected {names}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover


def check_range(key: str, value: Any, bounds: Bounds) -> None:
    why = out_of_range(key, value, bounds)
    if why is not None:
        raise ConfigError(why)


def _check_choice(key: str, value: Any) -> None:
    allowed = CHOICES[key]
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(allowed)}")


def validate(cfg: RunConfig) -> None:
    for key in CHOICES:
        _check_choice(key, _get_dotted(cfg, key))
    device = cfg.train.device
    if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
        raise ConfigError(f"train.device: {device!r} is not allowed; choose auto, cpu, cuda, cuda:N or mps")
    for key, bounds in RANGES.items():
        check_range(key, _get_dotted(cfg, key), bounds)
    threads = cfg.train.threads
    if isinstance(threads, str) and threads != "auto" or isinstance(threads, int) and not 0 <= threads <= MAX_THREADS:
        raise ConfigError(f"train.threads: {threads!r} is not allowed; choose auto, 0 (torch's default) or a count "
                          f"of CPUs (at most {MAX_THREADS})")
    if not name_ok(cfg.name):
        raise ConfigError(f"name: {cfg.name[:40]!r}{f'… ({len(cfg.name)} characters)' if len(cfg.name) > 40 else ''}"
                          f" is not allowed; a run name is 1 to {MAX_NAME} printable characters (no tabs, "
                          f"newlines, direction controls, or spaces at either end)")
    if cfg.loss.lam_min > cfg.loss.lam_max:
        raise ConfigError(f"loss.lam_min: {cfg.loss.lam_min!r} must not exceed loss.lam_max ({cfg.loss.lam_max!r})")
    if cfg.model.kind == "transformer" and cfg.model.d_model % cfg.model.nhead:
        raise ConfigError(f"model.nhead: {cfg.model.nhead} must divide model.d_model ({cfg.model.d_model})")
    untils = [s.until for s in cfg.loss.ramp]
    if any(b <= a for a, b in zip(untils, untils[1:])) or untils[0] <= 0:
        raise ConfigError(f"loss.ramp: stage 'until' epochs must be positive and increasing, got {untils}")
    for i, stage in enumerate(cfg.loss.ramp):
        for name, bounds in RAMP_RANGES.items():
            check_range(f"loss.ramp[{i}].{name}", getattr(stage, name), bounds)


PATH_KEYS = ("data.train", "data.val", "data.ood", "data.articles", "data.ood_articles", "out_dir")


def absolute_overrides(overrides: list[str]) -> list[str]:
    """`data.train=x.npz` as typed here, made absolute, for a command that stores the overrides to
    apply them later from another folder (`lvmd sweep`, then `lvmd sweep resume`)."""
    out = []
    for item in overrides:
        key, _, text = item.partition("=")
        if key.strip() in PATH_KEYS and text.strip():
            item = f"{key.strip()}={(Path.cwd() / text.strip()).resolve()}"
        out.append(item)
    return out


def _resolve_paths(user: dict, base: Path) -> None:
    """The config file's own paths made absolute against `base` (its folder), in place."""
    for key in PATH_KEYS:
        *sections, name = key.split(".")
        table = user
        for section in sections:
            table = table.get(section) if isinstance(table, dict) else None
        if isinstance(table, dict) and isinstance(table.get(name), str) and table[name]:
            table[name] = str((base / table[name]).resolve())


def _deep_merge(into: dict, layer: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, dict) else value
    return None


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = d.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {part!r} is not a section")
        d = nxt
    d[parts[-1]] = value


def _hint(key: str) -> Any:
    """The declared type of a dotted config key (None when there is no such key)."""
    cls: Any = RunConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        cls = typing.get_type_hints(cls).get(part)
    return cls


def _get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def stage_for_epoch(ramp: tuple[RampStage, ...], epoch: int) -> RampStage:
    """The ramp stage in force at `epoch` (counted from 0)."""
    for stage in ramp:
        if epoch < stage.until:
            return stage
    return ramp[-1]
