"""Checkpoints: atomic writes (temp file + os.replace) and weights_only loads.

A checkpoint holds everything resuming needs (model, optimizer, scheduler, RNG, epoch, batch,
step, best metric) and the resolved config as JSON (DESIGN rule 6).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from lvmd.errors import UserError
from store.paths import not_regular
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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if _no_space(exc):   # torch reports it as "[enforce fail at inline_container.cc] unexpected pos"
            raise DiskFull(f"{path.parent}: disk full: cannot write {path.name} (no space left on the device); "
                           "free some space, then `lvmd resume` the run") from exc
        raise
    return path


class DiskFull(UserError):
    """A checkpoint could not be written for want of space (named so, not as torch's zip error)."""


def _no_space(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:          # torch wraps the OSError; look down the chain
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


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
    unreadable(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: cannot be loaded as an lvmd checkpoint with weights_only=True "
                        f"({load_error(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not an lvmd checkpoint (no format {FORMAT!r}); "
                        "for the original project's checkpoints use `lvmd eval`")
    return state


def unreadable(path: Path) -> None:
    """Refuse, naming it, what torch.load would hang on (a FIFO) or misreport (an empty file)."""
    why = not_regular(path)
    if why is not None:
        raise UserError(f"{why}; a checkpoint is a regular file")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not a checkpoint; lvmd writes checkpoints whole "
                        "(temp file + rename), so something else truncated it")
    with open(path, "rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"            # torch's archive format
    if zipped and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: truncated ({size:,} bytes): the archive ends before its directory; "
                        "a copy or a disk that was cut off")


def load_error(exc: Exception) -> str:
    """torch.load's failure in a few words: a cut-off archive is called truncated."""
    text = str(exc).strip()
    if "central directory" in text or "unexpected end" in text.lower():
        return "truncated: the archive ends early"
    return text.splitlines()[0][:200] if text else type(exc).__name__
