"""What the training loop asks between steps: heartbeat, signals, and (in the daemon) commands.

The trainer calls `poll(step, epoch)` at every step boundary; it must be cheap (a clock read)
unless something is due. It returns Requests for the loop to act on. While `paused` is true
the loop polls again instead of stepping; this base class never pauses (lvmd.run.daemon's
DaemonControl does, sleeping on the database inside poll).

A 5CAT polls too, between its batches (between_eval_batches, from Trainer.run_fivecat), with
hold=False: a run that was already paused when the evaluation began (eval-now on a paused run)
must not sleep at every batch. A stop taken there abandons the evaluation (EvalAbandoned).
"""
from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

HEARTBEAT_SECONDS = 1.0


def ignore(*_args) -> None:
    pass


@dataclass
class Request:
    action: str                                  # "pause" | "checkpoint" | "eval" | "stop"
    trigger: str = "signal"                      # who asked: signal | command | watch
    done: Callable[[dict], None] = field(default=ignore)
    failed: Callable[[str], None] = field(default=ignore)


class EvalAbandoned(Exception):
    """A stop taken between the batches of a 5CAT: the evaluation is dropped unwritten (an epoch's
    5CAT stays owed in the checkpoint, as after a kill) and the run stops."""


class Control:
    """Heartbeat into the run row, the run's state, and signal flags: SIGINT/SIGTERM = graceful
    stop (checkpoint, then exit), a second SIGINT = stop now without a checkpoint, SIGUSR1 =
    evaluate now. Handlers only set flags (DESIGN rule 5)."""

    paused = False

    def __init__(self, sink, *, install_signals: bool = True):
        self.sink = sink
        self.state = "starting"
        self.step: int | None = None           # where the loop is, as of the last beat (for events)
        self.epoch: int | None = None
        self._last_beat = 0.0
        self.stop_requested = False
        self.stop_now = False
        self.eval_requested = False
        self._stopping = False                 # a stop request has been handed to the loop
        self._queued: list[tuple[str, str, dict]] = []   # (action, trigger, detail) from the watch
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
    def poll(self, step: int, epoch: int, *, hold: bool = True) -> list[Request]:
        """hold: while paused, wait here first (the loop's hold); False between a 5CAT's batches."""
        self.beat(step, epoch)
        return self.signal_requests() + self.take_queued()

    def beat(self, step: int, epoch: int) -> None:
        """Note where the loop is; heartbeat when one is due."""
        self.step, self.epoch = step, epoch
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = now
            self.heartbeat(step, epoch)

    def heartbeat(self, step: int, epoch: int) -> None:
        self.sink.update_run(heartbeat_at=time.time(), step=step, epoch=epoch)

    def signal_requests(self) -> list[Request]:
        requests: list[Request] = []
        if self.eval_requested:
            self.eval_requested = False
            requests.append(Request("eval", trigger="signal",
                                    failed=lambda err: self.sink.event("error", step=self.step, epoch=self.epoch,
                                                                       detail={"signal": "SIGUSR1", "error": err})))
        if self.stop_requested and not self._stopping:
            requests.append(self.stop_request("signal"))
        return requests

    def request(self, action: str, *, trigger: str, detail: dict | None = None) -> None:
        """Ask for an action at the next step boundary (the collapse watch's hook)."""
        self._queued.append((action, trigger, detail or {}))

    def take_queued(self) -> list[Request]:
        """The asked-for actions as Requests, made now so their state events name this step."""
        queued, self._queued = self._queued, []
        requests = []
        for action, trigger, detail in queued:
            if action == "stop":
                if not self._stopping:
                    requests.append(self.stop_request(trigger, **detail))
            elif action == "pause":
                requests.append(self.pause_request(trigger, **detail))
            else:
                requests.append(Request(action, trigger=trigger))
        return requests

    def stop_request(self, trigger: str, *, done: Callable[[dict], None] = ignore,
                     failed: Callable[[str], None] = ignore, **detail) -> Request:
        """The one stop the loop gets: state `stopping` now, the final state when it has stopped."""
        self._stopping = True
        self.paused = False
        self.set_state("stopping", trigger=trigger, now=self.stop_now, **detail)
        return Request("stop", trigger=trigger, done=done, failed=failed)

    def pause_request(self, trigger: str, *, done: Callable[[dict], None] = ignore,
                      failed: Callable[[str], None] = ignore, **detail) -> Request:
        """The loop flushes its telemetry on a pause; holding it there is DaemonControl's part."""
        return Request("pause", trigger=trigger, done=done, failed=failed)

    def between_eval_batches(self, step: int, epoch: int, *, act: Callable[[list[Request]], str | None],
                             evals: list[Request]) -> None:
        """Between two batches of a 5CAT: commands and signals do not wait for it to end (issue 22).
        `act` is the loop's own handling (Trainer._handle). A pause holds the evaluation here,
        where it stands, until a resume (its arrays stay in memory and it carries on from this
        batch: nothing is computed twice) or a stop; a stop abandons it (EvalAbandoned); a
        checkpoint is written now; an eval asked meanwhile joins `evals`, answered by this one
        (same weights, same step)."""
        held = False
        while True:
            for req in self.poll(step, epoch, hold=held):
                if req.action == "eval":
                    evals.append(req)
                elif act([req]) == "stop":
                    raise EvalAbandoned(f"the run was stopped at step {step} during its 5CAT")
                elif req.action == "pause":
                    held = self.paused
            if not (held and self.paused):
                return

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Around a 5CAT evaluation; the daemon shows it as a state and keeps heartbeating."""
        yield

    def set_state(self, state: str, **detail) -> None:
        """Record a state transition in the run row and as an event."""
        previous, self.state = self.state, state
        where = {} if self.step is None else {"step": self.step, "epoch": self.epoch}
        self.sink.update_run(state=state, heartbeat_at=time.time(), **where)
        self.sink.event("state", step=self.step, epoch=self.epoch,
                        detail={"state": state, "previous": previous, **detail})

    def close(self) -> None:
        """The loop is over (runner.finish writes the final state)."""
        self.restore_signals()
