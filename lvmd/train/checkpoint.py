"""Checkpoints: atomic writes (temp file + os.replace) and weights_only loads.

A checkpoint holds everything resuming needs (model, optimizer, scheduler, RNG, epoch, batch,
step, best metric) and the resolved config as JSON (DESIGN rule 6), and its identity: which
database and run wrote it, a hash of the run's config and the sha256 of every data file
(DESIGN rule 11). A resume proves the identity against the run before it uses the file.
"""
from __future__ import annotations

import hashlib
import json
import errno
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from lvmd.errors import UserError
from store.holdpoints import hold
from store.paths import not_regular
from store.runs import pid_alive

FORMAT = "lvmd-checkpoint-1"


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically: a reader (or a crash) never sees a half-written file. Owner-only."""
    run_id = (state.get("identity") or {}).get("run_id")
    return _write_atomically(path, lambda fh: torch.save({"format": FORMAT, **state}, fh), run_id=run_id)


def copy(src: str | Path, dst: str | Path, *, run_id: int | None = None) -> Path:
    """Atomic copy of a written checkpoint (best.pt from last.pt, without serialising twice)."""
    def fill(fh) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, fh, 1 << 20)

    return _write_atomically(dst, fill, run_id=run_id)


def link_best(last: str | Path, best: str | Path, *, run_id: int | None = None) -> tuple[Path, str]:
    """best.pt as the checkpoint just written to last.pt, without writing it again: a hard link
    to last.pt's file, renamed over best.pt in one step ("link"). last.pt is only ever replaced
    by a rename (save), never rewritten in place, so the next save gives last.pt a new file and
    best.pt keeps this one. Where the filesystem has no hard links (EPERM, EXDEV, ENOTSUP, a
    FAT volume...), an atomic copy ("copy"). Returns (best, how)."""
    last, best = Path(last), Path(best)
    tmp = best.parent / f"{temp_prefix(best.name, run_id)}{os.urandom(6).hex()}.tmp"   # remove_temp_files' kind
    try:
        os.link(last, tmp)
    except OSError:
        return copy(last, best, run_id=run_id), "copy"
    try:
        hold("checkpoint")
        os.replace(tmp, best)
        fsync_dir(best.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return best, "link"


def temp_prefix(name: str, run_id: int | None, pid: int | None = None) -> str:
    """`.last.pt.lvmd-r3-p1234.`: a temp file's name says which run and which process made it,
    so a later start removes only what a dead writer of its own run left (remove_temp_files)."""
    return f".{name}.lvmd-r{run_id if run_id is not None else 'x'}-p{os.getpid() if pid is None else pid}."


_TEMP = re.compile(r"^\.(?P<name>[^/]+\.pt)\.lvmd-r(?P<run>\d+|x)-p(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def _write_atomically(path: str | Path, fill: Callable[[BinaryIO], None], *, run_id: int | None = None) -> Path:
    """fill() writes a temp file beside `path`; fsync, owner-only, then one rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name, run_id), suffix=".tmp")
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


def remove_temp_files(folder: str | Path, run_id: int) -> list[Path]:
    """Remove the temp files a killed writer of run `run_id` left in `folder`: only names that
    lvmd gives (temp_prefix) with this run's id and the pid of a process that is gone. The
    daemon calls it under the run's lock in a folder its run.json proved to be this run's;
    anything else (a user's `.best.pt.123.tmp`, another run's temp) is left alone. Returns what
    it removed."""
    removed = []
    for tmp in Path(folder).glob(".*.pt.lvmd-r*.tmp"):
        m = _TEMP.match(tmp.name)
        if m is None or m["run"] != str(run_id) or _alive(int(m["pid"])):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    """A writer that can still write: not us (ours from an earlier life under this pid: we hold
    the lock now), and not a zombie, which a daemon killed a moment ago is until init reaps it
    (its lock is already free, so the resume that follows the kill gets here first)."""
    return pid != os.getpid() and pid_alive(pid)


# -- identity: whose checkpoint is this ------------------------------------------------------
def config_sha256(config: dict) -> str:
    """sha256 of a resolved config (JSON, keys sorted) without data.allow_pickle: that opt-in
    comes from the command line of each process, so the same run resumed with or without it
    is still the same run."""
    config = json.loads(json.dumps(config))
    if isinstance(config.get("data"), dict):
        config["data"].pop("allow_pickle", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def identity(db_id: str | None, run_id: int, config: dict, data_manifest: dict) -> dict:
    """What a checkpoint of run `run_id` of database `db_id` carries (and what a resume expects):
    the database and run, the config's hash and the sha256 of each data file stored at create."""
    return {"db_id": db_id, "run_id": int(run_id), "config_sha256": config_sha256(config),
            "data_sha256": {k: v.get("sha256") for k, v in sorted(data_manifest.items())}}


def identity_mismatch(path: str | Path, state: dict, expected: dict, *, adopt: bool = False) -> str | None:
    """Why the checkpoint at `path` (its loaded `state`) is not the expected run's, in one line
    naming both sides; None when it is. `adopt` (the user's --adopt-folder, typed now) accepts a
    checkpoint without identity (an lvmd before identities) or from another database id (a file
    re-created by migration); the run, config and data must still agree."""
    found = state.get("identity")
    run = f"run {expected['run_id']} of database {str(expected['db_id'])[:12]}"
    if not isinstance(found, dict):
        if adopt:
            return _config_mismatch(path, state, expected)
        return (f"{path}: has no identity (written by an older lvmd, or not by lvmd for this run); "
                f"it cannot prove it is {run}: `--adopt-folder` uses it if you know it is")
    theirs = f"run {found.get('run_id')} of database {str(found.get('db_id'))[:12]}"
    if found.get("run_id") != expected["run_id"] or (found.get("db_id") != expected["db_id"] and not adopt):
        return f"{path}: a checkpoint of {theirs}, not of {run} (this run); not used"
    if found.get("config_sha256") != expected["config_sha256"]:
        return (f"{path}: its config (sha256 {str(found.get('config_sha256'))[:12]}…) is not {run}'s "
                f"({expected['config_sha256'][:12]}…); not used")
    theirs_data, ours = found.get("data_sha256") or {}, expected["data_sha256"]
    for key in sorted(set(theirs_data) | set(ours)):
        if theirs_data.get(key) != ours.get(key):
            return (f"{path}: trained on data.{key} sha256 {str(theirs_data.get(key))[:12]}…, {run} was created "
                    f"on {str(ours.get(key))[:12]}…; not used")
    return None


def _config_mismatch(path, state: dict, expected: dict) -> str | None:
    try:
        theirs = config_sha256(json.loads(state["config_json"]))
    except (KeyError, TypeError, ValueError):
        return f"{path}: holds no readable config_json; it cannot be this run's"
    if theirs != expected["config_sha256"]:
        return (f"{path}: its config (sha256 {theirs[:12]}…) is not run {expected['run_id']}'s "
                f"({expected['config_sha256'][:12]}…); not used")
    return None


def load(path: str | Path, *, map_location: str | torch.device = "cpu", expect: dict | None = None,
         adopt: bool = False, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint, loaded with weights_only=True. With `expect` (an identity()), a file that
    is not that run's is refused (identity_mismatch) before any of it is used. mmap: leave the
    tensors on disk (a cheap look at the identity and step)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    unreadable(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        raise UserError(f"{path}: cannot be loaded as an lvmd checkpoint with weights_only=True "
                        f"({load_error(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not an lvmd checkpoint (no format {FORMAT!r}); "
                        "for the original project's checkpoints use `lvmd eval`")
    if expect is not None:
        why = identity_mismatch(path, state, expect, adopt=adopt)
        if why is not None:
            raise UserError(why)
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
