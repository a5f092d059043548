"""Is a silent run's daemon still there? A live run whose heartbeat is older than the stale mark
is either not responding (its daemon still holds the run's lock: stopped by a signal, swapping,
stuck in I/O) or gone (nothing holds it: the next lvmd command marks it crashed).

The probe is read-only and cannot hang: the lock file is opened O_NONBLOCK|O_NOFOLLOW and must
be a regular file; a run of another host, or one without a folder, is unknown (None). Results
are kept a few seconds, so a screen redrawn every second probes each silent run rarely."""
from __future__ import annotations

import fcntl
import os
import socket
import stat
import time

from store.runs import DAEMON_LOCK

RECHECK_S = 3.0


def lock_held(out_dir: str | None, host: str | None) -> bool | None:
    """True: a process holds the run folder's daemon lock; False: none does; None: cannot tell."""
    if not out_dir or (host and host != socket.gethostname()):
        return None
    try:
        fd = os.open(os.path.join(out_dir, DAEMON_LOCK), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # drops the probe's own shared lock


class Liveness:
    """Cached lock probes, by what is probed (host, run folder): two databases' runs share ids
    (every database starts at run 1) but never a folder."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str | None, str | None], tuple[float, bool | None]] = {}

    def held(self, out_dir: str | None, host: str | None) -> bool | None:
        now = time.monotonic()
        key = (host, out_dir)
        cached = self._seen.get(key)
        if cached is None or now - cached[0] > RECHECK_S:
            cached = (now, lock_held(out_dir, host))
            self._seen[key] = cached
        return cached[1]


def of_app(app) -> Liveness:
    """The app's own probes: its runs list and run screen share them, and a second app in the same
    process (the tests, an embedding program) asks afresh instead of reading the first one's."""
    found = getattr(app, "_lvmd_liveness", None)
    if found is None:
        found = Liveness()
        app._lvmd_liveness = found
    return found
