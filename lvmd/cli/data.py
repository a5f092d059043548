"""`lvmd data ...`: synthetic articles and window building (real-text builders live beside)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


from lvmd import data
from lvmd.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("data", help="make and inspect datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    s = dsub.add_parser("synth", help="write a synthetic articles NPZ (seeded random walks on the sphere)")
    s.add_argument("--out", required=True, help="articles NPZ to write")
    s.add_argument("--articles", type=int, default=120)
    s.add_argument("--min-chunks", type=int, default=12)
    s.add_argument("--max-chunks", type=int, default=40)
    s.add_argument("--dim", type=int, default=64)
    s.add_argument("--step", type=float, default=0.5)
    s.add_argument("--noise", type=float, default=0.6)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    w = dsub.add_parser("windows", help="build train/val/ood sequence NPZs from an articles NPZ")
    w.add_argument("articles", help="articles NPZ")
    w.add_argument("--out", required=True, help="folder for train.npz, val.npz, ood.npz")
    w.add_argument("--context", type=int, default=5, help="T, chunks of context (default 5)")
    w.add_argument("--gap", type=int, default=0, help="chunks skipped before the target (1 = original P6)")
    w.add_argument("--val", type=float, default=0.2, help="share of articles for val")
    w.add_argument("--ood", type=float, default=0.0, help="share of articles held out as a pseudo-OOD set")
    w.add_argument("--seed", type=int, default=0)
    w.set_defaults(func=cmd_windows)
    DATA_SUBPARSERS[:] = [dsub]  # one parser per build_parser() call


# Other modules (real-data builders) add their `lvmd data X` commands to this group.
DATA_SUBPARSERS: list = []


def cmd_synth(args: argparse.Namespace) -> int:
    if args.articles <= 0 or args.dim <= 1 or not 0 < args.min_chunks <= args.max_chunks:
        raise UserError("data synth: need --articles > 0, --dim > 1 and 0 < --min-chunks <= --max-chunks")
    arts = data.synth_articles(n_articles=args.articles, min_chunks=args.min_chunks, max_chunks=args.max_chunks,
                               dim=args.dim, step=args.step, noise=args.noise, seed=args.seed)
    data.save_articles(args.out, arts)
    print(f"wrote {args.out}: {len(arts)} chunks in {args.articles} articles, D={args.dim}")
    return 0


def write_splits(arts: data.Articles, out: Path, *, context: int, gap: int, val: float, ood: float,
                 seed: int, source: str) -> dict[str, int]:
    """train/val[/ood] sequence files split by article id; returns rows per split."""
    if not (0 < val < 1 and 0 <= ood < 1 and val + ood < 1):
        raise UserError(f"data windows: --val {val} and --ood {ood} must be shares in (0, 1) summing below 1")
    train_ids, val_ids, ood_ids = data.split_articles(arts.article_ids, val_frac=val, ood_frac=ood, seed=seed)
    counts = {}
    meta = {"context": context, "gap": gap, "seed": seed, "val": val, "ood": ood, "articles": source,
            "articles_sha256": data.file_sha256(source) if Path(source).exists() else ""}
    for split, ids in (("train", train_ids), ("val", val_ids), ("ood", ood_ids)):
        if split == "ood" and ood == 0:
            continue
        seqs = data.build_windows(arts, context_len=context, gap=gap, article_subset=ids)
        if len(seqs) == 0:
            raise UserError(f"data windows: split {split!r} has no windows of {context}+1+{gap} chunks "
                            f"({len(ids)} articles); use more articles or a smaller --context")
        data.save_sequences(out / f"{split}.npz", seqs, {**meta, "split": split,
                                                         "article_ids": [int(i) for i in ids]})
        counts[split] = len(seqs)
    return counts


def cmd_windows(args: argparse.Namespace) -> int:
    arts = data.load_articles(args.articles)
    if args.context < 2 or args.gap < 0:
        raise UserError(f"data windows: --context {args.context} must be >= 2 and --gap {args.gap} >= 0")
    counts = write_splits(arts, Path(args.out), context=args.context, gap=args.gap, val=args.val,
                          ood=args.ood, seed=args.seed, source=str(Path(args.articles).resolve()))
    print(json.dumps({"out": str(args.out), **counts}))
    return 0
