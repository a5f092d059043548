"""What lvmd accepts as a file: regular files only. A FIFO blocks whoever opens it, a device node
swallows or refuses what is written (and SQLite would leave a `-journal` beside it, in /dev), a
socket cannot be opened at all: each is refused in one line before anything opens it. New files
are made with O_EXCL | O_NOFOLLOW in a folder that is a real directory, so a planted symlink or
device node is never written through. Stdlib only: the store and every lvmd layer call it."""
from __future__ import annotations

import os
import stat

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


class NotRegularFile(OSError):
    """The path exists and is not a regular file; str() is the one-line reason naming it."""


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read or replaced as a file (None: a regular file, or nothing there).
    stat() follows a symlink to what it names, and never opens the path (a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None           # a path under a file: the caller's own "no such file" says so
    if stat.S_ISREG(mode):
        return None
    return f"{path}: is {kind_of(mode)}, not a regular file"


def require_regular(path: str | os.PathLike, what: str = "") -> None:
    """Raise NotRegularFile (one line, naming `what` and the path) unless `path` is a regular
    file or does not exist."""
    why = not_regular(path)
    if why is not None:
        raise NotRegularFile(f"{what}: {why}" if what else why)


def create_new(path: str | os.PathLike, mode: int = 0o600) -> int:
    """A write descriptor on a NEW file at `path`: O_CREAT | O_EXCL | O_NOFOLLOW, so it fails
    (FileExistsError) if anything at all is there, even a dangling symlink or a device node, and
    never writes through one. The caller names a folder that exists (the kernel refuses a parent
    that is not a directory)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    return os.open(path, flags, mode)


def replaceable(path: str | os.PathLike) -> str | None:
    """Why a file written beside `path` must not be renamed over it (None: nothing is there, or a
    regular file, or a symlink, which the rename replaces without touching what it names)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return None
    return f"{path}: is {kind_of(mode)}; lvmd replaces only regular files"

