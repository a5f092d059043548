"""The training loop: batches → model → P6b loss + guardrails → optimizer, top to bottom.

Side effects go through the sink (telemetry, events, epochs) and the control (heartbeat,
signals, commands); no SQL here. Per-step telemetry stays on the device until a block of it is
copied to the host at once (lvmd/train/telemetry.py), so a GPU step never waits for the host.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lvmd.config import RunConfig, config_from_dict, config_to_dict, stage_for_epoch
from lvmd.data import stream
from lvmd.data.formats import Articles, DataError, Sequences
from lvmd.data.train_data import TrainData
from lvmd.train import checkpoint, compiling, distributed, hardware
from lvmd.train.control import Control, EvalAbandoned, Request
from lvmd.train.guardrails import DEVICE_METRICS, guarded_loss
from lvmd.train.models import build_model
from lvmd.train.telemetry import EpochStats, SilentTelemetry, TelemetryBuffer
from store.holdpoints import hold

VAL_BATCH = 1024


# -- data on the device (lvmd/data/stream.py) ------------------------------------------------
DeviceSplit = stream.DeviceSplit


def to_device(seqs: Sequences, cfg: RunConfig, articles: Articles | None, device: torch.device) -> DeviceSplit:
    return stream.to_device(seqs, cfg.loss.prev, articles, device)


def corrupt_last_slot(ctx: torch.Tensor, *, share: float, sigma: float, swap_share: float) -> torch.Tensor:
    """compat lnsp: the original corrupted ctx[-1] in `share` of rows: Gaussian noise (σ), or in
    `swap_share` of those ctx[-1] replaced by ctx[-2] (ctx[-2] itself stays: not a swap, SPEC §3).
    Branch-free; uses the global RNG."""
    b = ctx.size(0)
    hit = torch.rand(b, device=ctx.device) < share                       # (B,)
    replace = hit & (torch.rand(b, device=ctx.device) < swap_share)
    noisy = F.normalize(ctx[:, -1] + sigma * torch.randn_like(ctx[:, -1]), dim=-1)
    last = torch.where(replace[:, None], ctx[:, -2], torch.where(hit[:, None], noisy, ctx[:, -1]))
    return torch.cat([ctx[:, :-1], last[:, None]], dim=1)


# -- the trainer ---------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: RunConfig, data: TrainData, sink, *, out_dir: str | Path,
                 control: Control | None = None, evaluator=None,
                 progress: Callable[[dict], None] | None = None, watch=None):
        self.cfg, self.data, self.sink = cfg, data, sink
        self.out_dir = Path(out_dir)
        self.control = control or Control(sink, install_signals=False)
        self.evaluator = evaluator
        self.progress = progress
        self.watch = watch    # collapse watch (lvmd.train.collapse): fed host rows, never device tensors
        t = cfg.train
        self.hardware = hardware.resolve(cfg, data.train.dim, data.train.context_len)
        torch.manual_seed(t.seed)
        self.device = self.hardware.device
        # distributed hook: under torchrun, this rank's group and device (None, unchanged otherwise)
        self.dist, self.device = distributed.for_training(t, self.device)
        self.main = self.dist is None or self.dist.main      # rank 0 (or the only process)
        self.autocast_dtype = self.hardware.autocast_dtype
        self.train_split = self._place_train(data, t)
        self.val_split = to_device(data.val, cfg, data.articles, self.device)
        self.model = build_model(cfg.model, data.train.dim).to(self.device)
        # distributed hook: DDP for the step, the global-batch loss; self.model stays the bare module
        self.net = self.dist.wrap(self.model, self.device, t.seed) if self.dist else self.model
        self.loss_fn = self.dist.global_loss if self.dist else guarded_loss
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=t.plateau_factor, patience=t.plateau_patience)
        self.batches_per_epoch = math.ceil(len(self.train_split) / t.batch_size)
        self.total_steps = t.epochs * self.batches_per_epoch
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        # compile hook: the training forward compiled where train.compile says (auto: a probe of this
        # step); the decision joins self.hardware (the run row, the hardware event)
        self.net, self.hardware = compiling.for_trainer(self)
        self.epoch = 0        # current epoch (from 0)
        self.batch = 0        # next batch index within the epoch
        self.step = 0         # optimizer steps done
        self.best: float | None = None
        # An epoch whose end-of-epoch 5CAT is owed: set in the checkpoint that ends the epoch and
        # cleared once the 5CAT is written, so a process killed during it re-runs it on resume.
        self.eval_due: int | None = None
        self.identity: dict | None = None    # checkpoint.identity() of the run (the runner sets it)
        self.telemetry = TelemetryBuffer(sink, block=t.telemetry_block, flush_seconds=t.flush_seconds,
                                         on_rows=self._on_rows)
        if not self.main:        # distributed hook: rank 0 alone records the (global) telemetry
            self.telemetry = SilentTelemetry(sink, block=t.telemetry_block, flush_seconds=t.flush_seconds)
        data.wait_checked()      # a background check of val/OOD/banks (lvmd/data/train_data.py) is done

    def _place_train(self, data: TrainData, t) -> "DeviceSplit | stream.StreamedSplit":
        """streaming hook: the train split on the device, or streamed per batch when it is
        larger than train.device_data_budget."""
        size = stream.split_bytes(data.train, self.cfg.loss.prev)
        budget = stream.device_budget(t.device_data_budget, self.device)
        if size <= budget:
            return to_device(data.train, self.cfg, data.articles, self.device)
        self.sink.event("data", detail={"split": "train", "streamed": True, "bytes": size, "budget": budget,
                                        "mapped": isinstance(data.train.contexts, np.memmap)})
        return stream.streamed(data.train, self.cfg.loss.prev, data.articles, self.device)

    # -- one optimizer step (also used bare by scripts/bench_trainer.py) --------------------
    def train_step(self, ctx: torch.Tensor, y: torch.Tensor, y_prev: torch.Tensor, stage,
                   net: torch.nn.Module | None = None) -> torch.Tensor:
        """Forward, guarded loss, backward, clip, step. Returns the packed telemetry (device).
        net: the module to run (the compile probe's); self.net otherwise."""
        t = self.cfg.train
        if t.last_slot_noise > 0:
            ctx = corrupt_last_slot(ctx, share=t.last_slot_noise, sigma=t.noise_sigma, swap_share=t.swap_share)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            raw, unit = (self.net if net is None else net)(ctx)           # (B, D) each
        total, metrics = self.loss_fn(raw, unit, y, y_prev, stage, self.cfg.loss, compat=self.cfg.compat)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip if t.grad_clip > 0 else math.inf)
        self.optimizer.step()
        return torch.stack([metrics[k] for k in DEVICE_METRICS] + [grad_norm.detach().to(total.dtype)])

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's batch order: a function of (seed, epoch) only, so a resumed run replays it."""
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_split), generator=gen).to(self.device)

    # -- the run --------------------------------------------------------------------------
    def run(self) -> str:
        """Train to the end (→ "finished") or until asked to stop (→ "stopped"); to resume,
        load_checkpoint() first."""
        cfg, split = self.cfg, self.train_split
        bs = cfg.train.batch_size
        self.model.train()
        if self.eval_due is not None and self.evaluator is not None:   # resumed past a lost epoch 5CAT
            if self._epoch_fivecat(self.eval_due) == "stop":
                self.control.heartbeat(self.step, self.epoch)
                return "stopped"
        while self.epoch < cfg.train.epochs and self.step < self.total_steps:
            stage = stage_for_epoch(cfg.loss.ramp, self.epoch)
            order = self.epoch_order(self.epoch)
            started = time.monotonic()
            # streaming + distributed hook: the epoch's batches (this rank's share; streamed or in memory)
            feed = stream.batches(split, order, bs, start=self.batch, count=self.batches_per_epoch,
                                  shard=self.dist.shard if self.dist else None)
            while self.batch < self.batches_per_epoch and self.step < self.total_steps:
                packed = self.train_step(*next(feed), stage)
                self.batch += 1
                self.step += 1
                lr = self.optimizer.param_groups[0]["lr"]
                self.telemetry.add((self.step, self.epoch, time.time(), lr, stage.frac, stage.m_gap), packed)
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save_checkpoint("last")                 # bounds the work a crash can lose
                if self._at_boundary() == "stop":
                    self.control.heartbeat(self.step, self.epoch)
                    return "stopped"
            if self.batch < self.batches_per_epoch:      # max_steps reached mid-epoch
                break
            if self.end_epoch(time.monotonic() - started) == "stop":     # stopped during its 5CAT
                self.control.heartbeat(self.step, self.epoch)
                return "stopped"
        self.telemetry.flush()
        self.save_checkpoint("last")
        self.control.heartbeat(self.step, self.epoch)
        return "finished"

    def _at_boundary(self) -> str | None:
        """Act on what the control asks; while it holds the loop (paused), keep asking."""
        hold("step")                             # crash drills: a kill -9 at the n-th step boundary
        while True:
            if self._handle(self.control.poll(self.step, self.epoch)) == "stop":
                return "stop"
            if not self.control.paused:
                return None

    def _handle(self, requests: list[Request]) -> str | None:
        for req in requests:
            try:
                if req.action == "pause":
                    self.telemetry.flush()             # the steps table shows where it paused
                    req.done({"step": self.step})
                elif req.action == "checkpoint":
                    path = self.save_checkpoint("last")
                    req.done({"path": str(path), "step": self.step})
                elif req.action == "eval":
                    try:
                        req.done(self.run_fivecat(trigger=req.trigger))
                    except EvalAbandoned as exc:      # a stop taken during it: the run stops
                        req.failed(str(exc))
                        return "stop"
                elif req.action == "stop":
                    self.telemetry.flush()
                    if getattr(self.control, "stop_now", False):
                        req.done({"step": self.step, "checkpoint": None})
                    else:
                        path = self.save_checkpoint("last")
                        req.done({"step": self.step, "checkpoint": str(path)})
                    return "stop"
            except Exception as exc:  # a failed request is reported; a failed stop still stops
                req.failed(f"{type(exc).__name__}: {exc}")
                if req.action == "stop":
                    return "stop"
        return None

    def end_epoch(self, duration: float) -> str | None:
        """Flush, validate, step the scheduler, write the epoch row, checkpoint, maybe 5CAT;
        "stop" when a stop was taken during that 5CAT."""
        self.telemetry.flush()
        val = self.validate() if self.main else None
        if self.dist:                # distributed hook: rank 0's validation drives every rank's scheduler
            val = self.dist.broadcast_object(val)
        self.scheduler.step(val["val_loss"])
        row = {"epoch": self.epoch, "step": self.step, "t": time.time(), "duration_s": duration,
               **self.telemetry.stats.row(), **val, "lr": self.optimizer.param_groups[0]["lr"]}
        if self.evaluator is not None:
            row.update(self.evaluator.epoch_check(self.predict, device=self.device))
        self.sink.epoch(row)
        if self.watch is not None:
            self.watch.epoch(row)
        self.telemetry.stats = EpochStats()
        every = self.cfg.eval.fivecat_every
        run_full = self.evaluator is not None and every and (self.epoch + 1) % every == 0
        finished_epoch = self.epoch
        self.epoch, self.batch = self.epoch + 1, 0
        self.eval_due = finished_epoch if run_full else None
        improved = self._is_best(val)
        last = self.save_checkpoint("last")      # the epoch's commit: it names the 5CAT still owed
        if improved and self.main:
            best, how = checkpoint.link_best(last, self.checkpoint_path("best"),
                                              run_id=(self.identity or {}).get("run_id"))   # one write per epoch
            self.sink.event("checkpoint", step=self.step, epoch=self.step_epoch,
                            detail={"which": "best", "path": str(best), "how": how})
        if run_full:
            return self._epoch_fivecat(finished_epoch)
        return None

    def _epoch_fivecat(self, epoch: int) -> str | None:
        """The end-of-epoch 5CAT of `epoch`, then it is no longer owed; "stop" when a stop was taken
        during it: it stays owed (eval_due, in the checkpoint the stop wrote) and a resume runs it."""
        try:
            self.run_fivecat(trigger="epoch", epoch=epoch)
        except EvalAbandoned:
            return "stop"
        self.eval_due = None
        return None

    def _is_best(self, val: dict) -> bool:
        metric = self.cfg.train.best_metric
        value = val["val_loss"] if metric == "val_loss" else -val["val_margin"]  # lower is better
        if self.best is None or value < self.best:
            self.best = value
            return True
        return False

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, ctx: torch.Tensor) -> torch.Tensor:
        """(B, T, D) float on any device → (B, D) float32 unit predictions on the model's device; eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            outs = []
            for chunk in ctx.split(VAL_BATCH):
                with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    outs.append(self.model(chunk.to(self.device))[1].float())
            return torch.cat(outs) if outs else torch.zeros(0, self.data.train.dim, device=self.device)
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def validate(self) -> dict:
        """Val loss (MSE of the unit prediction, as the original's evaluate), val cos, margin."""
        s = self.val_split
        unit = self.predict(s.contexts)
        pos = (unit * F.normalize(s.targets, dim=-1)).sum(-1)
        neg = (unit * F.normalize(s.prev, dim=-1)).sum(-1)
        vals = torch.stack([(unit - s.targets).pow(2).mean(), pos.mean(), neg.mean()]).tolist()
        return {"val_loss": vals[0], "val_cos": vals[1], "val_prev_cos": vals[2], "val_margin": vals[1] - vals[2]}

    def run_fivecat(self, *, trigger: str, epoch: int | None = None) -> dict:
        if self.evaluator is None:
            raise RuntimeError("no 5CAT evaluator: set data.articles (and data.val) to evaluate")
        self.telemetry.flush()
        joined: list[Request] = []              # evals asked during it: answered by it (same weights, step)
        try:
            with self.control.evaluating():
                hold("fivecat")                  # crash tests: a kill -9 during the 5CAT
                result = self.evaluator.full(    # commands do not wait for it: Control.between_eval_batches
                    self.predict, trigger=trigger, device=self.device, step=self.step,
                    epoch=self.epoch if epoch is None else epoch,
                    between=lambda: self.control.between_eval_batches(self.step, self.epoch, act=self._handle,
                                                                      evals=joined))
        except BaseException as exc:
            for req in joined:
                req.failed(str(exc) if isinstance(exc, EvalAbandoned) else f"{type(exc).__name__}: {exc}")
            raise
        for req in joined:
            req.done(result)
        return result

    def _on_rows(self, metrics: list[dict]) -> None:
        if self.watch is not None and metrics:
            self.watch.steps(metrics)
        if self.progress and metrics:
            self.progress({"step": self.step, "total_steps": self.total_steps, "epoch": self.epoch,
                           "epochs": self.cfg.train.epochs, **metrics[-1]})

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def step_epoch(self) -> int:
        """The epoch the current step belongs to (its steps row's): at an epoch's end self.epoch
        already names the next one, and an event there must not read one epoch ahead of the
        state events and steps beside it."""
        return self.epoch - 1 if self.batch == 0 and self.epoch > 0 and self.step > 0 else self.epoch

    def checkpoint_path(self, which: str) -> Path:
        return self.out_dir / f"{which}.pt"

    def save_checkpoint(self, which: str) -> Path:
        # Rows up to this step are committed before a checkpoint names it, so a resume from it
        # never leaves a gap in the steps table.
        self.telemetry.flush()
        self.sink.flush()
        ranks = None
        if self.dist:                # distributed hook: a collective; rank 0 writes every rank's RNG
            ranks = self.dist.gather_object(_rng_state(self.device))
            if not self.dist.main:
                return self.checkpoint_path(which)
        state = {
            "config_json": _json(config_to_dict(self.cfg)), "dim": self.data.train.dim,
            "context_len": self.data.train.context_len, "model_type": self.cfg.model.kind,
            "model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "best": self.best if self.best is not None else math.nan,
            "epoch_stats": dict(vars(self.telemetry.stats)),  # a mid-epoch resume keeps the epoch's aggregates
            "eval_due": -1 if self.eval_due is None else self.eval_due,
        }
        if self.identity is not None:
            state["identity"] = self.identity
        if ranks is not None:
            state.update(world_size=self.dist.world, rng_ranks=ranks)
        path = checkpoint.save(self.checkpoint_path(which), state)
        self.sink.event("checkpoint", step=self.step, epoch=self.step_epoch, detail={"which": which, "path": str(path)})
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        state = checkpoint.load(path, map_location=self.device)
        saved = config_from_dict(_loads(state["config_json"]))
        if (saved.model, state["dim"]) != (self.cfg.model, self.data.train.dim):
            raise DataError(f"{path}: model {saved.model.kind} D={state['dim']} does not match this run's "
                            f"{self.cfg.model.kind} D={self.data.train.dim}")
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.scheduler.load_state_dict(state["scheduler_state"])
        ranks, rank = state.get("rng_ranks") or [], self.dist.rank if self.dist else 0
        if rank < len(ranks):        # distributed hook: this rank's own RNG, when it was saved
            torch.set_rng_state(ranks[rank]["cpu"].cpu())
            if ranks[rank]["cuda"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(ranks[rank]["cuda"].cpu(), self.device)
        elif rank == 0:
            torch.set_rng_state(state["rng_cpu"].cpu())
            if state["rng_cuda"] and self.device.type == "cuda":
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        # else: a rank the saved run did not have keeps its fresh per-rank seed (Dist.wrap)
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        self.best = None if math.isnan(state["best"]) else float(state["best"])
        vars(self.telemetry.stats).update(state["epoch_stats"])
        due = int(state.get("eval_due", -1))     # older checkpoints have none
        self.eval_due = None if due < 0 else due


def _rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _json(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def _loads(text: str) -> dict:
    import json

    return json.loads(text)
