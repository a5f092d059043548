"""5CAT threshold profiles: lvmd/eval/fivecat/profiles.toml, or a TOML file of your own."""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lvmd.errors import UserError

ABLATIONS = ("shuffled", "reversed", "leave_one_out", "repeat_pad", "cross_article")
PROFILE_KEYS = ("m0", "margin", "r_at_1", "r_at_5", "mrr", *ABLATIONS, "rollout")


@dataclass(frozen=True)
class Profile:
    name: str
    bin_low: float
    bin_high: float
    e_max_delta: float
    thresholds: dict[str, dict[str, float]]  # "VAL"/"OOD" -> PROFILE_KEYS -> threshold


def _profile_tables(path: Path | None = None) -> dict[str, Any]:
    if path is None:
        return tomllib.loads(resources.files(__package__).joinpath("profiles.toml").read_text())
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such profile file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None


def profile_names() -> list[str]:
    return sorted(_profile_tables())


def load_profile(name: str) -> Profile:
    """A profile of lvmd/eval/fivecat/profiles.toml by name, or from your own file: "FILE.toml" (its only
    table) or "FILE.toml:NAME" (same format as lvmd/eval/fivecat/profiles.toml)."""
    path = None
    if ".toml" in name:
        file, _, name = name.partition(".toml")
        path = Path(file + ".toml")
        name = name.removeprefix(":")
    tables = _profile_tables(path)
    where_file = str(path) if path else "lvmd/eval/fivecat/profiles.toml"
    if path is not None and not name:
        if len(tables) != 1:
            raise UserError(f"{path}: holds {len(tables)} profiles ({', '.join(tables)}); pick one as {path}:NAME")
        name = next(iter(tables))
    if name not in tables:
        raise UserError(f"5CAT profile {name!r} is not in {where_file}; choose one of {', '.join(sorted(tables))}")
    table = tables[name]
    where = f"{where_file} [{name}]"
    top = {k: _number(table, k, where) for k in ("bin_low", "bin_high", "e_max_delta")}
    if not top["bin_low"] <= top["bin_high"]:
        raise UserError(f"{where}: bin_low {top['bin_low']} must not exceed bin_high {top['bin_high']}")
    thresholds = {}
    for split in ("VAL", "OOD"):
        sub = table.get(split)
        if not isinstance(sub, dict):
            raise UserError(f"{where_file}: missing table [{name}.{split}]")
        thresholds[split] = {k: _number(sub, k, f"{where_file} [{name}.{split}]") for k in PROFILE_KEYS}
    return Profile(name, top["bin_low"], top["bin_high"], top["e_max_delta"], thresholds)


def _number(table: dict, key: str, where: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: key {key!r} must be a finite number, got {value!r}")
    return float(value)
