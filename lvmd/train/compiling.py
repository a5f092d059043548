"""train.compile: torch.compile the training forward only where it pays on this device and model.

`auto` (the default) asks a short probe, once per database and key (model, sizes, batch, device,
precision, threads, torch; see below): it times the trainer's own step (forward, guarded loss,
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

The answer is kept in the run's database (store/compile_probes.py) under the hash of everything
the timing depends on: the model and loss config, sizes, batch, device and its name (the CPU
model or the GPU), precision, threads, torch version and host. A resume, and the next run with
the same key, take the kept answer without compiling or timing anything (at seed scale the probe
was 18-47 s of every start). A different key (another torch, more threads, another GPU) probes
afresh; LVMD_COMPILE_PROBE=again re-probes and replaces the kept answer. The run's length is not
in the key: the kept eager ms/step says whether a run is too short to try, whatever its length.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lvmd.config import stage_for_epoch
from lvmd.data import stream
from store.compile_probes import keep_probe, stored_probe

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

    @property
    def outcome(self) -> str:
        """What the probe found: timed (both sides) | short (the run too short to try) | failed."""
        if self.compiled_ms is not None:
            return "timed"
        return "short" if self.eager_ms is not None else "failed"


_decided: dict[tuple, Decision] = {}   # per process: (key json, total steps) → the probe's answer


class ProbeMemory:
    """The probe's answers kept in the run's database, read and written through its sink's
    writer thread (the one connection that writes)."""

    def __init__(self, sink, run_id: int | None):
        self.sink, self.run_id = sink, run_id

    def get(self, key_hash: str) -> dict | None:
        return self.sink.call(lambda conn: stored_probe(conn, key_hash))

    def put(self, key_hash: str, key_json: str, decision: Decision) -> None:
        self.sink.call(lambda conn: keep_probe(conn, key_hash, key_json, outcome=decision.outcome,
                                               compiled=decision.compiled, why=decision.why,
                                               eager_ms=decision.eager_ms, compiled_ms=decision.compiled_ms,
                                               compile_s=decision.compile_s, run_id=self.run_id))


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

    key = {"model": trainer.cfg.model, "loss": trainer.cfg.loss, "compat": trainer.cfg.compat,
           "last_slot_noise": t.last_slot_noise, "dim": trainer.data.train.dim,
           "context": trainer.data.train.context_len, "batch": t.batch_size, "device": str(trainer.device),
           "device_name": device_name(trainer.device), "precision": hw.precision, "threads": hw.threads,
           "torch": torch.__version__, "host": socket.gethostname()}
    memory = ProbeMemory(trainer.sink, getattr(trainer.sink, "run_id", None)) if hasattr(trainer.sink, "call") else None
    net, decision = resolve(t.compile, net=trainer.net, model=trainer.model, optimizer=trainer.optimizer, step=step,
                            key=key, total_steps=trainer.total_steps, device=trainer.device,
                            distributed=trainer.dist is not None, memory=memory,
                            beat=lambda: trainer.sink.update_run(heartbeat_at=time.time()))
    return net, dataclasses.replace(hw, compile=decision.state, compile_why=decision.why)


def device_name(device: torch.device) -> str:
    """What the probe's timing depends on beyond the device type: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def key_json(key: Any) -> str:
    """The key as canonical JSON (configs as their fields), for the process cache and the database."""
    def plain(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        return str(value)
    return json.dumps(key, sort_keys=True, default=plain)


def resolve(requested: str, *, net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
            step: Callable[[nn.Module], Any], key: Any, total_steps: int, device: torch.device,
            distributed: bool = False, memory: ProbeMemory | None = None,
            beat: Callable[[], None] | None = None) -> tuple[nn.Module, Decision]:
    """(the module the training step calls, the decision). `step(m)` runs one training step
    through m (the probe times it); `model` is the bare module under `net` (its weights are
    restored after the probe), `key` what the answer depends on besides the run's length;
    `memory` keeps answers across processes (None: this process only); `beat()` is called every
    HEARTBEAT_S from a thread while the probe runs (a compile takes minutes on a loaded CPU; the
    run row's heartbeat stays fresh)."""
    with _beating(beat):
        decision = _decide(requested, net=net, model=model, optimizer=optimizer, step=step, key=key,
                           total_steps=total_steps, device=device, distributed=distributed, memory=memory)
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


def _decide(requested, *, net, model, optimizer, step, key, total_steps, device, distributed, memory):
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
    text = key_json(key)
    cache_key = (text, total_steps)
    if cache_key in _decided and forced != "again":
        return _decided[cache_key]
    key_hash = hashlib.sha256(text.encode()).hexdigest()
    if memory is not None and forced != "again":
        kept = _from_kept(memory.get(key_hash), total_steps)
        if kept is not None:
            _decided[cache_key] = kept
            return kept
    with _restored(model, optimizer, device):
        outcome = _probe(net, step, total_steps, device)
    decision = outcome[1] if isinstance(outcome, tuple) else outcome
    _decided[cache_key] = decision
    if memory is not None:
        memory.put(key_hash, text, decision)
    return outcome


def _from_kept(row: dict | None, total_steps: int) -> Decision | None:
    """The decision a kept probe gives this run, or None where it cannot tell (nothing kept, or a
    short run's eager timing and this run is long enough to be worth the real probe)."""
    if row is None:
        return None
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["probed_at"]))
    source = f"kept from the probe of {when}" + (f" in run {row['run_id']}" if row["run_id"] is not None else "")
    again = f"{FORCE_ENV}=again re-probes"
    if row["outcome"] == "failed":
        reason = row["why"].split(" (", 1)[-1].removesuffix(")")
        return Decision(False, f"compile auto: off ({reason}; {source}; {again})")
    eager_ms = row["eager_ms"]
    run_s = eager_ms / 1e3 * total_steps
    if run_s < MIN_RUN_S:
        return Decision(False, f"compile auto: off (the run's {total_steps} steps take ~{run_s:.0f} s eager at "
                               f"{eager_ms:.1f} ms/step, {source}; under {MIN_RUN_S:.0f} s a compile cannot "
                               "pay back)", eager_ms=eager_ms)
    if row["outcome"] == "short":
        return None
    yes, c = bool(row["compiled"]), row["compiled_ms"]
    gain = 1.0 - c / eager_ms
    change = f"{gain:.0%} faster" if gain >= 0 else f"{-gain:.0%} slower"
    return Decision(yes, f"compile auto: {'on' if yes else 'off'} (compiled {c:.1f} ms/step vs eager {eager_ms:.1f}, "
                         f"{change}, {source}; {again})",
                    eager_ms=eager_ms, compiled_ms=c, compile_s=row["compile_s"])


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
