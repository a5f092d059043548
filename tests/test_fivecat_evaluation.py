"""The trainer's 5CAT glue (lvmd/eval/evaluator.py) and the SQL side (store/evals.py)."""
from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
import torch

from lvmd.data import formats as data
from lvmd.config import config_from_dict
from lvmd.errors import UserError
from lvmd.eval.evaluator import Evaluator
from lvmd.train.sink import ListSink
from store.db import connect
from store.evals import eval_metrics, evals_for_run, gates_for_eval, insert_eval, latest_eval
from store.runs import create_run
from store.writer import SqliteSink

D = 16


@pytest.fixture(scope="module")
def setup():
    arts = data.synth_articles(n_articles=24, min_chunks=12, max_chunks=18, dim=D, seed=7)
    ids = np.unique(arts.article_ids)
    val = data.build_windows(arts, article_subset=ids[:12])
    ood = data.build_windows(arts, article_subset=ids[12:])
    vecs = torch.from_numpy(arts.vectors)

    def oracle(x):  # the chunk after ctx[-1]: the true target
        return vecs[((x[:, -1] @ vecs.T).argmax(1) + 1).clamp(max=len(vecs) - 1)]

    return arts, val, ood, oracle


def cfg(**eval_keys):
    compat = eval_keys.pop("compat", "none")
    return config_from_dict({"compat": compat, "eval": {"max_samples": 150, "check_samples": 60, **eval_keys}})


def columns(table: str, tmp_path) -> set[str]:
    conn = connect(tmp_path / "schema.db")
    try:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    finally:
        conn.close()


def test_epoch_check_ranks_within_the_article(setup):
    arts, val, ood, oracle = setup
    ev = Evaluator(cfg(), val=val, ood=ood, articles=arts, ood_articles=None, sink=ListSink())
    assert ev.epoch_check(oracle) == {"r_at_1": 1.0, "r_at_5": 1.0, "mrr": 1.0}
    copy = ev.epoch_check(lambda x: x[:, -1])
    assert set(copy) == {"r_at_1", "r_at_5", "mrr"} and copy["r_at_1"] == 0.0 and 0 < copy["mrr"] < 1
    none = Evaluator(cfg(), val=val, ood=None, articles=None, ood_articles=None, sink=ListSink())
    assert none.epoch_check(oracle) == {}
    with pytest.raises(UserError, match="needs an articles file"):
        none.full(oracle, trigger="epoch", epoch=0, step=1)


def test_bad_data_and_profile_fail_when_the_evaluator_is_built(setup):
    arts, val, ood, _ = setup
    with pytest.raises(UserError, match="profile 'nope'"):
        Evaluator(cfg(profile="nope"), val=val, ood=ood, articles=arts, ood_articles=None, sink=ListSink())
    other = data.synth_articles(n_articles=2, dim=8)
    with pytest.raises(UserError, match="has D=16 but"):
        Evaluator(cfg(), val=val, ood=ood, articles=arts, ood_articles=other, sink=ListSink())


def test_full_writes_every_number_through_the_sink(setup, tmp_path):
    arts, val, ood, oracle = setup
    sink = ListSink()
    ev = Evaluator(cfg(), val=val, ood=ood, articles=arts, ood_articles=arts, sink=sink)
    summary = ev.full(oracle, trigger="epoch", epoch=2, step=40)
    (row, gates, metrics), = sink.evals
    assert set(row) == columns("evals", tmp_path) - {"id", "run_id"}
    assert (row["epoch"], row["step"], row["trigger"], row["splits"]) == (2, 40, "epoch", "VAL,OOD")
    assert (row["profile"], row["compat"], row["max_samples"], row["gates_total"]) == ("gtr-t5", "none", 150, 5)
    assert row["finished_at"] >= row["started_at"] and row["error"] is None
    assert all(set(g) == columns("gates", tmp_path) - {"eval_id"} for g in gates)
    names = {(m["split"], m["name"]) for m in metrics}
    for split in ("VAL", "OOD"):
        want = ["m_-3", "m_-2", "m_-1", "m_0", "m_+1", "m_+2", "m_+3", "margin", "r_at_1", "r_at_5", "mrr",
                "delta_shuffled", "delta_reversed", "delta_leave_one_out", "delta_repeat_pad",
                "delta_cross_article", "rollout", *[f"rollout_h{h}" for h in range(1, 6)],
                *[f"bin_{b}_{s}" for b in ("low", "normal", "high") for s in ("n", "mean")]]
        assert {(split, n) for n in want} <= names
    assert ("VAL-OOD", "normal_delta") in names
    assert summary == {"eval_id": 1, "gates_passed": row["gates_passed"], "gates_total": 5,
                       "verdict_3of5": bool(row["verdict_3of5"]), "verdict_all5": bool(row["verdict_all5"]),
                       "gates": summary["gates"], "margin": summary["margin"], "r_at_5": {"VAL": 1.0, "OOD": 1.0}}
    assert summary["margin"]["VAL"] > 0 and summary["gates"]["A"]
    lnsp = Evaluator(cfg(compat="lnsp"), val=val, ood=ood, articles=arts, ood_articles=None, sink=ListSink())
    assert lnsp.full(oracle, trigger="command", epoch=2, step=40)["margin"]["VAL"] < 0  # the original's "+1"


def test_sqlite_round_trip_keeps_nan_as_null(setup, tmp_path):
    arts, val, ood, oracle = setup
    db = tmp_path / "lvmd.db"
    conn = connect(db)
    run_id = create_run(conn, name="t", preset="v2.1", compat="none", config={}, data={})
    sink = SqliteSink(db, run_id, flush_seconds=0.05)
    try:
        ev = Evaluator(cfg(), val=val, ood=ood, articles=arts, ood_articles=None, sink=sink)
        first = ev.full(oracle, trigger="epoch", epoch=0, step=10)
        second = ev.full(lambda x: x[:, -1], trigger="epoch", epoch=1, step=20)
    finally:
        sink.close()
    latest = latest_eval(conn, run_id)
    assert latest["id"] == second["eval_id"] != first["eval_id"] and latest["epoch"] == 1
    assert [e["id"] for e in evals_for_run(conn, run_id)] == [first["eval_id"], second["eval_id"]]
    gates = gates_for_eval(conn, first["eval_id"])
    assert len(gates) == 33 and gates[0]["gate"] == "A" and gates[0]["passed"] in (0, 1)   # 25 + 4 sample counts a split
    rows = {(m["split"], m["name"]): m["value"] for m in eval_metrics(conn, first["eval_id"])}
    assert rows[("VAL", "r_at_1")] == 1.0 and rows[("VAL", "bin_normal_mean")] is None  # NaN -> NULL
    assert len(eval_metrics(conn, first["eval_id"], "VAL-OOD")) == 1
    assert latest_eval(conn, run_id + 1) is None
    conn.close()


def test_insert_eval_is_all_or_nothing_and_checks_columns(tmp_path):
    conn = connect(tmp_path / "lvmd.db")
    run_id = create_run(conn, name="t", preset="v2.1", compat="none", config={}, data={})
    with pytest.raises(ValueError, match="unknown column 'verdict'"):
        insert_eval(conn, run_id, {"verdict": 1}, [], [])
    bad_gate = {"split": "VAL", "gate": None, "metric": "m_0", "value": 1.0, "threshold": .5, "op": ">=", "passed": 1}
    with pytest.raises(sqlite3.IntegrityError):
        insert_eval(conn, run_id, {"epoch": 0}, [bad_gate], [("VAL", "m_0", 1.0)])
    assert conn.execute("SELECT count(*) FROM evals").fetchone()[0] == 0
    eval_id = insert_eval(conn, run_id, {"epoch": 0, "duration_s": np.float32(1.5)}, [{**bad_gate, "gate": "A"}],
                          [("VAL", "m_0", math.nan), {"split": "VAL", "name": "x", "value": np.float64(2)}])
    assert latest_eval(conn, run_id)["duration_s"] == 1.5
    assert eval_metrics(conn, eval_id) == [{"split": "VAL", "name": "m_0", "value": None},
                                           {"split": "VAL", "name": "x", "value": 2.0}]
    conn.close()




def test_full_reports_its_progress_as_events(setup):
    """Each 5CAT stage of each split becomes an eval_progress event: the TUI shows it while it runs."""
    arts, val, ood, oracle = setup
    sink = ListSink()
    Evaluator(cfg(), val=val, ood=ood, articles=arts, ood_articles=arts, sink=sink).full(
        oracle, trigger="epoch", epoch=2, step=40)
    progress = [e for e in sink.events if e["kind"] == "eval_progress"]
    assert [(e["detail"]["done"], e["detail"]["total"]) for e in progress] == [(i, 12) for i in range(1, 13)]
    assert [e["detail"]["stage"] for e in progress[:6]] == ["VAL predict", "VAL A offsets", "VAL B retrieval",
                                                           "VAL C ablations", "VAL D rollout", "VAL E bins"]
    assert progress[-1]["detail"]["stage"] == "OOD E bins" and {(e["step"], e["epoch"]) for e in progress} == {(40, 2)}
