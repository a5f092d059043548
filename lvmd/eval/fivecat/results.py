"""What 5CAT returns: every (split, gate, metric, threshold) check, the result with both
verdict rules (3 of 5, all 5), and its rows for SQLite and JSON."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lvmd.eval.fivecat.profiles import ABLATIONS, Profile

GATES = ("A", "B", "C", "D", "E")
E_SPLIT = "VAL-OOD"          # split label of the one number that compares the two splits
COMPAT_SLACK = 1e-6          # the original compared shuffled/reversed/leave-one-out with "<= thr + 1e-6"
# A test's mean over fewer rows than this means nothing (one row gives R@5 = 1.0): its gate gets a
# check `n >= MIN_SAMPLES` that fails, named "too few samples". Not in SPEC (nor the original,
# whose verdicts on tiny splits were noise): an added guard, in both compat modes.
MIN_SAMPLES = 20
SAMPLE_COUNTS = {"A": "a_n", "B": "b_n", "C": "c_n", "D": "d_n"}   # E's is each split's normal bin


@dataclass(frozen=True)
class GateCheck:
    split: str
    gate: str
    metric: str
    value: float
    threshold: float
    op: str        # ">=" or "<="
    passed: bool


@dataclass
class FiveCatResult:
    compat: str
    profile: str
    max_samples: int
    sample: str
    seed: int
    metrics: dict[str, dict[str, float]]   # split ("VAL", "OOD", "VAL-OOD") -> name -> value
    checks: list[GateCheck]
    duration_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # caller's context for the JSON (checkpoint, files)

    @property
    def gates(self) -> dict[str, bool]:
        """A gate passes when every one of its checks passes (on VAL and on OOD)."""
        return {g: all(c.passed for c in self.checks if c.gate == g) for g in GATES}

    @property
    def too_few_samples(self) -> list[GateCheck]:
        """The sample-count checks that failed: those gates cannot pass, whatever their means say."""
        return [c for c in self.checks if c.metric.endswith("_n") and not c.passed]

    @property
    def gates_passed(self) -> int:
        return sum(self.gates.values())

    @property
    def gates_total(self) -> int:
        return len(GATES)

    @property
    def verdict_3of5(self) -> bool:
        return self.gates_passed >= 3

    @property
    def verdict_all5(self) -> bool:
        return self.gates_passed == len(GATES)

    def gate_rows(self) -> list[dict]:
        """Rows for the `gates` table (without eval_id)."""
        return [{"split": c.split, "gate": c.gate, "metric": c.metric, "value": _finite_or_none(c.value),
                 "threshold": c.threshold, "op": c.op, "passed": int(c.passed)} for c in self.checks]

    def metric_rows(self) -> list[dict]:
        """Rows for the `eval_metrics` table (without eval_id): every number of every split."""
        return [{"split": split, "name": name, "value": _finite_or_none(value)}
                for split, values in self.metrics.items() for name, value in values.items()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lvmd/docs/fivecat_json.md): NaN becomes None (null)."""
        return {
            "schema": "lvmd-5cat-1",
            **self.extra,
            "compat": self.compat, "profile": self.profile, "max_samples": self.max_samples,
            "sample": self.sample, "seed": self.seed, "duration_s": round(self.duration_s, 3),
            "metrics": {split: {k: _finite_or_none(v) for k, v in values.items()}
                        for split, values in self.metrics.items()},
            "checks": self.gate_rows(),
            "gates": self.gates, "gates_passed": self.gates_passed, "gates_total": self.gates_total,
            "verdict_3of5": self.verdict_3of5, "verdict_all5": self.verdict_all5,
            "min_samples": MIN_SAMPLES,
            "too_few_samples": [{"split": c.split, "gate": c.gate, "n": _finite_or_none(c.value)}
                                for c in self.too_few_samples],
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def offset_name(k: int) -> str:
    return "m_0" if k == 0 else f"m_{k:+d}"


def gate_checks(metrics: dict[str, dict[str, float]], prof: Profile, *, lnsp: bool) -> list[GateCheck]:
    """Every (split, gate, metric, threshold) comparison of SPEC §4 (compat: the original's)."""
    checks: list[GateCheck] = []

    def add(split: str, gate: str, metric: str, threshold: float, op: str, slack: float = 0.0) -> None:
        value = metrics.get(split, {}).get(metric, math.nan)
        ok = math.isfinite(value) and (value >= threshold - slack if op == ">=" else value <= threshold + slack)
        checks.append(GateCheck(split, gate, metric, value, threshold, op, bool(ok)))

    # The original's "+1" was the chunk after the target (SPEC §4, defects).
    peak, margin = ("m_+1", "margin_+1") if lnsp else ("m_0", "margin")
    for split in ("VAL", "OOD"):
        if split not in metrics:
            continue
        thr = prof.thresholds[split]
        add(split, "A", peak, thr["m0"], ">=")
        add(split, "A", margin, thr["margin"], ">=")
        for key in ("r_at_1", "r_at_5", "mrr"):
            add(split, "B", key, thr[key], ">=")
        for name in ABLATIONS:
            slack = COMPAT_SLACK if lnsp and name in ("shuffled", "reversed", "leave_one_out") else 0.0
            add(split, "C", f"delta_{name}", thr[name], "<=", slack)
        add(split, "D", "rollout", thr["rollout"], ">=")
        for gate, count in SAMPLE_COUNTS.items():     # after each gate's own checks: they come first
            add(split, gate, count, MIN_SAMPLES, ">=")
    for split in ("VAL", "OOD"):  # a "normal" bin too small to mean anything (or empty) fails E, visibly
        add(split, "E", "bin_normal_n", MIN_SAMPLES, ">=")
    add(E_SPLIT, "E", "normal_delta", prof.e_max_delta, "<=")
    return checks
