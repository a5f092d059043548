"""`lvmd predict` on an oracle: an amn model whose residual is zeroed predicts the mean of its
context, and the bank's article 0 is built so that its chunk 5 IS that mean. The real checkpoint
loader, the nearest-chunk search and the CLI must then put chunk 5 first."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import lvmd

from lvmd.train import checkpoint

from lvmd.data import formats as data

from lvmd.eval import predict
from lvmd.cli.main import main
from lvmd.config import config_from_dict, config_to_dict
from lvmd.errors import UserError
from lvmd.train.models import build_model
from store.db import connect
from store.runs import create_run, update_run

DIM, ARTICLES, CHUNKS = 16, 4, 8
NEXT_ROW = 5            # article 0, chunk 5: the mean of chunks 0..4


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory):
    rng = np.random.default_rng(7)
    vectors = _unit(rng.standard_normal((ARTICLES * CHUNKS, DIM))).astype(np.float32)
    vectors[NEXT_ROW] = _unit(vectors[:5].mean(0))
    arts = data.Articles(vectors, np.repeat(np.arange(ARTICLES), CHUNKS), np.tile(np.arange(CHUNKS), ARTICLES),
                         np.array([f"article {a} sentence {c}" for a in range(ARTICLES) for c in range(CHUNKS)]))
    path = tmp_path_factory.mktemp("predict") / "bank.npz"
    data.save_articles(path, arts)
    return path


@pytest.fixture(scope="module")
def oracle_checkpoint(bank_path):
    """An lvmd checkpoint of an amn model that outputs the mean of its context."""
    cfg = config_from_dict({"model": {"kind": "amn", "hidden": 16, "amn_d": 8},
                            "data": {"articles": str(bank_path)}})
    model = build_model(cfg.model, DIM)
    last = model.residual_net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    path = bank_path.parent / "runs" / "1" / "best.pt"
    checkpoint.save(path, {"config_json": json.dumps(config_to_dict(cfg)), "dim": DIM, "context_len": 5,
                           "model_type": "amn", "model_state": model.state_dict(), "epoch": 1})
    return path


@pytest.fixture(scope="module")
def run_db(bank_path, oracle_checkpoint):
    """A database whose run 1 owns the oracle checkpoint and names the bank in its config."""
    db = bank_path.parent / "lvmd.db"
    conn = connect(db)
    run = create_run(conn, name="oracle", preset="v2.1", compat="none",
                     config={"data": {"articles": str(bank_path)}}, data={})
    update_run(conn, run, out_dir=str(oracle_checkpoint.parent), state="finished")
    # what lvmd writes for a run of its own: the folder's run.json and the checkpoint's identity
    from lvmd.run.identity import run_identity
    from lvmd.run.runlock import claim_folder
    from store.runs import database_id, get_run

    claim_folder(oracle_checkpoint.parent, {"db": str(db.resolve()), "db_id": database_id(conn), "run_id": run})
    state = checkpoint.load(oracle_checkpoint)
    checkpoint.save(oracle_checkpoint, {**state, "identity": run_identity(get_run(conn, run), database_id(conn))})
    conn.close()
    return db


def test_the_oracle_checkpoint_puts_the_true_next_chunk_first(bank_path, oracle_checkpoint):
    bank = data.load_articles(bank_path)
    predictor, info = predict.load_checkpoint_predictor(oracle_checkpoint)
    result = predict.predict(predictor, bank, rows=predict.parse_context("0,1,2,3,4", bank), k=5)
    top = result["neighbours"][0]
    assert info["kind"] == "amn"
    assert (top["row"], top["article"], top["chunk"], top["role"]) == (NEXT_ROW, 0, 5, "next")
    assert top["cos"] == pytest.approx(1.0, abs=1e-5) and top["text"] == "article 0 sentence 5"
    assert result["true_next"] == {"row": NEXT_ROW, "rank": 1, "cos": pytest.approx(1.0, abs=1e-5)}
    assert len(result["neighbours"]) == 5
    cos = [n["cos"] for n in result["neighbours"]]
    assert cos == sorted(cos, reverse=True)


def test_cli_with_a_checkpoint_and_article_chunk_ids(bank_path, oracle_checkpoint, capsys):
    argv = ["predict", "--checkpoint", str(oracle_checkpoint), "--articles", str(bank_path),
            "--context", "0:0,0:1,0:2,0:3,0:4", "--top-k", "3"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["context_rows"] == [0, 1, 2, 3, 4] and len(result["neighbours"]) == 3
    assert result["neighbours"][0]["row"] == NEXT_ROW
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "true next chunk: row 5 ranks 1 of 32" in out
    first = out.splitlines()[out.splitlines().index(next(l for l in out.splitlines() if l.startswith("rank"))) + 2]
    assert first.split()[:5] == ["1", "1.000", "5", "0:5", "next"] and "article 0 sentence 5" in first


def test_cli_with_a_run_uses_its_checkpoint_and_bank(run_db, capsys):
    assert main(["predict", "--run", "oracle", "--db", str(run_db), "--context", "0,1,2,3,4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["neighbours"][0]["row"] == NEXT_ROW and result["checkpoint"].endswith("best.pt")
    assert main(["predict", "--run", "1", "--db", str(run_db), "--which", "last", "--context", "0,1,2,3,4"]) == 1
    assert "no last checkpoint" in capsys.readouterr().err


def test_an_injected_predictor_drives_the_search(bank_path):
    bank = data.load_articles(bank_path)
    result = predict.predict(lambda ctx: 3 * bank.vectors[17], bank, rows=np.array([8, 9, 10]), k=100)
    assert len(result["neighbours"]) == len(bank)                       # k beyond the bank: all of it
    assert result["neighbours"][0]["row"] == 17 and result["neighbours"][0]["cos"] == pytest.approx(1.0, abs=1e-5)
    roles = {n["row"]: n["role"] for n in result["neighbours"]}
    assert [roles[r] for r in (8, 9, 10, 11)] == ["context", "context", "context", "next"]
    assert result["true_next"]["row"] == 11
    at_end = predict.predict(lambda ctx: ctx[-1], bank, rows=np.array([5, 6, 7]), k=1)   # article 0 ends at 7
    assert at_end["true_next"] is None and at_end["neighbours"][0]["row"] == 7


def test_context_vectors_not_in_the_bank(bank_path):
    bank = data.load_articles(bank_path)
    result = predict.predict(lambda ctx: ctx.mean(0), bank, vectors=bank.vectors[:5], k=2)
    assert result["context_rows"] is None and result["neighbours"][0]["row"] == NEXT_ROW
    with pytest.raises(UserError, match="D=16"):
        predict.predict(lambda ctx: ctx.mean(0), bank, vectors=np.ones((5, 8), np.float32))


@pytest.mark.parametrize("spec, message", [
    ("0,1,2,3,32", "row 32 is outside the articles bank"),
    ("0,1,2,3,-1", "row -1 is outside the articles bank"),
    ("0:0,0:1,9:0", "article 9 has no chunk 0"),
    ("0:0,0:99", "article 0 has no chunk 99"),
    ("0,1,x", "'x' is neither a row number nor ARTICLE:CHUNK"),
    (" , ", "give chunk ids"),
])
def test_context_ids_outside_the_bank_are_clear_errors(bank_path, spec, message):
    with pytest.raises(UserError, match=message):
        predict.parse_context(spec, data.load_articles(bank_path))


def test_cli_errors_are_one_line(bank_path, oracle_checkpoint):
    proc = lvmd("predict", "--checkpoint", str(oracle_checkpoint), "--articles", str(bank_path),
                "--context", "0,1,2,3,40")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"lvmd: error: --context: row 40 is outside the articles bank {bank_path} (rows 0..31)"]
    proc = lvmd("predict", "--checkpoint", str(oracle_checkpoint), "--articles", str(bank_path),
                "--text", "one", "--text", "two")
    assert proc.returncode == 1 and "no known embedder gives D=16" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_context_of_the_wrong_length_is_refused(bank_path, oracle_checkpoint):
    """The oracle was trained on 5-chunk contexts: three chunks are a mistake, said in one line."""
    proc = lvmd("predict", "--checkpoint", str(oracle_checkpoint), "--articles", str(bank_path), "--context", "1,2,3")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"lvmd: error: --context: 3 chunks given but {oracle_checkpoint} was trained on contexts of 5 chunks"]
