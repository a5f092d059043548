"""train.compile: torch.compile the training forward only where it pays on this device and model.

`auto` (the default) asks a short probe, once per process and (model, sizes, batch, device,
precision) as the bf16 trial is asked: it times the trainer's own step (forward, guarded loss,
backward, clip, AdamW) with the model eager and compiled, alternating rounds so that a busy
machine's drift falls on both, and compiles only where the compiled step takes at least
MIN_GAIN less time. Measured on a 2-core EPYC (issue 23): the amn 1.15x faster compiled, SPEC's
transformer 0.75-0.89x (slower); on a GPU compile is where it pays. The probe changes nothing
it touches: weights, optimizer state and the random streams are put back as they were.

Its cost is bounded: the eager steps it times first (about PROBE_S) also tell how long the run
would train eager; a run shorter than MIN_RUN_S cannot earn back a compile (tens of seconds,
minutes with a cold inductor cache) at any plausible gain, so it stays eager without compiling.
Otherwise the compile it pays is the run's own: the compiled module it timed is the one that
trains. Evaluation (5CAT, validation, predict) always runs the model eager: its batch shapes
differ from training's and compat's test B runs one context at a time.

`on` compiles without a probe (a compile error then fails the run at its first step), `off`
never compiles. Under torchrun `auto` stays eager (ranks would have to agree on a timing).
LVMD_COMPILE_PROBE=yes|no (environment) skips the probe and takes that answer: for tests,
and for a machine where you measured it yourself.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lvmd.config import stage_for_epoch
from lvmd.data import stream

MIN_GAIN = 0.10          # compiled must take ≥ 10 % less time per step
MIN_RUN_S = 600.0        # eager seconds of training below which a compile is not tried
PROBE_S = 1.0            # seconds of timed steps per side (eager, compiled), over ROUNDS rounds
ROUNDS = 3
FORCE_ENV = "LVMD_COMPILE_PROBE"
HEARTBEAT_S = 1.0


@dataclass(frozen=True)
class Decision:
    compiled: bool
    why: str            # one line: what was decided and on what evidence
    eager_ms: float | None = None       # the probe's medians, where it timed them
    compiled_ms: float | None = None
    compile_s: float | None = None

    @property
    def state(self) -> str:
        return "on" if self.compiled else "off"


_decided: dict[tuple, Decision] = {}   # per process: (key, total steps) → the probe's answer


def for_trainer(trainer) -> tuple[nn.Module, Any]:
    """resolve() for a Trainer: its step on its first batch, keyed by what the timing depends on.
    Returns (the module to train, trainer.hardware with the decision in compile / compile_why)."""
    t, hw = trainer.cfg.train, trainer.hardware
    stage = stage_for_epoch(trainer.cfg.loss.ramp, 0)
    batch: list = []

    def step(net: nn.Module):
        if not batch:       # fetched only when the probe runs
            feed = stream.batches(trainer.train_split, torch.arange(len(trainer.train_split), device=trainer.device),
                                  t.batch_size, start=0, count=1)
            batch.extend(next(feed))
            feed.close()
        return trainer.train_step(*batch, stage, net=net)

    key = (trainer.cfg.model, trainer.cfg.loss, trainer.cfg.compat, t.last_slot_noise, trainer.data.train.dim,
           trainer.data.train.context_len, t.batch_size, str(trainer.device), hw.precision, hw.threads)
    net, decision = resolve(t.compile, net=trainer.net, model=trainer.model, optimizer=trainer.optimizer, step=step,
                            key=key, total_steps=trainer.total_steps, device=trainer.device,
                            distributed=trainer.dist is not None,
                            beat=lambda: trainer.sink.update_run(heartbeat_at=time.time()))
    return net, dataclasses.replace(hw, compile=decision.state, compile_why=decision.why)


def resolve(requested: str, *, net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
            step: Callable[[nn.Module], Any], key: tuple, total_steps: int, device: torch.device,
            distributed: bool = False, beat: Callable[[], None] | None = None) -> tuple[nn.Module, Decision]:
    """(the module the training step calls, the decision). `step(m)` runs one training step
    through m (the probe times it); `model` is the bare module under `net` (its weights are
    restored after the probe), `key` what the answer depends on besides the run's length;
    `beat()` is called every HEARTBEAT_S from a thread while the probe runs (a compile takes
    minutes on a loaded CPU; the run row's heartbeat stays fresh)."""
    with _beating(beat):
        decision = _decide(requested, net=net, model=model, optimizer=optimizer, step=step, key=key,
                           total_steps=total_steps, device=device, distributed=distributed)
    if isinstance(decision, tuple):       # the probe compiled the run's own module: train with it
        compiled, decision = decision
        return compiled, decision
    return (_compile(net) if decision.compiled else net), decision


def _compile(net: nn.Module) -> nn.Module:
    """torch.compile with the batch dimension dynamic from the first call, so one graph serves
    every batch size: the last, smaller batch of an epoch does not stop the run for a recompile
    (minutes on a loaded CPU). The hook runs eagerly, outside the compiled region."""
    compiled = torch.compile(net)
    compiled.register_forward_pre_hook(lambda module, args: torch._dynamo.maybe_mark_dynamic(args[0], 0))
    return compiled


def _decide(requested, *, net, model, optimizer, step, key, total_steps, device, distributed):
    if requested == "off":
        return Decision(False, "compile off (set)")
    if requested == "on":
        return Decision(True, "compile on (set)")
    forced = os.environ.get(FORCE_ENV, "").strip().lower()
    if forced in ("yes", "no"):
        return Decision(forced == "yes", f"compile auto: {'on' if forced == 'yes' else 'off'} "
                                         f"({FORCE_ENV}={forced}: the probe was skipped)")
    if distributed:
        return Decision(False, "compile auto: off (not probed under torchrun; train.compile=on compiles)")
    if device.type not in ("cpu", "cuda"):
        return Decision(False, f"compile auto: off (not probed on {device.type})")
    cache_key = (key, total_steps)
    if cache_key in _decided:
        return _decided[cache_key]
    with _restored(model, optimizer, device):
        outcome = _probe(net, step, total_steps, device)
    _decided[cache_key] = outcome[1] if isinstance(outcome, tuple) else outcome
    return outcome


def _probe(net: nn.Module, step: Callable[[nn.Module], Any], total_steps: int, device: torch.device):
    step(net)                                                       # first-call costs, eager
    eager_s, _ = _time(step, net, device, 0.1, minimum=2)
    n = min(50, max(2, round(PROBE_S / ROUNDS / max(eager_s, 1e-6))))   # steps per timed round
    run_s = eager_s * total_steps
    if run_s < MIN_RUN_S:
        return Decision(False, f"compile auto: off (the run's {total_steps} steps take ~{run_s:.0f} s eager at "
                               f"{eager_s * 1e3:.1f} ms/step; under {MIN_RUN_S:.0f} s a compile cannot pay back)",
                        eager_ms=eager_s * 1e3)
    compiled = _compile(net)
    try:
        started = time.perf_counter()
        step(compiled)                                              # the compile
        step(compiled)                                              # a warm-up
        _sync(device)
        compile_s = time.perf_counter() - started
    except Exception as exc:  # no C++ compiler, an op inductor cannot lower: stay eager
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return Decision(False, f"compile auto: off (torch.compile fails here: {type(exc).__name__}: {first})")
    eager, fast = [eager_s], []
    for _ in range(ROUNDS):             # alternating rounds: a change in the machine's load falls on both
        fast.append(_time(step, compiled, device, 0, minimum=n)[0])
        eager.append(_time(step, net, device, 0, minimum=n)[0])
    e, c = statistics.median(eager), statistics.median(fast)
    gain = 1.0 - c / e
    yes = gain >= MIN_GAIN
    change = f"{gain:.0%} faster" if gain >= 0 else f"{-gain:.0%} slower"
    why = (f"compile auto: {'on' if yes else 'off'} (probe: compiled {c * 1e3:.1f} ms/step vs eager {e * 1e3:.1f}, "
           f"{change}{'' if yes else f', needs {MIN_GAIN:.0%} faster'}; compiling took {compile_s:.0f} s)")
    decision = Decision(yes, why, eager_ms=e * 1e3, compiled_ms=c * 1e3, compile_s=compile_s)
    return (compiled, decision) if yes else decision


@contextlib.contextmanager
def _beating(beat: Callable[[], None] | None):
    if beat is None:
        yield
        return
    stop = threading.Event()

    def loop():
        while not stop.wait(HEARTBEAT_S):
            beat()

    thread = threading.Thread(target=loop, name="lvmd-compile-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _time(step, net, device, budget_s: float, *, minimum: int) -> tuple[float, int]:
    """(seconds per step, steps timed): at least `minimum` steps, more until budget_s has passed."""
    _sync(device)
    started, n = time.perf_counter(), 0
    while n < minimum or time.perf_counter() - started < budget_s:
        step(net)
        n += 1
        if n >= minimum:
            _sync(device)
    return (time.perf_counter() - started) / n, n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":         # the probe only: training itself never waits for the device
        torch.cuda.synchronize(device)


class _restored:
    """Weights, optimizer state, gradients and random streams as they were before the probe."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.model, self.optimizer, self.device = model, optimizer, device

    def __enter__(self):
        self.weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.opt = copy.deepcopy(self.optimizer.state_dict())
        self.rng = torch.random.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def __exit__(self, *exc):
        with torch.no_grad():
            self.model.load_state_dict(self.weights)
        self.optimizer.load_state_dict(self.opt)
        self.optimizer.zero_grad(set_to_none=True)
        torch.random.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)
        return False
