"""End to end: the real `lvmd run` on a tiny model, telemetry recomputed, resume equivalence."""
import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lvmd.config import load_config, stage_for_epoch
from lvmd.train.sink import ListSink
from lvmd.data.train_data import load_train_data
from lvmd.errors import UserError
from lvmd.train.trainer import Trainer
from store.schema import STEP_COLUMNS, STEP_METRICS
from tests.conftest import TINY_MODEL, data_overrides, lvmd


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    proc = lvmd("run", *data_overrides(tiny_data), *TINY_MODEL, "train.epochs=2", "train.batch_size=16",
                "--db", str(work / "t.db"), cwd=work, check=True)
    return work, proc


def test_run_writes_one_complete_row_per_optimizer_step(finished_run, tiny_data):
    work, proc = finished_run
    assert "run 1" in proc.stdout and "finished" in proc.stdout
    db = sqlite3.connect(work / "t.db")
    state, total_steps, step, config = db.execute("SELECT state, total_steps, step, config_json FROM runs").fetchone()
    train_rows = len(load_train_data(load_config(None, data_overrides(tiny_data))).train)
    assert total_steps == 2 * math.ceil(train_rows / 16) and state == "finished" and step == total_steps
    steps = [r[0] for r in db.execute("SELECT step FROM steps ORDER BY step")]
    assert steps == list(range(1, total_steps + 1))
    nulls = " OR ".join(f"{c} IS NULL" for c in STEP_COLUMNS)
    assert db.execute(f"SELECT count(*) FROM steps WHERE {nulls}").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM epochs").fetchone()[0] == 2
    assert json.loads(config)["train"]["epochs"] == 2
    out_dir = Path(db.execute("SELECT out_dir FROM runs").fetchone()[0])
    assert out_dir.parent.name.startswith("t.db-runs-") and out_dir.name == "1"
    assert (out_dir / "last.pt").exists() and (out_dir / "best.pt").exists()
    kinds = {r[0] for r in db.execute("SELECT DISTINCT kind FROM events")}
    assert {"state", "checkpoint"} <= kinds


def _cfg(tiny_data, *extra):
    return load_config(None, [*data_overrides(tiny_data), *TINY_MODEL, "train.epochs=3", "train.batch_size=16",
                              "train.telemetry_block=5", *extra])


def test_logged_values_match_a_recomputation_of_the_steps_batch(tiny_data, tmp_path):
    cfg = _cfg(tiny_data)
    data = load_train_data(cfg)
    full = ListSink()
    Trainer(cfg, data, full, out_dir=tmp_path / "full").run()
    k = 23                                           # a mid-epoch step of epoch 1
    head = Trainer(_cfg(tiny_data, f"train.max_steps={k - 1}"), data, ListSink(), out_dir=tmp_path / "head")
    head.run()
    t = Trainer(cfg, data, ListSink(), out_dir=tmp_path / "re")
    t.load_checkpoint(tmp_path / "head" / "last.pt")
    idx = t.epoch_order(t.epoch)[t.batch * 16:(t.batch + 1) * 16]
    ctx, y, prev = t.train_split.contexts[idx], t.train_split.targets[idx], t.train_split.prev[idx]
    raw, unit = t.model(ctx)                          # train mode; RNG restored → same dropout masks
    pos, neg = (unit * y).sum(-1), (unit * prev).sum(-1)
    mse = (raw - y).pow(2).mean()
    stage = stage_for_epoch(cfg.loss.ramp, t.epoch)
    gap = pos - neg
    ratio = gap / (pos.abs() + neg.abs() + 1e-6)
    l_dir = (0.7 * F.softplus(4 * (stage.m_gap - gap)) / 4 + 0.3 * F.softplus(4 * (0.05 - ratio)) / 4).mean()
    lam = (mse * stage.frac / l_dir).clamp(1e-4, 0.02)
    want = {"pos": pos.mean(), "neg": neg.mean(), "gap": gap.mean(), "ratio": ratio.mean(), "mse": mse,
            "neg_cos_rate": (pos < 0).float().mean(), "l_dir": l_dir, "lam": lam, "rho": lam * l_dir / mse,
            "l_floor": F.relu(0.1 - pos).pow(2).mean(), "l_norm": (raw.norm(dim=-1) - 1).pow(2).mean(),
            "frac": torch.tensor(stage.frac), "m_gap": torch.tensor(stage.m_gap)}
    row = dict(zip(STEP_COLUMNS[1:], full.steps[k - 1]))
    assert row["step"] == k
    for name, value in want.items():
        assert row[name] == pytest.approx(value.item(), rel=1e-4, abs=1e-6), name


def test_resumed_run_reproduces_the_uninterrupted_telemetry(tiny_data, tmp_path):
    cfg = _cfg(tiny_data)
    data = load_train_data(cfg)
    full = ListSink()
    Trainer(cfg, data, full, out_dir=tmp_path / "full").run()
    first = ListSink()
    Trainer(_cfg(tiny_data, "train.max_steps=17"), data, first, out_dir=tmp_path / "part").run()
    rest = ListSink()
    resumed = Trainer(cfg, data, rest, out_dir=tmp_path / "part")
    resumed.load_checkpoint(tmp_path / "part" / "last.pt")
    resumed.run()
    metrics = [STEP_COLUMNS.index(c) - 1 for c in STEP_METRICS]     # everything but the wall time
    strip = (lambda rows: [(r[0], r[1], r[3], *[r[i] for i in metrics]) for r in rows])
    assert [r[0] for r in first.steps + rest.steps] == [r[0] for r in full.steps]
    assert strip(first.steps + rest.steps) == strip(full.steps)
    drop_time = (lambda e: {k: v for k, v in e.items() if k not in ("t", "duration_s")})
    assert [drop_time(e) for e in rest.epochs] == [drop_time(e) for e in full.epochs[1:]]


@pytest.mark.parametrize("args, words", [
    (["train.epochs=0"], ["train.epochs", "out of range"]),
    (["model.kind=cnn"], ["model.kind", "cnn"]),
    (["data.train=/nonexistent/x.npz"], ["/nonexistent/x.npz", "no such file"]),
])
def test_bad_input_one_line_error_and_nothing_written(tiny_data, tmp_path, args, words):
    base = data_overrides(tiny_data)
    proc = lvmd("run", *base, *TINY_MODEL, *args, "--db", str(tmp_path / "x.db"), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lvmd: error:") and all(w in lines[0] for w in words)
    assert not (tmp_path / "x.db").exists()


def test_divergence_fails_the_run_with_the_reason(tiny_data, tmp_path):
    proc = lvmd("run", *data_overrides(tiny_data), *TINY_MODEL, "train.lr=1e6", "--quiet",
                "--db", str(tmp_path / "x.db"), cwd=tmp_path)
    assert proc.returncode == 1 and "non-finite" in proc.stderr
    db = sqlite3.connect(tmp_path / "x.db")
    state, error = db.execute("SELECT state, error FROM runs").fetchone()
    assert state == "failed" and "TrainingDiverged" in error
    assert db.execute("SELECT count(*) FROM events WHERE kind = 'error'").fetchone()[0] == 1


def test_bf16_and_every_architecture_train_or_are_refused_up_front(tiny_data, tmp_path):
    """On a CPU whose oneDNN has no bf16 LSTM (AVX2 only) the LSTM is refused with one line
    before anything trains; everywhere else each model trains in bf16."""
    for kind in ("transformer", "lstm", "gru", "amn"):
        cfg = load_config(None, [*data_overrides(tiny_data), *TINY_MODEL, f"model.kind={kind}", "train.epochs=1",
                                 "train.max_steps=4", "train.precision=bf16"])
        sink = ListSink()
        try:
            trainer = Trainer(cfg, load_train_data(cfg), sink, out_dir=tmp_path / kind)
        except UserError as exc:
            assert str(exc).startswith(f"train.precision: 'bf16' cannot run model.kind={kind}")
            assert "\n" not in str(exc) and not sink.steps
            continue
        assert trainer.hardware.precision == "bf16"
        assert trainer.run() == "finished" and len(sink.steps) == 4


def test_checkpoint_every_n_steps(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, "train.checkpoint_every=7", "train.epochs=1")
    sink = ListSink()
    Trainer(cfg, load_train_data(cfg), sink, out_dir=tmp_path).run()
    steps = [e["step"] for e in sink.events if e["kind"] == "checkpoint"]
    assert [s for s in steps if s % 7 == 0] == list(range(7, len(sink.steps) + 1, 7))


def test_compat_corruption_replaces_ctx_last_by_ctx_second_last_never_swaps():
    """SPEC §3: in swap_share of the corrupted rows the original replaced ctx[-1] by ctx[-2];
    ctx[-2] and the rest stay as they were."""
    from lvmd.train.trainer import corrupt_last_slot

    ctx = F.normalize(torch.randn(64, 5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = corrupt_last_slot(ctx, share=1.0, sigma=0.03, swap_share=1.0)
    assert torch.equal(out[:, :-1], ctx[:, :-1]) and torch.equal(out[:, -1], ctx[:, -2])
    noisy = corrupt_last_slot(ctx, share=1.0, sigma=0.03, swap_share=0.0)
    assert torch.equal(noisy[:, :-1], ctx[:, :-1]) and not torch.equal(noisy[:, -1], ctx[:, -1])
    assert torch.allclose(noisy[:, -1].norm(dim=-1), torch.ones(64)) and (noisy[:, -1] * ctx[:, -1]).sum(-1).min() > 0.9
    assert torch.equal(corrupt_last_slot(ctx, share=0.0, sigma=0.03, swap_share=1.0), ctx)
    torch.manual_seed(1)
    mixed = corrupt_last_slot(ctx.repeat(50, 1, 1), share=0.5, sigma=0.03, swap_share=0.2)
    assert torch.equal(mixed[:, :-1], ctx.repeat(50, 1, 1)[:, :-1])            # only the last slot ever changes
