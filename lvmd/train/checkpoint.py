"""Checkpoints: atomic writes (temp file + os.replace) and weights_only loads.

A checkpoint holds everything resuming needs (model, optimizer, scheduler, RNG, epoch, batch,
step, best metric) and the resolved config as JSON (DESIGN rule 6).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from lvmd.errors import UserError
from store.holdpoints import hold

FORMAT = "lvmd-checkpoint-1"


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically: a reader (or a crash) never sees a half-written file. Owner-only."""
    return _write_atomically(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))


def copy(src: str | Path, dst: str | Path) -> Path:
    """Atomic copy of a written checkpoint (best.pt from last.pt, without serialising twice)."""
    def fill(fh) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, fh, 1 << 20)

    return _write_atomically(dst, fill)


def link_best(last: str | Path, best: str | Path) -> tuple[Path, str]:
    """best.pt as the checkpoint just written to last.pt, without writing it again: a hard link
    to last.pt's file, renamed over best.pt in one step ("link"). last.pt is only ever replaced
    by a rename (save), never rewritten in place, so the next save gives last.pt a new file and
    best.pt keeps this one. Where the filesystem has no hard links (EPERM, EXDEV, ENOTSUP, a
    FAT volume...), an atomic copy ("copy"). Returns (best, how)."""
    last, best = Path(last), Path(best)
    tmp = best.parent / f".{best.name}.{os.urandom(6).hex()}.tmp"   # what remove_temp_files clears
    try:
        os.link(last, tmp)
    except OSError:
        return copy(last, best), "copy"
    try:
        hold("checkpoint")
        os.replace(tmp, best)
        fsync_dir(best.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return best, "link"


def _write_atomically(path: str | Path, fill: Callable[[BinaryIO], None]) -> Path:
    """fill() writes a temp file beside `path`; fsync, owner-only, then one rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        hold("checkpoint")                   # crash tests: a kill -9 between the temp file and the rename
        os.replace(tmp, path)
        fsync_dir(path.parent)           # the rename itself must survive a power cut
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fsync_dir(folder: str | Path) -> None:
    """fsync a directory, making the renames in it durable (a no-op where the OS refuses)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Remove the `.NAME.*.tmp` files a killed writer left in `folder` (the daemon calls it under
    the run's lock, so no live writer of this run owns one). Returns what it removed."""
    removed = []
    for tmp in Path(folder).glob(".*.pt.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: cannot be loaded as an lvmd checkpoint with weights_only=True "
                        f"({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not an lvmd checkpoint (no format {FORMAT!r}); "
                        "for the original project's checkpoints use `lvmd eval`")
    return state
