"""Named points where a process can be told to stop and wait, so a crash test can kill -9 it
inside a real window (at a training step's boundary, during a 5CAT, between a checkpoint's temp
file and its rename, inside a database transaction) instead of hoping a random kill lands there.
scripts/chaos.py and the crash tests use it; nothing else sets the variables, and unset it costs
one set lookup.

LVMD_HOLD=point[,point...]   where to hold (step, fivecat, checkpoint, commit, resume-start)
LVMD_HOLD_FILE=path          each hold appends "<point> <pid>" here first (the killer waits on it)
LVMD_HOLD_SECONDS=s          how long to hold (default 60), then carry on as if nothing happened
LVMD_HOLD_AFTER=n            hold at the n-th time a point is reached (default 1)
Each point holds once per process. Stdlib only: the store layer and lvmd both call it."""
from __future__ import annotations

import os
import time

_POINTS = frozenset(p for p in os.environ.get("LVMD_HOLD", "").split(",") if p)
_held: set[str] = set()
_seen: dict[str, int] = {}


def hold(point: str) -> None:
    if point not in _POINTS or point in _held:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] < int(os.environ.get("LVMD_HOLD_AFTER", "1")):
        return
    _held.add(point)
    path = os.environ.get("LVMD_HOLD_FILE")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{point} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
    time.sleep(float(os.environ.get("LVMD_HOLD_SECONDS", "60")))
