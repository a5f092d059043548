"""5CAT (lvmd/eval/fivecat/): known predictors give known numbers, the vectorised code agrees with
a per-sample reference in both modes, gates and NaN handling, bad inputs fail in one line."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from conftest import ROOT
from lvmd.data import formats as data
from lvmd.eval import fivecat
from lvmd.eval.fivecat.arrays import unit
from lvmd.config import ModelConfig
from lvmd.errors import UserError
from lvmd.train.models import build_model

D = 32


@pytest.fixture(scope="module")
def bank() -> data.Articles:
    return data.synth_articles(n_articles=40, min_chunks=12, max_chunks=20, dim=D, seed=3)


@pytest.fixture(scope="module")
def splits(bank):
    ids = np.unique(bank.article_ids)
    return (data.build_windows(bank, article_subset=ids[:20]), data.build_windows(bank, article_subset=ids[20:]))


@pytest.fixture(scope="module")
def reference():
    """scripts/bench_fivecat.py: the naive per-sample implementation."""
    spec = importlib.util.spec_from_file_location("bench_fivecat", ROOT / "scripts" / "bench_fivecat.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def oracle_for(arts: data.Articles):
    """Returns the true next chunk: finds ctx[-1] in the bank and answers the row after it.
    Fed its own predictions (rollout) it keeps returning the true chunks."""
    bank_vecs = torch.from_numpy(arts.vectors)

    def predict(x):
        row = (x[:, -1] @ bank_vecs.T).argmax(1)
        return bank_vecs[(row + 1).clamp(max=len(bank_vecs) - 1)]

    return predict


def copy_last(x):
    return x[:, -1]


def mean_context(x):
    return x.mean(dim=1)


def random_predictor(seed=0):
    rng = np.random.default_rng(seed)
    return lambda x: torch.from_numpy(rng.standard_normal((x.shape[0], x.shape[2])).astype(np.float32))


def tiny_amn(dim=D, seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(kind="amn", amn_d=8, hidden=16), dim).eval()
    return lambda x: model(x)[1]


def wide_bins(seqs, base="gtr-t5"):
    """A profile whose "normal" coherence bin holds most of these contexts (synthetic data is
    more coherent than GTR-T5 text)."""
    coh = fivecat.coherence(seqs.contexts)
    return dataclasses.replace(fivecat.load_profile(base), bin_low=float(np.quantile(coh, 0.05)),
                               bin_high=float(np.quantile(coh, 0.95)))


def curve(m: dict) -> dict[int, float]:
    return {k: m[fivecat.offset_name(k)] for k in fivecat.OFFSETS}


def peak(m: dict) -> int:
    c = curve(m)
    return max(c, key=c.get)


def assert_same(got: dict, want: dict, tol=1e-5):
    for key, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=tol), key


# -- known predictors ------------------------------------------------------------------------
def test_oracle_peaks_at_zero_ranks_first_and_rolls_out_on_true_chunks(bank, splits):
    val, ood = splits
    res = fivecat.evaluate(oracle_for(bank), val, ood, bank, max_samples=300)
    for split in ("VAL", "OOD"):
        m = res.metrics[split]
        assert peak(m) == 0 and m["m_0"] == pytest.approx(1.0, abs=1e-5)
        assert m["margin"] > 0.1
        assert m["r_at_1"] == 1.0 and m["r_at_5"] == 1.0 and m["mrr"] == 1.0
        for h in range(1, 6):
            assert m[f"rollout_h{h}"] == pytest.approx(1.0, abs=1e-5)  # step h scored on chunk t+h-1
        assert m["a_n"] > 0 and m["b_n"] > 0 and m["d_n"] > 0
    assert res.gates["A"] and res.gates["B"] and res.gates["D"]


def test_a_test_over_too_few_rows_fails_its_gate_and_says_so(bank, splits):
    """Issue 20.7: the oracle on 5 rows scores R@5 = 1.0, which means nothing: the gates it would
    pass fail on the sample count, the result lists them with n, the table says "too few samples"."""
    from lvmd.cli.eval import format_result

    val, ood = splits
    few = val.subset(np.arange(5))
    res = fivecat.evaluate(oracle_for(bank), few, ood, bank, max_samples=300)
    assert res.metrics["VAL"]["r_at_5"] == 1.0 and res.metrics["VAL"]["b_n"] == 5
    assert not any(res.gates[g] for g in "ABCDE")
    assert {(c.split, c.gate, c.value) for c in res.too_few_samples} >= {("VAL", g, 5.0) for g in "ABCD"}
    assert not any(c.split == "OOD" and c.gate in "ABCD" for c in res.too_few_samples)   # OOD has enough
    doc = res.to_dict()
    assert doc["min_samples"] == 20 and {"split": "VAL", "gate": "B", "n": 5.0} in doc["too_few_samples"]
    text = format_result(res)
    assert "too few samples (< 20 rows, so these gates do not pass): VAL A n=5" in text
    full = fivecat.evaluate(oracle_for(bank), val, ood, bank, max_samples=300)
    assert full.gates["A"] and full.gates["B"] and full.gates["D"]
    assert not [c for c in full.too_few_samples if c.gate != "E"]      # (this bank has no "normal" E bin)


def test_under_compat_the_oracle_shows_the_originals_defects(bank, splits):
    val, ood = splits
    fixed = fivecat.evaluate(oracle_for(bank), val, ood, bank, max_samples=300)
    res = fivecat.evaluate(oracle_for(bank), val, ood, bank, max_samples=300, compat="lnsp")
    m = res.metrics["VAL"]
    assert m["m_0"] == pytest.approx(1.0, abs=1e-5)
    assert m["margin_+1"] < 0 and not res.gates["A"]  # its "+1" was the chunk after the target
    assert [c.metric for c in res.checks if c.gate == "A"][:2] == ["m_+1", "margin_+1"]
    assert m["rollout"] < 0.95  # scored from t+1: a perfect rollout looks imperfect
    # its ranks compare against a separately rounded float: a perfect prediction is often 2nd
    assert 0.5 < m["r_at_1"] < 1.0 and m["r_at_5"] == 1.0 and fixed.metrics["VAL"]["r_at_1"] == 1.0
    # its cross_article only moved ctx[0] into the last slot, a far milder change
    assert m["delta_cross_article"] > fixed.metrics["VAL"]["delta_cross_article"] + 0.3


def test_copy_last_peaks_at_minus_one_with_a_negative_margin(bank, splits):
    val, ood = splits
    m = fivecat.evaluate(copy_last, val, ood, bank, max_samples=300).metrics["VAL"]
    assert peak(m) == -1 and m["m_-1"] == pytest.approx(1.0, abs=1e-5)
    assert m["margin"] < 0 and m["r_at_1"] == 0.0


def test_mean_of_context_is_order_blind_and_peaks_behind_the_target(bank, splits):
    val, ood = splits
    res = fivecat.evaluate(mean_context, val, ood, bank, max_samples=200)
    m = res.metrics["VAL"]
    assert peak(m) < 0 and m["margin"] < 0
    assert abs(m["delta_shuffled"]) < 1e-6 and abs(m["delta_reversed"]) < 1e-6
    rows = np.arange(200)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    tgt = unit(val.targets[rows])
    base = np.mean(np.sum(unit(val.contexts[rows].mean(1)) * tgt, -1))
    last = np.mean(np.sum(unit(val.contexts[rows, -1]) * tgt, -1))
    assert m["cos"] == pytest.approx(base, abs=1e-5)
    assert m["delta_repeat_pad"] == pytest.approx(last - base, abs=1e-5)
    assert not res.gates["C"]


def test_random_predictions_rank_near_chance(bank, splits):
    val, _ = splits
    m = fivecat.evaluate(random_predictor(), val, None, bank).metrics["VAL"]
    lengths = np.bincount(bank.article_ids)[val.article_ids].astype(float)
    assert m["b_n"] == len(val) > 200
    assert m["r_at_1"] == pytest.approx(np.mean(1 / lengths), abs=0.05)
    assert m["r_at_5"] == pytest.approx(np.mean(5 / lengths), abs=0.1)
    harmonic = np.array([np.sum(1 / np.arange(1, n + 1)) for n in lengths])
    assert m["mrr"] == pytest.approx(np.mean(harmonic / lengths), abs=0.05)
    assert abs(m["margin"]) < 0.1 and abs(m["m_0"]) < 0.1


def test_ties_favour_the_target():
    arts = data.synth_articles(n_articles=1, min_chunks=8, max_chunks=8, dim=D, seed=5)
    arts.vectors[3] = arts.vectors[6]  # chunk 3 duplicates the target chunk 6
    seqs = data.Sequences(arts.vectors[None, 1:6].copy(), arts.vectors[None, 6].copy(),
                          np.array([0]), np.array([6]))
    exact = torch.from_numpy(arts.vectors[6])
    m = fivecat.evaluate(lambda x: exact.expand(len(x), -1), seqs, None, arts).metrics["VAL"]
    assert m["b_n"] == 1 and m["r_at_1"] == 1.0


# -- agreement with the per-sample reference -------------------------------------------------
@pytest.mark.parametrize("compat", ["none", "lnsp"])
def test_vectorised_numbers_equal_the_per_sample_reference(bank, splits, reference, compat):
    val, _ = splits
    predict = tiny_amn()
    prof = wide_bins(val)
    bins = fivecat.COMPAT_BINS if compat == "lnsp" else (prof.bin_low, prof.bin_high)
    res = fivecat.evaluate(predict, val, None, bank, compat=compat, profile=prof, max_samples=120, seed=4,
                           batch_size=50)
    predict_one, calls = reference.one_at_a_time(predict)
    want = reference.naive_split(predict_one, val, bank, compat=compat, max_samples=120, seed=4, bins=bins)
    assert calls[0] > 120 * 10
    if compat == "lnsp":  # its ranks compare two separately rounded floats: a coin flip at the target
        for key in ("r_at_1", "r_at_5", "mrr"):
            assert res.metrics["VAL"][key] == pytest.approx(want.pop(key), abs=0.05)
    assert_same(res.metrics["VAL"], want)
    assert set(want) <= set(res.metrics["VAL"])


def test_compat_ranks_differ_from_correct_ranks_only_by_the_target_itself(bank, splits):
    val, _ = splits
    lookup = fivecat.Bank(bank)
    rows = lookup.rows(val.article_ids, val.target_indices)
    yhat = unit(val.targets + 0.5 * val.contexts[:, -1])  # near the target, never a tie
    right = fivecat.article_ranks(yhat, val.article_ids, rows, lookup, lnsp=False)
    lnsp = fivecat.article_ranks(yhat, val.article_ids, rows, lookup, lnsp=True)
    assert set(np.unique(lnsp - right)) <= {0, 1}
    exact = unit(val.targets)
    assert (fivecat.article_ranks(exact, val.article_ids, rows, lookup, lnsp=False) == 1).all()


def test_batch_size_does_not_change_the_numbers(bank, splits):
    val, ood = splits
    predict = tiny_amn()
    a = fivecat.evaluate(predict, val, ood, bank, max_samples=100, batch_size=7)
    b = fivecat.evaluate(predict, val, ood, bank, max_samples=100, batch_size=4096)
    for split in ("VAL", "OOD"):
        assert_same(a.metrics[split], b.metrics[split])


def test_seeded_sampling_is_repeatable_and_seed_dependent(bank, splits):
    val, _ = splits
    run = lambda seed: fivecat.evaluate(mean_context, val, None, bank, max_samples=50,  # noqa: E731
                                        sample="seeded", seed=seed).metrics["VAL"]
    a, b, c = run(1), run(1), run(2)
    assert a == b and a["samples"] == 50 and a["cos"] != c["cos"]


def test_cross_article_replacement_comes_from_another_article(bank, splits):
    val, _ = splits
    ctx, aid = val.contexts[:80], val.article_ids[:80]
    plan = fivecat.ablation_plan(ctx, aid, fivecat.Bank(bank), lnsp=False, seed=0)
    assert plan.cross_ok.all()
    best = np.argmax(plan.cross @ bank.vectors.T, axis=1)  # each replacement is a bank chunk ...
    assert np.allclose(np.sum(plan.cross * bank.vectors[best], 1), 1.0, atol=1e-5)
    assert (bank.article_ids[best] != aid).all()           # ... of another article
    assert sorted(plan.perms[0]) == list(range(5))


# -- NaN safety, gates, verdicts ----------------------------------------------------------------
def test_missing_offsets_mean_fewer_samples_and_no_samples_mean_nan(splits, bank):
    val, _ = splits
    m = fivecat.evaluate(mean_context, val, None, bank, max_samples=300).metrics["VAL"]
    length = np.bincount(bank.article_ids)[val.article_ids[:300]]
    assert m["a_n"] == np.sum(val.target_indices[:300] + 3 < length) < m["samples"]
    assert m["d_n"] == np.sum(val.target_indices[:300] + 4 < length)

    short = data.synth_articles(n_articles=6, min_chunks=5, max_chunks=5, dim=D, seed=2)
    seqs = data.build_windows(short, context_len=2)
    res = fivecat.evaluate(mean_context, seqs, seqs, short)
    m = res.metrics["VAL"]
    assert m["a_n"] == m["b_n"] == m["d_n"] == 0 and m["c_n"] == len(seqs)
    assert all(math.isnan(m[k]) for k in ("m_0", "margin", "r_at_1", "mrr", "rollout"))
    assert not res.gates["A"] and not res.gates["B"] and not res.gates["D"]
    row = next(c for c in res.checks if c.metric == "r_at_1")
    assert math.isnan(row.value) and not row.passed


def test_e_compares_the_normal_bins_and_an_empty_bin_fails(bank, splits):
    val, ood = splits
    same = fivecat.evaluate(mean_context, val, val, bank, profile=wide_bins(val), max_samples=200)
    assert same.metrics["VAL"]["bin_normal_n"] > 100
    assert same.metrics["VAL-OOD"]["normal_delta"] == pytest.approx(0.0, abs=1e-9) and same.gates["E"]
    gtr = fivecat.evaluate(mean_context, val, ood, bank, max_samples=200)  # synthetic data: all "high"
    assert gtr.metrics["VAL"]["bin_normal_n"] == 0 and math.isnan(gtr.metrics["VAL-OOD"]["normal_delta"])
    failed = {(c.split, c.metric) for c in gtr.checks if c.gate == "E" and not c.passed}
    assert {("VAL", "bin_normal_n"), ("VAL-OOD", "normal_delta")} <= failed and not gtr.gates["E"]
    # the profile's bins are used (compat: the original's fixed .45/.55)
    lnsp = fivecat.evaluate(mean_context, val, val, bank, profile=wide_bins(val), max_samples=200, compat="lnsp")
    assert lnsp.metrics["VAL"]["bin_normal_n"] == 0


def test_without_ood_a_to_d_judge_val_and_e_fails(bank, splits):
    val, _ = splits
    res = fivecat.evaluate(oracle_for(bank), val, None, bank, profile=wide_bins(val), max_samples=200)
    assert set(res.metrics) == {"VAL", "VAL-OOD"}
    assert {c.split for c in res.checks if c.gate in "ABCD"} == {"VAL"}
    assert res.gates["A"] and not res.gates["E"]


def test_verdict_under_both_rules(bank, splits):
    val, _ = splits
    res = fivecat.evaluate(oracle_for(bank), val, val, bank, profile=wide_bins(val), max_samples=200)
    # the oracle ignores all but ctx[-1], so leave-one-out changes nothing and C fails
    assert res.gates == {"A": True, "B": True, "C": False, "D": True, "E": True}
    assert (res.gates_passed, res.gates_total, res.verdict_3of5, res.verdict_all5) == (4, 5, True, False)


def test_gate_checks_compare_with_the_profile_thresholds():
    prof = fivecat.load_profile("gtr-t5")
    metrics = {"VAL": {"m_0": 0.50, "margin": math.nan, "delta_shuffled": -0.15 + 5e-7, "rollout": 0.4499}}
    checks = {(c.split, c.metric): c for c in fivecat.gate_checks(metrics, prof, lnsp=False)}
    assert checks[("VAL", "m_0")].passed and checks[("VAL", "m_0")].op == ">="
    assert not checks[("VAL", "margin")].passed and not checks[("VAL", "rollout")].passed
    assert not checks[("VAL", "delta_shuffled")].passed and checks[("VAL", "delta_shuffled")].op == "<="
    assert not checks[("VAL", "r_at_1")].passed  # missing = NaN = fails
    lnsp = {(c.split, c.metric): c for c in fivecat.gate_checks(metrics, prof, lnsp=True)}
    assert lnsp[("VAL", "delta_shuffled")].passed  # the original's "<= thr + 1e-6"


def test_profiles_hold_the_spec_numbers_and_files_can_add_more(tmp_path):
    prof = fivecat.load_profile("gtr-t5")
    assert "gtr-t5" in fivecat.profile_names()
    assert (prof.bin_low, prof.bin_high, prof.e_max_delta) == (0.45, 0.55, 0.05)
    assert prof.thresholds["VAL"] == {"m0": .50, "margin": .12, "r_at_1": .60, "r_at_5": .95, "mrr": .80,
                                      "shuffled": -.15, "reversed": -.10, "leave_one_out": -.08,
                                      "repeat_pad": .05, "cross_article": .05, "rollout": .45}
    assert prof.thresholds["OOD"] == {**prof.thresholds["VAL"], "m0": .48, "margin": .10, "r_at_1": .55,
                                      "r_at_5": .92, "mrr": .75, "rollout": .42}
    with pytest.raises(UserError, match="'nope' is not in lvmd/eval/fivecat/profiles.toml"):
        fivecat.load_profile("nope")
    text = (ROOT / "lvmd" / "eval" / "fivecat" / "profiles.toml").read_text().replace("[gtr-t5", "[mine")
    (tmp_path / "p.toml").write_text(text.replace("mrr = 0.75", "mrr = 0.7"))
    assert fivecat.load_profile(f"{tmp_path / 'p.toml'}:mine").thresholds["OOD"]["mrr"] == 0.7
    (tmp_path / "bad.toml").write_text(text.replace("rollout = 0.42\n", "\n"))
    with pytest.raises(UserError, match=r"\[mine.OOD\]: key 'rollout'"):
        fivecat.load_profile(f"{tmp_path / 'bad.toml'}:mine")


def test_result_json_is_strict_with_null_for_nan(bank, splits):
    val, ood = splits
    res = fivecat.evaluate(mean_context, val, ood, bank, max_samples=100)
    doc = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert doc["metrics"]["VAL"]["bin_normal_mean"] is None and doc["metrics"]["VAL-OOD"]["normal_delta"] is None
    assert doc["gates_passed"] == res.gates_passed and len(doc["checks"]) == len(res.checks)
    rows = res.metric_rows()
    assert {"split", "name", "value"} == set(rows[0]) and any(r["value"] is None for r in rows)


# -- bad inputs: one line naming the file --------------------------------------------------------
def test_bad_inputs_raise_one_line_errors_naming_the_file(bank, splits):
    val, _ = splits
    named = dataclasses.replace(val, path="val.npz")
    other_bank = dataclasses.replace(data.synth_articles(n_articles=3, dim=16, seed=1), path="arts16.npz")
    cases = [
        (lambda: fivecat.evaluate(mean_context, named, None, other_bank), "val.npz has D=32 but arts16.npz has D=16"),
        (lambda: fivecat.evaluate(mean_context, dataclasses.replace(named, article_ids=None), None, bank),
         "val.npz: no 'article_ids'"),
        (lambda: fivecat.evaluate(mean_context, named, None,
                                  dataclasses.replace(bank, article_ids=bank.article_ids + 1000, path="a.npz")),
         "a.npz holds none of the target chunks of val.npz"),
        (lambda: fivecat.evaluate(mean_context, dataclasses.replace(named, target_indices=named.target_indices - 1),
                                  None, bank), "val.npz: most target vectors differ"),
        (lambda: fivecat.evaluate(lambda x: x[:, -1, :8], named, None, bank), "the model returned shape"),
        (lambda: fivecat.evaluate(mean_context, named, None, bank, compat="lnps"), "compat: 'lnps'"),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)
