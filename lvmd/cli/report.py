"""After the run: `lvmd report`, `lvmd runs`, `lvmd compare`, `lvmd export`, `lvmd predict`.

All reads go through read-only connections (store/report.py); nothing here writes the database.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from lvmd.cli.main import default_db, int_in, number_in
from lvmd.cli.tables import print_table
from lvmd.data import embed
from lvmd.data import formats as data
from lvmd.errors import UserError
from lvmd.eval import predict
from lvmd.eval.sweepstats import (
    COMPARE_HEADERS,
    DEFAULT_BASELINE,
    DIFF_HEADERS,
    compare_sweep,
    compare_table_rows,
    diff_table_rows,
    render_verdict,
    sweep_verdict,
)
from lvmd.eval.verdict import (
    ITERATE,
    RUN_TABLE_HEADERS,
    Thresholds,
    build_report,
    compare_rows,
    format_table,
    render_text,
    run_table_rows,
)
from store.paths import create_new, not_regular, replaceable
from store.report import EXPORT_HELP, EXPORT_QUERIES, export_rows, open_readonly, report_data, run_table
from store.runs import resolve_run
from store.sweeps import UnknownSweep, configs_of, get_sweep, member_values

EXIT_ITERATE = 2   # `lvmd report --strict` when the verdict is iterate (as `lvmd eval` exits 2 on a fail)


def register(sub) -> None:
    defaults = Thresholds()
    p = sub.add_parser("report", help="the seed's verdict on a run: guardrails, criteria, curves",
                       description="Answer the P6b handoff's post-run questions from the database and decide "
                                   "promote or iterate. Thresholds default to the seed's (SPEC §5).")
    p.add_argument("run", nargs="?", help="run id or name (default: the newest run)")
    _db(p)
    p.add_argument("--sweep", help="a sweep's verdict: the best configuration over its seeds (lvmd sweep)")
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help=f"with --sweep: the configuration to beat, a label or KEY=VALUE (default {DEFAULT_BASELINE})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true", help=f"exit {EXIT_ITERATE} when the verdict is iterate")
    p.add_argument("--bins", type=int_in(1, 10_000), default=60, help="width of the curves in characters (default 60)")
    p.add_argument("--rho-cap", type=number_in(0, 100), help="ρ limit for every step (default: the cap in force at each step: "
                        "the ramp stage's, else loss.rho_cap, else 0.25)")
    p.add_argument("--skip-max", type=number_in(0, 1), default=defaults.skip_share_max,
                   help=f"skips must stay under this share of batches (default {defaults.skip_share_max})")
    p.add_argument("--pos-floor", type=number_in(-1, 1), default=defaults.pos_floor,
                   help=f"pos̄ must never go below this (default {defaults.pos_floor})")
    p.add_argument("--margin-min", type=number_in(-2, 2), default=defaults.margin_min,
                   help=f"the last epoch's margin must exceed this (default {defaults.margin_min})")
    p.add_argument("--r5-min", type=number_in(0, 1), default=defaults.r_at_5_min, help=f"default {defaults.r_at_5_min}")
    p.add_argument("--val-cos-min", type=number_in(-1, 1), default=defaults.val_cos_min, help=f"default {defaults.val_cos_min}")
    p.add_argument("--gates-min", type=int_in(0, 5), default=defaults.gates_min, help=f"of 5 (default {defaults.gates_min})")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("runs", help="table of the runs in a database")
    _db(p)
    p.add_argument("--json", action="store_true", help="print v_run_summary rows as JSON")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("compare", help="final metrics and guardrail statistics of runs side by side")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids or names (two or more)")
    _db(p)
    p.add_argument("--sweep", help="compare a sweep's configurations: mean ± 95 %% CI over seeds, paired "
                                   "differences from the baseline")
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help=f"with --sweep: a configuration label or KEY=VALUE swapped into each configuration "
                        f"(default {DEFAULT_BASELINE})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)


    p = sub.add_parser("export", help="one table of one run as CSV or JSON lines, or the whole run for TensorBoard",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="tables:\n" + "\n".join(f"  {k:<13} {v}" for k, v in EXPORT_HELP.items()))
    p.add_argument("run", help="run id or name")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", choices=list(EXPORT_QUERIES), metavar="TABLE",
                      help=f"which table: {', '.join(EXPORT_QUERIES)} (listed below)")
    what.add_argument("--tensorboard", metavar="DIR",
                      help="instead: the whole run as TensorBoard event files in DIR/RUN-NAME "
                           "(needs the tensorboard extra: pip install 'lvmd[tensorboard]')")
    p.add_argument("--follow", action="store_true",
                   help="with --tensorboard: keep mirroring a live run until it ends (reads at most once a second)")
    p.add_argument("--format", default="csv", choices=("csv", "jsonl"),
                   help="csv (a header line, then rows) or jsonl (one JSON object per row); default csv")
    p.add_argument("--out", help="file to write (default stdout)")
    p.add_argument("--force", action="store_true", help="overwrite --out (or --tensorboard's event files) if there")
    _db(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="a model's next-chunk prediction shown as the nearest real chunks",
                       description="Predict the chunk after a context and list the nearest chunks of an "
                                   "articles bank. Context ids are bank ROWS (0-based, rows ordered by "
                                   "article then chunk: the NPZ's rows for files lvmd writes) or "
                                   "ARTICLE:CHUNK pairs, comma-separated.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run id or name: use its checkpoint (see --which)")
    src.add_argument("--checkpoint", help="an lvmd checkpoint or the original's best_model.pt")
    p.add_argument("--which", choices=("best", "last"), default="best", help="with --run: which checkpoint")
    p.add_argument("--articles", help="articles NPZ (default with --run: the run's data.articles)")
    ctx = p.add_mutually_exclusive_group(required=True)
    ctx.add_argument("--context", help="e.g. 12,13,14,15,16 (rows) or 3:0,3:1,3:2,3:3,3:4 (article:chunk)")
    ctx.add_argument("--text", action="append", help="a context sentence; repeat once per chunk (needs the embed extra)")
    p.add_argument("--embedder", choices=("minilm", "mpnet"),
                   help="with --text (default: by the bank's D: 384 minilm, 768 mpnet)")
    p.add_argument("--top-k", type=int_in(1, 10**6), default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint that holds arbitrary Python objects (runs code from the file)")
    p.add_argument("--json", action="store_true")
    _db(p)
    p.set_defaults(func=cmd_predict)


def _pipe_safe(handler):
    """`lvmd export ... | head` closes the pipe early: stop quietly, not with a traceback."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
    return run


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="SQLite file (default $LVMD_DB or ./lvmd.db)")


@contextmanager
def _reader(args: argparse.Namespace):
    conn = open_readonly(args.db or default_db())
    try:
        yield conn
    finally:
        conn.close()


# -- report, runs, compare -----------------------------------------------------------------
@_pipe_safe
def cmd_report(args: argparse.Namespace) -> int:
    th = Thresholds(rho_cap=args.rho_cap, skip_share_max=args.skip_max, pos_floor=args.pos_floor,
                    margin_min=args.margin_min, r_at_5_min=args.r5_min, val_cos_min=args.val_cos_min,
                    gates_min=args.gates_min)
    if args.sweep is not None:
        return _report_sweep(args, th)
    with _reader(args) as conn:
        data = report_data(conn, resolve_run(conn, args.run)["id"], bins=max(args.bins, 1))
    report = build_report(data, th)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(render_text(report, data["series"]))
    return EXIT_ITERATE if args.strict and report.verdict == ITERATE else 0


@_pipe_safe
def cmd_runs(args: argparse.Namespace) -> int:
    with _reader(args) as conn:
        summaries = run_table(conn)
    if args.json:
        print(json.dumps(summaries, indent=2, ensure_ascii=False))
    elif not summaries:
        print("no runs in this database yet")
    else:
        print_table(RUN_TABLE_HEADERS, run_table_rows(summaries), left_columns=4)
    return 0


@_pipe_safe
def cmd_compare(args: argparse.Namespace) -> int:
    if args.sweep is not None:
        if args.runs:
            raise UserError("compare: give runs or --sweep, not both")
        return _compare_sweep(args)
    if len(args.runs) < 2:
        raise UserError("compare: name two or more runs")
    with _reader(args) as conn:
        ids = [resolve_run(conn, ref)["id"] for ref in args.runs]
        items = [(data, build_report(data)) for data in (report_data(conn, i, bins=0) for i in ids)]
    if args.json:
        print(json.dumps([{"run_id": d["run"]["id"], "summary": d["summary"], "guardrails": d["guardrails"],
                           "verdict": r.verdict, "reasons": r.reasons} for d, r in items], indent=2, ensure_ascii=False))
    else:
        print_table(["run", *(str(i) for i in ids)], compare_rows(items))
    return 0


def _sweep_rows(conn, ref: str, baseline: str) -> tuple[dict, list[dict]]:
    try:
        sweep = get_sweep(conn, ref)
    except UnknownSweep as exc:
        raise UserError(str(exc)) from None
    return sweep, compare_sweep(configs_of(conn, sweep["id"]), member_values(conn, sweep["id"]), baseline=baseline)


def _compare_sweep(args: argparse.Namespace) -> int:
    with _reader(args) as conn:
        sweep, rows = _sweep_rows(conn, args.sweep, args.baseline)
    if args.json:
        print(json.dumps({"sweep": {k: sweep[k] for k in ("id", "name", "search", "state")},
                          "baseline": args.baseline, "level": 0.95, "configs": rows}, indent=2, ensure_ascii=False))
        return 0
    print(f"sweep {sweep['id']} {sweep['name']!r}: last-epoch values, mean ± 95 % CI over finished seeds (t, n−1)")
    print(format_table(COMPARE_HEADERS, compare_table_rows(rows)))
    diffs = diff_table_rows(rows)
    if diffs:
        print(f"\ndifference from the baseline ({args.baseline}), paired by seed: mean ± 95 % CI, paired t-test p")
        print(format_table(DIFF_HEADERS, diffs, left_columns=2))
    else:
        print(f"\nno configuration has a baseline {args.baseline!r} to be compared with")
    pruned = [r for r in rows if r["state"] == "pruned"]
    for r in pruned:
        print(f"pruned: {r['config']}: {r['reason']}")
    return 0


def _report_sweep(args: argparse.Namespace, th: Thresholds) -> int:
    with _reader(args) as conn:
        sweep, rows = _sweep_rows(conn, args.sweep, args.baseline)
        runs = [run_id for r in rows for run_id in r["runs"]]
        reports = {run_id: build_report(report_data(conn, run_id, bins=0), th) for run_id in runs}
    seeds = len(json.loads(sweep["spec_json"])["seeds"])
    verdict = sweep_verdict(rows, reports, planned_seeds=seeds, objective=json.loads(sweep["spec_json"])["objective"])
    if args.json:
        print(json.dumps({"sweep": {k: sweep[k] for k in ("id", "name", "search", "state")}, **verdict},
                         indent=2, ensure_ascii=False))
    else:
        print(render_verdict(sweep, verdict))
    return EXIT_ITERATE if args.strict and verdict["verdict"] == ITERATE else 0


# -- export ----------------------------------------------------------------------------------
@_pipe_safe
def cmd_export(args: argparse.Namespace) -> int:
    if args.tensorboard is not None:
        from lvmd.cli.tensorboard import export_tensorboard

        return export_tensorboard(args)
    if args.follow:
        raise UserError("--follow goes with --tensorboard (a --table export is one read)")
    if args.out and os.path.isdir(args.out):
        raise UserError(f"{args.out}: is a directory; --out names the file to write")
    if args.out and (why := replaceable(args.out) or not_regular(args.out)) is not None:
        raise UserError(f"--out {why}")           # /dev/full, a FIFO: never replaced, never written to
    if args.out and os.path.lexists(args.out) and not args.force:
        raise UserError(f"{args.out}: exists; pass --force to overwrite it")
    with _reader(args) as conn:
        run_id = resolve_run(conn, args.run)["id"]
        columns, rows = export_rows(conn, run_id, args.table)
        with _output(args.out) as fh:
            n = (_write_csv if args.format == "csv" else _write_jsonl)(fh, columns, rows)
    if args.out:
        print(f"wrote {n} {args.table} rows of run {run_id} to {args.out}", file=sys.stderr)
    return 0


@contextmanager
def _output(path: str | None):
    if path is None:
        yield sys.stdout
        return
    # written beside the target (a new file: O_EXCL | O_NOFOLLOW) and renamed over it at the end:
    # an error leaves no half file, and what is renamed over is only ever a regular file
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fh = open(create_new(tmp, 0o644), "w", newline="", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with fh:
            yield fh
        if target.is_dir():
            raise UserError(f"{path}: is a directory")
        if (why := replaceable(target)) is not None:      # something else appeared there meanwhile
            raise UserError(f"--out {why}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _write_csv(fh, columns, rows) -> int:
    writer = csv.writer(fh)
    writer.writerow(columns)
    n = 0
    for n, row in enumerate(rows, 1):
        writer.writerow(row)
    return n


def _write_jsonl(fh, columns, rows) -> int:
    n = 0
    for n, row in enumerate(rows, 1):
        record = dict(zip(columns, row))
        if isinstance(record.get("detail"), str):      # events.detail holds JSON: nest it, not a string
            record["detail"] = json.loads(record["detail"])
        fh.write(json.dumps(record) + "\n")
    return n


# -- predict ---------------------------------------------------------------------------------
@_pipe_safe
def cmd_predict(args: argparse.Namespace) -> int:
    checkpoint, articles_path = _checkpoint_and_bank(args)
    if not articles_path:
        raise UserError("predict: give --articles NPZ (the bank whose chunks are searched)")
    bank = data.load_articles(articles_path)
    if args.context is not None:
        rows, vectors = predict.parse_context(args.context, bank), None
    else:
        rows, vectors = None, _embed(args.text, args.embedder, bank)
    predictor, info = predict.load_checkpoint_predictor(checkpoint, device=args.device, trust=args.trust_checkpoint)
    given = len(rows) if rows is not None else len(vectors)
    if info.get("context_len") and given != int(info["context_len"]):
        what = "--context" if rows is not None else "--text"
        raise UserError(f"{what}: {given} chunks given but {checkpoint} was trained on contexts of "
                        f"{int(info['context_len'])} chunks")
    result = predict.predict(predictor, bank, rows=rows, vectors=vectors, k=args.top_k)
    result["checkpoint"] = str(checkpoint)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(_render_prediction(result, info, bank))
    return 0


def _checkpoint_and_bank(args: argparse.Namespace) -> tuple[Path, str | None]:
    if args.checkpoint:
        return Path(args.checkpoint), args.articles

    from lvmd.run.identity import run_checkpoint

    with _reader(args) as conn:
        run = resolve_run(conn, args.run)
        path = run_checkpoint(conn, args.db or default_db(), run, args.which)   # its folder and file name this run
    bank = args.articles or json.loads(run["config_json"]).get("data", {}).get("articles") or None
    return path, bank


def _embed(texts: list[str], embedder: str | None, bank):
    """(T, D) vectors of the --text sentences; lvmd.data.embed names the extra to install if missing."""
    if embedder is None:
        by_dim = {spec.dim: name for name, spec in embed.MODELS.items()}
        if bank.dim not in by_dim:
            raise UserError(f"--text: no known embedder gives D={bank.dim} ({bank.path}); pass --embedder")
        embedder = by_dim[bank.dim]
    if embed.spec(embedder).dim != bank.dim:   # before loading the encoder: that takes seconds
        raise UserError(f"--text: embedder {embedder} gives D={embed.spec(embedder).dim} but {bank.path} "
                        f"holds D={bank.dim}")
    vectors, _ = embed.embed_texts(list(texts), embedder, embed.default_cache_dir(), progress=False)
    return vectors


def _render_prediction(result: dict, info: dict, bank) -> str:
    lines = [f"checkpoint {result['checkpoint']} ({info.get('kind')}, D={info.get('dim')}); "
             f"bank {bank.path}: {len(bank)} chunks"]
    if result["context_rows"] is not None:
        pairs = ", ".join(f"{r} ({bank.article_ids[r]}:{bank.chunk_ids[r]})" for r in result["context_rows"])
        lines.append(f"context rows: {pairs}")
    nxt = result["true_next"]
    if nxt is not None:
        lines.append(f"true next chunk: row {nxt['row']} ranks {nxt['rank']} of {len(bank)} (cos {nxt['cos']:.3f})")
    headers = ["rank", "cos", "row", "article:chunk", "role"] + (["text"] if bank.texts is not None else [])
    rows = [[str(n["rank"]), f"{n['cos']:.3f}", str(n["row"]), f"{n['article']}:{n['chunk']}", n["role"],
             _clip(n["text"], 70)][:len(headers)] for n in result["neighbours"]]
    return "\n".join(lines + ["", format_table(headers, rows)])


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
