"""`lvmd data report DIR`: what the data itself says, before any model (SPEC §1, DATA.md).

Per split, anchored at c_p = ctx[-1] of each window (p = t - 1 - gap):
- equal distance: cos(c_p, c_{p+d}) vs cos(c_p, c_{p-d}) for d = 1, 2, 3 over the SAME windows
  (those where both chunks exist); at equal distance there is no direction to speak of;
- the original's unequal pair: cos(ctx[-1], target) vs cos(ctx[-1], ctx[-2]); on its P6 data
  (gap 1) the target is 2 chunks away and ctx[-2] 1, so the gap measured distance, not
  direction; the P6 pair is also shown from the articles whatever this data's gap;
- levels: adjacent chunks, a random pair within one article, a random pair across articles;
- baselines: cos(target) of copy-last and mean-of-context, and their 5CAT scores on VAL/OOD;
- coherence (5CAT E): mean cos of adjacent context pairs, quantiles and the profile's bins.

Memory is bounded whatever the files' size: the statistics are one pass over the memory-mapped
windows, chunk by chunk (lvmd/eval/datastats.py), and 5CAT reads its sample of max_samples
windows; the banks stay maps, renormalised row by row as they are read (UnitRows).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lvmd.data import formats as data
from lvmd.data import mapped
from lvmd.eval import fivecat
from lvmd.eval.datastats import DISTANCES, QUANTILES, RANDOM_PAIRS, infer_gap, levels, split_stats, unit  # noqa: F401
from lvmd.errors import UserError

SPLITS = ("train", "val", "ood")


def predict_copy_last(ctx: torch.Tensor) -> torch.Tensor:
    return ctx[:, -1]


def predict_mean(ctx: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(ctx.mean(dim=1), dim=-1)


BASELINES = {"copy_last": predict_copy_last, "mean_context": predict_mean}


class UnitRows:
    """An articles bank's vectors as 5CAT reads them (rows by index or slice), each row
    renormalised as it is read: the bank stays a memory map instead of a normalised copy."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors
        self.shape, self.ndim, self.dtype = vectors.shape, 2, np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, rows) -> np.ndarray:
        return unit(np.asarray(self.vectors[rows], np.float32))


def load_split(folder: Path, split: str, banks: dict) -> tuple[data.Sequences, data.Articles] | None:
    """A split's sequences and the articles bank they were cut from: DIR/articles.npz (ood:
    DIR/ood_articles.npz when there is one), else the path the sequence file recorded. `banks`
    caches loaded banks by path (train and val share one). Both are memory-mapped when their
    files allow: a sample of the windows is checked now, the rest as the statistics read them."""
    path = folder / f"{split}.npz"
    if not path.exists():
        return None
    seqs = mapped.load_train_split(path)
    if seqs.article_ids is None or seqs.target_indices is None:
        raise UserError(f"{path}: no article_ids/target_indices; the report looks chunks up in the articles "
                        "(import the original's files with lvmd data import-lnsp first)")
    names = ["ood_articles.npz", "articles.npz"] if split == "ood" else ["articles.npz"]
    local = [folder / n for n in names if (folder / n).exists()]
    bank = local[0] if local else _recorded_articles(path)
    if bank not in banks:
        banks[bank] = mapped.load_articles(bank)
    return seqs, banks[bank]


def _recorded_articles(path: Path) -> Path:
    with np.load(path) as z:
        meta = json.loads(str(z["meta_json"])) if "meta_json" in z.files else {}
    recorded = Path(meta.get("articles", ""))
    if not meta.get("articles") or not recorded.exists():
        raise UserError(f"{path}: its articles file is not beside it and the recorded one "
                        f"({meta.get('articles') or 'none'}) does not exist")
    return recorded


def fivecat_sample(seqs: data.Sequences, max_samples: int) -> data.Sequences:
    """The windows 5CAT reads (sample "first": the first max_samples), renormalised, in memory."""
    n = min(len(seqs), max_samples)
    ctx, tgt = np.asarray(seqs.contexts[:n]), np.asarray(seqs.targets[:n])
    if seqs.unchecked is not None:          # --max-windows: the statistics did not read them all
        seqs.unchecked.rows(np.arange(n), ctx, tgt)
    return data.Sequences(unit(np.asarray(ctx, np.float32)), unit(np.asarray(tgt, np.float32)),
                          seqs.article_ids[:n], seqs.target_indices[:n], seqs.path)


def unit_bank(arts: data.Articles) -> data.Articles:
    return data.Articles(UnitRows(arts.vectors), arts.article_ids, arts.chunk_ids, None, None, arts.path)


def report(folder: Path, *, profile: str | None = None, max_samples: int = 5000, max_windows: int = 0,
           seed: int = 0, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """progress(done, total, stage) after each chunk of a split's statistics and each 5CAT stage.
    max_windows: the statistics of a seeded sample of that many windows per split (0: all)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data report: {folder}: no such folder")
    if max_samples <= 0 or max_windows < 0:
        raise UserError(f"data report: --max-samples {max_samples} must be > 0 and --max-windows {max_windows} >= 0")
    build = _read_build(folder)
    name = profile or default_profile(build.get("options", {}).get("embedder"))
    prof = fivecat.load_profile(name)
    banks: dict = {}
    loaded = {s: load_split(folder, s, banks) for s in SPLITS}
    loaded = {s: v for s, v in loaded.items() if v is not None}
    if "val" not in loaded:
        raise UserError(f"data report: {folder} has no val.npz (build one with lvmd data build or windows)")
    per_eval = len(fivecat.STAGES) * (2 if "ood" in loaded else 1)
    total = len(loaded) + per_eval * len(BASELINES)
    tell = progress or (lambda done, total, stage: None)
    out = {"dir": str(folder), "profile": name, "build": {k: build[k] for k in ("command", "options") if k in build},
           "splits": {}}
    for i, (s, (seqs, arts)) in enumerate(loaded.items()):
        out["splits"][s] = split_stats(seqs, arts, (prof.bin_low, prof.bin_high), seed, max_windows=max_windows,
                                       tell=lambda text, i=i, s=s: tell(i, total, f"{s} statistics: {text}"))
        tell(i + 1, total, f"{s} statistics")
    val, val_arts = loaded["val"]
    ood, ood_arts = loaded.get("ood", (None, None))
    val, val_arts = fivecat_sample(val, max_samples), unit_bank(val_arts)
    if ood is not None:
        ood, ood_arts = fivecat_sample(ood, max_samples), unit_bank(ood_arts)
    out["fivecat"] = {}
    for i, (label, fn) in enumerate(BASELINES.items()):
        before = len(loaded) + i * per_eval
        res = fivecat.evaluate(fn, val, ood, val_arts, ood_articles=ood_arts, profile=prof,
                               max_samples=max_samples, seed=seed,
                               progress=lambda done, _n, stage: tell(before + done, total, f"5CAT {label} {stage}"))
        out["fivecat"][label] = res.to_dict()
    return out


# -- calibration (lvmd/docs/calibration.md) -------------------------------------------------------
GTR_ADJACENT = 0.4569  # cos(ctx[-1], ctx[-2]), adjacent chunks, on the original's GTR-T5 Wikipedia data (SPEC §1)
HEADROOM = 0.03        # a level gate sits this far above mean-of-context: the low end of the seed's hoped margin
LEVEL_GATES = {"m0": "m_0", "rollout": "rollout"}
RANK_GATES = ("r_at_1", "r_at_5", "mrr")


def calibrate(rep: dict, name: str, reference: str = "gtr-t5") -> tuple[str, dict]:
    """A threshold profile for this data's embedder, derived from `reference` (TOML text + numbers):
    cosine thresholds scale by k = adjacent cos here / adjacent cos on GTR-T5; rank thresholds
    stay; a level gate (m0, rollout) never sits below mean-of-context's score + HEADROOM."""
    ref = fivecat.load_profile(reference)
    split = rep["splits"].get("train") or rep["splits"]["val"]
    adjacent = (split["d1"]["forward"] + split["d1"]["backward"]) / 2
    k = adjacent / GTR_ADJACENT
    base = rep["fivecat"]["mean_context"]["metrics"]
    r3 = (lambda x: round(float(x), 3))
    prof = {"bin_low": r3(ref.bin_low * k), "bin_high": r3(ref.bin_high * k), "e_max_delta": r3(ref.e_max_delta * k)}
    floors = {}
    for sp in ("VAL", "OOD"):
        table = {}
        for key, thr in ref.thresholds[sp].items():
            if key in RANK_GATES:
                table[key] = thr
            elif key in LEVEL_GATES and sp in base:
                floors[f"{sp}.{key}"] = base[sp][LEVEL_GATES[key]] + HEADROOM
                table[key] = r3(max(thr * k, floors[f"{sp}.{key}"]))
            else:
                table[key] = r3(thr * k)
        prof[sp] = table
    head = (f"# calibrated from {rep['dir']} by `lvmd data report --calibrate {name}` (lvmd/docs/calibration.md):\n"
            f"# k = adjacent cos {adjacent:.4f} / GTR-T5's {GTR_ADJACENT} = {k:.4f} scales the [{reference}] cosine\n"
            f"# thresholds; rank gates unchanged; m0 and rollout >= mean-of-context + {HEADROOM}")
    lines = [head, f"[{name}]"] + [f"{key} = {prof[key]}" for key in ("bin_low", "bin_high", "e_max_delta")]
    for sp in ("VAL", "OOD"):
        lines += ["", f"[{name}.{sp}]"] + [f"{key} = {v}" for key, v in prof[sp].items()]
    return "\n".join(lines) + "\n", {"adjacent": adjacent, "k": k, "floors": floors, "profile": prof}


def default_profile(embedder: str | None) -> str:
    names = fivecat.profile_names()
    return embedder if embedder in names else "gtr-t5"


def _read_build(folder: Path) -> dict:
    path = folder / "build.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


# -- text ------------------------------------------------------------------------------------
def format_report(rep: dict) -> str:
    splits = list(rep["splits"])
    s = rep["splits"]
    lines = [f"data report: {rep['dir']}   (5CAT profile {rep['profile']})"]
    if rep["build"].get("command"):
        lines.append(f"built by: {rep['build']['command']}")

    def row(label, get, fmt="{:.4f}"):
        cells = []
        for sp in splits:
            try:
                v = get(s[sp])
                cells.append(fmt.format(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "-")
            except KeyError:
                cells.append("-")
        lines.append(f"{label:<44}" + "".join(f"{c:>10}" for c in cells))

    lines.append(f"{'':<44}" + "".join(f"{sp:>10}" for sp in splits))
    row("windows", lambda x: x["windows"], "{:d}")
    if any("windows_read" in x for x in s.values()):
        row("windows read (--max-windows sample)", lambda x: x.get("windows_read", x["windows"]), "{:d}")
    row("articles", lambda x: x["articles"], "{:d}")
    row("gap (target = ctx[-1] + 1 + gap)", lambda x: x["gap"], "{:d}")
    lines.append("equal distance, same windows, c_p = ctx[-1]:")
    for d in DISTANCES:
        row(f"  d={d}  cos(c_p, c_p+{d})  forward", lambda x, d=d: x[f"d{d}"]["forward"])
        row(f"       cos(c_p, c_p-{d})  backward", lambda x, d=d: x[f"d{d}"]["backward"])
        row("       forward - backward", lambda x, d=d: x[f"d{d}"]["diff"], "{:+.4f}")
        row("       standard error of that difference", lambda x, d=d: x[f"d{d}"]["se"])
    lines.append("the original's unequal pair (distances differ):")
    row("  cos(ctx[-1], target)   [1+gap chunks]", lambda x: x["unequal"]["cos_last_target"])
    row("  cos(ctx[-1], ctx[-2])  [1 chunk]", lambda x: x["unequal"]["cos_last_prev"])
    row("  P6 pair: cos(c_p, c_p+2) [2 chunks]", lambda x: x["p6_pair"]["cos_p_plus_2"])
    row("           cos(c_p, c_p-1) [1 chunk]", lambda x: x["p6_pair"]["cos_p_minus_1"])
    lines.append("levels:")
    row("  adjacent chunks", lambda x: x["levels"]["adjacent"])
    row("  random pair, same article", lambda x: x["levels"]["same_article_random"])
    row("  random pair, other article", lambda x: x["levels"]["other_article_random"])
    row("  copy-last: cos(ctx[-1], target)", lambda x: x["baselines"]["copy_last"])
    row("  mean-of-context: cos(mean ctx, target)", lambda x: x["baselines"]["mean_context"])
    first = s[splits[0]]["coherence"]
    lines.append(f"coherence (mean cos of adjacent context pairs; bins low < {first['bins'][0]} <= normal "
                 f"<= {first['bins'][1]} < high):")
    for q in QUANTILES:
        key = f"q{int(q * 100):02d}"
        row(f"  quantile {q:.2f}", lambda x, key=key: x["coherence"][key])
    for b in ("low", "normal", "high"):
        row(f"  share {b}", lambda x, b=b: x["coherence"][b], "{:.1%}")
    lines.append(f"5CAT of baseline predictors (profile {rep['profile']}):")
    for label, res in rep["fivecat"].items():
        m = res["metrics"]
        gates = " ".join(g for g, ok in res["gates"].items() if ok) or "none"
        lines.append(f"  {label}: {res['gates_passed']}/{res['gates_total']} gates ({gates})")
        for sp in ("VAL", "OOD"):
            if sp in m:
                v = m[sp]
                lines.append(f"    {sp:<3} m0 {_f(v.get('m_0'))} margin {_f(v.get('margin'), '+')} "
                             f"R@1 {_f(v.get('r_at_1'))} R@5 {_f(v.get('r_at_5'))} MRR {_f(v.get('mrr'))} "
                             f"rollout {_f(v.get('rollout'))} shuffled {_f(v.get('delta_shuffled'), '+')} "
                             f"normal-bin cos {_f(v.get('bin_normal_mean'))}")
    worst = max((abs(x[f"d{d}"]["diff"]) / x[f"d{d}"]["se"], sp, d) for sp, x in s.items() for d in DISTANCES
                if x[f"d{d}"]["se"] > 0)
    if worst[0] <= 3:
        lines.append("At equal distance forward and backward agree within 3 standard errors on every split: "
                     "no direction in the data. The original's 'backward bias' compared a target 2 chunks "
                     "away (gap 1) with a context chunk 1 away: similarity decaying with distance.")
    else:
        lines.append(f"At d={worst[2]} on {worst[1]} forward and backward differ by {worst[0]:.1f} standard errors: "
                     f"check how the windows were built (chunk order, straddling windows).")
    return "\n".join(lines)


def _f(v, sign: str = "") -> str:
    return "   -  " if v is None else f"{v:{sign}.3f}"
