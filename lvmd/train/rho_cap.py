"""When is ρ over its cap? The one rule (SPEC §3 G4: "if ρ > ρ_cap: λ ← λ·ρ_cap/ρ").

The guardrail (lvmd.train.guardrails.adaptive_lambda) applies it on the device and stores its
decision per step (`steps.attenuate`): that flag is the fact every count of attenuated steps
reads. Where no flag exists (ρ after the cap, and an uncapped run held to the seed's 0.25) the
views, `lvmd report` and the collapse watch apply this same rule to the stored numbers.
Stdlib only: `lvmd report` and the watch use it without loading torch.

Why a relative tolerance is SPEC's rule up to float rounding: ρ = λ·Ldir/mse with λ =
mse·frac/Ldir is computed in float32 with four roundings, each at most 2^-24 of the value, so a
ρ that equals the cap in exact arithmetic (frac = cap, the ramp's last stage .25/.25; or a
clamp that binds exactly there) comes out up to ~4·2^-24 ≈ 2.4e-7 above it; measured, 4 % of
such steps land one float32 step (2.98e-8) over 0.25. Exact `>` on those numbers decides on
rounding noise: it "attenuated" λ by a factor 1 − 1.2e-7 and counted an event each time. The
tolerance, 2^-20 ≈ 9.5e-7 of the cap (16 float32 roundings, 4× the worst case), lies above
any rounding of this arithmetic (a fused GPU kernel, the distributed sums, the cap's own float32
rounding of 3e-8 included), and an overshoot it lets through moves λ·Ldir by under a millionth.

Exactness across surfaces: the threshold is cap + cap/2^20 in double (SQL writes the same
expression, and both round it once). A stored ρ is a float32 value; comparing it in float32 with
the threshold rounded DOWN to float32 gives the same answer as comparing its double with the
double threshold, so the device's flag and a count over the stored numbers never differ.
"""
from __future__ import annotations

import struct

RHO_CAP_RTOL_DIVISOR = 1 << 20           # the tolerance is cap / 2^20 (a power of two: exact)
RHO_CAP_RTOL = 1.0 / RHO_CAP_RTOL_DIVISOR


def threshold(cap: float) -> float:
    """ρ is over `cap` when it is above this (double; what SQL computes as cap + cap / 1048576.0)."""
    return cap + cap / RHO_CAP_RTOL_DIVISOR


def threshold_f32(cap: float) -> float:
    """threshold(cap) rounded down to a float32 value: for any float32 ρ, ρ > threshold_f32(cap)
    exactly when ρ > threshold(cap). What the guardrail compares with on the device (cap > 0)."""
    t = threshold(cap)
    (f,) = struct.unpack("<f", struct.pack("<f", t))          # round to nearest float32
    if f > t:                                                 # one float32 step down (f > 0)
        (bits,) = struct.unpack("<I", struct.pack("<f", f))
        (f,) = struct.unpack("<f", struct.pack("<I", bits - 1))
    return f


def over_cap(rho: float, cap: float) -> bool:
    """The rule on a stored (host) value: ρ above its cap."""
    return rho > threshold(cap)
