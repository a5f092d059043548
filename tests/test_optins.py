"""Issue 20, item 1: opt-ins that run code come only from the command line of the command that
acts (or the config file it is given now), never from a stored field. One case per stored
field a command reads: sweeps.spec_json (its overrides, its config file), sweep_configs'
overrides, runs.config_json (of a sweep member and of a plain run) and run.json. The data is
a pickle that would create a marker folder if it were ever unpickled."""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL, lvmd, query, rows, synth_splits
from lvmd.data import formats as data

SHORT = [*TINY_MODEL, "train.batch_size=16", "train.epochs=1", "train.max_steps=3", "eval.fivecat_every=0"]


class Plant:
    """Unpickling it creates a folder: proof that code from the file ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path, 0o700, True))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return synth_splits(tmp_path_factory.mktemp("optins_data"), n_articles=20, min_chunks=12, max_chunks=16,
                        seed=5, val=0.25, ood=0.0)


def pickled(files: Path, out: Path, *, marker: Path | None = None) -> list[str]:
    """The original's format: ids only in a pickled `metadata` array (with a Plant if `marker`)."""
    out.mkdir(exist_ok=True)
    for split in ("train", "val"):
        s = data.load_sequences(files / f"{split}.npz")
        meta = np.array([Plant(str(marker)) if marker else {"article_index": int(a), "target_chunk_index": int(t)}
                         for a, t in zip(s.article_ids, s.target_indices)], dtype=object)
        np.savez(out / f"{split}.npz", context_sequences=s.contexts, target_vectors=s.targets, metadata=meta)
    return [f"data.train={out / 'train.npz'}", f"data.val={out / 'val.npz'}"]


def one_line_error(proc, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and lines and lines[-1].startswith("lvmd: error:"), proc.stderr
    assert all(w in lines[-1] for w in words), lines[-1]
    return lines[-1]


def sql(db, text: str, *params) -> None:
    conn = sqlite3.connect(db, timeout=10)
    conn.execute(text, params)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("field", ["spec overrides", "spec config file", "sweep_configs overrides"])
def test_sweep_resume_never_takes_allow_pickle_from_a_stored_field(field, files, tmp_path):
    from lvmd.run.sweep import SweepSpec
    from store.db import connect
    from store.sweeps import add_config, create_sweep

    marker = tmp_path / "code-ran"
    evil = pickled(files, tmp_path / "evil", marker=marker)
    config, overrides, config_overrides = None, [*evil, *SHORT], []
    if field == "spec overrides":
        overrides.append("data.allow_pickle=true")
    elif field == "spec config file":
        config = tmp_path / "sweep.toml"
        config.write_text("[data]\nallow_pickle = true\n")
    else:
        config_overrides = ["data.allow_pickle=true"]
    db = tmp_path / "s.db"
    conn = connect(db)
    spec = SweepSpec(config=str(config) if config else None, overrides=overrides, grid=[], seeds=[0])
    sweep_id = create_sweep(conn, name="planted", search="grid", config_path=str(config or ""),
                            spec=spec.to_dict(), parallel=1)
    add_config(conn, sweep_id, "base", config_overrides)
    conn.close()
    one_line_error(lvmd("sweep", "resume", str(sweep_id), "--db", str(db)), "pickled", "--allow-pickle",
                   f"lvmd sweep resume {sweep_id}")
    assert not marker.exists() and query(db, "SELECT count(*) FROM runs")[0][0] == 0
    assert query(db, "SELECT state FROM sweep_configs")[0][0] == "open"       # not failed: it needs the flag


def test_sweep_takes_allow_pickle_from_its_own_command_line_and_resume_names_who_needs_it(files, tmp_path):
    db = str(tmp_path / "s.db")
    benign = pickled(files, tmp_path / "benign")
    proc = lvmd("sweep", *benign, *SHORT, "--grid", "train.lr=0.001,0.002", "--seeds", "1", "--parallel", "1",
                "--allow-pickle", "--db", db, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [r["state"] for r in rows(db, "SELECT state FROM runs ORDER BY id")] == ["finished", "finished"]
    # a member left stopped, its stored config pointing at a planted pickle: resume names it
    marker = tmp_path / "code-ran"
    evil = pickled(files, tmp_path / "evil", marker=marker)
    cfg = json.loads(rows(db, "SELECT config_json FROM runs WHERE id = 2")[0]["config_json"])
    cfg["data"].update(train=evil[0].split("=", 1)[1], val=evil[1].split("=", 1)[1], allow_pickle=True)
    sql(db, "UPDATE runs SET state = 'stopped', config_json = ? WHERE id = 2", json.dumps(cfg))
    sql(db, "UPDATE sweep_configs SET state = 'open'")
    one_line_error(lvmd("sweep", "resume", "1", "--db", db), "runs 2 were created with --allow-pickle",
                   "lvmd sweep resume 1 --allow-pickle")
    assert not marker.exists() and rows(db, "SELECT state FROM runs WHERE id = 2")[0]["state"] == "stopped"


def test_resume_never_takes_allow_pickle_from_config_json_or_run_json(files, tmp_path):
    db = str(tmp_path / "r.db")
    benign = pickled(files, tmp_path / "benign")
    lvmd("run", *benign, *SHORT, "--allow-pickle", "--quiet", "--db", db, check=True)
    marker = tmp_path / "code-ran"
    evil = pickled(files, tmp_path / "evil", marker=marker)
    run = rows(db, "SELECT * FROM runs WHERE id = 1")[0]
    cfg = json.loads(run["config_json"])
    cfg["data"].update(train=evil[0].split("=", 1)[1], val=evil[1].split("=", 1)[1], allow_pickle=True)
    sql(db, "UPDATE runs SET state = 'stopped', config_json = ? WHERE id = 1", json.dumps(cfg))
    owner = Path(run["out_dir"], "run.json")
    owner.write_text(json.dumps({**json.loads(owner.read_text()), "allow_pickle": True,
                                 "data": {"allow_pickle": True}}))
    # its checkpoint's identity already refuses the edited config ...
    one_line_error(lvmd("resume", "1", "--allow-data-change", "--db", db), "last.pt: its config", "not used")
    for name in ("last.pt", "best.pt"):                 # ... so as a run that died before its first one
        Path(run["out_dir"], name).unlink(missing_ok=True)
    for how in (["--foreground", "--quiet"], []):
        one_line_error(lvmd("resume", "1", *how, "--allow-data-change", "--db", db), "pickled", "--allow-pickle")
        assert not marker.exists()
        assert rows(db, "SELECT state FROM runs WHERE id = 1")[0]["state"] in ("stopped", "crashed")
