"""The committed real fixture (Wikipedia + Austen, MiniLM) and `lvmd data report` on it: no model
needed. What the fixture is and how it was built: tests/fixtures/README.md."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, lvmd
from lvmd.data import formats as data
from lvmd.data import build as databuild
from lvmd.eval import datareport

FIXTURE = ROOT / "tests" / "fixtures" / "wiki-minilm"


@pytest.fixture(scope="module")
def report() -> dict:
    return datareport.report(FIXTURE, max_samples=500)


def test_fixture_is_small_real_minilm_data_with_its_recipe():
    files = sorted(p for p in FIXTURE.parent.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) <= 1_000_000
    build = json.loads((FIXTURE / "build.json").read_text())
    assert build["command"].startswith("lvmd data build --source wikipedia --ood-source austen --embedder minilm")
    for name, entry in build["outputs"].items():  # the files are what the builder wrote
        assert data.file_sha256(FIXTURE / name) == entry["sha256"], name
    arts = data.load_articles(FIXTURE / "articles.npz")
    assert arts.dim == 384 and arts.vectors.dtype == np.float32
    assert "Anarchism" in set(arts.titles) and len(arts.texts) == len(arts)


def test_fixture_windows_stay_inside_one_article_and_splits_are_disjoint():
    ids = {}
    for split, bank in (("train", "articles"), ("val", "articles"), ("ood", "ood_articles")):
        seqs = data.load_sequences(FIXTURE / f"{split}.npz")
        assert databuild.window_matches(seqs, data.load_articles(FIXTURE / f"{bank}.npz"), gap=0).all(), split
        ids[split] = set(seqs.article_ids.tolist())
    assert len(ids["val"]) >= 4 and len(ids["ood"]) >= 4
    assert not ids["train"] & ids["val"] and not (ids["train"] | ids["val"]) & ids["ood"]


def every_window_stats(articles_path: Path) -> dict:
    """split_stats over every in-domain window (stride 1), as DATA.md measured."""
    arts = data.load_articles(articles_path)
    arts.vectors /= np.linalg.norm(arts.vectors, axis=1, keepdims=True)  # float16 storage: norms 1e-3 off
    return datareport.split_stats(data.build_windows(arts, context_len=5, gap=0), arts, (0.3, 0.5))


def test_equal_distance_forward_and_backward_agree_within_sampling_noise_on_the_fixture():
    stats = every_window_stats(FIXTURE / "articles.npz")
    for d in (1, 2, 3):
        # ~200 windows: the paired difference has a standard error near 0.015; a window whose
        # target sat one chunk further than its anchor claims would show 0.05 or more
        assert abs(stats[f"d{d}"]["diff"]) < 3 * stats[f"d{d}"]["se"] < 0.06, (d, stats[f"d{d}"])
    fwd = [stats[f"d{d}"]["forward"] for d in (1, 2, 3)]
    assert fwd[0] > fwd[1] and fwd[0] > fwd[2]  # similarity decays with distance
    assert stats["d1"]["forward"] == pytest.approx(stats["unequal"]["cos_last_target"], abs=1e-6)
    # the original's P6 comparison (2 chunks ahead vs 1 behind) shows a "backward bias" that is distance
    assert stats["p6_pair"]["cos_p_minus_1"] - stats["p6_pair"]["cos_p_plus_2"] > 0.03


DEMO = ROOT / "lvmd" / "demo" / "wiki-minilm" / "articles.npz"


def test_equal_distance_forward_and_backward_differ_by_under_001_on_all_of_wikipedia():
    stats = every_window_stats(DEMO)  # 96 articles, 17,589 sentences
    for d in (1, 2, 3):
        assert abs(stats[f"d{d}"]["diff"]) < 0.01, (d, stats[f"d{d}"])
    assert stats["d1"]["forward"] - stats["d3"]["forward"] > 0.05
    assert stats["p6_pair"]["cos_p_minus_1"] - stats["p6_pair"]["cos_p_plus_2"] > 0.03


def test_the_demo_watch_floor_sits_between_chance_and_the_mean_of_context_baseline():
    """lvmd/demo/demo.toml lowers watch.r_at_5_floor from SPEC's .50 (which every epoch of the demo
    would cross) to chance: check both claims of its comment on the committed articles."""
    from lvmd.eval import fivecat
    from lvmd.config import load_config

    cfg = load_config(ROOT / "lvmd" / "demo" / "demo.toml", [])
    assert Path(cfg.data.articles) == DEMO and DEMO.exists()
    arts = data.load_articles(DEMO)
    chance = 5 * len(np.unique(arts.article_ids)) / len(arts)     # 5 / article length, over all targets
    windows = data.build_windows(arts)
    mean_context = fivecat.retrieval_check(lambda x: x.mean(dim=1), windows, arts, max_samples=3000)["r_at_5"]
    assert chance <= cfg.watch.r_at_5_floor < mean_context < 0.5


def test_report_numbers_on_the_fixture(report):
    assert report["profile"] == "minilm"
    s = report["splits"]
    assert set(s) == {"train", "val", "ood"} and all(v["gap"] == 0 for v in s.values())
    for split in s.values():
        lv = split["levels"]
        assert lv["adjacent"] > lv["same_article_random"] > lv["other_article_random"]
        assert split["baselines"]["mean_context"] > split["baselines"]["copy_last"]
        coh = split["coherence"]
        assert coh["low"] + coh["normal"] + coh["high"] == pytest.approx(1.0)
        assert coh["q05"] <= coh["q50"] <= coh["q95"]
    # Wikipedia sentences are far more alike within an article than across; Austen less so
    assert s["val"]["levels"]["other_article_random"] < 0.1 < s["ood"]["levels"]["other_article_random"]


def test_baseline_predictors_fail_gate_a_their_margin_is_negative(report):
    for label in ("copy_last", "mean_context"):
        res = report["fivecat"][label]
        assert not res["gates"]["A"] and res["metrics"]["VAL"]["margin"] < 0
    copy_last = report["fivecat"]["copy_last"]["metrics"]["VAL"]
    assert copy_last["m_-1"] == pytest.approx(1.0, abs=1e-3)  # copy-last predicts chunk t-1 exactly


def test_report_command_prints_a_table_and_json(tmp_path):
    text = lvmd("data", "report", str(FIXTURE), "--max-samples", "200", check=True).stdout
    assert "forward - backward" in text and "copy_last" in text and "share normal" in text
    rep = json.loads(lvmd("data", "report", str(FIXTURE), "--json", "--max-samples", "200", check=True).stdout)
    assert rep["splits"]["val"]["windows"] == len(data.load_sequences(FIXTURE / "val.npz"))


def test_report_finds_the_articles_a_sequence_file_recorded(tmp_path):
    """`lvmd data sequences DIR --out X` writes only sequence files; the report still finds the banks."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("articles.npz", "ood_articles.npz", "build.json"):
        (src / name).write_bytes((FIXTURE / name).read_bytes())
    databuild.rebuild_sequences(src, tmp_path / "seqs")
    rep = datareport.report(tmp_path / "seqs", profile="minilm", max_samples=100)
    assert rep["splits"]["val"]["windows"] == len(data.load_sequences(FIXTURE / "val.npz"))
