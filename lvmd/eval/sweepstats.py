"""Statistics over a sweep's seeds: mean ± 95 % CI per configuration, paired differences from a
baseline configuration with a paired t-test, and the sweep's promote | iterate verdict.

Student's t comes from the regularised incomplete beta function (stdlib math only: no scipy in
this environment, and a few lines of a textbook continued fraction are cheaper than a
dependency); tests check it against the printed t table. Pairing is by seed: members with the
same seed start from the same initial weights and see the same batch order (the model and the
data are the same; only the configuration differs), so per-seed differences cancel that noise.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from lvmd.eval.verdict import ITERATE, PROMOTE, Report
from store.sweeps import baseline_label

LEVEL = 0.95
# (name, v_run_summary column, format): the per-run numbers a sweep compares.
METRICS = (("margin", "last_margin", "+.4f"), ("val_cos", "last_val_cos", ".3f"), ("r_at_5", "last_r_at_5", ".3f"),
           ("gates", "last_gates_passed", ".2f"), ("skip_rate", "skip_rate", ".2%"), ("rho_max", "rho_max", ".3f"))
DIFF_METRICS = ("margin", "val_cos", "r_at_5")
DEFAULT_BASELINE = "loss.preset=mse"


# -- Student's t ---------------------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| ≥ |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| ≤ t) = level (12.706 for df 1, 4.303 for df 2 at 95 %)."""
    lo, hi = 0.0, 1e7
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 1 - level else (lo, mid)
    return (lo + hi) / 2


# -- intervals and tests -------------------------------------------------------------------------
@dataclass
class Interval:
    n: int
    mean: float | None
    sd: float | None           # sample standard deviation (n − 1)
    half: float | None         # CI half-width: t(n−1) · sd / √n; None with fewer than 2 values
    lo: float | None
    hi: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def mean_ci(values: list[float], level: float = LEVEL) -> Interval:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return Interval(0, None, None, None, None, None)
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(1, mean, None, None, None, None)
    sd = statistics.stdev(xs)
    half = t_quantile(level, len(xs) - 1) * sd / math.sqrt(len(xs))
    return Interval(len(xs), mean, sd, half, mean - half, mean + half)


def paired(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> dict:
    """a − b over the seeds both have: mean ± CI and the paired t-test's two-sided p."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    diffs = [a[s] - b[s] for s in seeds]
    ci = mean_ci(diffs, level)
    p = None
    if ci.n >= 2:
        if ci.sd == 0:
            p = 1.0 if ci.mean == 0 else 0.0
        else:
            p = t_two_sided_p(ci.mean / (ci.sd / math.sqrt(ci.n)), ci.n - 1)
    return {"seeds": seeds, **ci.to_dict(), "p": p, "differs": p is not None and p < 1 - level}


def fmt_ci(ci: dict | Interval, spec: str) -> str:
    ci = ci.to_dict() if isinstance(ci, Interval) else ci
    if ci["mean"] is None:
        return "–"
    if ci["half"] is None:
        return format(ci["mean"], spec) + " (n=1)"
    if spec.endswith("%"):
        return f"{ci['mean']:{spec}} ± {ci['half']:{spec}}"
    return f"{ci['mean']:{spec}} ± {abs(ci['half']):{spec.lstrip('+')}}"


# -- a sweep's comparison ------------------------------------------------------------------------
def overrides_map(overrides: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in overrides)


def baseline_of(config: dict, configs: list[dict], baseline: str) -> dict | None:
    """The configuration `baseline` stands for next to `config`: an exact label, or key=value
    swapped into config's own overrides (so v2.1 with prev=true is held against mse with
    prev=true: margins with different y_prev are not comparable)."""
    by_label = {c["label"]: c for c in configs}
    found = baseline_label({c["label"]: overrides_map(c["overrides"]) for c in configs}, config["label"], baseline)
    return None if found is None else by_label[found]


def compare_sweep(configs: list[dict], values: list[dict], *, baseline: str = DEFAULT_BASELINE,
                  level: float = LEVEL) -> list[dict]:
    """One dict per configuration: its finished seeds, mean ± CI of every METRICS number, and
    paired differences of DIFF_METRICS from its baseline. values: store.sweeps.member_values."""
    per: dict[str, dict[str, dict[int, float]]] = {c["label"]: {m: {} for m, _, _ in METRICS} for c in configs}
    runs: dict[str, list[int]] = {c["label"]: [] for c in configs}
    for v in values:
        if v["state"] != "finished" or v["config"] not in per:
            continue
        runs[v["config"]].append(v["run_id"])
        for name, column, _ in METRICS:
            per[v["config"]][name][v["seed"]] = v[column]
    out = []
    for c in configs:
        base = baseline_of(c, configs, baseline)
        row = {"config": c["label"], "state": c["state"], "trial": c["trial"], "reason": c["reason"],
               "runs": runs[c["label"]], "seeds": sorted(per[c["label"]]["margin"]),
               "metrics": {m: mean_ci(list(per[c["label"]][m].values()), level).to_dict() for m, _, _ in METRICS},
               "baseline": None if base is None else base["label"], "is_baseline": base is c, "diffs": {}}
        if base is not None and base is not c:
            row["diffs"] = {m: paired(per[c["label"]][m], per[base["label"]][m], level) for m in DIFF_METRICS}
        row["per_seed"] = per[c["label"]]
        row["overrides"] = c["overrides"]
        out.append(row)
    return out


COMPARE_HEADERS = ["config", "n", "margin", "val cos", "R@5", "gates", "skip rate", "max ρ"]
DIFF_HEADERS = ["config", "vs", "Δ margin", "p", "Δ val cos", "p", "Δ R@5", "p"]


def compare_table_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["config"], str(r["metrics"]["margin"]["n"]),
             *(fmt_ci(r["metrics"][m], spec) for m, _, spec in METRICS)] for r in rows]


def diff_table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        if not r["diffs"]:
            continue
        cells = [r["config"], r["baseline"]]
        for m, spec in zip(DIFF_METRICS, ("+.4f", "+.3f", "+.3f")):
            d = r["diffs"][m]
            cells += [fmt_ci(d, spec), "–" if d["p"] is None else f"{d['p']:.3f}"]
        out.append(cells)
    return out


# -- the sweep's verdict -------------------------------------------------------------------------
def sweep_verdict(rows: list[dict], reports: dict[int, Report], *, planned_seeds: int,
                  objective: str = "margin", level: float = LEVEL) -> dict:
    """promote | iterate for the best configuration (highest mean `objective` over its finished
    seeds, pruned ones excluded): every seed's run must meet the seed's criteria (SPEC §5, as
    `lvmd report RUN` judges them), all planned seeds must have finished, and the best must beat
    its baseline (the paired CI of the difference above 0). Also names the configurations the
    data cannot tell from the best (paired CI of the difference containing 0)."""
    ranked = sorted((r for r in rows if r["state"] != "pruned" and r["metrics"][objective]["mean"] is not None),
                    key=lambda r: r["metrics"][objective]["mean"], reverse=True)
    if not ranked:
        return {"verdict": ITERATE, "best": None, "reasons": ["no configuration has a finished run"],
                "criteria": [], "ties": [], "notes": []}
    best, reasons = ranked[0], []
    criteria = []
    by_key: dict[str, list] = {}
    for run_id in best["runs"]:
        for c in reports[run_id].guardrails + reports[run_id].criteria:
            by_key.setdefault(c.key, []).append(c)
    for key, checks in by_key.items():
        failed = sum(c.passed is False for c in checks)
        unknown = sum(c.passed is None for c in checks)
        values = [c.value for c in checks if isinstance(c.value, (int, float))]
        mean = statistics.fmean(values) if values else None
        criteria.append({"key": key, "question": checks[0].question, "passed": len(checks) - failed - unknown,
                         "failed": failed, "unknown": unknown, "seeds": len(checks), "mean": mean})
        if failed or unknown:
            what = f"failed in {failed}/{len(checks)} seeds" if failed else f"not measured in {unknown}/{len(checks)}"
            reasons.append(f"{checks[0].question.rstrip('?')}: {what}" + (f" (mean {mean:+.4g})" if mean is not None else ""))
    if len(best["runs"]) < planned_seeds:
        reasons.append(f"only {len(best['runs'])} of {planned_seeds} seeds finished")
    d = best["diffs"].get(objective)
    if d is not None and d["lo"] is None:
        reasons.append(f"cannot be told from its baseline {best['baseline']}: fewer than 2 paired seeds")
    elif d is not None and d["lo"] <= 0:
        reasons.append(f"does not beat its baseline {best['baseline']} on {objective}: Δ {d['mean']:+.4f}, "
                       f"95 % CI [{d['lo']:+.4f}, {d['hi']:+.4f}], paired t p = {d['p']:.3f}")
    ties = []
    for r in ranked[1:]:
        t = paired(best["per_seed"][objective], r["per_seed"][objective], level)
        if t["p"] is None or t["p"] >= 1 - level:
            ties.append({"config": r["config"], "diff": t})
    notes = []
    if ties:
        notes.append(f"the data cannot tell the best ({best['config']}) from {len(ties)} other configuration(s) on "
                     f"{objective}: " + "; ".join(f"{t['config']} (Δ {fmt_ci(t['diff'], '+.4f')})" for t in ties))
    prevs = {overrides_map(r["overrides"]).get("loss.prev") for r in rows}
    if len(prevs - {None}) > 1:
        notes.append("margins of configurations with different loss.prev are measured against different y_prev "
                     "(ctx-2: ctx[−2]; true: the chunk before the target), so the ranking mixes two scales; "
                     "the baseline differences compare like with like")
    return {"verdict": ITERATE if reasons else PROMOTE, "best": best["config"], "objective": objective,
            "best_mean": best["metrics"][objective]["mean"], "reasons": reasons, "criteria": criteria,
            "ties": ties, "notes": notes}


def render_verdict(sweep: dict, v: dict) -> str:
    lines = [f"sweep {sweep['id']} {sweep['name']!r} · {sweep['search']} · {sweep['state']}"]
    if v["best"] is None:
        return "\n".join(lines + [f"Verdict: {v['verdict'].upper()}", *(f"  - {r}" for r in v["reasons"])])
    lines += [f"best by mean {v['objective']}: {v['best']} ({v['best_mean']:+.4f})", "",
              "The seed's criteria over the best configuration's seeds"]
    for c in v["criteria"]:
        mark = "✓" if c["passed"] == c["seeds"] else "✗" if c["failed"] else "?"
        mean = "" if c["mean"] is None else f"  mean {c['mean']:+.4g}"
        lines.append(f"  {mark} {c['question']}  {c['passed']}/{c['seeds']} seeds{mean}")
    lines += ["", f"Verdict: {v['verdict'].upper()}", *(f"  - {r}" for r in v["reasons"])]
    lines += [f"  note: {n}" for n in v["notes"]]
    return "\n".join(lines)
