"""Control across ranks: rank 0 decides, every rank acts, at the same step.

Rank 0 keeps the run's real control (heartbeat, signals, the command queue, the collapse watch's
requests). At each telemetry block boundary (step % train.telemetry_block == 0), and at every
poll while paused, it broadcasts ONE small int tensor: [paused, stop_now, n, code…]. The other
ranks block in that broadcast and turn the codes into the same Requests, so the trainer's own
_handle runs the same pause / checkpoint / stop on every rank (a checkpoint is collective: it
gathers every rank's RNG state). 5CAT runs on rank 0 alone and is not sent. Between boundaries
no rank communicates for control: no per-step host sync.
"""
from __future__ import annotations

from lvmd.train.control import Control, Request
from lvmd.train.distributed import Dist
from lvmd.train.sink import NullSink

CODES = {"pause": 1, "checkpoint": 2, "stop": 3}
ACTIONS = {v: k for k, v in CODES.items()}
MESSAGE = 16                      # ints per broadcast: paused, stop_now, n, up to 13 codes


class LeaderControl:
    """Rank 0: the real control, plus the broadcast of what it decided."""

    def __init__(self, inner: Control, d: Dist, *, every: int):
        self.inner, self.d, self.every = inner, d, every
        self._held: list[Request] = []       # more requests than one message holds: next boundary

    @property
    def paused(self) -> bool:
        return self.inner.paused

    def __getattr__(self, name):          # state, beat, heartbeat, request, evaluating, stop_now, close…
        return getattr(self.inner, name)

    def between_eval_batches(self, step: int, epoch: int, **_) -> None:
        """Nothing is taken during rank 0's 5CAT: every rank must act at the same step, and the
        others wait in a collective until it is over (commands wait for its end, as before)."""
        self.inner.beat(step, epoch)

    def poll(self, step: int, epoch: int) -> list[Request]:
        if not (self.inner.paused or step % self.every == 0):
            self.inner.beat(step, epoch)     # a clock read; heartbeats when due
            return []
        requests = self._held + self.inner.poll(step, epoch)
        sent = [r for r in requests if r.action in CODES]
        room = MESSAGE - 3
        self._held = sent[room:]
        if self._held:
            requests = [r for r in requests if r not in self._held]
            sent = sent[:room]
        self.d.broadcast_ints([int(self.inner.paused), int(bool(self.inner.stop_now)), len(sent),
                               *(CODES[r.action] for r in sent)], MESSAGE)
        return requests


class FollowerControl(Control):
    """Ranks > 0: no database, no heartbeat; signals only set flags nobody reads (rank 0
    decides, so a SIGTERM that reaches the whole job still ends in rank 0's graceful stop)."""

    def __init__(self, d: Dist, *, every: int, install_signals: bool = True):
        super().__init__(NullSink(), install_signals=install_signals)
        self.d, self.every = d, every
        self.paused = False

    def poll(self, step: int, epoch: int) -> list[Request]:
        self.step, self.epoch = step, epoch
        if not (self.paused or step % self.every == 0):
            return []
        msg = self.d.broadcast_ints(None, MESSAGE)
        self.paused, self.stop_now = bool(msg[0]), bool(msg[1])
        requests = []
        for code in msg[3:3 + msg[2]]:
            action = ACTIONS[code]
            requests.append(Request(action, trigger="rank0", done=self._hold if action == "pause" else _ignore))
        return requests

    def _hold(self, result: dict) -> None:
        self.paused = True

    def heartbeat(self, step: int, epoch: int) -> None:
        pass

    def set_state(self, state: str, **detail) -> None:
        self.state = state


def _ignore(*_args) -> None:
    pass
