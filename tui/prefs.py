"""What you chose to chart, remembered per database: each slot's metric and log scale, the x axis
and the smoothing, in one small JSON file of yours (never in the database: the TUI writes only
commands there). The database is named by its id (db_properties.db_id), so a moved or copied
file keeps its charts; a file without one is named by its resolved path.

    $LVMD_TUI_STATE, else $XDG_STATE_HOME/lvmd/tui.json, else ~/.local/state/lvmd/tui.json

What is read back is data: unknown slots, metric keys lvmd cannot draw and values of the wrong
type are ignored, and a file that is not JSON is treated as empty (and replaced on the next save).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tui.metrics import DEFAULT_SPECS, valid_key
from tui.plots import SMOOTHING
from tui.xaxis import KINDS

MAX_DATABASES = 200  # the file keeps the most recently saved ones


def state_path() -> Path:
    if os.environ.get("LVMD_TUI_STATE"):
        return Path(os.environ["LVMD_TUI_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "lvmd" / "tui.json"


@dataclass
class ChartPrefs:
    slots: dict[str, str] = field(default_factory=dict)   # slot -> metric key (absent: the slot's default)
    log: dict[str, bool] = field(default_factory=dict)     # slot -> log scale (absent: the slot's default)
    x_kind: str = "step"
    smooth: float = 0.0

    @classmethod
    def from_json(cls, raw: object) -> "ChartPrefs":
        raw = raw if isinstance(raw, dict) else {}
        slots, log = raw.get("slots"), raw.get("log")
        prefs = cls(
            slots={k: v for k, v in (slots.items() if isinstance(slots, dict) else ())
                   if k in DEFAULT_SPECS and valid_key(v)},
            log={k: v for k, v in (log.items() if isinstance(log, dict) else ()) if k in DEFAULT_SPECS
                 and isinstance(v, bool)})
        if raw.get("x") in KINDS:
            prefs.x_kind = raw["x"]
        if raw.get("smooth") in SMOOTHING:
            prefs.smooth = raw["smooth"]
        return prefs

    def to_json(self) -> dict:
        return {"slots": self.slots, "log": self.log, "x": self.x_kind, "smooth": self.smooth}


def _read_all(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("databases", {}) if isinstance(data, dict) and isinstance(data.get("databases"), dict) else {}


def load(db_key: str, path: Path | None = None) -> ChartPrefs:
    return ChartPrefs.from_json(_read_all(path or state_path()).get(db_key))


def save(db_key: str, prefs: ChartPrefs, path: Path | None = None) -> None:
    """Write the file whole (a temp file renamed over it, owner-only); OSError is the caller's to report."""
    path = path or state_path()
    databases = _read_all(path)
    databases.pop(db_key, None)
    databases[db_key] = prefs.to_json()  # newest last: the oldest go first when the file is full
    databases = dict(list(databases.items())[-MAX_DATABASES:])
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"databases": databases}, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
