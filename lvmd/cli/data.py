"""`lvmd data synth | windows | build | sequences | report | import-lnsp`: synthetic articles,
windows, and datasets built from real text."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from lvmd.data import build as databuild
from lvmd.data import embed, textsources
from lvmd.data import formats as data
from lvmd.cli import progress
from lvmd.cli.main import int_in, number_in
from lvmd.errors import UserError

# Modules that load torch (runner, trainer, 5CAT, legacy) or textual are imported inside the
# commands that need them, so `lvmd --help` and the light verbs start without them.


def register(sub) -> None:
    p = sub.add_parser("data", help="make and inspect datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    s = dsub.add_parser("synth", help="write a synthetic articles NPZ (seeded random walks on the sphere)")
    s.add_argument("--out", required=True, help="articles NPZ to write")
    s.add_argument("--articles", type=int_in(1, 10**6), default=120)
    s.add_argument("--min-chunks", type=int_in(1, 10**5), default=12)
    s.add_argument("--max-chunks", type=int_in(1, 10**5), default=40)
    s.add_argument("--dim", type=int_in(1, 65_536), default=64)
    s.add_argument("--step", type=number_in(0, 100), default=0.5)
    s.add_argument("--noise", type=number_in(0, 100), default=0.6)
    s.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)
    s.set_defaults(func=cmd_synth)

    w = dsub.add_parser("windows", help="build train/val/ood sequence NPZs from an articles NPZ")
    w.add_argument("articles", help="articles NPZ")
    w.add_argument("--out", required=True, help="folder for train.npz, val.npz, ood.npz")
    w.add_argument("--context", type=int_in(1, 1024), default=5, help="T, chunks of context (default 5)")
    w.add_argument("--gap", type=int_in(0, 1024), default=0, help="chunks skipped before the target (1 = original P6)")
    w.add_argument("--val", type=number_in(0, 1), default=0.2, help="share of articles for val")
    w.add_argument("--ood", type=number_in(0, 1), default=0.0, help="share of articles held out as a pseudo-OOD set")
    w.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)
    w.set_defaults(func=cmd_windows)
    b = dsub.add_parser("build", help="build a dataset from real text: clean, chunk, embed (cached), split",
                        description="Needs the embed extra: pip install 'lvmd[embed]'.")
    b.add_argument("--source", required=True, help=f"text source: {' | '.join(textsources.SOURCES)}")
    b.add_argument("--embedder", required=True, choices=sorted(embed.MODELS))
    b.add_argument("--unit", default="sentence", choices=["sentence", "paragraph"], help="what one chunk is")
    b.add_argument("--out", required=True, type=Path, help="folder for the articles, sequences and build.json")
    b.add_argument("--ood-source", default="", help="another source whose windows form ood.npz (e.g. austen)")
    b.add_argument("--context", type=int_in(1, 1024), default=5, help="T, chunks of context (default 5)")
    b.add_argument("--gap", type=int_in(0, 1024), default=0, help="chunks skipped before the target (1 = original P6)")
    b.add_argument("--val", type=number_in(0, 1), default=0.2, help="share of articles for val (default 0.2)")
    b.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)
    b.add_argument("--max-docs", type=int_in(0, 10**9), default=0, help="keep N documents, evenly spaced through the source")
    b.add_argument("--max-ood-docs", type=int_in(0, 10**9), default=0, help="the same for the OOD source")
    b.add_argument("--max-chunks-per-doc", type=int_in(0, 10**9), default=0, help="keep the first N chunks of each document")
    b.add_argument("--float16", action="store_true", help="float16 vectors in compressed NPZs (half the size)")
    b.add_argument("--batch-size", type=int_in(1, 1 << 16), default=16, help="encoder batch (16 was fastest on 2 cores)")
    b.add_argument("--cache", type=Path, default=None,
                   help=f"embedding + package cache (default $LVMD_CACHE or {embed.default_cache_dir()})")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=cmd_build)

    s = dsub.add_parser("sequences", help="write train/val/ood.npz from a built folder's articles files "
                                          "with the options its build.json recorded (no model needed)")
    s.add_argument("dir", type=Path, help="folder holding articles.npz [ood_articles.npz] build.json")
    s.add_argument("--out", type=Path, default=None, help="where to write (default: DIR)")
    s.set_defaults(func=cmd_sequences)

    r = dsub.add_parser("report", help="direction (equal distance), coherence and baseline 5CAT of a dataset")
    r.add_argument("dir", type=Path, help="folder with train/val[/ood].npz and their articles files")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("--profile", default="", help="5CAT threshold profile for the bins and gates "
                                                 "(default: the one named for the embedder in build.json)")
    r.add_argument("--max-samples", type=int_in(1, 10**8), default=5000, help="windows per split for 5CAT (default 5000)")
    r.add_argument("--max-windows", type=int_in(0, 10**9), default=0, metavar="N",
                   help="statistics of a seeded sample of N windows per split, for a quick look (default: all)")
    r.add_argument("--calibrate", metavar="NAME", default="",
                   help="also print a 5CAT threshold profile [NAME] for this embedder (lvmd/docs/calibration.md)")
    r.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    r.set_defaults(func=cmd_report)

    i = dsub.add_parser("import-lnsp", help="convert the original project's articles + sequence files; "
                                            "windows that straddle two articles are dropped and counted")
    i.add_argument("--articles", required=True, type=Path, help="the original's articles NPZ")
    i.add_argument("--sequences", required=True, type=Path, action="append",
                   help="a sequence NPZ (repeat for train, val, ood)")
    i.add_argument("--allow-pickle", action="store_true",
                   help="read the pickled 'metadata' key (runs code from the file: only for files you trust)")
    i.add_argument("--gap", type=int_in(0, 1024), default=None, help="target offset to check (default: detect 0, 1 or 2)")
    i.add_argument("--out", required=True, type=Path)
    i.set_defaults(func=cmd_import_lnsp)



def cmd_synth(args: argparse.Namespace) -> int:
    if args.articles <= 0 or args.dim <= 1 or not 0 < args.min_chunks <= args.max_chunks:
        raise UserError("data synth: need --articles > 0, --dim > 1 and 0 < --min-chunks <= --max-chunks")
    arts = data.synth_articles(n_articles=args.articles, min_chunks=args.min_chunks, max_chunks=args.max_chunks,
                               dim=args.dim, step=args.step, noise=args.noise, seed=args.seed)
    data.save_articles(args.out, arts)
    print(f"wrote {args.out}: {len(arts)} chunks in {args.articles} articles, D={args.dim}")
    return 0


def cmd_windows(args: argparse.Namespace) -> int:
    arts = data.load_articles(args.articles)
    if args.context < 2 or args.gap < 0:
        raise UserError(f"data windows: --context {args.context} must be >= 2 and --gap {args.gap} >= 0")
    counts = data.write_splits(arts, Path(args.out), context=args.context, gap=args.gap, val=args.val,
                          ood=args.ood, seed=args.seed, source=str(Path(args.articles).resolve()))
    print(json.dumps({"out": str(args.out), **counts}))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    opts = databuild.BuildOptions(
        source=args.source, embedder=args.embedder, unit=args.unit, out=args.out, ood_source=args.ood_source,
        context=args.context, gap=args.gap, val=args.val, seed=args.seed, max_docs=args.max_docs,
        max_ood_docs=args.max_ood_docs, max_chunks_per_doc=args.max_chunks_per_doc, float16=args.float16,
        batch_size=args.batch_size, cache_dir=args.cache or embed.default_cache_dir(),
        progress=not args.no_progress)
    rec = databuild.build(opts, command=shlex.join(["lvmd", *sys.argv[1:]]))
    print(json.dumps({"out": str(args.out), "articles": rec["articles"], "chunks": rec["chunks"],
                      "sequences": rec["sequences"], "embedded": rec["embedding"]["embedded"],
                      "cached": rec["embedding"]["cached"], "seconds": rec["seconds"]}))
    return 0


def cmd_sequences(args: argparse.Namespace) -> int:
    print(json.dumps(databuild.rebuild_sequences(args.dir, args.out or args.dir)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lvmd.eval import datareport

    with progress.stages("data report", enabled=not args.no_progress) as tell:
        rep = datareport.report(args.dir, profile=args.profile or None, max_samples=args.max_samples,
                                max_windows=args.max_windows, progress=tell)
    toml = ""
    if args.calibrate:
        toml, rep["calibration"] = datareport.calibrate(rep, args.calibrate)
    print(json.dumps(rep, indent=2) if args.json else datareport.format_report(rep))
    if toml and not args.json:
        print("\n" + toml, end="")
    return 0


def cmd_import_lnsp(args: argparse.Namespace) -> int:
    print(json.dumps(databuild.import_lnsp(args.articles, args.sequences, args.out, allow_pickle=args.allow_pickle,
                                           gap=args.gap)))
    return 0
