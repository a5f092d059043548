"""Bad input, the hostile user's table (issue 13): every case must end in exactly ONE line on
stderr that names the file, key or value at fault, a non-zero exit, no traceback (none printed,
no crash log written), no run row, no file left behind, and a database that still passes
PRAGMA integrity_check.

Most cases call the real entry point lvmd.cli.main.main in-process (fast); the cases that need
another process (permissions with capabilities dropped, a full disk in a private mount) run the
real `lvmd` as a subprocess.
"""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import ROOT, TINY_MODEL, data_overrides

from lvmd.cli.main import main


# -- the world the cases are made in -------------------------------------------------------------
@dataclass
class World:
    root: Path          # files shared by every case (never changed by a case)
    data: Path          # tiny_data: train/val/ood/articles NPZ
    good: Path          # an lvmd database with one finished run (id 1, name "good")
    case: Path          # this case's own empty folder (where outputs would go)

    def run(self, *extra: str, db: str | None = None) -> list[str]:
        return ["run", *data_overrides(self.data), *TINY_MODEL, "train.epochs=1", *extra, "--quiet",
                "--db", db or str(self.case / "new.db")]

    def start(self, *extra: str) -> list[str]:
        return ["start", *data_overrides(self.data), *TINY_MODEL, "train.epochs=1", *extra,
                "--db", str(self.case / "new.db")]

    def bad(self, name: str) -> str:
        return str(self.root / name)


def _seqs(path: Path, ctx: np.ndarray, tgt: np.ndarray, **more) -> None:
    np.savez(path, context_sequences=ctx, target_vectors=tgt, **more)


@pytest.fixture(scope="module")
def world_root(tmp_path_factory, tiny_data) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    good = root / "good.db"
    from store.db import connect
    from store.runs import create_run

    conn = connect(good)
    rid = create_run(conn, name="good", preset="v2.1", compat="none", config={}, data={}, state="finished",
                     out_dir=str(root / "good-runs" / "1"))
    conn.executemany("INSERT INTO steps (run_id, step, epoch, t, lr, " + ", ".join(_metric_cols()) + ")"
                     f" VALUES (?, ?, 0, ?, 1e-3, {', '.join('0' * len(_metric_cols()))})",
                     [(rid, s, 1000.0 + s) for s in range(1, 6)])
    conn.close()

    (root / "a_dir").mkdir()
    (root / "a_file").write_text("not a folder\n")
    (root / "text.db").write_text("hello, I am not a database\n")
    (root / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (root / "bad.toml").write_text("[train\nepochs = 3\n")
    (root / "unknown.toml").write_text("[train]\nepochs = 1\nnosuch = 3\n")
    (root / "garbage.npz").write_bytes(os.urandom(4096))
    full = (tiny_data / "train.npz").read_bytes()
    (root / "truncated.npz").write_bytes(full[: len(full) // 2])
    (root / "truncated.db").write_bytes(good.read_bytes()[:3000])
    with zipfile.ZipFile(root / "empty.npz", "w"):
        pass
    rng = np.random.default_rng(0)
    ctx, tgt = rng.normal(size=(20, 5, 16)).astype(np.float32), rng.normal(size=(20, 16)).astype(np.float32)
    bad_ctx = ctx.copy()
    bad_ctx[3, 2, 1] = np.nan
    _seqs(root / "nan.npz", bad_ctx, tgt)
    bad_tgt = tgt.copy()
    bad_tgt[7] = np.inf
    _seqs(root / "inf.npz", ctx, bad_tgt)
    _seqs(root / "dim8.npz", ctx[:, :, :8], tgt[:, :8])
    _seqs(root / "rows.npz", ctx, tgt[:10])
    _seqs(root / "flat.npz", ctx[:, 0], tgt)                       # (M, D) contexts: wrong ndim
    _seqs(root / "zero_rows.npz", ctx[:0], tgt[:0])
    _seqs(root / "strings.npz", np.array([["a"] * 5] * 3), np.array(["b"] * 3))
    _seqs(root / "mismatch.npz", ctx, tgt[:, :8])                  # targets D=8, contexts D=16
    np.savez(root / "nokeys.npz", foo=np.zeros(3))
    meta = np.array([{"article_index": 0, "target_chunk_index": i} for i in range(20)], dtype=object)
    _seqs(root / "pickled.npz", ctx, tgt, metadata=meta)
    vec8 = rng.normal(size=(40, 8)).astype(np.float32)
    np.savez(root / "articles8.npz", vectors=vec8 / np.linalg.norm(vec8, axis=1, keepdims=True),
             article_indices=np.repeat(np.arange(4), 10), chunk_indices=np.tile(np.arange(10), 4))

    future = root / "future.db"
    shutil.copy(good, future)
    c = sqlite3.connect(future)
    c.execute("PRAGMA user_version = 99")
    c.close()
    foreign = sqlite3.connect(root / "foreign.db")
    foreign.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    foreign.execute("INSERT INTO customers (name) VALUES ('ada')")
    foreign.commit()
    foreign.close()
    (root / "ckpt_garbage.pt").write_bytes(os.urandom(2048))
    (root / "exists.csv").write_text("keep me\n")
    (root / "empty.pt").write_bytes(b"")
    import torch

    torch.save({"format": "lvmd-checkpoint-1", "w": torch.zeros(4096)}, root / "whole.pt")
    (root / "cut.pt").write_bytes((root / "whole.pt").read_bytes()[:5000])
    os.mkfifo(root / "fifo")                          # opening it to read blocks until a writer comes
    return root, good


def _metric_cols() -> tuple[str, ...]:
    from store.schema import STEP_METRICS

    return STEP_METRICS


@pytest.fixture
def world(world_root, tiny_data, tmp_path, monkeypatch) -> World:
    root, good = world_root
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))   # crash logs would land here
    monkeypatch.delenv("LVMD_DB", raising=False)
    case = tmp_path / "case"
    case.mkdir()
    return World(root, tiny_data, good, case)


# -- the table --------------------------------------------------------------------------------------
# (id, argv from the world, text the one line must contain)
Case = tuple[str, Callable[[World], list[str]], str]
W = World

CASES: list[Case] = [
    # the config file and its keys
    ("config-is-dir", lambda w: ["run", w.bad("a_dir"), *w.run()[1:]], "a_dir"),
    ("config-binary", lambda w: ["run", w.bad("binary.toml"), *w.run()[1:]], "binary.toml"),
    ("config-missing", lambda w: ["run", w.bad("nope.toml"), *w.run()[1:]], "nope.toml"),
    ("config-not-toml", lambda w: ["run", w.bad("bad.toml"), *w.run()[1:]], "bad.toml"),
    ("config-unknown-key-in-file", lambda w: ["run", w.bad("unknown.toml"), *w.run()[1:]], "nosuch"),
    ("override-unknown-key", lambda w: w.run("train.nosuch=3"), "train.nosuch"),
    ("override-unknown-section", lambda w: w.run("nosection.x=1"), "nosection"),
    ("override-wrong-type", lambda w: w.run("train.epochs=three"), "train.epochs"),
    ("override-zero-epochs", lambda w: w.run("train.epochs=0"), "train.epochs"),
    ("override-negative-lr", lambda w: w.run("train.lr=-1"), "train.lr"),
    ("override-batch-size", lambda w: w.run("train.batch_size=0"), "train.batch_size"),
    ("model-kind", lambda w: w.run("model.kind=nosuch"), "nosuch"),
    ("loss-preset", lambda w: w.run("loss.preset=v9"), "v9"),
    ("compat", lambda w: w.run("compat=both"), "both"),
    ("precision", lambda w: w.run("train.precision=fp8"), "fp8"),
    ("watch-action", lambda w: w.run("watch.action=explode"), "explode"),
    ("device-cuda", lambda w: w.run("train.device=cuda"), "cuda"),
    ("profile-unknown", lambda w: w.run("eval.profile=nosuch"), "nosuch"),
    ("stray-argument", lambda w: w.run("--nosuch-flag"), "--nosuch-flag"),
    # data files
    ("train-missing", lambda w: w.run(f"data.train={w.bad('nope.npz')}"), "nope.npz"),
    ("train-is-dir", lambda w: w.run(f"data.train={w.bad('a_dir')}"), "a_dir"),
    ("train-garbage", lambda w: w.run(f"data.train={w.bad('garbage.npz')}"), "garbage.npz"),
    ("train-truncated", lambda w: w.run(f"data.train={w.bad('truncated.npz')}"), "truncated.npz"),
    ("train-empty-zip", lambda w: w.run(f"data.train={w.bad('empty.npz')}"), "empty.npz"),
    ("train-nan-row", lambda w: w.run(f"data.train={w.bad('nan.npz')}"), "nan.npz"),
    ("train-inf-target", lambda w: w.run(f"data.train={w.bad('inf.npz')}"), "inf.npz"),
    ("train-no-keys", lambda w: w.run(f"data.train={w.bad('nokeys.npz')}"), "nokeys.npz"),
    ("train-row-mismatch", lambda w: w.run(f"data.train={w.bad('rows.npz')}"), "rows.npz"),
    ("train-wrong-ndim", lambda w: w.run(f"data.train={w.bad('flat.npz')}"), "flat.npz"),
    ("train-strings", lambda w: w.run(f"data.train={w.bad('strings.npz')}"), "strings.npz"),
    ("train-d-mismatch", lambda w: w.run(f"data.train={w.bad('mismatch.npz')}"), "mismatch.npz"),
    ("train-zero-rows", lambda w: w.run(f"data.train={w.bad('zero_rows.npz')}"), "zero_rows.npz"),
    ("train-pickled", lambda w: w.run(f"data.train={w.bad('pickled.npz')}", "data.val=" + w.bad("pickled.npz")),
     "pickled.npz"),
    ("val-wrong-dim", lambda w: w.run(f"data.val={w.bad('dim8.npz')}"), "dim8.npz"),
    ("articles-wrong-dim", lambda w: w.run(f"data.articles={w.bad('articles8.npz')}"), "articles8.npz"),
    ("articles-not-npz", lambda w: w.run(f"data.articles={w.bad('text.db')}"), "text.db"),
    # the database and the run folder of `lvmd run`
    ("run-db-is-dir", lambda w: w.run(db=w.bad("a_dir")), "a_dir"),
    ("run-db-under-dev-null", lambda w: w.run(db="/dev/null/x.db"), "/dev/null"),
    ("run-db-under-file", lambda w: w.run(db=w.bad("a_file") + "/x.db"), "a_file"),
    ("run-db-text", lambda w: w.run(db=w.bad("text.db")), "text.db"),
    ("run-db-future", lambda w: w.run(db=w.bad("future.db")), "future.db"),
    ("run-db-foreign", lambda w: w.run(db=w.bad("foreign.db")), "foreign.db"),
    ("run-db-truncated", lambda w: w.run(db=w.bad("truncated.db")), "truncated.db"),
    ("run-out-dir-under-file", lambda w: w.run(f"out_dir={w.bad('a_file')}/sub"), "a_file"),
    ("start-device-cuda", lambda w: w.start("train.device=cuda"), "cuda"),
    ("start-profile", lambda w: w.start("eval.profile=nope"), "nope"),
    # readers and command verbs on bad databases
    ("status-db-is-dir", lambda w: ["status", "--db", w.bad("a_dir")], "a_dir"),
    ("status-db-missing", lambda w: ["status", "--db", str(w.case / "none.db")], "none.db"),
    ("status-db-text", lambda w: ["status", "--db", w.bad("text.db")], "text.db"),
    ("status-db-future", lambda w: ["status", "--db", w.bad("future.db")], "future.db"),
    ("status-db-foreign", lambda w: ["status", "--db", w.bad("foreign.db")], "foreign.db"),
    ("status-db-truncated", lambda w: ["status", "--db", w.bad("truncated.db")], "truncated.db"),
    ("status-db-under-dev-null", lambda w: ["status", "--db", "/dev/null/x.db"], "/dev/null"),
    ("status-unknown-run", lambda w: ["status", "99", "--db", str(w.good)], "99"),
    ("report-db-is-dir", lambda w: ["report", "--db", w.bad("a_dir")], "a_dir"),
    ("report-unknown-name", lambda w: ["report", "nosuchname", "--db", str(w.good)], "nosuchname"),
    ("runs-db-text", lambda w: ["runs", "--db", w.bad("text.db")], "text.db"),
    ("compare-unknown", lambda w: ["compare", "1", "77", "--db", str(w.good)], "77"),
    ("export-db-truncated", lambda w: ["export", "1", "--table", "steps", "--db", w.bad("truncated.db")],
     "truncated.db"),
    ("export-out-exists", lambda w: ["export", "1", "--table", "steps", "--out", w.bad("exists.csv"),
                                     "--db", str(w.good)], "exists.csv"),
    ("export-out-is-dir", lambda w: ["export", "1", "--table", "steps", "--out", w.bad("a_dir"),
                                     "--db", str(w.good)], "a_dir"),
    ("export-out-under-file", lambda w: ["export", "1", "--table", "steps", "--out", w.bad("a_file") + "/x.csv",
                                         "--db", str(w.good)], "a_file"),
    ("export-bad-table", lambda w: ["export", "1", "--table", "nosuch", "--db", str(w.good)], "nosuch"),
    ("stop-db-under-dev-null", lambda w: ["stop", "1", "--db", "/dev/null/x.db"], "/dev/null"),
    ("stop-finished-run", lambda w: ["stop", "1", "--db", str(w.good)], "finished"),
    ("resume-db-is-dir", lambda w: ["resume", "1", "--db", w.bad("a_dir")], "a_dir"),
    ("resume-finished-run", lambda w: ["resume", "1", "--db", str(w.good)], "finished"),
    ("pause-finished-run", lambda w: ["pause", "1", "--db", str(w.good)], "finished"),
    ("tui-db-is-dir", lambda w: ["tui", w.bad("a_dir")], "a_dir"),
    ("tui-db-text", lambda w: ["tui", w.bad("text.db"), "--readonly"], "text.db"),
    # evaluating a checkpoint
    ("eval-json-dir", lambda w: ["eval", w.bad("ckpt_garbage.pt"), "--val", str(w.data / "val.npz"),
                                 "--articles", str(w.data / "articles.npz"), "--json", str(w.case)], str("case")),
    ("eval-json-under-file", lambda w: ["eval", w.bad("ckpt_garbage.pt"), "--val", str(w.data / "val.npz"),
                                        "--articles", str(w.data / "articles.npz"),
                                        "--json", w.bad("a_file") + "/r.json"], "a_file"),
    ("eval-checkpoint-garbage", lambda w: ["eval", w.bad("ckpt_garbage.pt"), "--val", str(w.data / "val.npz"),
                                           "--articles", str(w.data / "articles.npz")], "ckpt_garbage.pt"),
    ("eval-checkpoint-dir", lambda w: ["eval", w.bad("a_dir"), "--val", str(w.data / "val.npz"),
                                       "--articles", str(w.data / "articles.npz")], "a_dir"),
    ("eval-missing-articles", lambda w: ["eval", w.bad("ckpt_garbage.pt"), "--val", str(w.data / "val.npz")],
     "--articles"),
    ("eval-profile", lambda w: ["eval", w.bad("ckpt_garbage.pt"), "--val", str(w.data / "val.npz"),
                                "--articles", str(w.data / "articles.npz"), "--profile", "nosuch"], "nosuch"),
    ("eval-device", lambda w: ["eval", w.bad("ckpt_garbage.pt"), "--val", str(w.data / "val.npz"),
                               "--articles", str(w.data / "articles.npz"), "--device", "cuda"], "cuda"),
    # datasets
    ("import-lnsp-pickled", lambda w: ["data", "import-lnsp", "--articles", str(w.data / "articles.npz"),
                                       "--sequences", w.bad("pickled.npz"), "--out", str(w.case / "out")],
     "pickled.npz"),
    ("import-lnsp-articles-missing", lambda w: ["data", "import-lnsp", "--articles", w.bad("nope.npz"),
                                                "--sequences", str(w.data / "val.npz"), "--out", str(w.case / "o")],
     "nope.npz"),
    ("import-lnsp-wrong-dim", lambda w: ["data", "import-lnsp", "--articles", w.bad("articles8.npz"),
                                         "--sequences", str(w.data / "val.npz"), "--out", str(w.case / "o")],
     "D="),
    ("data-windows-dir", lambda w: ["data", "windows", w.bad("a_dir"), "--out", str(w.case / "w")], "a_dir"),
    ("data-report-garbage", lambda w: ["data", "report", w.bad("garbage.npz")], "garbage.npz"),
    # issue 20.7: numbers and shapes nobody bounded
    ("override-threads-absurd", lambda w: w.run("train.threads=100000"), "train.threads"),
    ("override-threads-over-cpus", lambda w: w.run(f"train.threads={_cpus() + 1}"), "usable CPUs"),
    ("override-epochs-overflow", lambda w: w.run("train.epochs=99999999999999999999999"), "train.epochs"),
    ("override-seed-overflow", lambda w: w.run("train.seed=99999999999999999999999"), "train.seed"),
    ("override-max-steps-negative", lambda w: w.run("train.max_steps=-1"), "train.max_steps"),
    ("override-d-model-huge", lambda w: w.run("model.d_model=100000000"), "model.d_model"),
    ("override-ramp-missing-fields", lambda w: w.run("loss.ramp=[{until=1}]"), "loss.ramp[0]: missing m_gap, frac"),
    ("override-ramp-frac", lambda w: w.run("loss.ramp=[{until=1, m_gap=0.1, frac=7}]"), "loss.ramp[0].frac"),
    ("override-batch-over-rows", lambda w: w.run("train.batch_size=1000000"), "train.batch_size"),
    ("model-beyond-memory", lambda w: w.run("model.kind=lstm", "model.hidden=1048576"), "parameters, which need"),
    ("name-5000-chars", lambda w: w.run("name=" + "n" * 5000), "5000 characters"),
    ("name-tab", lambda w: w.run("name=a\tb"), "name"),
    ("name-right-to-left-override", lambda w: w.run("name=evil\u202elive"), "name"),
    ("status-id-overflow", lambda w: ["status", "9" * 30, "--db", str(w.good)], "9" * 30),
    ("report-id-overflow", lambda w: ["report", "9" * 30, "--db", str(w.good)], "9" * 30),
    ("sweep-id-overflow", lambda w: ["sweep", "status", "9" * 30, "--db", str(w.good)], "9" * 30),
    ("sweep-seeds-overflow", lambda w: ["sweep", *w.run()[1:-3], "--seeds", "9" * 25, "--db", str(w.case / "s.db")],
     "--seeds"),
    ("sweep-parallel-overflow", lambda w: ["sweep", *w.run()[1:-3], "--parallel", "9" * 25,
                                           "--db", str(w.case / "s.db")], "--parallel"),
    ("synth-dim-huge", lambda w: ["data", "synth", "--out", str(w.case / "s.npz"), "--dim", "99999999999"], "--dim"),
    ("pause-timeout-nan", lambda w: ["pause", "1", "--timeout", "nan", "--db", str(w.good)], "--timeout"),
    ("stop-grace-negative", lambda w: ["stop", "1", "--grace", "-5", "--db", str(w.good)], "--grace"),
    ("report-bins-zero", lambda w: ["report", "1", "--bins", "0", "--db", str(w.good)], "--bins"),
    # issue 20.5 and 20.8: files that are not regular files, checkpoints that are not whole
    ("eval-checkpoint-empty", lambda w: ["eval", w.bad("empty.pt"), "--val", str(w.data / "val.npz"),
                                         "--articles", str(w.data / "articles.npz")], "empty file (0 bytes)"),
    ("eval-checkpoint-truncated", lambda w: ["eval", w.bad("cut.pt"), "--val", str(w.data / "val.npz"),
                                             "--articles", str(w.data / "articles.npz")], "truncated"),
    ("eval-checkpoint-dev-null", lambda w: ["eval", "/dev/null", "--val", str(w.data / "val.npz"),
                                            "--articles", str(w.data / "articles.npz")], "character device"),
    ("articles-dev-null", lambda w: w.run("data.articles=/dev/null"), "data.articles"),
    ("eval-json-dev-null", lambda w: ["eval", w.bad("whole.pt"), "--val", str(w.data / "val.npz"),
                                      "--articles", str(w.data / "articles.npz"), "--json", "/dev/null"], "/dev/null"),
    ("tui-db-dev-null", lambda w: ["tui", "--db", "/dev/null"], "/dev/null"),
    # issue 22.9: the next step in the line
    ("status-db-missing-says-how", lambda w: ["status", "--db", str(w.case / "none.db")], "export LVMD_DB="),
    ("status-unknown-name-close-match", lambda w: ["status", "godo", "--db", str(w.good)], "did you mean 'good'"),
    ("pause-finished-says-report", lambda w: ["pause", "1", "--db", str(w.good)], "`lvmd report 1`"),
    ("tui-db-twice", lambda w: ["tui", w.bad("text.db"), "--db", str(w.good)], "two databases named"),
]


def _cpus() -> int:
    from lvmd.config import usable_cpus

    return usable_cpus()


def _tree(*folders: Path) -> set[str]:
    """Every path under the folders; SQLite's -wal/-shm companions come and go with connections."""
    return {str(p) for f in folders for p in f.rglob("*") if not p.name.endswith(("-wal", "-shm"))}


def _runs(db: Path) -> int | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def _call(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:         # argparse usage errors exit through SystemExit
        return int(exc.code or 0)


def test_the_table_is_large_enough():
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,argv,names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(world, capsys, name, argv, names):
    runs_before = {db: _runs(db) for db in (world.good, world.root / "future.db", world.root / "truncated.db")}
    before = _tree(world.root, world.data, world.case)
    args = argv(world)
    code = _call(args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code != 0, f"{name}: exit 0\n{out}\n{err}"
    assert len(lines) == 1, f"{name}: stderr is not one line:\n{err}"
    assert re.match(r"lvmd( [a-z-]+)*: error: ", lines[0]), lines[0]   # argparse names the verb
    assert names in lines[0], f"{name}: {lines[0]!r} does not name {names!r}"
    assert "Traceback" not in err and "Traceback" not in out
    assert not (Path(os.environ["XDG_STATE_HOME"]) / "lvmd").exists(), \
        f"{name}: handled as an unexpected error (a traceback was saved): {lines[0]}"
    assert _tree(world.root, world.data, world.case) <= before, f"{name}: files were left behind"
    for db, n in runs_before.items():
        assert _runs(db) == n, f"{name}: a run row appeared in {db.name}"
    assert _integrity(world.good) == "ok"


# -- cases that need another process --------------------------------------------------------------
def _without_dac_override() -> list[str]:
    """As root, permission bits do not bind: run the subprocess without the override
    capabilities (setpriv) so they do, as for any other user."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


def _lvmd_as_user(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*_without_dac_override(), sys.executable, "-m", "lvmd", *args], capture_output=True,
                          text=True, timeout=120, env=full_env)


def _one_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("lvmd: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in names:
        assert n in lines[0], lines[0]
    return lines[0]


def test_permissions_db_file_and_folder(world_root, tiny_data, tmp_path):
    root, good = world_root
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    secret = tmp_path / "secret.db"
    shutil.copy(good, secret)
    secret.chmod(0o000)
    locked = tmp_path / "locked"
    locked.mkdir()
    try:
        line = _one_line(_lvmd_as_user("status", "--db", str(secret), env=state), "secret.db")
        assert "permission" in line
        locked.chmod(0o500)
        line = _one_line(_lvmd_as_user("run", *data_overrides(tiny_data), *TINY_MODEL, "--quiet",
                                       "--db", str(locked / "x.db"), env=state), "locked")
        assert list(locked.iterdir()) == []
        ro_dir = tmp_path / "ro"          # a valid database we may only read (J): a reader works
        ro_dir.mkdir()
        shutil.copy(good, ro_dir / "r.db")
        (ro_dir / "r.db").chmod(0o444)
        ro_dir.chmod(0o555)
        for verb in (["status"], ["runs"], ["report", "1"], ["export", "1", "--table", "steps"]):
            proc = _lvmd_as_user(*verb, "--db", str(ro_dir / "r.db"), env=state)
            assert proc.returncode == 0 and not proc.stderr.strip(), (verb, proc.stderr)
        assert "good" in _lvmd_as_user("status", "--db", str(ro_dir / "r.db"), env=state).stdout
        # a verb that must write says so in one line
        _one_line(_lvmd_as_user("pause", "1", "--db", str(ro_dir / "r.db"), env=state), "r.db")
        assert sorted(p.name for p in ro_dir.iterdir()) == ["r.db"]
    finally:
        secret.chmod(0o600)
        locked.chmod(0o700)
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o755)
    assert not (tmp_path / "state").exists()


# -- issue 20.5: what is not a regular file, each in a real process with a deadline ------------------
# A FIFO blocks whoever opens it: these run as subprocesses with a timeout, so a regression is a
# failure, never a hung suite. Each case has a folder of its own with a fresh FIFO (and, as root,
# a device node made with mknod: a regression replaces that copy, never the machine's /dev/full).
# The /dev cases also check that SQLite left no `-journal` in /dev.
FILE_CASES: list[tuple[str, Callable[[Path, Path], list[str]], str]] = [
    ("run-db-fifo", lambda d, f: [*_run_args(d), "--db", str(f / "fifo")], "FIFO"),
    ("run-db-dev-null", lambda d, f: [*_run_args(d), "--db", "/dev/null"], "/dev/null"),
    ("run-db-dev-full", lambda d, f: [*_run_args(d), "--db", "/dev/full"], "/dev/full"),
    ("status-db-fifo", lambda d, f: ["status", "--db", str(f / "fifo")], "FIFO"),
    ("status-db-dev-full", lambda d, f: ["status", "--db", "/dev/full"], "/dev/full"),
    ("pause-db-fifo", lambda d, f: ["pause", "1", "--db", str(f / "fifo")], "FIFO"),
    ("tui-db-fifo", lambda d, f: ["tui", str(f / "fifo"), "--readonly"], "FIFO"),
    ("config-fifo", lambda d, f: ["run", str(f / "fifo"), *_run_args(d)[1:], "--db", str(f / "x.db")], "FIFO"),
    ("train-fifo", lambda d, f: [*_run_args(d), f"data.train={f / 'fifo'}", "--db", str(f / "x.db")], "data.train"),
    ("val-fifo", lambda d, f: [*_run_args(d), f"data.val={f / 'fifo'}", "--db", str(f / "x.db")], "data.val"),
    ("eval-checkpoint-fifo", lambda d, f: ["eval", str(f / "fifo"), "--val", str(d / "val.npz"),
                                           "--articles", str(d / "articles.npz")], "FIFO"),
    ("data-report-fifo-npz", lambda d, f: ["data", "report", str(d), "--max-samples", "20"], ""),
    ("export-out-fifo-force", lambda d, f: ["export", "1", "--table", "steps", "--out", str(f / "fifo"), "--force",
                                            "--db", str(f / "good.db")], "FIFO"),
    ("export-out-device-force", lambda d, f: ["export", "1", "--table", "steps", "--out", str(_device(f)),
                                              "--force", "--db", str(f / "good.db")], "character device"),
]


def _run_args(data: Path) -> list[str]:
    return ["run", *data_overrides(data), *TINY_MODEL, "train.epochs=1", "--quiet"]


def _device(folder: Path) -> Path:
    """A twin of /dev/full (char 1,7) in `folder`; only root may make one."""
    path = folder / "full-twin"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("mknod needs root")
    return path


def _kind(path: Path) -> str:
    mode = os.lstat(path).st_mode
    return "fifo" if stat.S_ISFIFO(mode) else "chr" if stat.S_ISCHR(mode) else "other"


@pytest.mark.parametrize("name,argv,names", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_what_is_not_a_regular_file_is_one_line_and_never_hangs(world_root, tiny_data, tmp_path, name, argv, names):
    root, good = world_root
    folder = tmp_path / "case"
    folder.mkdir()
    os.mkfifo(folder / "fifo")
    shutil.copy(good, folder / "good.db")
    args = argv(tiny_data, folder)
    if name == "data-report-fifo-npz":        # a data folder whose val.npz is a FIFO
        data = folder / "data"
        shutil.copytree(tiny_data, data)
        (data / "val.npz").unlink()
        os.mkfifo(data / "val.npz")
        args, names = ["data", "report", str(data), "--max-samples", "20"], "val.npz"
    kinds = {p: _kind(p) for p in folder.rglob("*") if not p.name.startswith("good.db")}
    before = {str(p) for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm"))}
    journals = {j: os.path.lexists(j) for j in ("/dev/null-journal", "/dev/full-journal", "/dev/null-wal")}
    state = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-m", "lvmd", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(state)})
    line = _one_line(proc, names)
    assert not state.exists(), f"{name}: handled as an unexpected error: {line}"
    assert {str(p) for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm"))} <= before, name
    assert {p: _kind(p) for p in kinds} == kinds, f"{name}: a FIFO or device node was replaced"
    assert {j: os.path.lexists(j) for j in journals} == journals, f"{name}: SQLite left a file in /dev"
