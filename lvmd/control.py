"""What the training loop asks between steps: heartbeat, signals, and (in the daemon) commands.

The trainer calls `poll(step, epoch)` at every step boundary; it must be cheap (a clock read)
unless something is due. It returns Requests for the loop to act on; pausing happens inside
poll (it blocks until resumed), so the loop never needs to know about it.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Callable

HEARTBEAT_SECONDS = 1.0


def _ignore(*_args) -> None:
    pass


@dataclass
class Request:
    action: str                                  # "checkpoint" | "eval" | "stop"
    trigger: str = "signal"                      # who asked: signal | command | watch
    done: Callable[[dict], None] = field(default=_ignore)
    failed: Callable[[str], None] = field(default=_ignore)


class Control:
    """Heartbeat into the run row and signal flags: SIGINT/SIGTERM = graceful stop (checkpoint,
    then exit), a second SIGINT = stop now without a checkpoint, SIGUSR1 = evaluate now.
    Handlers only set flags (DESIGN rule 5)."""

    def __init__(self, sink, *, install_signals: bool = True):
        self.sink = sink
        self._last_beat = 0.0
        self.stop_requested = False
        self.stop_now = False
        self.eval_requested = False
        self._previous: dict[int, object] = {}
        if install_signals:
            self._install()

    # -- signals --------------------------------------------------------------------------
    def _install(self) -> None:
        for sig, handler in ((signal.SIGINT, self._on_interrupt), (signal.SIGTERM, self._on_term),
                             (signal.SIGUSR1, self._on_usr1)):
            self._previous[sig] = signal.signal(sig, handler)

    def restore_signals(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_interrupt(self, signum, frame) -> None:
        if self.stop_requested:
            self.stop_now = True
        self.stop_requested = True

    def _on_term(self, signum, frame) -> None:
        self.stop_requested = True

    def _on_usr1(self, signum, frame) -> None:
        self.eval_requested = True

    # -- the loop's hooks -----------------------------------------------------------------
    def poll(self, step: int, epoch: int) -> list[Request]:
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = now
            self.heartbeat(step, epoch)
        requests: list[Request] = []
        if self.eval_requested:
            self.eval_requested = False
            requests.append(Request("eval", trigger="signal"))
        if self.stop_requested:
            requests.append(Request("stop", trigger="signal"))
        return requests

    def heartbeat(self, step: int, epoch: int) -> None:
        self.sink.update_run(heartbeat_at=time.time(), step=step, epoch=epoch)

    def set_state(self, state: str, **detail) -> None:
        """Record a state transition in the run row and as an event."""
        self.sink.update_run(state=state, heartbeat_at=time.time())
        self.sink.event("state", detail={"state": state, **detail})
