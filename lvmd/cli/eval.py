"""`lvmd eval CHECKPOINT ...`: 5CAT on an lvmd or original checkpoint; a table, optional JSON.
`lvmd eval RUN` (a run id or name, no --val): ask that live run to evaluate now (= eval-now).

Exit status: 0 when the 3-of-5 verdict passes, 2 when it does not, 1 on an error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

from lvmd.cli import progress
from lvmd.cli.daemon import cmd_command
from lvmd.data import formats as data
from lvmd.cli.main import int_in, number_in
from lvmd.errors import UserError
from store.paths import replaceable

# Modules that load torch (runner, trainer, 5CAT, legacy) or textual are imported inside the
# commands that need them, so `lvmd --help` and the light verbs start without them.

EXIT_PASS, EXIT_FAIL = 0, 2


def register(sub) -> None:
    p = sub.add_parser("eval", help="run 5CAT (five-category evaluation) on a checkpoint",
                       description="Run 5CAT on an lvmd checkpoint or the original's best_model.pt. "
                                   "Exit 0 when at least 3 of 5 gates pass, 2 when not, 1 on error.")
    p.add_argument("checkpoint", metavar="CHECKPOINT|RUN",
                   help="lvmd checkpoint or the original's best_model.pt; or a live run's id/name to "
                        "make it evaluate now (then only --db/--timeout/--no-wait apply)")
    p.add_argument("--val", help="VAL sequence NPZ (required for a checkpoint)")
    p.add_argument("--ood", help="OOD sequence NPZ (without it gate E fails and A-D judge VAL only)")
    p.add_argument("--articles", help="articles NPZ holding the VAL (and OOD) target chunks (required for a checkpoint)")
    p.add_argument("--ood-articles", help="articles NPZ of the OOD set when it lives in another file")
    p.add_argument("--compat", choices=("none", "lnsp"), default="none",
                   help="lnsp: reproduce the original script's numbers, defects included")
    p.add_argument("--profile", default="gtr-t5",
                   help="threshold profile: a name in lvmd/eval/profiles.toml, or FILE.toml[:NAME] of your own")
    p.add_argument("--max-samples", type=int_in(1, 10**8), default=5000, help="rows per split (default 5000)")
    p.add_argument("--sample", choices=("first", "seeded"), default="first", help="which rows: the first or a seeded draw")
    p.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="seed of the draw, the shuffle and cross-article picks")
    p.add_argument("--batch-size", type=int_in(1, 1 << 24), default=1024, help="contexts per forward pass")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="also write the result as JSON (lvmd/docs/fivecat_json.md)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read the original's pickled 'metadata' in sequence files (runs code from the file)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint that holds arbitrary Python objects (runs code from the file)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.add_argument("--db", help="with RUN: SQLite file (default $LVMD_DB or ./lvmd.db)")
    p.add_argument("--timeout", type=number_in(0, 1e6), default=10.0, help="with RUN: seconds to wait for the daemon")
    p.add_argument("--no-wait", action="store_true", help="with RUN: queue the command and return")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.val is None and not Path(args.checkpoint).exists():

        return cmd_command(argparse.Namespace(**{**vars(args), "run": args.checkpoint, "verb": "eval"}))
    missing = [flag for flag, value in (("--val", args.val), ("--articles", args.articles)) if not value]
    if missing:
        raise UserError(f"eval {args.checkpoint}: {' and '.join(missing)} required to evaluate a checkpoint")
    from lvmd.eval import fivecat, legacy

    device = _device(args.device)
    fivecat.load_profile(args.profile)  # a typo fails before anything is loaded
    if args.json_out:
        _check_json_out(Path(args.json_out))
    model, info = legacy.load_predictor(args.checkpoint, device=device, trust=args.trust_checkpoint)
    val = data.load_sequences(args.val, allow_pickle=args.allow_pickle)
    ood = data.load_sequences(args.ood, allow_pickle=args.allow_pickle) if args.ood else None
    articles = data.load_articles(args.articles)
    ood_articles = data.load_articles(args.ood_articles) if args.ood_articles else None
    for seqs in filter(None, (val, ood)):
        if seqs.dim != info["dim"]:
            raise UserError(f"{args.checkpoint} is a D={info['dim']} model but {seqs.path} has D={seqs.dim}")

    def predict(x):
        return model(x.to(device))[1]

    with progress.stages("5CAT", enabled=not args.no_progress) as tell:
        result = fivecat.evaluate(predict, val, ood, articles, ood_articles=ood_articles, compat=args.compat,
                                  profile=args.profile, max_samples=args.max_samples, sample=args.sample,
                                  seed=args.seed, batch_size=args.batch_size, device=device, progress=tell)
    result.extra = {"checkpoint": str(args.checkpoint), "checkpoint_format": info["format"],
                    "model_kind": info["kind"], "dim": info["dim"],
                    "files": {"val": args.val, "ood": args.ood, "articles": args.articles,
                              "ood_articles": args.ood_articles}}
    print(format_result(result))
    if args.json_out:
        write_json(args.json_out, result.to_dict())
        print(f"wrote {args.json_out}")
    return EXIT_PASS if result.verdict_3of5 else EXIT_FAIL


def _device(name: str) -> str:
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here")
    return name


def _check_json_out(path: Path) -> None:
    """--json names a file we can write: refused before the evaluation, not after it."""
    if path.is_dir():
        raise UserError(f"--json {path}: is a directory; name the file to write")
    if (why := replaceable(path)) is not None:
        raise UserError(f"--json {why}")
    from lvmd.run.runner import check_folder

    check_folder(path.parent, "--json")


def write_json(path: str | Path, obj: dict) -> None:
    """Strict JSON (NaN is already None; allow_nan=False would catch a slip), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        if (why := replaceable(path)) is not None:    # never rename over a device node or FIFO
            raise UserError(f"--json {why}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the table ---------------------------------------------------------------------------------
SECTIONS = (
    ("A offset sweep", ("a_n", "m_-3", "m_-2", "m_-1", "m_0", "m_+1", "m_+2", "m_+3", "margin", "margin_+1")),
    ("B retrieval", ("b_n", "r_at_1", "r_at_5", "mrr")),
    ("C ablations", ("c_n", "cos", "delta_shuffled", "delta_reversed", "delta_leave_one_out",
                     "delta_repeat_pad", "delta_cross_article")),
    ("D rollout", ("d_n", "rollout", "rollout_h1", "rollout_h2", "rollout_h3", "rollout_h4", "rollout_h5")),
    ("E coherence bins", ("bin_low_n", "bin_low_mean", "bin_normal_n", "bin_normal_mean",
                          "bin_high_n", "bin_high_mean")),
)


def _num(x: float | None, name: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{int(x)}" if name.endswith("_n") or name == "samples" else f"{x:+.4f}"


def format_result(result) -> str:
    """A plain-text report: metrics side by side per split, every gate check, the verdict."""
    splits = [s for s in ("VAL", "OOD") if s in result.metrics]
    lines = [f"5CAT  profile {result.profile}  compat {result.compat}  max_samples {result.max_samples} "
             f"({result.sample})  {result.duration_s:.1f}s"]
    if result.extra.get("checkpoint"):
        lines.append(f"checkpoint {result.extra['checkpoint']} ({result.extra['checkpoint_format']} "
                     f"{result.extra['model_kind']}, D={result.extra['dim']})")
    lines += ["", f"{'metric':<26}" + "".join(f"{s:>12}" for s in splits),
              f"{'samples':<26}" + "".join(f"{_num(result.metrics[s]['samples'], 'samples'):>12}" for s in splits)]
    for title, names in SECTIONS:
        lines.append(title)
        for name in names:
            if any(name in result.metrics[s] for s in splits):
                lines.append(f"  {name:<24}" + "".join(f"{_num(result.metrics[s].get(name), name):>12}" for s in splits))
    lines += ["", f"{'gate':<5}{'split':<9}{'metric':<22}{'value':>10}  {'op':<3}{'threshold':>10}  result"]
    for c in result.checks:
        lines.append(f"{c.gate:<5}{c.split:<9}{c.metric:<22}{_num(c.value, c.metric):>10}  {c.op:<3}"
                     f"{_num(c.threshold, c.metric):>10}  {'pass' if c.passed else 'FAIL'}"
                     + ("  too few samples" if c in result.too_few_samples else ""))
    gates = "  ".join(f"{g} {'pass' if ok else 'FAIL'}" for g, ok in result.gates.items())
    from lvmd.eval.fivecat.results import MIN_SAMPLES

    few = "; ".join(f"{c.split} {c.gate} n={_num(c.value, c.metric)}" for c in result.too_few_samples)
    if few:
        lines += ["", f"too few samples (< {MIN_SAMPLES} rows, so these gates do not pass): {few}"]
    lines += ["", f"gates: {gates}",
              f"verdict: {result.gates_passed}/{result.gates_total} gates; 3-of-5 rule (seed): "
              f"{'PASS' if result.verdict_3of5 else 'FAIL'}; all-5 rule (original): "
              f"{'PASS' if result.verdict_all5 else 'FAIL'}"]
    return "\n".join(lines)
