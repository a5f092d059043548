"""Running 5CAT: check the inputs, pick the rows, predict once per split, hand each test the
rows it can use, judge the gates. `retrieval_check` is the trainer's cheap per-epoch B."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from lvmd.data.formats import Articles, Sequences
from lvmd.errors import UserError
from lvmd.eval.fivecat.a_offsets import OFFSETS, offset_sweep
from lvmd.eval.fivecat.arrays import Bank, Batched, Predict, rowdot, take, unit
from lvmd.eval.fivecat.b_retrieval import retrievable, retrieval
from lvmd.eval.fivecat.c_ablations import ablation_plan, ablations
from lvmd.eval.fivecat.d_rollout import HORIZON, rollout
from lvmd.eval.fivecat.e_bins import COMPAT_BINS, bins
from lvmd.eval.fivecat.profiles import Profile, load_profile
from lvmd.eval.fivecat.results import E_SPLIT, FiveCatResult, gate_checks

# What progress() reports, per split: the one prediction pass, then each test.
STAGES = ("predict", "A offsets", "B retrieval", "C ablations", "D rollout", "E bins")
Progress = Callable[[int, int, str], None]  # (stages done, stages in all, the stage just done)
# Called between batches and stages: a run's control (Control.between_eval_batches) takes its
# commands there, so a pause or stop never waits for the whole evaluation (it may hold or raise).
Between = Callable[[], None]

TARGET_MATCH_COS = 0.99      # a target vector and its (article, chunk) in the bank must agree this well


def evaluate(predict: Predict, val: Sequences, ood: Sequences | None, articles: Articles, *,
             ood_articles: Articles | None = None, compat: str = "none", profile: str | Profile = "gtr-t5",
             max_samples: int = 5000, sample: str = "first", seed: int = 0, batch_size: int = 1024,
             horizon: int = HORIZON, device: str | torch.device = "cpu",
             progress: Progress | None = None, between: Between | None = None) -> FiveCatResult:
    """Run the five tests on VAL (and OOD), judge the gates; see the module docstring.
    progress(done, total, stage) is called after each stage (predict, then tests A–E) of each split;
    between() before every batch of predictions and after every stage."""
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
    bin_edges = COMPAT_BINS if lnsp else (prof.bin_low, prof.bin_high)
    started = time.perf_counter()
    run = Batched(predict if between is None else _Checked(predict, between), batch_size, val.dim, device)
    total, done = len(STAGES) * len(splits), 0

    def stage_done(split: str, stage: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, f"{split} {stage}")
        if between is not None:
            between()

    metrics = {name: _evaluate_split(run, seqs, Bank(bank), lnsp=lnsp, max_samples=max_samples,
                                     sample=sample, seed=seed, horizon=horizon, bin_edges=bin_edges,
                                     stage_done=lambda stage, name=name: stage_done(name, stage))
               for name, seqs, bank in splits}
    normal = [metrics.get(s, {}).get("bin_normal_mean", math.nan) for s in ("VAL", "OOD")]
    metrics[E_SPLIT] = {"normal_delta": abs(normal[0] - normal[1])}  # NaN when either bin is empty
    return FiveCatResult(compat, prof.name, max_samples, sample, seed, metrics,
                         gate_checks(metrics, prof, lnsp=lnsp), time.perf_counter() - started)


class _Checked:
    """predict with between() before each call, its batches split so that a call takes about
    CHECK_EVERY_S: from MIN_ROWS rows, doubled while a call takes under half of that (up to the
    whole batch), halved when one takes over twice that. Why: a CPU running the default
    transformer takes 1-7 s per 1024 contexts (idle to loaded 2-core box), which a pause waited.
    The price is throughput on a CPU: per 1024 contexts there, 256-row calls took 12 %, 128 17 %
    and 64 26 % longer than whole batches. A GPU's calls return at once (asynchronous), so it
    grows to whole batches within a few calls. In eval mode each row is predicted on its own, so
    the split changes no number (measured: identical at 1024, 128 and 32 rows, fp32 and bf16)."""

    CHECK_EVERY_S = 0.5      # a call takes 0.25-1 s: what a pause waits, at most, before it is looked for
    MIN_ROWS = 64

    def __init__(self, predict: Predict, between: Between):
        self.predict, self.between, self.rows = predict, between, self.MIN_ROWS

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        outs, lo = [], 0
        while lo < len(batch):
            self.between()
            part = batch[lo:lo + self.rows]
            started = time.perf_counter()
            y = self.predict(part)
            outs.append(y[-1] if isinstance(y, (tuple, list)) else y)   # a model's (raw, unit)
            took, lo = time.perf_counter() - started, lo + len(part)
            if took > 2 * self.CHECK_EVERY_S:
                self.rows = max(self.MIN_ROWS, self.rows // 2)
            elif took < self.CHECK_EVERY_S / 2 and len(part) == self.rows:
                self.rows = min(2 * self.rows, len(batch))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


def retrieval_check(predict: Predict, seqs: Sequences, articles: Articles, *, max_samples: int,
                    seed: int = 0, batch_size: int = 1024, device: str | torch.device = "cpu") -> dict[str, float]:
    """The cheap per-epoch check: R@1, R@5 and MRR of up to `max_samples` seeded rows, each
    ranked against every chunk of its own article (SPEC §4 B; never a 6-candidate R@5)."""
    check_inputs(seqs, articles)
    bank = Bank(articles)
    rows = np.sort(_order(len(seqs), "seeded", seed)[:max_samples])
    aid, tgt_rows = seqs.article_ids[rows], bank.rows(seqs.article_ids[rows], seqs.target_indices[rows])
    ok = retrievable(bank, aid, tgt_rows)
    run = Batched(predict, batch_size, seqs.dim, device)
    yhat = run(run.upload(seqs.contexts[rows[ok]])).cpu().numpy()
    m = retrieval(yhat, aid[ok], tgt_rows[ok], bank, lnsp=False)
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
        raise UserError(f"{bpath}: rows must be ordered by (article, chunk) (load it with lvmd.data.formats.load_articles)")
    probe = np.arange(min(len(seqs), 2000))  # enough rows to tell a wrong file from a few gaps
    rows = bank.rows_of(seqs.article_ids[probe], seqs.target_indices[probe])
    found = rows >= 0
    if not found.any():
        raise UserError(f"{bpath} holds none of the target chunks of {spath} (no (article_ids, target_indices) "
                        "pair found); is it the articles file these sequences were built from?")
    agree = np.einsum("nd,nd->n", unit(seqs.targets[probe[found]]), unit(bank.vectors[rows[found]]))
    if np.mean(agree >= TARGET_MATCH_COS) < 0.5:
        raise UserError(f"{spath}: most target vectors differ from the chunk at (article_ids, target_indices) "
                        f"in {bpath} (median cos {np.median(agree):.3f}); the indices are offset or the files "
                        "do not belong together")


def _evaluate_split(run: Batched, seqs: Sequences, bank: Bank, *, lnsp: bool, max_samples: int,
                    sample: str, seed: int, horizon: int, bin_edges: tuple[float, float],
                    stage_done: Callable[[str], None] = lambda stage: None) -> dict[str, float]:
    order = _order(len(seqs), sample, seed)
    # Default: one sample of rows for all tests, each test uses those it can (SPEC). Compat: each
    # test scans in order and takes the first max_samples rows it can use (the original's loops).
    cand = order if lnsp else np.sort(order[:max_samples])
    aid, t = seqs.article_ids[cand], seqs.target_indices[cand]
    tgt_rows = bank.rows(aid, t)
    off_rows = bank.offset_rows(aid, t, OFFSETS, by_position=lnsp)            # (n, 7)
    steps = np.arange(1, horizon + 1) if lnsp else np.arange(horizon)       # compat scores from t+1
    future = bank.offset_rows(aid, t, steps, by_position=lnsp)               # (n, H)

    def usable(mask: np.ndarray) -> np.ndarray:  # positions in `cand` of the rows a test uses
        return np.flatnonzero(mask)[:max_samples]

    every = np.ones(len(cand), bool)
    pos = {"A": usable((off_rows >= 0).all(1)), "B": usable(retrievable(bank, aid, tgt_rows)),
           "C": usable(every), "D": usable((future >= 0).all(1)), "E": usable(every)}
    union = np.unique(cand[np.concatenate(list(pos.values()))])             # rows predicted once
    ctx = take(seqs.contexts, union)
    if lnsp:
        ctx = unit(ctx)  # the original normalised contexts before the model saw them
    tgt = unit(seqs.targets[union])
    ctx_dev = run.upload(ctx)
    yhat_dev = run(ctx_dev)                                                   # (u, D) on the device
    yhat = yhat_dev.cpu().numpy()
    at = {g: np.searchsorted(union, cand[p]) for g, p in pos.items()}         # positions in `union`
    stage_done(STAGES[0])

    out: dict[str, float] = {"samples": float(len(union))}
    out |= offset_sweep(take(yhat, at["A"]), off_rows[pos["A"]], bank, lnsp=lnsp)
    stage_done(STAGES[1])
    out |= retrieval(take(yhat, at["B"]), aid[pos["B"]], tgt_rows[pos["B"]], bank, lnsp=lnsp)
    stage_done(STAGES[2])
    c = at["C"]
    plan = ablation_plan(take(ctx, c), aid[pos["C"]], bank, lnsp=lnsp, seed=seed)
    out |= ablations(run, take(ctx_dev, c), take(tgt, c), take(yhat, c), plan)
    stage_done(STAGES[3])
    d = at["D"]
    out |= rollout(run, take(ctx_dev, d), take(yhat_dev, d), future[pos["D"]], bank)
    stage_done(STAGES[4])
    e = at["E"]
    out |= bins(take(ctx, e), rowdot(take(yhat, e), take(tgt, e)), bin_edges)
    stage_done(STAGES[5])
    return out


def _order(m: int, sample: str, seed: int) -> np.ndarray:
    return np.arange(m) if sample == "first" else np.random.default_rng(seed).permutation(m)
