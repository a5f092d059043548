"""Data larger than the device: a split over train.device_data_budget is memory-mapped and
streamed per batch, with the same order and the same numbers as the in-memory path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL, data_overrides, lvmd, query
from lvmd.config import load_config
from lvmd.data import formats as datamod
from lvmd.data import mapped, stream
from lvmd.data.formats import DataError
from lvmd.train.sink import ListSink
from lvmd.data.train_data import load_train_data
from lvmd.train.trainer import Trainer

RUN = [*TINY_MODEL, "train.batch_size=8", "train.epochs=2", "train.max_steps=40", "eval.fivecat_every=0"]


def train_rows(tiny_data, tmp_path, *extra) -> tuple[list[tuple], ListSink, Trainer]:
    cfg = load_config(None, [*data_overrides(tiny_data, articles=True), *RUN, *extra])
    sink = ListSink()
    trainer = Trainer(cfg, load_train_data(cfg), sink, out_dir=tmp_path / f"out{len(extra)}")
    assert trainer.run() == "finished"
    return sink.steps, sink, trainer


@pytest.mark.parametrize("prev", ["ctx-2", "true"])
def test_streamed_split_takes_the_same_steps_as_the_in_memory_one(tiny_data, tmp_path, prev):
    memory, mem_sink, mem_trainer = train_rows(tiny_data, tmp_path, f"loss.prev={prev}")
    streamed, str_sink, str_trainer = train_rows(tiny_data, tmp_path, f"loss.prev={prev}",
                                                 "train.device_data_budget=1024")
    assert isinstance(str_trainer.train_split, stream.StreamedSplit)
    assert isinstance(str_trainer.train_split.contexts, np.memmap)           # rows come from the file
    assert isinstance(str_trainer.data.train.contexts, np.memmap) and isinstance(mem_trainer.data.train.contexts, np.memmap)
    assert not isinstance(mem_trainer.train_split, stream.StreamedSplit)
    assert [e["detail"]["streamed"] for e in str_sink.events if e["kind"] == "data"] == [True]
    assert not [e for e in mem_sink.events if e["kind"] == "data"]
    assert len(memory) == len(streamed) == 40
    for a, b in zip(memory, streamed):
        assert a[0] == b[0]
        np.testing.assert_allclose(np.array(a[3:], dtype=float), np.array(b[3:], dtype=float), atol=1e-6, rtol=0)
    assert [e["val_loss"] for e in mem_sink.epochs] == pytest.approx([e["val_loss"] for e in str_sink.epochs], abs=1e-6)


def test_a_split_four_times_the_budget_trains_from_its_memory_map(tmp_path):
    out = tmp_path / "big"
    arts = datamod.synth_articles(n_articles=120, min_chunks=20, max_chunks=30, dim=16, seed=3)
    datamod.save_articles(out / "articles.npz", arts)
    datamod.write_splits(datamod.load_articles(out / "articles.npz"), out, context=5, gap=0, val=0.1, ood=0.1,
                         seed=0, source=str(out / "articles.npz"))
    size = stream.split_bytes(datamod.load_sequences(out / "train.npz"), "ctx-2")
    budget = size // 4
    db = tmp_path / "t.db"
    lvmd("run", *data_overrides(out), *TINY_MODEL, "train.batch_size=32", "train.epochs=1",
         f"train.device_data_budget={budget}", "eval.fivecat_every=0", "--db", str(db), "--quiet", check=True)
    (detail,) = [json.loads(d) for (d,) in query(db, "SELECT detail FROM events WHERE kind = 'data'")]
    assert detail["streamed"] and detail["mapped"] and detail["bytes"] >= 4 * detail["budget"] == 4 * budget
    (state, steps, total) = query(db, "SELECT state, step, total_steps FROM runs")[0]
    assert state == "finished" and steps == total == query(db, "SELECT count(*) FROM steps")[0][0] > 0


def test_only_an_uncompressed_npz_is_mapped_and_a_mapped_file_is_checked(tiny_data, tmp_path):
    seqs = datamod.load_sequences(tiny_data / "train.npz")
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, context_sequences=seqs.contexts, target_vectors=seqs.targets)
    assert mapped.map_member(packed, "context_sequences") is None             # compressed: read normally
    loaded = mapped.load_train_split(packed)
    assert not isinstance(loaded.contexts, np.memmap) and np.array_equal(loaded.contexts, seqs.contexts)

    bad = tmp_path / "bad.npz"
    ctx = seqs.contexts.copy()
    ctx[3, 1, 0] = np.nan
    np.savez(bad, context_sequences=ctx, target_vectors=seqs.targets)
    assert isinstance(mapped.map_member(bad, "context_sequences"), np.memmap)
    with pytest.raises(DataError, match=r"bad.npz: key 'context_sequences': row 3 holds NaN or inf"):
        mapped.load_train_split(bad)
    head = mapped.load_train_split(tiny_data / "train.npz", max_rows=10)
    assert isinstance(head.contexts, np.memmap) and np.array_equal(head.contexts, seqs.contexts[:10])


# -- a batch reads its own rows and nothing else -------------------------------------------------
# The split's arrays live in page-aligned memory whose every page outside the batch's rows is made
# unreadable (mprotect PROT_NONE): a gather that touched any other row would die of SIGSEGV, so
# it runs in a child process.
GUARDED_FETCH = r"""
import ctypes, mmap, sys
import numpy as np, torch
from lvmd.data import stream

libc = ctypes.CDLL(None, use_errno=True)
prev, page = sys.argv[1], mmap.PAGESIZE
m, t, d = 64, 5, page // 4                        # a target or bank row is one page, a context row five
idx = np.array([5, 40, 3, 63, 12])
prev_rows = (np.arange(m) * 7) % m                 # the bank row of each window's y_prev

def guarded(shape, keep):
    row = int(np.prod(shape[1:])) * 4
    buf = mmap.mmap(-1, shape[0] * row)
    arr = np.frombuffer(buf, np.float32).reshape(shape)
    arr[:] = np.arange(shape[0], dtype=np.float32).reshape((-1,) + (1,) * (len(shape) - 1))
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    for r in sorted(set(range(shape[0])) - set(keep.tolist())):
        assert libc.mprotect(ctypes.c_void_p(base + r * row), row, 0) == 0
    return arr

ctx, tgt = guarded((m, t, d), idx), guarded((m, d), idx)
bank = guarded((m, d), prev_rows[idx]) if prev == "true" else None
split = stream.StreamedSplit(ctx, tgt, prev_rows if prev == "true" else None, bank, torch.device("cpu"))
(c, y, p), _ = split.fetch(idx)
assert (c[:, 0, 0].numpy() == idx).all() and (y[:, 0].numpy() == idx).all()
assert (p[:, 0].numpy() == (idx if prev == "ctx-2" else prev_rows[idx])).all()
print("fetched", len(idx))
"""


@pytest.mark.parametrize("prev", ["ctx-2", "true"])
def test_a_streamed_batch_reads_only_its_own_rows(prev):
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", GUARDED_FETCH, prev], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip() == "fetched 5", (proc.returncode, proc.stderr[-2000:])


# -- a start reads what it trains on -------------------------------------------------------------------
def spoil_rows_from(path: Path, first: int) -> None:
    """Rows first.. of the contexts and targets become NaN (0xFF bytes) in place: a run that reads
    any of them fails."""
    with open(path, "r+b") as fh:
        for key in ("context_sequences", "target_vectors"):
            arr = mapped.map_member(path, key)
            row = arr[0].nbytes
            fh.seek(arr.offset + first * row)
            fh.write(b"\xff" * (len(arr) - first) * row)


def test_max_train_rows_are_the_only_rows_a_run_reads(tiny_data, tmp_path):
    local = tmp_path / "data"
    shutil.copytree(tiny_data, local)
    spoil_rows_from(local / "train.npz", 40)
    db = tmp_path / "t.db"
    proc = lvmd("run", *data_overrides(local), *RUN, "data.max_train=40", "train.max_steps=100", "--db", str(db),
                "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert query(db, "SELECT state, step FROM runs") == [("finished", 2 * 5)]    # 40 rows, batch 8, 2 epochs
    proc = lvmd("run", *data_overrides(local), *RUN, "--db", str(db), "--quiet")   # all rows: the 41st is bad
    assert proc.returncode != 0 and "train.npz: key 'context_sequences': row 40 holds NaN or inf" in proc.stderr
    assert query(db, "SELECT count(*) FROM runs")[0][0] == 1                      # refused before a row


# `lvmd run` in a process whose maps of the train split have rows KEEP + 1.. on unreadable pages
# (mprotect PROT_NONE as map_member makes them): any read of those rows, at start-up or
# in training, in memory or streamed, dies of SIGSEGV. D = 1024: a row is a page or more, so the
# guard starts within row KEEP whatever the array's offset in the file.
GUARDED_TAIL_RUN = r"""
import ctypes, mmap, sys
from lvmd.cli.main import main
from lvmd.data import mapped

libc, map_member = ctypes.CDLL(None, use_errno=True), mapped.map_member
train, keep = sys.argv[1], int(sys.argv[2])

def guarded(path, key):
    arr = map_member(path, key)
    if arr is not None and str(path) == train and key in ("context_sequences", "target_vectors"):
        page, end = mmap.PAGESIZE, arr.ctypes.data + arr.nbytes
        lo = -(-(arr.ctypes.data + keep * arr.strides[0]) // page) * page
        assert arr.strides[0] >= page and lo < end
        assert libc.mprotect(ctypes.c_void_p(lo), -(-(end - lo) // page) * page, 0) == 0
    return arr

mapped.map_member = guarded
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("budget", ["0", "1024"])
def test_max_train_rows_run_with_the_maps_tail_unreadable(tmp_path, budget):
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "d"
    datamod.save_articles(out / "articles.npz", datamod.synth_articles(n_articles=30, min_chunks=12, max_chunks=24,
                                                                        dim=1024, seed=1))
    datamod.write_splits(datamod.load_articles(out / "articles.npz"), out, context=5, gap=0, val=0.2, ood=0.2,
                         seed=0, source=str(out / "articles.npz"))
    train, keep = out / "train.npz", 64
    assert len(mapped.map_member(train, "target_vectors")) > 2 * keep
    db = tmp_path / "t.db"
    argv = ["run", *data_overrides(out), *RUN, f"data.max_train={keep}", f"train.device_data_budget={budget}",
            "train.max_steps=100", "--db", str(db), "--quiet"]
    proc = subprocess.run([sys.executable, "-c", GUARDED_TAIL_RUN, str(train), str(keep), *argv], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert query(db, "SELECT state, step FROM runs") == [("finished", 2 * keep // 8)]   # batch 8, 2 epochs


@pytest.mark.parametrize("budget", ["0", "1024"])
def test_a_bad_row_outside_the_sample_stops_the_run_when_a_batch_first_draws_it(tiny_data, tmp_path, monkeypatch,
                                                                              budget):
    local = tmp_path / "data"
    shutil.copytree(tiny_data, local)
    monkeypatch.setattr(datamod, "SAMPLE_BLOCKS", 2)                   # rows 0, 1, m - 2 and m - 1
    monkeypatch.setattr(datamod, "SAMPLE_BLOCK_ROWS", 2)
    bad = 7
    arr = mapped.map_member(local / "train.npz", "target_vectors")
    with open(local / "train.npz", "r+b") as fh:                      # one target 3× too long
        fh.seek(arr.offset + bad * arr[0].nbytes)
        fh.write((3 * np.asarray(arr[bad])).astype(np.float32).tobytes())
    cfg = load_config(None, [*data_overrides(local), *RUN, f"train.device_data_budget={budget}"])
    data = load_train_data(cfg)                                         # the sample passes
    trainer = Trainer(cfg, data, ListSink(), out_dir=tmp_path / "out")
    assert isinstance(trainer.train_split, stream.StreamedSplit) == (budget != "0")
    with pytest.raises(DataError, match=r"train.npz: key 'target_vectors': row 7 holds a vector of norm 3.000"):
        trainer.run()
    order = trainer.epoch_order(0).cpu().numpy()
    first_draw = int(np.flatnonzero(order == bad)[0]) // 8                # the batch that holds row 7
    assert trainer.step in (first_draw, first_draw - 1)                   # streamed: fetched a batch ahead


def test_a_run_stopped_by_a_bad_row_is_crashed_with_the_row_and_file_named(tmp_path):
    """lvmd run on a split larger than the up-front sample (16 runs of 32 rows): the bad row is found as
    training draws it; the command fails with one line and the run row keeps the error."""
    from conftest import synth_splits

    out = synth_splits(tmp_path / "d", n_articles=150, min_chunks=24, max_chunks=26, seed=6, val=0.05, ood=0.0)
    m = len(mapped.map_member(out / "train.npz", "target_vectors"))
    sampled = set(datamod.sample_rows(m).tolist())
    bad = next(r for r in range(m // 3, m) if r not in sampled)
    spoil = mapped.map_member(out / "train.npz", "context_sequences")
    with open(out / "train.npz", "r+b") as fh:
        fh.seek(spoil.offset + bad * spoil[0].nbytes)
        fh.write(b"\xff" * 4)                                             # one NaN in its first chunk
    db = tmp_path / "t.db"
    proc = lvmd("run", *data_overrides(out), *TINY_MODEL, "train.batch_size=64", "train.epochs=1",
                "eval.fivecat_every=0", "--db", str(db), "--quiet")
    line = f"train.npz: key 'context_sequences': row {bad} holds NaN or inf"
    assert proc.returncode != 0 and line in proc.stderr, proc.stderr
    state, error = query(db, "SELECT state, error FROM runs")[0]
    assert state == "crashed" and line in error


def test_val_rows_beyond_the_sample_are_checked_beside_the_start_and_before_the_first_step(tiny_data, tmp_path,
                                                                                          monkeypatch):
    local = tmp_path / "data"
    shutil.copytree(tiny_data, local)
    monkeypatch.setattr(datamod, "SAMPLE_BLOCKS", 1)                   # the sample: rows 0 and 1
    monkeypatch.setattr(datamod, "SAMPLE_BLOCK_ROWS", 2)
    spoil_rows_from(local / "val.npz", 10)
    cfg = load_config(None, [*data_overrides(local), *RUN])
    with pytest.raises(DataError, match=r"val.npz: key 'context_sequences': row 10 holds NaN or inf"):
        load_train_data(cfg)                                            # check="now": at once
    vetted = load_train_data(cfg, check="sample")                      # lvmd start: the daemon checks the rest
    assert vetted.full_check is None
    data = load_train_data(cfg, check="background")
    sink = ListSink()
    with pytest.raises(DataError, match=r"val.npz: key 'context_sequences': row 10 holds NaN or inf"):
        Trainer(cfg, data, sink, out_dir=tmp_path / "out")
    assert sink.steps == []
