"""`lvmd report` and its verdict: a clean fixture run is promoted, and each criterion of the
seed, violated alone, flips it to iterate. Plus the text charts and the CLI on a real tiny run."""
from __future__ import annotations

import json

import pytest
from conftest import TINY_MODEL, data_overrides, lvmd

from lvmd.cli.main import main
from lvmd.eval.verdict import (ITERATE, PROMOTE, Thresholds, build_report, expected_band, signed_bar,
                         sparkline)
from store.db import connect
from store.evals import insert_eval
from store.report import open_readonly, report_data
from store.runs import create_run, update_run
from store.schema import STEP_COLUMNS, STEP_METRICS

STEPS_PER_EPOCH = 100
GOOD_MARGINS = (-0.035, -0.05, 0.04)          # e1 within its band, e2 below, e3 above (and positive)


def add_good_run(conn, name: str = "good") -> int:
    """A run that meets every criterion: ρ ≤ cap (pre-cap above it: attenuated), no skips,
    pos̄ > 0, ratio -0.05 → 0 → +0.05 by epoch, margin +0.04, val cos .5, R@5 .8, 4/5 gates."""
    run = create_run(conn, name=name, preset="v2.1", compat="none", config={"loss": {"rho_cap": 0.25}}, data={},
                     total_epochs=3)
    update_run(conn, run, state="finished")
    rows = []
    for epoch in range(3):
        for i in range(STEPS_PER_EPOCH):
            step = epoch * STEPS_PER_EPOCH + i + 1
            m = {k: 0.1 for k in STEP_METRICS} | {
                "rho": 0.1 + 0.1 * (i % 2), "rho_pre": 0.3 if i == 0 else 0.2, "pos": 0.3, "neg": 0.25,
                "ratio": -0.05 + 0.05 * epoch + (0.01 if i % 2 else -0.01), "skip": 0.0,
                "attenuate": float(i == 0)}
            rows.append((run, step, epoch, float(step), 5e-4, *(m[k] for k in STEP_METRICS)))
    conn.executemany(f"INSERT INTO steps ({', '.join(STEP_COLUMNS)}) VALUES ({', '.join('?' * len(STEP_COLUMNS))})",
                     rows)
    for epoch, margin in enumerate(GOOD_MARGINS):
        conn.execute("INSERT INTO epochs (run_id, epoch, step, val_margin, val_cos, r_at_5) VALUES (?,?,?,?,?,?)",
                     (run, epoch, (epoch + 1) * STEPS_PER_EPOCH, margin, 0.5, 0.8))
    gates = [{"split": "VAL", "gate": g, "metric": "x", "value": 1.0, "threshold": 0.5, "op": ">=",
              "passed": int(g != "E")} for g in "ABCDE"]
    insert_eval(conn, run, {"epoch": 2, "step": 300, "trigger": "epoch", "gates_passed": 4, "gates_total": 5},
                gates, [("VAL", "r_at_5", 0.8)])
    return run


@pytest.fixture
def good_db(tmp_path):
    db = tmp_path / "good.db"
    conn = connect(db)
    add_good_run(conn)
    conn.close()
    return db


def judge(db, th: Thresholds = Thresholds(), run_id: int = 1):
    conn = open_readonly(db)
    try:
        return build_report(report_data(conn, run_id), th)
    finally:
        conn.close()


def sql(db, statement: str, *args) -> None:
    conn = connect(db)
    conn.execute(statement, args)
    conn.close()


def failed(report) -> set[str]:
    return {c.key for c in report.guardrails + report.criteria if c.passed is not True}


def test_a_run_meeting_every_criterion_is_promoted(good_db):
    report = judge(good_db)
    assert report.verdict == PROMOTE and report.reasons == [] and failed(report) == set()
    assert [c.key for c in report.guardrails] == ["rho", "skips", "pos", "ratio", "collapse"]
    assert [c.key for c in report.criteria] == ["margin", "r_at_5", "val_cos", "gates"]
    assert "attenuated" in report.guardrails[0].answer             # pre-cap ρ went over: said, not failed


VIOLATIONS = [
    ("rho", "UPDATE steps SET rho = 0.26 WHERE step = 150"),
    ("skips", "UPDATE steps SET skip = 1 WHERE step IN (10, 20, 30)"),            # 3 of 300 = 1 %
    ("pos", "UPDATE steps SET pos = -0.001 WHERE step = 77"),
    ("ratio", "UPDATE steps SET ratio = -0.01 WHERE epoch = 2"),                   # last epoch not positive
    ("ratio", "UPDATE steps SET ratio = ratio + 0.2 WHERE epoch = 0"),             # positive but fell
    ("collapse", "INSERT INTO events (run_id, t, kind, detail) VALUES (1, 0, 'collapse_warning', '{}')"),
    ("margin", "UPDATE epochs SET val_margin = -0.001 WHERE epoch = 2"),
    ("r_at_5", "UPDATE epochs SET r_at_5 = 0.69 WHERE epoch = 2"),
    ("val_cos", "UPDATE epochs SET val_cos = 0.47 WHERE epoch = 2"),
    ("gates", "UPDATE evals SET gates_passed = 2"),
]


@pytest.mark.parametrize("key, statement", VIOLATIONS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(VIOLATIONS)])
def test_each_violated_criterion_alone_flips_the_verdict(good_db, key, statement):
    sql(good_db, statement)
    report = judge(good_db)
    assert report.verdict == ITERATE
    assert failed(report) == {key}
    assert len(report.reasons) == 1


def test_unmeasured_criteria_do_not_promote(good_db):
    sql(good_db, "DELETE FROM gates")
    sql(good_db, "DELETE FROM eval_metrics")
    sql(good_db, "DELETE FROM evals")
    sql(good_db, "UPDATE epochs SET r_at_5 = NULL")
    report = judge(good_db)
    assert report.verdict == ITERATE and failed(report) == {"r_at_5", "gates"}
    assert {c.key: c.passed for c in report.criteria}["gates"] is None
    assert any("not measured" in r for r in report.reasons)


def test_r_at_5_falls_back_to_the_latest_5cat(good_db):
    sql(good_db, "UPDATE epochs SET r_at_5 = NULL")
    assert judge(good_db).verdict == PROMOTE                        # 5CAT VAL R@5 = 0.8
    sql(good_db, "UPDATE eval_metrics SET value = 0.6 WHERE name = 'r_at_5'")
    report = judge(good_db)
    assert failed(report) == {"r_at_5"} and "5CAT VAL" in report.reasons[0]


def test_thresholds_are_parameters(good_db):
    sql(good_db, "UPDATE steps SET skip = 1 WHERE step IN (10, 20, 30)")
    assert judge(good_db).verdict == ITERATE
    assert judge(good_db, Thresholds(skip_share_max=0.05)).verdict == PROMOTE
    assert failed(judge(good_db, Thresholds(skip_share_max=0.05, rho_cap=0.15))) == {"rho"}
    assert failed(judge(good_db, Thresholds(skip_share_max=0.05, val_cos_min=0.6, gates_min=5))) == {"val_cos", "gates"}


def test_rho_is_held_to_the_cap_of_each_ramp_stage(good_db):
    """v2.2's caps rise by stage (.35, then .50): ρ .40 in epoch 1 is within its cap; the same
    ρ in epoch 0 is not. A --rho-cap given by hand applies to every step."""
    staged = {"rho_cap": 0.25, "ramp": [{"until": 1, "m_gap": 0.02, "frac": 0.15, "rho_cap": 0.35},
                                        {"until": 10**9, "m_gap": 0.04, "frac": 0.25, "rho_cap": 0.50}]}
    sql(good_db, "UPDATE runs SET config_json = ?", json.dumps({"loss": staged}))
    sql(good_db, "UPDATE steps SET rho = 0.40 WHERE step = 150")             # epoch 1: cap .50
    report = judge(good_db)
    rho = report.guardrails[0]
    assert report.verdict == PROMOTE and rho.passed and rho.question == "did ρ ever exceed the cap (0.35–0.5 by ramp stage)?"
    assert report.thresholds["rho_cap"] == 0.5
    assert failed(judge(good_db, Thresholds(rho_cap=0.25))) == {"rho"}       # the seed's 0.25 for every step
    sql(good_db, "UPDATE steps SET rho = 0.40 WHERE step = 50")              # epoch 0: cap .35
    rho = judge(good_db).guardrails[0]
    # the attenuated steps are the trainer's flags (one per epoch here), not re-judged against the new caps
    assert not rho.passed and rho.answer == "yes: max ρ 0.400 in 1 step; before the cap ρ went over it in 3 steps (attenuated)"


def test_a_failed_run_is_not_promoted(good_db):
    sql(good_db, "UPDATE runs SET state = 'crashed'")
    report = judge(good_db)
    assert report.verdict == ITERATE and report.reasons == ["the run ended crashed"]


def test_margin_per_epoch_is_placed_against_the_expected_band(good_db):
    rows = judge(good_db).margin_by_epoch
    assert [(r["epoch"], r["margin"], r["position"]) for r in rows] == [
        (1, -0.035, "within"), (2, -0.05, "below"), (3, 0.04, "above")]
    assert [expected_band(e) for e in (1, 2, 3, 5, 6, 8, 9, 12, 30)] == [
        (-0.04, -0.03), (-0.04, -0.03), (-0.03, -0.01), (-0.03, -0.01), (-0.01, 0.02), (-0.01, 0.02),
        (0.02, 0.05), (0.02, 0.05), (0.02, 0.05)]


def test_text_charts():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([0.5, None, 0.5]) == "▁ ▁"
    assert sparkline([0.0, 2.0], lo=0.0, hi=1.0) == "▁█"                  # clipped to the given scale
    assert sparkline([]) == ""
    assert signed_bar(-0.05, 0.05, width=4) == "████│    "
    assert signed_bar(0.025, 0.05, width=4) == "    │██  "
    assert signed_bar(None, 0.05, width=2) == "  │  "


# -- the CLI on a real run ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_db(tiny_data, tmp_path_factory):
    db = tmp_path_factory.mktemp("report_real") / "lvmd.db"
    lvmd("run", "--db", str(db), "--quiet", *TINY_MODEL, *data_overrides(tiny_data, articles=True),
         "train.epochs=2", "train.device=cpu", "name=tiny", check=True)
    return db


def test_report_text_answers_the_questions(real_db, capsys):
    assert main(["report", "1", "--db", str(real_db), "--bins", "20"]) == 0
    out = capsys.readouterr().out
    for text in ("did ρ ever exceed the cap (0.25)?", "how many skips", "did pos̄ ever go negative?",
                 "did ratio climb to positive?", "any collapse warnings?", "R@5 ≥ 0.70", "val cos ≥ 0.48",
                 "5CAT gates ≥ 3/5", "Margin per epoch", "  e1 ", "  e2 ", "Curves over the run", "Verdict: "):
        assert text in out, text
    conn = open_readonly(real_db)
    steps = conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
    conn.close()
    rho_line = next(line for line in out.splitlines() if line.lstrip().startswith("ρ "))
    assert sum(ch in "▁▂▃▄▅▆▇█" for ch in rho_line) == min(20, steps)     # one block per bin


def test_report_json_and_strict_exit(real_db, capsys):
    assert main(["report", "tiny", "--db", str(real_db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["name"] == "tiny" and report["run"]["epochs_done"] == 2
    assert report["verdict"] in (PROMOTE, ITERATE)
    assert report["thresholds"]["rho_cap"] == 0.25
    assert len(report["margin_by_epoch"]) == 2 and report["gates"]       # 5CAT ran at each epoch end
    # a two-epoch toy model cannot reach R@5 .70: iterate, so --strict exits 2
    assert report["verdict"] == ITERATE
    assert main(["report", "1", "--db", str(real_db), "--strict"]) == 2


def test_runs_table(real_db, capsys):
    assert main(["runs", "--db", str(real_db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["id", "name", "preset", "state"] and len(lines) == 3
    assert lines[2].split()[:5] == ["1", "tiny", "v2.1", "finished", "2/2"]
    assert main(["runs", "--db", str(real_db), "--json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [1]


def test_compare_puts_runs_side_by_side(tmp_path, capsys):
    db = tmp_path / "two.db"
    conn = connect(db)
    add_good_run(conn, "good")
    add_good_run(conn, "worse")
    conn.execute("UPDATE epochs SET val_margin = -0.02 WHERE run_id = 2 AND epoch = 2")
    conn.close()
    assert main(["compare", "good", "2", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split("  ")[0].strip(): line.split()[-2:] for line in lines[2:]}
    assert lines[0].split() == ["run", "1", "2"]
    assert list(table) == ["name", "preset", "state", "epoch", "steps", "last margin", "best margin", "val cos",
                           "R@5", "5CAT gates", "skip share", "ρ max", "ρ pre-cap max", "steps attenuated",
                           "min pos̄", "ratio first → last", "collapse warnings", "verdict"]
    assert table["name"] == ["good", "worse"] and table["last margin"] == ["+0.0400", "-0.0200"]
    assert table["steps"] == ["300", "300"] and table["5CAT gates"] == ["4/5", "4/5"]
    assert table["verdict"] == [PROMOTE, ITERATE]
    assert main(["compare", "1", "2", "--db", str(db), "--json"]) == 0
    assert [r["verdict"] for r in json.loads(capsys.readouterr().out)] == [PROMOTE, ITERATE]


@pytest.mark.parametrize("table, count_sql", [
    ("steps", "SELECT COUNT(*) FROM steps WHERE run_id = 1"),
    ("events", "SELECT COUNT(*) FROM events WHERE run_id = 1"),
    ("epochs", "SELECT COUNT(*) FROM epochs WHERE run_id = 1"),
    ("gates", "SELECT COUNT(*) FROM gates g JOIN evals e ON e.id = g.eval_id WHERE e.run_id = 1"),
    ("evals", "SELECT COUNT(*) FROM evals WHERE run_id = 1"),
    ("eval_metrics", "SELECT COUNT(*) FROM eval_metrics m JOIN evals e ON e.id = m.eval_id WHERE e.run_id = 1"),
])
def test_export_writes_every_row_of_the_run(real_db, tmp_path, table, count_sql, capsys):
    conn = open_readonly(real_db)
    expected = conn.execute(count_sql).fetchone()[0]
    conn.close()
    assert expected > 0
    out = tmp_path / f"{table}.csv"
    assert main(["export", "1", "--db", str(real_db), "--table", table, "--out", str(out)]) == 0
    assert f"wrote {expected} {table} rows" in capsys.readouterr().err
    import csv
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == expected and rows[0]["run_id"] == "1"
    assert main(["export", "tiny", "--db", str(real_db), "--table", table, "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == expected and set(records[0]) == set(rows[0])


def test_export_steps_keeps_the_values(real_db, capsys):
    assert main(["export", "1", "--db", str(real_db), "--table", "steps", "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    conn = open_readonly(real_db)
    rho = [r[0] for r in conn.execute("SELECT rho FROM steps WHERE run_id = 1 ORDER BY step")]
    conn.close()
    assert [r["rho"] for r in records] == rho
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)


@pytest.mark.parametrize("argv", [["report", "99"], ["report", "nosuchname"], ["compare", "1", "99"],
                                  ["export", "99", "--table", "steps"]])
def test_unknown_run_is_a_one_line_error(real_db, argv, capsys):
    assert main([*argv, "--db", str(real_db)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lvmd: error: ") and ("99" in err[0] or "nosuchname" in err[0])


def test_unknown_run_exits_nonzero_from_the_shell(real_db, tmp_path):
    proc = lvmd("report", "42", "--db", str(real_db))
    assert proc.returncode == 1 and proc.stderr.strip().startswith("lvmd: error: no run 42 in this database (")
    proc = lvmd("runs", "--db", str(tmp_path / "missing.db"))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "no such database" in proc.stderr


def test_a_run_with_nothing_recorded_yet(tmp_path, capsys):
    db = tmp_path / "empty.db"
    conn = connect(db)
    create_run(conn, name="new", preset="v2.1", compat="none", config={"loss": {"rho_cap": 0.25}}, data={})
    conn.close()
    report = judge(db)
    assert report.verdict == ITERATE and report.notes == ["the run is starting: this verdict is provisional"]
    assert {c.passed for c in report.guardrails if c.key != "collapse"} == {None}
    assert main(["report", "new", "--db", str(db)]) == 0
    assert "no epoch finished yet" in capsys.readouterr().out
