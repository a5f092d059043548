"""Data-parallel training on PyTorch's own engine: torch.distributed process groups (started by
torchrun / torch.distributed.run), DistributedDataParallel, functional collectives.

What `train.batch_size` means: the GLOBAL batch. Each optimizer step takes the same B rows of the
epoch order as one process would and splits them over the N ranks (torch.tensor_split: shares
differ by at most one row), so an N-rank run follows the 1-process run step for step.

The math stays on the global batch. Every rank reduces its share to sums (losses.* with
reduce=torch.sum), packs them with the row count into ONE small tensor and all-reduces it; from
the global sums every rank computes the same mse, pos̄, neḡ, gap̄, ratiō, λ, ρ, skip and attenuate
(guardrails.combine, the one-process code). The all-reduce is autograd-aware: its backward
all-reduces the gradient of the packed sums (identical on every rank, so each rank gets N×), and
DDP averages parameter gradients over N, which leaves exactly the gradient of the global loss.
The single-process path never comes here: no collective, no extra host sync.

Only this module and lvmd/train/dist_control.py know about ranks; the trainer has a few marked
hooks (`# distributed hook`).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lvmd.config import LossConfig, RampStage, TrainConfig
from lvmd.errors import UserError
from lvmd.train import losses
from lvmd.train.guardrails import combine, loss_terms

# How long a rank waits in a collective for the others (rank 0 may be running a long 5CAT or
# validation while the others wait at the next collective). A rank that DIES is noticed at once
# (its sockets close); this bounds a hang only. Override with LVMD_DIST_TIMEOUT_S.
DEFAULT_TIMEOUT_S = 2 * 3600
SUM_KEYS = ("mse", "l_dir", "l_floor", "l_norm", "l_orth", "pos", "neg", "gap", "ratio", "neg_count", "rows")

_current: "Dist | None" = None


def launched() -> bool:
    """Was this process started as one of several ranks (torchrun sets WORLD_SIZE)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    group: Any = None          # the group training collectives run in (None = the default group)
    ctrl: Any = None           # the host-side group (gloo): job hand-over, control, RNG gathering

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- data ------------------------------------------------------------------------------
    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch's row indices (contiguous, sizes differ by ≤ 1)."""
        return torch.tensor_split(idx, self.world)[self.rank]

    # -- the model -------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, device: torch.device, seed: int) -> torch.nn.Module:
        """DDP around the model (it broadcasts rank 0's parameters once). Buffers are constants
        here (positions), so no per-step buffer broadcast. Then each rank draws its own dropout
        and corruption noise: reseed per rank."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        net = DDP(model, device_ids=ids, forward_sync_buffers=False, process_group=self.group)
        torch.manual_seed(seed * 1_000_003 + 7919 * (self.rank + 1))
        return net

    # -- the loss on the global batch ------------------------------------------------------
    def global_loss(self, raw: torch.Tensor, unit: torch.Tensor, y_next: torch.Tensor, y_prev: torch.Tensor,
                    stage: RampStage, cfg: LossConfig, *, compat: str = "none"
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """guardrails.guarded_loss, for the global batch this rank holds a share of."""
        raw, unit = raw.float(), unit.float()
        pos = losses.cosine(unit, y_next)
        neg = losses.cosine(unit, y_prev)
        terms = loss_terms(raw, unit, y_next, pos, neg, stage, cfg, compat=compat, reduce=torch.sum)
        p, n = pos.detach(), neg.detach()
        gap, ratio = losses.gap_and_ratio(p, n)
        rows = raw.new_full((), float(raw.shape[0]))          # a fill on the device: no host copy
        local = torch.stack([terms["mse"], terms["l_dir"], terms["l_floor"], terms["l_norm"], terms["l_orth"],
                             p.sum(), n.sum(), gap.sum(), ratio.sum(), (p < 0).float().sum(), rows])
        sums = dict(zip(SUM_KEYS, self.all_reduce_sum(local).unbind()))
        b = sums["rows"]
        dim = raw.shape[-1]
        g_terms = {"mse": sums["mse"] / (b * dim), **{k: sums[k] / b for k in ("l_dir", "l_floor", "l_norm", "l_orth")}}
        stats = {"pos": sums["pos"].detach() / b, "neg": sums["neg"].detach() / b, "gap": sums["gap"].detach() / b,
                 "ratio": sums["ratio"].detach() / b, "neg_cos_rate": sums["neg_count"].detach() / b}
        return combine(g_terms, stats, stage, cfg)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Autograd-aware SUM all-reduce (one collective forward, one in backward).
        torch.distributed.nn.functional.all_reduce does the same but is deprecated in torch
        2.13, which points to the functional collective used here."""
        from torch.distributed import _functional_collectives as fc

        return fc.all_reduce(t, "sum", self.group if self.group is not None else dist.group.WORLD)

    # -- host-side agreement (block boundaries, epoch ends, checkpoints) -------------------
    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's object on every rank (pickled over the CPU group; rare and small)."""
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0, group=self.ctrl)
        return box[0]

    def broadcast_ints(self, values: list[int] | None, length: int) -> list[int]:
        """Rank 0's `length` ints on every rank: one CPU broadcast, no pickle."""
        t = torch.zeros(length, dtype=torch.int64)
        if self.main:
            t[:len(values)] = torch.tensor(values, dtype=torch.int64)
        dist.broadcast(t, src=0, group=self.ctrl)
        return t.tolist()

    def gather_object(self, obj: Any) -> list | None:
        """Every rank's object on rank 0 (a list by rank); None elsewhere."""
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0, group=self.ctrl)
        return out


def current() -> Dist | None:
    """The process group this process trains in, once init() ran (None in a single process)."""
    return _current


def init() -> Dist | None:
    """Join the job torchrun started (env:// rendezvous). CPU tensors travel over gloo; on a
    CUDA machine, CUDA tensors over nccl (one group, two backends). No-op outside torchrun."""
    global _current
    if not launched():
        return None
    if _current is not None:
        return _current
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:         # before any collective: nccl (and object collectives) use the current device
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("LVMD_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
    # the control plane stays on the host: a gloo group of its own where the default one has nccl
    ctrl = dist.new_group(backend="gloo") if cuda else None
    _current = Dist(dist.get_rank(), dist.get_world_size(), local_rank, ctrl=ctrl)
    return _current


def for_training(t: TrainConfig, device: torch.device) -> tuple[Dist | None, torch.device]:
    """The group and this rank's device for a run's config: cuda → cuda:LOCAL_RANK; the
    training group follows train.backend (auto = the device's: nccl on CUDA, gloo on CPU)."""
    d = _current
    if d is None:
        return None, device
    if device.type == "cuda":         # one GPU per rank (ranks beyond the GPU count share them; gloo only)
        device = torch.device("cuda", d.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if t.backend == "nccl" and device.type != "cuda":
        raise UserError(f"train.backend: 'nccl' needs CUDA devices but this rank trains on {device.type}; "
                        "use auto or gloo")
    if t.backend == "gloo" and device.type == "cuda" and d.group is None:
        d.group = dist.new_group(backend="gloo")      # collective: every rank gets here in step
    return d, device


def close() -> None:
    global _current
    if dist.is_initialized():
        dist.destroy_process_group()
    _current = None


def peer_lost(exc: BaseException) -> bool:
    """Did a collective fail because another rank went away (died, was killed)?"""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return _current is not None and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted"))
