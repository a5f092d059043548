"""Each guardrail function on its own (SPEC §3), with hypothesis properties."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lvmd.train import losses
from lvmd.config import PRESETS, V21_RAMP, LossConfig, RampStage, config_from_dict, stage_for_epoch
from lvmd.train.guardrails import adaptive_lambda, guarded_loss, skip_batch
from lvmd.train.rho_cap import over_cap

cos_values = st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=64)
paired = st.integers(1, 32).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-1, 1), min_size=n, max_size=n), st.lists(st.floats(-1, 1), min_size=n, max_size=n)))
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(paired, st.floats(0, 0.2), st.floats(0, 1), st.floats(0.5, 16))
def test_directional_is_finite_non_negative_and_pushes_pos_up_neg_down(pn, m_gap, alpha, gamma):
    pos = torch.tensor(pn[0], dtype=torch.float64, requires_grad=True)
    neg = torch.tensor(pn[1], dtype=torch.float64, requires_grad=True)
    loss = losses.directional(pos, neg, m_gap, alpha=alpha, gamma=gamma, m_ratio=0.05)
    assert math.isfinite(loss.item()) and loss.item() >= 0
    loss.backward()
    assert (pos.grad <= 0).all(), "raising pos must never raise the loss"
    assert (neg.grad >= 0).all(), "raising neg must never lower the loss"
    assert pos.grad.sum() < 0 and neg.grad.sum() > 0


def test_directional_matches_the_formula():
    pos, neg = torch.tensor([0.5, 0.2]), torch.tensor([0.4, 0.3])
    gap = pos - neg
    ratio = gap / (pos.abs() + neg.abs() + 1e-6)
    sp = torch.nn.functional.softplus
    want = (0.7 * sp(4 * (0.02 - gap)) / 4 + 0.3 * sp(4 * (0.05 - ratio)) / 4).mean()
    got = losses.directional(pos, neg, 0.02, alpha=0.7, gamma=4.0, m_ratio=0.05)
    assert torch.allclose(got, want)


@FAST
@given(cos_values, st.floats(0, 0.5))
def test_positive_floor(pos_list, tau):
    pos = torch.tensor(pos_list, dtype=torch.float64, requires_grad=True)
    loss = losses.positive_floor(pos, tau)
    assert loss.item() >= 0 and math.isfinite(loss.item())
    if (pos >= tau).all():
        assert loss.item() == 0
    loss.backward()
    assert (pos.grad <= 0).all()                         # only ever pushes pos up
    assert (pos[pos.grad < 0] < tau).all()                # and only below the floor,
    assert (pos.grad[tau - pos > 1e-300] < 0).all()       # wherever its gradient does not underflow


@FAST
@given(st.integers(1, 16), st.integers(2, 32), st.floats(0.1, 10))
def test_norm_penalty_zero_on_unit_vectors(b, d, scale):
    v = torch.randn(b, d, dtype=torch.float64)
    unit = torch.nn.functional.normalize(v, dim=-1)
    assert losses.norm_penalty(unit).item() < 1e-20
    expected = ((v * scale).norm(dim=-1) - 1).pow(2).mean()
    assert torch.allclose(losses.norm_penalty(v * scale), expected)


@FAST
@given(st.floats(1e-5, 1e-1), st.floats(1e-3, 3), st.floats(0.05, 0.5), st.floats(0.05, 0.5))
def test_adaptive_lambda_keeps_rho_at_or_below_cap(mse, l_dir, frac, cap):
    lam, rho, rho_pre, att = adaptive_lambda(torch.tensor(mse), torch.tensor(l_dir), frac,
                                             lam_min=1e-4, lam_max=0.02, rho_cap=cap)
    assert rho.item() <= cap * (1 + 1e-5)
    assert math.isclose(rho.item(), lam.item() * l_dir / mse, rel_tol=1e-4)
    assert att.item() == over_cap(rho_pre.item(), cap)  # SPEC's ρ > cap, up to float32 rounding (rho_cap.py)
    if not att:
        assert 1e-4 * (1 - 1e-6) <= lam.item() <= 0.02 * (1 + 1e-6)
        raw = mse * frac / l_dir
        if 1e-4 < raw < 0.02:                          # no clamp binds: ρ is exactly frac
            assert math.isclose(rho.item(), frac, rel_tol=1e-4)


def test_attenuate_fires_when_the_lambda_floor_pushes_rho_over_the_cap():
    # mse tiny vs Ldir: mse·frac/Ldir = 1e-6 → clamped up to λmin = 1e-4 → ρ = 1e-4·1/1e-5 = 10 > 0.25
    lam, rho, rho_pre, att = adaptive_lambda(torch.tensor(1e-5), torch.tensor(1.0), 0.1,
                                             lam_min=1e-4, lam_max=0.02, rho_cap=0.25)
    assert att.item() and rho_pre.item() == pytest.approx(10.0, rel=1e-4)
    assert rho.item() == pytest.approx(0.25) and lam.item() == pytest.approx(2.5e-6, rel=1e-4)
    # without a binding clamp it does not fire
    _, rho, _, att = adaptive_lambda(torch.tensor(1e-3), torch.tensor(0.5), 0.1, lam_min=1e-4, lam_max=0.02,
                                     rho_cap=0.25)
    assert not att.item() and rho.item() == pytest.approx(0.1, rel=1e-5)


def test_v22_boost_never_takes_lambda_past_lambda_max():
    # the review's case: mse 1.3e-3, Ldir 0.01, target 0.35 → mse·frac/Ldir = 0.0455 > λmax 0.03;
    # λ clamps to 0.03, ρ = 0.231 < 0.8·0.35, and the boost's frac/ρ must not lift λ back to 0.0455
    lam, rho, rho_pre, att = adaptive_lambda(torch.tensor(1.3e-3), torch.tensor(0.01), 0.35, lam_min=1e-4,
                                             lam_max=0.03, rho_cap=0.5, rho_boost=0.8)
    assert lam.item() == pytest.approx(0.03, rel=1e-6)
    assert rho.item() == pytest.approx(0.03 * 0.01 / 1.3e-3, rel=1e-5) and not att.item()


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), st.integers(0, 14), st.integers(0, 10_000), st.floats(0.05, 20))
def test_lambda_never_exceeds_lambda_max_for_any_preset(preset, epoch, seed, scale):
    """λ ≤ λmax on real batches for every preset and every stage of its ramp (raw scaled so that
    mse and Ldir range over orders of magnitude)."""
    cfg = config_from_dict({"loss": {"preset": preset}}).loss
    raw, unit, y, prev = _batch(seed, b=8, d=16)
    _, m = guarded_loss(raw * scale, unit, y, prev, stage_for_epoch(cfg.ramp, epoch), cfg)
    assert m["lam"].item() <= cfg.lam_max * (1 + 1e-6)
    if cfg.directional:
        assert m["lam"].item() > 0


def test_v1_ramp_is_the_documented_original():
    ramp = config_from_dict({"loss": {"preset": "v1"}}).loss.ramp
    want = {0: (0.02, 0.10), 1: (0.02, 0.10), 2: (0.04, 0.20), 4: (0.04, 0.20), 5: (0.05, 0.25), 11: (0.05, 0.25)}
    for epoch, (m_gap, frac) in want.items():
        s = stage_for_epoch(ramp, epoch)
        assert (s.m_gap, s.frac) == (m_gap, frac), epoch
    v1 = config_from_dict({"loss": {"preset": "v1"}}).loss
    assert (v1.gamma, v1.lam_max, v1.skip) == (8.0, 0.05, False)


def test_skip_rule_fires_exactly_on_two_negatives():
    grid = [x / 100 for x in range(-20, 21)]
    for p in grid:
        for n in grid:
            want = p < 0 or (p < 0.05 and n < -0.05)
            got = skip_batch(torch.tensor(p), torch.tensor(n), weak_pos=0.05, neg_floor=-0.05).item()
            assert got == want, (p, n)


def test_ramp_boundaries():
    want = {0: (0.02, 0.10), 2: (0.02, 0.10), 3: (0.03, 0.15), 5: (0.03, 0.15), 6: (0.04, 0.20),
            8: (0.04, 0.20), 9: (0.05, 0.25), 11: (0.05, 0.25), 500: (0.05, 0.25)}
    for epoch, (m_gap, frac) in want.items():
        s = stage_for_epoch(V21_RAMP, epoch)
        assert (s.m_gap, s.frac) == (m_gap, frac), epoch


def _batch(seed=0, b=16, d=8):
    g = torch.Generator().manual_seed(seed)
    y = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    prev = torch.nn.functional.normalize(y + 0.5 * torch.randn(b, d, generator=g), dim=-1)
    raw = y + 0.8 * torch.randn(b, d, generator=g)
    return raw, torch.nn.functional.normalize(raw, dim=-1), y, prev


def test_guarded_loss_total_is_the_spec_sum():
    raw, unit, y, prev = _batch()
    cfg = LossConfig()
    stage = RampStage(3, 0.02, 0.10)
    total, m = guarded_loss(raw, unit, y, prev, stage, cfg)
    want = m["mse"] + (0 if m["skip"] else m["lam"] * m["l_dir"]) + cfg.beta * m["l_floor"] + cfg.eta * m["l_norm"]
    assert torch.allclose(total, want)
    assert m["l_norm"].item() > 0  # lvmd regularises the RAW output


def test_skip_drops_the_directional_term():
    raw, unit, y, prev = _batch()
    total, m = guarded_loss(-raw, -unit, y, prev, RampStage(3, 0.02, 0.1), LossConfig())  # pos̄ < 0
    assert m["skip"].item() == 1
    cfg = LossConfig()
    assert torch.allclose(total, m["mse"] + cfg.beta * m["l_floor"] + cfg.eta * m["l_norm"])


def test_each_preset_differs_as_spec_says():
    raw, unit, y, prev = _batch(3)
    stage = RampStage(3, 0.02, 0.1)
    presets = {p: config_from_dict({"loss": {"preset": p}}).loss for p in PRESETS}
    total, m = guarded_loss(raw, unit, y, prev, stage, presets["mse"])
    assert m["lam"].item() == 0 and torch.allclose(total, m["mse"])
    assert presets["v1"].rho_cap == 0 and presets["v1"].alpha == 1.0 and presets["v1"].gamma == 8.0
    assert presets["v1"].lam_max == 0.05 and presets["v1"].ramp[1].frac == 2 * presets["v1"].ramp[0].frac
    assert presets["v2.2"].kappa == 5e-4 and presets["v2.2"].tau == 0.12 and presets["v2.2"].beta == 2e-3
    assert [s.rho_cap for s in presets["v2.2"].ramp] == [0.35, 0.45, 0.50, 0.50]
    total, m = guarded_loss(raw, unit, y, prev, presets["v2.2"].ramp[0], presets["v2.2"])
    assert m["l_orth"].item() > 0
    # ρ hits the stage's target 0.15 unless a clamp binds: then λ sits exactly on a bound (float32)
    lam = m["lam"].item()
    clamped = lam == pytest.approx(1e-4, rel=1e-6) or lam == pytest.approx(0.03, rel=1e-6)
    assert clamped or m["rho"].item() == pytest.approx(0.15, rel=1e-4)
    assert not m["attenuate"].item()                  # ρ ≤ target < cap 0.35 at stage 1


def test_compat_lnsp_norm_guard_is_the_originals_no_op():
    raw, unit, y, prev = _batch()
    _, ours = guarded_loss(raw * 3, unit, y, prev, RampStage(3, 0.02, 0.1), LossConfig())
    _, lnsp = guarded_loss(raw * 3, unit, y, prev, RampStage(3, 0.02, 0.1), LossConfig(), compat="lnsp")
    assert ours["l_norm"].item() > 0.1 and lnsp["l_norm"].item() < 1e-10
