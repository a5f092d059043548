"""`lvmd data report` in bounded memory: one chunked pass over memory-mapped files gives the
numbers the whole-array report gave, and its peak allocation does not grow with the split."""
from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, lvmd
from lvmd.data import formats, mapped
from lvmd.eval import datareport, datastats, fivecat

FIXTURE = ROOT / "tests" / "fixtures" / "wiki-minilm"
BEFORE = json.loads((ROOT / "tests" / "fixtures" / "wiki-minilm-report-636f0e6.json").read_text())


def same(got, want, rel: float, path: str = "") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            same(got[k], want[k], rel, f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            same(g, w, rel, f"{path}[{i}]")
    elif isinstance(want, float) and not math.isnan(want):
        assert got == pytest.approx(want, rel=rel, abs=0), path
    else:
        assert got == want or (got != got and want != want), path


@pytest.mark.parametrize("chunk_rows, rel", [(0, 0.0), (7, 1e-12)])
def test_the_report_gives_the_numbers_the_whole_array_report_gave(monkeypatch, chunk_rows, rel):
    if chunk_rows:        # 171 train windows in 25 chunks, the bank's pairs in chunks of 7 too
        monkeypatch.setattr(datastats, "CHUNK_ROWS", chunk_rows)
    rep = json.loads(json.dumps(datareport.report(FIXTURE, max_samples=500)))
    assert rep["profile"] == BEFORE["profile"]
    same(rep["splits"], BEFORE["splits"], rel)        # rel 0: the same bits when one chunk holds a split
    # 5CAT of the baselines: as on whole arrays renormalised in memory (what the report did)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)        # noqa: E731
    seqs, banks = {}, {}
    for split, bank in (("val", "articles"), ("ood", "ood_articles")):
        s = formats.load_sequences(FIXTURE / f"{split}.npz")
        s.contexts, s.targets = unit(s.contexts), unit(s.targets)
        b = formats.load_articles(FIXTURE / f"{bank}.npz")
        b.vectors = unit(b.vectors)
        seqs[split], banks[split] = s, b
    for label, fn in datareport.BASELINES.items():
        whole = fivecat.evaluate(fn, seqs["val"], seqs["ood"], banks["val"], ood_articles=banks["ood"],
                                 profile=rep["profile"], max_samples=500).to_dict()
        got = rep["fivecat"][label]
        assert got["metrics"] == json.loads(json.dumps(whole["metrics"])) and got["gates"] == whole["gates"], label


@pytest.fixture(scope="module")
def fifty_chunks(tmp_path_factory) -> Path:
    """Uncompressed float32 files (they memory-map), D=128: a train split of 3,400 windows."""
    out = tmp_path_factory.mktemp("report_memory")
    formats.save_articles(out / "articles.npz", formats.synth_articles(n_articles=200, min_chunks=20, max_chunks=30,
                                                                       dim=128, seed=5))
    formats.write_splits(formats.load_articles(out / "articles.npz"), out, context=5, gap=0, val=0.1, ood=0.05,
                         seed=0, source=str(out / "articles.npz"))
    return out


def test_the_reports_peak_allocation_is_bounded_on_a_split_fifty_times_its_chunk(fifty_chunks, monkeypatch):
    chunk = 64
    for module, name in ((datastats, "CHUNK_ROWS"), (formats, "CHECK_ROWS"), (formats, "SAMPLE_BLOCK_ROWS")):
        monkeypatch.setattr(module, name, chunk)
    monkeypatch.setattr(formats, "SAMPLE_BLOCKS", 1)
    monkeypatch.setattr(datastats, "RANDOM_PAIRS", 2000)
    train = mapped.map_member(fifty_chunks / "train.npz", "context_sequences")
    assert len(train) >= 50 * chunk and isinstance(train, np.memmap)
    split_bytes = train.nbytes * 6 // 5
    tracemalloc.start()
    try:
        rep = datareport.report(fifty_chunks, profile="gtr-t5", max_samples=64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rep["splits"]["train"]["windows"] == len(train)
    # the whole-array report held the split and a renormalised copy: twice its size at least
    assert peak < split_bytes / 4, (peak, split_bytes)


def test_max_windows_samples_the_statistics_and_progress_goes_to_stderr(fifty_chunks):
    proc = lvmd("data", "report", str(fifty_chunks), "--json", "--max-windows", "300", "--max-samples", "50",
                "--profile", "gtr-t5", check=True)
    rep = json.loads(proc.stdout)
    train = rep["splits"]["train"]
    assert train["windows_read"] == 300 and train["windows"] > 3000
    assert "data report:" in proc.stderr and "train statistics: 300/300 windows" in proc.stderr
    whole = datareport.report(fifty_chunks, profile="gtr-t5", max_samples=50)["splits"]["train"]
    assert train["levels"]["adjacent"] == pytest.approx(whole["levels"]["adjacent"], abs=0.05)


def test_a_bad_window_that_only_5cat_reads_stops_the_report_naming_its_row(fifty_chunks, tmp_path, monkeypatch):
    import shutil

    local = tmp_path / "d"
    shutil.copytree(fifty_chunks, local)
    monkeypatch.setattr(formats, "SAMPLE_BLOCKS", 1)          # the up-front sample: rows 0 and 1
    monkeypatch.setattr(formats, "SAMPLE_BLOCK_ROWS", 2)
    val = local / "val.npz"
    ctx = mapped.map_member(val, "context_sequences")
    read = set(datastats.window_rows(len(ctx), 10, 0).tolist())     # what --max-windows 10 reads
    bad = next(r for r in range(2, 50) if r not in read)             # 5CAT's first 50 windows hold it
    with open(val, "r+b") as fh:
        fh.seek(ctx.offset + bad * ctx.strides[0])
        fh.write(b"\xff" * 4)                                         # a NaN
    with pytest.raises(formats.DataError, match=rf"val.npz: key 'context_sequences': row {bad} holds NaN or inf"):
        datareport.report(local, profile="gtr-t5", max_samples=50, max_windows=10)
