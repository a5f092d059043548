"""Data larger than the device: a split over train.device_data_budget is memory-mapped and
streamed per batch, with the same order and the same numbers as the in-memory path."""
from __future__ import annotations

import json

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
    cfg = load_config(None, [*data_overrides(tiny_data), *RUN, *extra])
    sink = ListSink()
    trainer = Trainer(cfg, load_train_data(cfg), sink, out_dir=tmp_path / f"out{len(extra)}")
    assert trainer.run() == "finished"
    return sink.steps, sink, trainer


def test_streamed_split_takes_the_same_steps_as_the_in_memory_one(tiny_data, tmp_path):
    memory, mem_sink, mem_trainer = train_rows(tiny_data, tmp_path)
    streamed, str_sink, str_trainer = train_rows(tiny_data, tmp_path, "train.device_data_budget=1024")
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
