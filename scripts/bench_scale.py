"""Benchmark lvmd at the seed's scale: 431,000 training sequences of 5 × 768 (18,000 val, 10,000
OOD) and a 584,000-chunk articles bank, about 10.3 GB of files.

    .venv/bin/python scripts/bench_scale.py --scale 1.0 --out /tmp/lvmd-scale   # make data, measure, delete it
    .venv/bin/python scripts/bench_scale.py --scale 0.1 --out /tmp/lvmd-scale   # a tenth
    .venv/bin/python scripts/bench_scale.py --data DIR                           # your folder (kept)

The synthetic articles are random walks on the unit sphere, x' = unit(a·x + b·n) with n
Gaussian of unit expected norm, a = 0.46 and b = sqrt(1 - a²): adjacent chunks have cosine
≈ 0.46, GTR-T5's on the seed's Wikipedia. Every figure comes from the real `lvmd` run as a
subprocess (its step rows' own times, its /proc status), printed as one markdown table:

  first step        launch of `lvmd run` (or `lvmd resume --foreground`) → the first step's row
                    time: the first start on a new database (every file hashed), a warm start
                    (page cache warm, hashes cached), a cold one (each data file's pages dropped
                    with posix_fadvise DONTNEED), and a resume of each kind
  steps/s           in memory and streamed (train.device_data_budget = 1 byte), the default
                    transformer and the amn, on the whole split; the peak anonymous and
                    file-backed RSS of the process while it trains
  epoch end         a 2-epoch run on max_train rows: the gap between epochs less its 5CAT
                    (validation, the R@5 check, checkpoints), and the 5CAT at 5,000 samples; each
                    as a share of a whole epoch at the measured in-memory rate
  data report       `lvmd data report` wall time and peak anonymous RSS
  TUI / report      first paint of the TUI and `lvmd report` on a 161,000-step database
                    (scripts/bench_tui.py's writer)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

SEED_SHAPE = {"train": 431_000, "val": 18_000, "ood": 10_000, "bank": 584_000, "dim": 768, "context": 5}
ADJACENT_COS = 0.46
FILES = ("articles.npz", "train.npz", "val.npz", "ood.npz")


# -- data --------------------------------------------------------------------------------------------
class NpzWriter:
    """An uncompressed NPZ written member by member, a large array streamed in chunks (so
    lvmd can memory-map it and this script never holds it whole)."""

    def __init__(self, path: Path):
        self.zf = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)

    def add(self, key: str, arr: np.ndarray) -> None:
        self.stream(key, arr.shape, arr.dtype, [arr])

    def stream(self, key: str, shape: tuple, dtype, chunks) -> None:
        with self.zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                      "fortran_order": False, "shape": tuple(shape)})
            for chunk in chunks:
                fh.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())

    def close(self) -> None:
        self.zf.close()


def make_data(out: Path, scale: float, seed: int = 0) -> dict:
    """articles.npz + train/val/ood.npz of the seed's shape × scale; returns the counts."""
    rng = np.random.default_rng(seed)
    d, t = SEED_SHAPE["dim"], SEED_SHAPE["context"]
    want = {k: max(1, int(SEED_SHAPE[k] * scale)) for k in ("train", "val", "ood", "bank")}
    windows = want["train"] + want["val"] + want["ood"]
    n_articles = max(3, (want["bank"] - windows) // t)          # an article of L chunks has L - T windows
    lengths = np.full(n_articles, want["bank"] // n_articles) + rng.integers(-8, 9, n_articles)
    lengths = np.maximum(lengths, t + 1)
    lengths[-1] += want["bank"] - lengths.sum()
    lengths = np.maximum(lengths, t + 1)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n = int(lengths.sum())
    vectors = np.empty((n, d), np.float32)
    a, b = ADJACENT_COS, math.sqrt(1 - ADJACENT_COS ** 2)
    for lo in range(0, n_articles, 4096):                        # a block of articles walks together
        ls = lengths[lo:lo + 4096]
        x = rng.standard_normal((len(ls), d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for k in range(int(ls.max())):
            live = np.flatnonzero(ls > k)
            vectors[starts[lo + live] + k] = x[live]
            x = a * x + b * rng.standard_normal(x.shape, dtype=np.float32) / np.float32(math.sqrt(d))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
    art = np.repeat(np.arange(n_articles), lengths)
    chunk = np.arange(n) - np.repeat(starts, lengths)
    out.mkdir(parents=True, exist_ok=True)
    w = NpzWriter(out / "articles.npz")
    w.stream("vectors", vectors.shape, np.float32, (vectors[i:i + 65536] for i in range(0, n, 65536)))
    w.add("article_indices", art)
    w.add("chunk_indices", chunk)
    w.close()
    # articles to splits by their windows: val, then OOD, the rest train
    order = rng.permutation(n_articles)
    cum = np.cumsum(lengths[order] - t)
    val_ids = order[:np.searchsorted(cum, want["val"]) + 1]
    ood_ids = order[len(val_ids):np.searchsorted(cum, want["val"] + want["ood"]) + 1]
    split_ids = {"val": val_ids, "ood": ood_ids, "train": order[len(val_ids) + len(ood_ids):]}
    counts = {"bank": n, "articles": n_articles}
    for split, ids in split_ids.items():
        ids = np.sort(ids)
        first = np.concatenate([starts[i] + np.arange(lengths[i] - t) for i in ids])   # window start rows
        counts[split] = len(first)
        meta = json.dumps({"articles": str(out / "articles.npz"), "context": t, "gap": 0, "split": split,
                           "source": f"bench_scale.py --scale {scale}"})
        w = NpzWriter(out / f"{split}.npz")
        blocks = range(0, len(first), 16384)
        w.stream("context_sequences", (len(first), t, d), np.float32,
                 (vectors[first[i:i + 16384, None] + np.arange(t)] for i in blocks))
        w.stream("target_vectors", (len(first), d), np.float32, (vectors[first[i:i + 16384] + t] for i in blocks))
        w.add("article_ids", art[first + t])
        w.add("target_indices", chunk[first + t])
        w.add("meta_json", np.array(meta))
        w.close()
    return counts


def adjacent_cos(folder: Path, rows: int = 20000) -> float:
    from lvmd.data import mapped

    arts = mapped.load_articles(folder / "articles.npz")
    rows = min(rows, len(arts))
    same = np.flatnonzero(arts.article_ids[1:rows] == arts.article_ids[:rows - 1])
    v = np.asarray(arts.vectors[:rows])
    return float(np.einsum("nd,nd->n", v[same], v[same + 1]).mean())


def drop_cache(folder: Path) -> None:
    """The data files' pages out of the page cache (posix_fadvise DONTNEED; clean pages go)."""
    for name in FILES:
        path = folder / name
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# -- running lvmd ----------------------------------------------------------------------------------
def lvmd_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lvmd", *args]


def data_args(folder: Path) -> list[str]:
    return [f"data.train={folder / 'train.npz'}", f"data.val={folder / 'val.npz'}", f"data.ood={folder / 'ood.npz'}",
            f"data.articles={folder / 'articles.npz'}"]


def rss(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile) of a process in bytes; (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kb = (lambda k: int(fields.get(k, "0 kB").split()[0]) * 1024)     # noqa: E731
    return kb("RssAnon"), kb("RssFile")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (what the load does not stretch)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def query(db: Path, sql: str, *args):
    if not Path(db).exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


class Watched:
    """A subprocess whose peak anonymous and file-backed RSS are sampled until it ends."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.launched = time.time()
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.anon = self.file = 0
        self.cpu = math.nan

    def sample(self) -> None:
        anon, file = rss(self.proc.pid)
        self.anon, self.file = max(self.anon, anon), max(self.file, file)
        cpu = cpu_seconds(self.proc.pid)
        self.cpu = cpu if cpu == cpu else self.cpu          # the last reading before it exits

    def wait_until(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sample()
            got = predicate()
            if got:
                return got
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise RuntimeError(f"{what}: lvmd exited {self.proc.returncode}:\n{out[-2000:]}\n{err[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"{what}: not within {timeout:g} s")

    def finish(self, timeout: float = 3600) -> str:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.sample()
            time.sleep(0.2)
        out, err = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0:
            raise RuntimeError(f"lvmd exited {self.proc.returncode}:\n{out[-2000:]}\n{err[-2000:]}")
        return out


def steps_after(db: Path, run_id: int, step: int) -> list[tuple[int, float]]:
    return query(db, "SELECT step, t FROM steps WHERE run_id = ? AND step > ? ORDER BY step", run_id, step)


def stop(db: Path, run_id: int) -> None:
    subprocess.run(lvmd_argv("stop", str(run_id), "--db", str(db)), cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


ROWS = ("first-step", "steps", "epoch-end", "report", "tui")     # the table's groups of rows (--rows)
FAST_ROWS = ["train.telemetry_block=1", "train.flush_seconds=0.2", "eval.fivecat_every=0"]


def first_step(db: Path, folder: Path, *, resume: int | None = None, verify: bool = False,
               env: dict | None = None) -> dict:
    """Launch → the first step's row (a new run, or a resume of run `resume`); then stop it."""
    if resume is None:
        argv = lvmd_argv("run", *data_args(folder), *FAST_ROWS, "train.max_steps=100000000", "--db", str(db),
                         "--quiet", *(["--verify-data"] if verify else []))
        before = query(db, "SELECT max(id) FROM runs")
        run_id = (before[0][0] or 0) + 1 if before else 1       # one process writes this database
        after = 0
    else:
        run_id = resume
        after = query(db, "SELECT step FROM runs WHERE id = ?", run_id)[0][0]
        argv = lvmd_argv("resume", str(run_id), "--foreground", "--quiet", "--db", str(db))
    w = Watched(argv, env)
    rows = w.wait_until(lambda: steps_after(db, run_id, after), 900, "first step")
    seconds, cpu = rows[0][1] - w.launched, cpu_seconds(w.proc.pid)
    stop(db, run_id)
    w.finish()
    state, why = query(db, "SELECT compile, compile_why FROM runs WHERE id = ?", run_id)[0]
    why = why or ""
    how = "kept answer" if "kept from the probe" in why else "set" if "(set)" in why else "probed"
    print(f"    run {run_id}: {why}", file=sys.stderr, flush=True)
    return {"seconds": seconds, "cpu": cpu, "run_id": run_id, "compile": f"compile {state}, {how}"}


def rate(db: Path, folder: Path, *extra: str, steps: int, skip: int) -> dict:
    """steps/s over steps skip..steps of a fresh run, and the process's peak RSS while it ran."""
    w = Watched(lvmd_argv("run", *data_args(folder), *FAST_ROWS, f"train.max_steps={steps}", *extra,
                          "--db", str(db), "--quiet"))
    w.finish()
    run_id = query(db, "SELECT max(id) FROM runs")[0][0]
    t = dict(query(db, "SELECT step, t FROM steps WHERE run_id = ?", run_id))
    return {"steps_s": (steps - skip) / (t[steps] - t[skip]), "anon": w.anon, "file": w.file}


def epoch_end(db: Path, folder: Path, rows: int) -> dict:
    """An epoch of `rows` training rows, its end with a 5CAT (5,000 samples), one step after it."""
    w = Watched(lvmd_argv("run", *data_args(folder), "train.telemetry_block=1", "train.flush_seconds=0.2",
                          f"data.max_train={rows}", "train.epochs=2", f"train.max_steps={rows // 32 + 1}",
                          "eval.fivecat_every=1", "--db", str(db), "--quiet"))
    w.finish()
    run_id = query(db, "SELECT max(id) FROM runs")[0][0]
    last = query(db, "SELECT max(t) FROM steps WHERE run_id = ? AND epoch = 0", run_id)[0][0]
    nxt = query(db, "SELECT min(t) FROM steps WHERE run_id = ? AND epoch = 1", run_id)[0][0]
    ev = query(db, "SELECT finished_at - started_at FROM evals WHERE run_id = ? AND epoch = 0", run_id)[0][0]
    return {"gap": nxt - last, "fivecat": ev, "epoch_end": nxt - last - ev}


def data_report(folder: Path) -> dict:
    w = Watched(lvmd_argv("data", "report", str(folder), "--json", "--no-progress"))
    w.finish()
    return {"seconds": time.time() - w.launched, "cpu": w.cpu, "anon": w.anon, "file": w.file}


def tui_and_report(steps: int = 161_000) -> dict:
    import bench_tui

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "long.db"
        run_id = bench_tui.write_demo_run(db, name="seed-length", epochs=12, steps_per_epoch=steps // 12, seed=0,
                                          state="running")
        paint = asyncio.run(bench_tui.measure(db, run_id, commits=2, idle_s=0.2))["first_paint_s"]
        t0 = time.perf_counter()
        subprocess.run(lvmd_argv("report", str(run_id), "--db", str(db)), cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        return {"paint": paint, "report": time.perf_counter() - t0}


# -- the table -------------------------------------------------------------------------------------
def gib(x: float) -> str:
    return f"{x / 2 ** 30:.2f} GiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="the seed's shape × this (default 1.0)")
    ap.add_argument("--out", type=Path, help="folder for the synthetic data (made, then deleted unless --keep)")
    ap.add_argument("--data", type=Path, help="measure this folder (train/val/ood.npz, articles.npz) instead")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic data")
    ap.add_argument("--steps", type=int, default=150, help="steps per steps/s measurement of the transformer")
    ap.add_argument("--amn-steps", type=int, default=1500, help="the same for the amn")
    ap.add_argument("--rows", default=",".join(ROWS), metavar="R,R",
                    help=f"measure only these rows of the table (of {', '.join(ROWS)}; default all): "
                         "to re-measure what a change affects")
    args = ap.parse_args()
    if (args.out is None) == (args.data is None):
        ap.error("give --out (make synthetic data there) or --data (an existing folder)")
    want = set(args.rows.split(","))
    if not want <= set(ROWS):
        ap.error(f"--rows: {', '.join(sorted(want - set(ROWS)))} not among {', '.join(ROWS)}")
    folder = args.data or args.out
    made = args.data is None
    load = [os.getloadavg()[0]]
    rows = []

    def row(what: str, value: str, target: str = "–") -> None:
        rows.append((what, value, target))
        print(f"  {what}: {value}", file=sys.stderr, flush=True)
        load.append(os.getloadavg()[0])

    try:
        if made:
            t0 = time.perf_counter()
            counts = make_data(folder, args.scale)
            size = sum((folder / n).stat().st_size for n in FILES)
            row("data made", f"{counts['train']:,} / {counts['val']:,} / {counts['ood']:,} windows, "
                f"{counts['bank']:,}-chunk bank, {size / 1e9:.1f} GB in {time.perf_counter() - t0:.0f} s")
        row("adjacent-chunk cosine", f"{adjacent_cos(folder):.3f}", f"≈ {ADJACENT_COS}")
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.db"
            secs = (lambda r: f"{r['seconds']:.1f} s ({r['cpu']:.1f} s CPU; {r['compile']})")      # noqa: E731
            if "first-step" in want:
                first = first_step(db, folder)
                row("first step, first start on a new database (every file hashed)", secs(first))
                warm = first_step(db, folder)
                row("first step, warm start", secs(warm), "≤ 15 s")
                drop_cache(folder)
                cold = first_step(db, folder)
                row("first step, cold start (data pages dropped)", secs(cold), "≤ 45 s")
                r = first_step(db, folder, resume=cold["run_id"])
                row("first step, warm resume", secs(r), "≤ 15 s")
                drop_cache(folder)
                r = first_step(db, folder, resume=cold["run_id"])
                row("first step, cold resume", secs(r), "≤ 45 s")
                v = first_step(db, folder, verify=True)
                row("first step, warm start with --verify-data", secs(v))
                # side by side: what every start and resume paid before the probe's answer was kept
                a = first_step(db, folder, env={"LVMD_COMPILE_PROBE": "again"})
                row("first step, warm start probing again (LVMD_COMPILE_PROBE=again)", secs(a))
            per_s = None
            for model, steps in (("transformer", args.steps), ("amn", args.amn_steps)):
                if "steps" not in want:
                    break
                kind = [f"model.kind={model}"]
                mem = rate(db, folder, *kind, steps=steps, skip=max(10, steps // 10))
                st = rate(db, folder, *kind, "train.device_data_budget=1", steps=steps, skip=max(10, steps // 10))
                row(f"{model}: steps/s in memory / streamed", f"{mem['steps_s']:.2f} / {st['steps_s']:.2f} "
                    f"({st['steps_s'] / mem['steps_s']:.2f}×)", "streamed ≥ 0.9×")
                row(f"{model}: peak RSS anon / file, in memory", f"{gib(mem['anon'])} / {gib(mem['file'])}")
                row(f"{model}: peak RSS anon / file, streamed", f"{gib(st['anon'])} / {gib(st['file'])}")
                if model == "transformer":
                    per_s = mem["steps_s"]
            if "epoch-end" in want:
                if per_s is None:        # the share of an epoch needs the in-memory rate
                    per_s = rate(db, folder, steps=args.steps, skip=max(10, args.steps // 10))["steps_s"]
                ends = epoch_end(db, folder, rows=32 * 200)
                from lvmd.data.mapped import map_member

                epoch_steps = math.ceil(len(map_member(folder / "train.npz", "target_vectors")) / 32)
                epoch_s = epoch_steps / per_s
                row("epoch end (validation, R@5 check, checkpoints), share of an epoch",
                    f"{ends['epoch_end']:.1f} s, {100 * ends['epoch_end'] / (epoch_s + ends['epoch_end']):.2f} % "
                    f"of {epoch_steps:,} steps at {per_s:.2f}/s")
                row("5CAT at 5,000 samples, share of an epoch",
                    f"{ends['fivecat']:.1f} s, {100 * ends['fivecat'] / (epoch_s + ends['fivecat']):.2f} %")
        if "report" in want:
            rep = data_report(folder)
            row("`lvmd data report`: time, peak RSS anon / file", f"{rep['seconds']:.0f} s ({rep['cpu']:.0f} s CPU), "
                f"{gib(rep['anon'])} / {gib(rep['file'])}", "anon ≤ 2 GiB")
        if "tui" in want:
            tr = tui_and_report()
            row("TUI first paint / `lvmd report`, 161,000-step database",
                f"{tr['paint']:.2f} s / {tr['report']:.2f} s")
    finally:
        if made and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"| measure (scale {args.scale:g}, {os.cpu_count()} CPUs, 1-min load {min(load):.1f}–{max(load):.1f}) "
          "| result | target |")
    print("|---|---|---|")
    for what, value, target in rows:
        print(f"| {what} | {value} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
