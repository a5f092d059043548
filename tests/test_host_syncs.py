"""Zero host syncs per training step: every call that makes the host wait for the device
(`.item()`, `bool(t)`, `float(t)`, `.tolist()`, `.cpu()`, `.numpy()`, `nonzero`, ...) is counted
inside Trainer.train_step for every model, preset and compat. On CUDA torch's own sync debug
mode also raises on any such call."""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from lvmd.config import load_config, stage_for_epoch
from lvmd.data import formats as data
from lvmd.data.train_data import TrainData
from lvmd.train.sink import ListSink
from lvmd.train.trainer import Trainer

SYNC_CALLS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__",
              "nonzero", "__format__", "__repr__"}
TINY = ["model.d_model=16", "model.nhead=2", "model.num_layers=1", "model.ff=32", "model.hidden=16",
        "model.amn_d=8", "train.threads=1", "train.batch_size=8", "train.precision=fp32", "train.compile=off"]


class SyncCounter(TorchFunctionMode):
    """Records the name of every synchronising tensor call made while active. AdamW's reads of
    its own step counters are not counted: torch keeps `state["step"]` on the host (unless
    capturable), so reading it never waits for a device."""

    def __init__(self, host_scalars: set[int] = frozenset()):
        super().__init__()
        self.host_scalars, self.calls = host_scalars, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNC_CALLS and not (args and id(args[0]) in self.host_scalars):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def seqs():
    return data.build_windows(data.synth_articles(n_articles=10, min_chunks=12, max_chunks=14, dim=16, seed=1))


def _syncs_per_step(cfg, seqs, steps: int = 3, backend: str | None = None) -> list[list[str]]:
    trainer = Trainer(cfg, TrainData(seqs, seqs), ListSink(), out_dir="unused")
    if backend:                                   # the forward compiled with this torch.compile backend
        trainer.net = torch.compile(trainer.model, backend=backend)
    assert (trainer.hardware.compile == "on") == (cfg.train.compile == "on")
    split, stage, idx = trainer.train_split, stage_for_epoch(cfg.loss.ramp, 0), torch.arange(8)
    batch = (split.contexts[idx], split.targets[idx], split.prev[idx], stage)
    trainer.train_step(*batch)  # the optimizer makes its state on the first step
    steps_state = {id(s["step"]) for s in trainer.optimizer.state.values() if "step" in s}
    per_step = []
    for _ in range(steps):
        with SyncCounter(steps_state) as counter:
            if trainer.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("error")
            try:
                trainer.train_step(*batch)
            finally:
                if trainer.device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        per_step.append(counter.calls)
    return per_step


@pytest.mark.parametrize("compat", ["none", "lnsp"])
@pytest.mark.parametrize("preset", ["mse", "v1", "v2.1", "v2.2"])
@pytest.mark.parametrize("kind", ["transformer", "lstm", "gru", "amn"])
def test_a_training_step_makes_no_host_sync(seqs, kind, preset, compat):
    cfg = load_config(None, TINY + [f"model.kind={kind}", f"loss.preset={preset}", f"compat={compat}"])
    assert _syncs_per_step(cfg, seqs) == [[], [], []]


def test_a_compiled_training_step_makes_no_host_sync(seqs):
    """train.compile=on (issue 23): the compiled amn forward (inductor), its backward and the
    eager loss, clip and AdamW around it still never wait for the device (a graph break on
    `.item()` would run eagerly and be counted). The same tiny amn graph as tests/test_compile.py."""
    cfg = load_config(None, TINY + ["model.kind=amn", "loss.preset=v2.1", "train.compile=on"])  # the last wins
    assert _syncs_per_step(cfg, seqs) == [[], [], []]


@pytest.mark.parametrize("kind", ["transformer", "lstm", "gru"])
def test_the_other_models_captured_by_dynamo_make_no_host_sync(seqs, kind):
    """The other models through dynamo's capture and AOTAutograd (backend aot_eager): host syncs
    come from graph breaks, which are dynamo's; inductor's C++ compile of each would cost minutes
    cold on a 2-core box, and the amn above runs the real thing."""
    cfg = load_config(None, TINY + [f"model.kind={kind}", "loss.preset=v2.1", "train.compile=off"])
    assert _syncs_per_step(cfg, seqs, backend="aot_eager") == [[], [], []]


def test_the_counter_sees_the_sync_an_unflagged_causal_mask_makes(seqs):
    """torch's decoder compares a tgt_mask with a causal mask (`bool(...)`) unless told it is
    causal: what lvmd's transformer did on every step before it passed tgt_is_causal."""
    layer = torch.nn.TransformerDecoderLayer(16, 2, 32, batch_first=True)
    decoder = torch.nn.TransformerDecoder(layer, 1)
    x = torch.randn(4, 5, 16)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(5)
    with SyncCounter() as unflagged:
        decoder(x, x, tgt_mask=mask, memory_mask=mask)
    with SyncCounter() as flagged:
        decoder(x, x, tgt_mask=mask, memory_mask=mask, tgt_is_causal=True, memory_is_causal=True)
    assert "__bool__" in unflagged.calls and flagged.calls == []
