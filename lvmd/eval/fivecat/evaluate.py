"""5CAT, the five-category evaluation of SPEC §4, vectorised; `compat="lnsp"` reproduces the
original script (tools/tests/test_5to1_alignment.py of lnsp-phase-4), defects included.

Predictions are made in batches; offset chunks come from the articles bank by index lookups,
and retrieval ranks from one matrix product per article. A gate that has no samples gets NaN
and fails. The verdict is reported under both rules: 3 of 5 gates (the seed's) and all 5 (the
original code's).

`predict` maps a float32 tensor (B, T, D) on `device` to (B, D) (a model's `(raw, unit)` tuple
is also accepted: its last element is used). The model-heavy part lives on that device: each
split's contexts are copied there once, the 9 ablated contexts per sample (C) are gathered there
and the rollout window (D) slides there; what comes back to the host is one (n, D) array of
predictions per split and the (n,) cosines of C and D, never a tensor per batch. Ranks (B),
offsets (A) and bins (E) are index arithmetic on (n, D) arrays and stay in numpy.
"""
from __future__ import annotations

import math
import random
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lvmd.data import Articles, Sequences
from lvmd.errors import UserError

OFFSETS = (-3, -2, -1, 0, 1, 2, 3)
HORIZON = 5
GATES = ("A", "B", "C", "D", "E")
ABLATIONS = ("shuffled", "reversed", "leave_one_out", "repeat_pad", "cross_article")
MIN_ARTICLE_CHUNKS = 6       # B ranks only within articles of at least this many chunks
E_SPLIT = "VAL-OOD"          # split label of the one number that compares the two splits
PROFILE_KEYS = ("m0", "margin", "r_at_1", "r_at_5", "mrr", *ABLATIONS, "rollout")
COMPAT_SHUFFLE_SEED = 17     # the original shuffled with random.Random(17), one shuffle per sample
COMPAT_BINS = (0.45, 0.55)   # the original's hard-coded coherence bins, whatever the embedder
COMPAT_SLACK = 1e-6          # the original compared shuffled/reversed/leave-one-out with "<= thr + 1e-6"
TARGET_MATCH_COS = 0.99      # a target vector and its (article, chunk) in the bank must agree this well

Predict = Callable[[torch.Tensor], Any]


# -- profiles ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    name: str
    bin_low: float
    bin_high: float
    e_max_delta: float
    thresholds: dict[str, dict[str, float]]  # "VAL"/"OOD" -> PROFILE_KEYS -> threshold


def _profile_tables(path: Path | None = None) -> dict[str, Any]:
    if path is None:
        return tomllib.loads(resources.files("lvmd").joinpath("profiles.toml").read_text())
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such profile file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None


def profile_names() -> list[str]:
    return sorted(_profile_tables())


def load_profile(name: str) -> Profile:
    """A profile of lvmd/profiles.toml by name, or from your own file: "FILE.toml" (its only
    table) or "FILE.toml:NAME" (same format as lvmd/profiles.toml)."""
    path = None
    if ".toml" in name:
        file, _, name = name.partition(".toml")
        path = Path(file + ".toml")
        name = name.removeprefix(":")
    tables = _profile_tables(path)
    where_file = str(path) if path else "lvmd/profiles.toml"
    if path is not None and not name:
        if len(tables) != 1:
            raise UserError(f"{path}: holds {len(tables)} profiles ({', '.join(tables)}); pick one as {path}:NAME")
        name = next(iter(tables))
    if name not in tables:
        raise UserError(f"5CAT profile {name!r} is not in {where_file}; choose one of {', '.join(sorted(tables))}")
    table = tables[name]
    where = f"{where_file} [{name}]"
    top = {k: _number(table, k, where) for k in ("bin_low", "bin_high", "e_max_delta")}
    if not top["bin_low"] <= top["bin_high"]:
        raise UserError(f"{where}: bin_low {top['bin_low']} must not exceed bin_high {top['bin_high']}")
    thresholds = {}
    for split in ("VAL", "OOD"):
        sub = table.get(split)
        if not isinstance(sub, dict):
            raise UserError(f"{where_file}: missing table [{name}.{split}]")
        thresholds[split] = {k: _number(sub, k, f"{where_file} [{name}.{split}]") for k in PROFILE_KEYS}
    return Profile(name, top["bin_low"], top["bin_high"], top["e_max_delta"], thresholds)


def _number(table: dict, key: str, where: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: key {key!r} must be a finite number, got {value!r}")
    return float(value)


# -- results -------------------------------------------------------------------------------
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
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def offset_name(k: int) -> str:
    return "m_0" if k == 0 else f"m_{k:+d}"


# -- the public entry points ---------------------------------------------------------------
def evaluate(predict: Predict, val: Sequences, ood: Sequences | None, articles: Articles, *,
             ood_articles: Articles | None = None, compat: str = "none", profile: str | Profile = "gtr-t5",
             max_samples: int = 5000, sample: str = "first", seed: int = 0, batch_size: int = 1024,
             horizon: int = HORIZON, device: str | torch.device = "cpu") -> FiveCatResult:
    """Run the five tests on VAL (and OOD), judge the gates; see the module docstring."""
    if compat not in ("none", "lnsp"):
        raise UserError(f"compat: {compat!r} is not allowed; choose none or lnsp")
    if sample not in ("first", "seeded"):
        raise UserError(f"sample: {sample!r} is not allowed; choose first or seeded")
    if max_samples <= 0 or batch_size <= 0 or horizon <= 0:
        raise UserError(f"max_samples ({max_samples}), batch_size ({batch_size}) and horizon ({horizon}) must be > 0")
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    splits = [("VAL", val, articles)]
    if ood is not None:
        splits.append(("OOD", ood, ood_articles if ood_articles is not None else articles))
    for _, seqs, bank in splits:  # every input error before any model work
        check_inputs(seqs, bank)
    if ood is not None and ood.dim != val.dim:
        raise UserError(f"{ood.path or 'OOD'} has D={ood.dim} but {val.path or 'VAL'} has D={val.dim}")

    lnsp = compat == "lnsp"
    bins = COMPAT_BINS if lnsp else (prof.bin_low, prof.bin_high)
    started = time.perf_counter()
    run = _Batched(predict, batch_size, val.dim, device)
    metrics = {name: _evaluate_split(run, seqs, Bank(bank), lnsp=lnsp, max_samples=max_samples,
                                     sample=sample, seed=seed, horizon=horizon, bins=bins)
               for name, seqs, bank in splits}
    normal = [metrics.get(s, {}).get("bin_normal_mean", math.nan) for s in ("VAL", "OOD")]
    metrics[E_SPLIT] = {"normal_delta": abs(normal[0] - normal[1])}  # NaN when either bin is empty
    return FiveCatResult(compat, prof.name, max_samples, sample, seed, metrics,
                         gate_checks(metrics, prof, lnsp=lnsp), time.perf_counter() - started)


def retrieval_check(predict: Predict, seqs: Sequences, articles: Articles, *, max_samples: int,
                    seed: int = 0, batch_size: int = 1024, device: str | torch.device = "cpu") -> dict[str, float]:
    """The cheap per-epoch check: R@1, R@5 and MRR of up to `max_samples` seeded rows, each
    ranked against every chunk of its own article (SPEC §4 B; never a 6-candidate R@5)."""
    check_inputs(seqs, articles)
    bank = Bank(articles)
    rows = np.sort(_order(len(seqs), "seeded", seed)[:max_samples])
    aid, tgt_rows = seqs.article_ids[rows], bank.rows(seqs.article_ids[rows], seqs.target_indices[rows])
    ok = _retrievable(bank, aid, tgt_rows)
    run = _Batched(predict, batch_size, seqs.dim, device)
    yhat = run(run.upload(seqs.contexts[rows[ok]])).cpu().numpy()
    m = _retrieval(yhat, aid[ok], tgt_rows[ok], bank, lnsp=False)
    return {"r_at_1": m["r_at_1"], "r_at_5": m["r_at_5"], "mrr": m["mrr"]}


def check_inputs(seqs: Sequences, bank: Articles) -> None:
    """One-line UserErrors for data 5CAT cannot use, naming the files."""
    spath, bpath = seqs.path or "sequences", bank.path or "articles"
    if seqs.dim != bank.dim:
        raise UserError(f"{spath} has D={seqs.dim} but {bpath} has D={bank.dim}")
    if seqs.article_ids is None or seqs.target_indices is None:
        raise UserError(f"{spath}: no 'article_ids'/'target_indices' (5CAT tests A, B and D need them; the "
                        "original's files keep them in the pickled 'metadata', read with --allow-pickle)")
    a, c = bank.article_ids, bank.chunk_ids
    if len(a) > 1 and not ((a[1:] > a[:-1]) | ((a[1:] == a[:-1]) & (c[1:] > c[:-1]))).all():
        raise UserError(f"{bpath}: rows must be ordered by (article, chunk) (load it with lvmd.data.load_articles)")
    probe = np.arange(min(len(seqs), 2000))  # enough rows to tell a wrong file from a few gaps
    rows = bank.rows_of(seqs.article_ids[probe], seqs.target_indices[probe])
    found = rows >= 0
    if not found.any():
        raise UserError(f"{bpath} holds none of the target chunks of {spath} (no (article_ids, target_indices) "
                        "pair found); is it the articles file these sequences were built from?")
    agree = np.einsum("nd,nd->n", _unit(seqs.targets[probe[found]]), _unit(bank.vectors[rows[found]]))
    if np.mean(agree >= TARGET_MATCH_COS) < 0.5:
        raise UserError(f"{spath}: most target vectors differ from the chunk at (article_ids, target_indices) "
                        f"in {bpath} (median cos {np.median(agree):.3f}); the indices are offset or the files "
                        "do not belong together")


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
    for split in ("VAL", "OOD"):  # an empty "normal" bin fails E, visibly
        add(split, "E", "bin_normal_n", 1, ">=")
    add(E_SPLIT, "E", "normal_delta", prof.e_max_delta, "<=")
    return checks


# -- one split -----------------------------------------------------------------------------
def _evaluate_split(run: "_Batched", seqs: Sequences, bank: "Bank", *, lnsp: bool, max_samples: int,
                    sample: str, seed: int, horizon: int, bins: tuple[float, float]) -> dict[str, float]:
    order = _order(len(seqs), sample, seed)
    # Default: one sample of rows for all tests, each test uses those it can (SPEC). Compat: each
    # test scans in order and takes the first max_samples rows it can use (the original's loops).
    cand = order if lnsp else np.sort(order[:max_samples])
    aid, t = seqs.article_ids[cand], seqs.target_indices[cand]
    tgt_rows = bank.rows(aid, t)
    off_rows = bank.offset_rows(aid, t, OFFSETS, by_position=lnsp)            # (n, 7)
    steps = np.arange(1, horizon + 1) if lnsp else np.arange(horizon)       # compat scores from t+1
    future = bank.offset_rows(aid, t, steps, by_position=lnsp)               # (n, H)

    def take(mask: np.ndarray) -> np.ndarray:  # positions in `cand` of the rows a test uses
        return np.flatnonzero(mask)[:max_samples]

    every = np.ones(len(cand), bool)
    pos = {"A": take((off_rows >= 0).all(1)), "B": take(_retrievable(bank, aid, tgt_rows)),
           "C": take(every), "D": take((future >= 0).all(1)), "E": take(every)}
    union = np.unique(cand[np.concatenate(list(pos.values()))])             # rows predicted once
    ctx = _take(seqs.contexts, union)
    if lnsp:
        ctx = _unit(ctx)  # the original normalised contexts before the model saw them
    tgt = _unit(seqs.targets[union])
    ctx_dev = run.upload(ctx)
    yhat_dev = run(ctx_dev)                                                   # (u, D) on the device
    yhat = yhat_dev.cpu().numpy()
    at = {g: np.searchsorted(union, cand[p]) for g, p in pos.items()}         # positions in `union`

    out: dict[str, float] = {"samples": float(len(union))}
    out |= _offset_sweep(_take(yhat, at["A"]), off_rows[pos["A"]], bank, lnsp=lnsp)
    out |= _retrieval(_take(yhat, at["B"]), aid[pos["B"]], tgt_rows[pos["B"]], bank, lnsp=lnsp)
    c = at["C"]
    plan = ablation_plan(_take(ctx, c), aid[pos["C"]], bank, lnsp=lnsp, seed=seed)
    out |= _ablations(run, _take(ctx_dev, c), _take(tgt, c), _take(yhat, c), plan)
    d = at["D"]
    out |= _rollout(run, _take(ctx_dev, d), _take(yhat_dev, d), future[pos["D"]], bank)
    e = at["E"]
    out |= _bins(_take(ctx, e), _rowdot(_take(yhat, e), _take(tgt, e)), bins)
    return out


def _order(m: int, sample: str, seed: int) -> np.ndarray:
    return np.arange(m) if sample == "first" else np.random.default_rng(seed).permutation(m)


def _retrievable(bank: "Bank", aid: np.ndarray, tgt_rows: np.ndarray) -> np.ndarray:
    start, end = bank.span(aid)
    return (tgt_rows >= 0) & (end - start >= MIN_ARTICLE_CHUNKS)


# -- A: offset sweep ---------------------------------------------------------------------------
def _offset_sweep(yhat: np.ndarray, rows: np.ndarray, bank: "Bank", *, lnsp: bool) -> dict[str, float]:
    means = {k: _mean(bank.cos(yhat, rows[:, j])) for j, k in enumerate(OFFSETS)}
    out = {"a_n": float(len(yhat))} | {offset_name(k): v for k, v in means.items()}
    out["margin"] = _margin(means, 0)
    if lnsp:
        out["margin_+1"] = _margin(means, 1)  # what the original gated on
    return out


def _margin(means: dict[int, float], peak: int) -> float:
    return means[peak] - max(v for k, v in means.items() if k != peak)  # NaN propagates


# -- B: retrieval within the target's article -------------------------------------------------
def _retrieval(yhat: np.ndarray, aid: np.ndarray, tgt_rows: np.ndarray, bank: "Bank", *,
               lnsp: bool) -> dict[str, float]:
    ranks = _ranks(yhat, aid, tgt_rows, bank, lnsp=lnsp).astype(np.float64)
    return {"b_n": float(len(ranks)), "r_at_1": _mean(ranks == 1), "r_at_5": _mean(ranks <= 5),
            "mrr": _mean(1.0 / ranks)}


def _ranks(yhat: np.ndarray, aid: np.ndarray, tgt_rows: np.ndarray, bank: "Bank", *, lnsp: bool) -> np.ndarray:
    """rank = 1 + #chunks of the article scoring strictly higher than the target; one matrix
    product per article. Default: the target's score is read from that same product, so ties
    favour the target. Compat: the target's score is a separately computed float (the
    original's defect: rounding alone ranks a perfect prediction 2nd about half the time)."""
    ranks = np.empty(len(yhat), np.int64)
    order = np.argsort(aid, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(aid[order])) + 1) if len(order) else []
    for idx in groups:
        start, end = bank.span(aid[idx[:1]])
        chunks = bank.unit(np.arange(start[0], end[0]))                   # (L, D)
        scores = np.einsum("gd,ld->gl", yhat[idx], chunks)  # (g, L); not BLAS: its threads thrash on tiny products
        if lnsp:
            target = _rowdot(yhat[idx], _unit(chunks[tgt_rows[idx] - start[0]]))
        else:
            target = scores[np.arange(len(idx)), tgt_rows[idx] - start[0]]
        ranks[idx] = 1 + (scores > target[:, None]).sum(1)
    return ranks


# -- C: ablations ------------------------------------------------------------------------------
@dataclass
class Plan:
    perms: np.ndarray          # (n, T) shuffle order per sample
    cross: np.ndarray          # (n, D) what replaces ctx[-1] in "cross_article"
    cross_ok: np.ndarray       # (n,) False where no chunk of another article was found


def ablation_plan(ctx: np.ndarray, aid: np.ndarray, bank: "Bank", *, lnsp: bool, seed: int) -> Plan:
    """The random parts of C (shuffle orders, cross-article chunks), drawn once for all samples."""
    n, t = ctx.shape[:2]
    if lnsp:  # the original: one random.Random(17) shuffle per sample; "cross" := ctx[0]
        rng = random.Random(COMPAT_SHUFFLE_SEED)
        perms = np.array([_shuffled(rng, t) for _ in range(n)], np.int64).reshape(n, t)
        return Plan(perms, ctx[:, 0].copy(), np.ones(n, bool))
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n, t)), axis=1)
    rows = bank.other_article_rows(aid, rng)
    ok = rows >= 0
    cross = np.where(ok[:, None], bank.unit(np.where(ok, rows, 0)), ctx[:, -1])
    return Plan(perms, cross.astype(np.float32), ok)


def _shuffled(rng: random.Random, t: int) -> list[int]:
    perm = list(range(t))
    rng.shuffle(perm)
    return perm


def _variant_names(t: int) -> list[str]:
    return ["shuffled", "reversed", "repeat_pad", "cross_article"] + [f"loo_{i}" for i in range(t)]


def _variant_slots(perms: np.ndarray) -> np.ndarray:
    """(V, n, T): which slot of [ctx_0 .. ctx_{T-1}, cross] fills each position of each ablated
    context, in _variant_names order. Every ablation is then one gather, on any device."""
    n, t = perms.shape
    last, cross = t - 1, t
    fixed = [list(range(t))[::-1],                                   # reversed
             [last] * t,                                             # repeat-pad: ctx[-1] x T
             list(range(t - 1)) + [cross]]                           # cross-article replaces ctx[-1]
    # leave-one-out: drop slot i, pad by repeating ctx[-1] (SPEC; the original's too)
    fixed += [[j for j in range(t) if j != i] + [last] for i in range(t)]
    slots = np.empty((1 + len(fixed), n, t), np.int64)
    slots[0] = perms                                                 # shuffled
    slots[1:] = np.asarray(fixed, np.int64)[:, None, :]
    return slots


def _ablations(run: "_Batched", ctx: torch.Tensor, tgt: np.ndarray, yhat: np.ndarray, plan: Plan) -> dict[str, float]:
    """ctx on the device; the ablated contexts are gathered there in chunks of ~batch_size."""
    n, t, d = ctx.shape
    names = _variant_names(t)
    v = len(names)
    slots = torch.from_numpy(_variant_slots(plan.perms)).to(run.device)
    cross, tgt_dev = run.upload(plan.cross), run.upload(tgt)
    cos = torch.empty((v, n), dtype=torch.float32, device=run.device)
    step = max(1, run.batch_size // v)  # ~batch_size contexts per forward pass
    buf = torch.empty((v * min(step, n) * t, d), dtype=torch.float32, device=run.device)  # reused
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        b = hi - lo
        ext = torch.cat([ctx[lo:hi], cross[lo:hi, None]], dim=1).reshape(b * (t + 1), d)  # T+1 slots per sample
        flat = (slots[:, lo:hi] + (t + 1) * torch.arange(b, device=run.device)[None, :, None]).reshape(-1)
        part = torch.index_select(ext, 0, flat, out=buf[: v * b * t])
        preds = run(part.view(v * b, t, d)).view(v, b, d)
        cos[:, lo:hi] = torch.einsum("vnd,nd->vn", preds, tgt_dev[lo:hi])
    cos = cos.cpu().numpy()
    by = dict(zip(names, cos))
    base = _rowdot(yhat, tgt)
    loo = cos[4:].mean(axis=0)  # per sample, the mean over the T leave-one-out contexts
    ok = plan.cross_ok
    return {"c_n": float(n), "cos": _mean(base),
            "delta_shuffled": _mean(by["shuffled"]) - _mean(base),
            "delta_reversed": _mean(by["reversed"]) - _mean(base),
            "delta_leave_one_out": _mean(loo) - _mean(base),
            "delta_repeat_pad": _mean(by["repeat_pad"]) - _mean(base),
            "delta_cross_article": _mean(by["cross_article"][ok]) - _mean(base[ok])}


# -- D: rollout --------------------------------------------------------------------------------
def _rollout(run: "_Batched", ctx: torch.Tensor, first: torch.Tensor, future: np.ndarray,
             bank: "Bank") -> dict[str, float]:
    """Predict, append the prediction, slide; step h is scored against future[:, h-1]
    (chunk t+h-1; compat: t+h). Rows go in batches through all steps, in one window buffer on
    the device (ctx and first, the step-1 predictions, are there too)."""
    n, t, d = ctx.shape
    steps = future.shape[1]
    chunks = run.upload(bank.unit(future))    # (n, H, D) unit; one copy: a pageable copy per batch would sync
    cos = torch.empty((steps, n), dtype=torch.float32, device=run.device)
    window = torch.empty((min(run.batch_size, n), t + steps - 1, d), dtype=torch.float32, device=run.device)
    for lo in range(0, n, run.batch_size):
        hi = min(n, lo + run.batch_size)
        w = window[: hi - lo]
        w[:, :t] = ctx[lo:hi]
        pred = first[lo:hi]
        for h in range(steps):
            if h:
                pred = run(w[:, h:h + t])
            cos[h, lo:hi] = (pred * chunks[lo:hi, h]).sum(-1)
            if h + 1 < steps:
                w[:, t + h] = pred
    per_step = [_mean(c) for c in cos.cpu().numpy()]
    out = {"d_n": float(n), "rollout": float(np.mean(per_step))}
    return out | {f"rollout_h{h + 1}": v for h, v in enumerate(per_step)}


# -- E: coherence bins -------------------------------------------------------------------------
def coherence(ctx: np.ndarray) -> np.ndarray:
    """Mean cos of adjacent context pairs, per sample: (n, T, D) -> (n,)."""
    norms = _norms(ctx)                                                        # (n, T)
    dots = np.einsum("ntd,ntd->nt", ctx[:, :-1], ctx[:, 1:])                   # (n, T-1)
    return (dots / np.maximum(norms[:, :-1] * norms[:, 1:], 1e-24)).mean(axis=1)


def _bins(ctx: np.ndarray, cos: np.ndarray, bins: tuple[float, float]) -> dict[str, float]:
    coh = coherence(ctx)
    low, high = bins
    masks = {"low": coh < low, "normal": (coh >= low) & (coh <= high), "high": coh > high}
    out: dict[str, float] = {}
    for name, mask in masks.items():
        out[f"bin_{name}_n"] = float(mask.sum())
        out[f"bin_{name}_mean"] = _mean(cos[mask])
    return out


# -- helpers -----------------------------------------------------------------------------------
class _Batched:
    """Calls `predict` on batches of at most batch_size contexts on `device`; returns unit
    float32 rows there (F.normalize: the same clamp at 1e-12 as _unit)."""

    def __init__(self, predict: Predict, batch_size: int, dim: int, device: str | torch.device):
        self.predict, self.batch_size, self.dim = predict, batch_size, dim
        self.device = torch.device(device)

    def upload(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)

    def __call__(self, ctx: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(ctx), self.dim), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for lo in range(0, len(ctx), self.batch_size):
                batch = ctx[lo:lo + self.batch_size].contiguous()
                y = self.predict(batch)
                y = y[-1] if isinstance(y, (tuple, list)) else y  # a model's (raw, unit)
                if tuple(y.shape) != (len(batch), self.dim):
                    raise UserError(f"the model returned shape {tuple(y.shape)} for contexts of shape "
                                    f"{tuple(batch.shape)}; expected ({len(batch)}, {self.dim})")
                out[lo:lo + len(batch)] = y.detach()  # casts and moves: a predictor may answer on the CPU
        return torch.nn.functional.normalize(out, dim=-1)


class Bank:
    """Index arithmetic on an Articles bank ordered by (article, chunk); never copies it whole."""

    def __init__(self, art: Articles):
        self.art = art

    def rows(self, aid: np.ndarray, chunk: np.ndarray) -> np.ndarray:
        return self.art.rows_of(aid, chunk) if len(aid) else np.zeros(0, np.int64)

    def span(self, aid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) rows of each article (start == end where the bank lacks it)."""
        ids = self.art.article_ids
        return np.searchsorted(ids, aid, "left"), np.searchsorted(ids, aid, "right")

    def offset_rows(self, aid: np.ndarray, t: np.ndarray, ks, *, by_position: bool) -> np.ndarray:
        """(n, len(ks)) bank rows of chunk t+k, -1 where missing. by_position (compat): the
        k-th row after the target's row within its article, as the original counted."""
        ks = np.asarray(ks, np.int64)
        if not by_position:
            return self.rows(np.repeat(aid, len(ks)), (t[:, None] + ks).ravel()).reshape(len(aid), len(ks))
        r0 = self.rows(aid, t)
        start, end = self.span(aid)
        rows = r0[:, None] + ks
        ok = (r0[:, None] >= 0) & (rows >= start[:, None]) & (rows < end[:, None])
        return np.where(ok, rows, -1)

    def unit(self, rows: np.ndarray) -> np.ndarray:
        return _unit(self.art.vectors[rows])

    def cos(self, unit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """cos(unit_rows[i], chunk rows[i]) without normalising a copy of the chunks."""
        v = self.art.vectors[rows]
        return _rowdot(unit_rows, v) / np.maximum(_norms(v), np.float32(1e-12))

    def other_article_rows(self, aid: np.ndarray, rng: np.random.Generator, tries: int = 64) -> np.ndarray:
        """A random bank row from another article per sample (-1 if none turned up)."""
        n_rows = len(self.art)
        rows = rng.integers(0, n_rows, len(aid))
        for _ in range(tries):
            bad = self.art.article_ids[rows] == aid
            if not bad.any():
                return rows
            rows[bad] = rng.integers(0, n_rows, int(bad.sum()))
        return np.where(self.art.article_ids[rows] == aid, -1, rows)


def _take(x, idx: np.ndarray):
    """x[idx] for a numpy array or a tensor, as a view (no copy of a large context array) when
    idx is a run of rows."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and (np.diff(idx) == 1).all():
        return x[idx[0]: idx[-1] + 1]
    return x[torch.from_numpy(idx).to(x.device)] if isinstance(x, torch.Tensor) else x[idx]


def _norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("...d,...d->...", x, x))  # einsum: no squared temporary


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(_norms(x), np.float32(1e-12))[..., None]


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", a, b)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x, dtype=np.float64)) if len(x) else math.nan
