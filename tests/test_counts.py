"""One definition of every count (issue 22 item 2): the trainer's stored flags (attenuate, skip)
are the facts, ρ over its cap is judged by the guardrail's one rule (lvmd/train/rho_cap.py), and
every surface (the views, `lvmd compare`, `lvmd report`, `lvmd export`, the store readers the TUI
draws from, the epochs rows) counts the same. The runs sit at the edge the issue found: ρ_pre one
float32 step over 0.25 (0.2500000298), which the old trainer flagged and the old views did not."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import struct

import pytest
import torch
from conftest import TINY_MODEL, data_overrides, lvmd

from lvmd.cli.main import main
from lvmd.train import rho_cap
from lvmd.train.guardrails import adaptive_lambda
from store import reader, series as step_series
from store.db import connect
from store.report import open_readonly
from store.runs import create_run, update_run
from store.schema import STEP_COLUMNS, STEP_METRICS
from store.views import RHO_CAP_RTOL_DIVISOR


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_step(x: float, k: int) -> float:
    """The float32 k steps above (k > 0) or below a positive float32 value."""
    return struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", x))[0] + k))[0]


CAP = 0.25
EDGE = f32_step(CAP, 1)                  # 0.2500000298023224: the ρ_pre
OVER = f32(CAP * (1 + 2 ** -19))         # a real overshoot, twice the tolerance


# -- the rule --------------------------------------------------------------------------------------
def test_the_guardrail_does_not_attenuate_a_rho_one_float32_step_over_its_cap():
    # mse·frac/Ldir·Ldir/mse rounds to one float32 step over frac = cap (found by search; 4 % of steps do)
    mse, l_dir = torch.tensor(0.006095072254538536), torch.tensor(0.04260433465242386)
    lam, rho, rho_pre, att = adaptive_lambda(mse, l_dir, CAP, lam_min=1e-4, lam_max=1.0, rho_cap=CAP)
    assert rho_pre.item() == EDGE
    assert not att.item() and rho.item() == EDGE          # ρ equals the cap up to rounding: held, untouched
    # an overshoot past the tolerance is attenuated to the cap, as SPEC's rule says
    _, rho, rho_pre, att = adaptive_lambda(mse, l_dir, CAP * (1 + 2 ** -19), lam_min=1e-4, lam_max=1.0, rho_cap=CAP)
    assert att.item() and rho_pre.item() > rho_cap.threshold(CAP) and rho.item() == f32(CAP)


@pytest.mark.parametrize("cap", [0.25, 0.35, 0.45, 0.5, 0.1, 0.2, 0.3, 0.15])
def test_the_device_compare_and_the_stored_number_compare_are_one_rule(cap):
    """The guardrail decides in float32 on the device, the views in double in SQL, report and the
    watch in Python: for every float32 ρ near the threshold all three answer alike."""
    sql = sqlite3.connect(":memory:")
    t = rho_cap.threshold_f32(cap)
    for v in [f32_step(t, k) for k in range(-6, 7)] + [f32(cap), f32_step(f32(cap), 1)]:
        device = bool((torch.tensor(v, dtype=torch.float32) > t).item())
        stored = bool(sql.execute(f"SELECT ? > ? + ? / {RHO_CAP_RTOL_DIVISOR}.0", (v, cap, cap)).fetchone()[0])
        assert device == stored == rho_cap.over_cap(v, cap), (cap, v)
    assert not rho_cap.over_cap(f32_step(f32(cap), 2), cap)   # float32 noise at the cap is never "over"
    assert rho_cap.RHO_CAP_RTOL_DIVISOR == RHO_CAP_RTOL_DIVISOR  # the number baked into migration 10's SQL


# -- the runs ----------------------------------------------------------------------------------
EDGE_TOML = """
[loss]
preset = "v2.1"
lam_max = 1.0          # no clamp binds: ρ = frac exactly, up to rounding
rho_cap = 0.25
[[loss.ramp]]          # epoch 0: frac = cap, ρ at the cap (half a float32 step either way)
until = 1
m_gap = 0.02
frac = 0.25
[[loss.ramp]]          # epoch 1: frac over the cap, every step attenuated
until = 1000
m_gap = 0.02
frac = 0.30
"""


def _hand_run(conn, name: str, cap: float, steps: list[dict]) -> int:
    """A run as a trainer writes it: step rows, a skip/attenuate event per flag, epoch rows."""
    run = create_run(conn, name=name, preset="v1" if cap == 0 else "v2.1", compat="none",
                     config={"loss": {"rho_cap": cap}}, data={}, total_epochs=2)
    update_run(conn, run, state="finished")
    rows = []
    for s in steps:
        m = {k: 0.1 for k in STEP_METRICS} | {"skip": 0.0, "attenuate": 0.0, "pos": 0.2} | s
        rows.append((run, s["step"], s["epoch"], float(s["step"]), 5e-4, *(m[k] for k in STEP_METRICS)))
        for kind in ("skip", "attenuate"):
            if m[kind]:
                conn.execute("INSERT INTO events (run_id, step, epoch, t, kind, detail) VALUES (?, ?, ?, 0, ?, '{}')",
                             (run, s["step"], s["epoch"], kind))
    conn.executemany(f"INSERT INTO steps ({', '.join(STEP_COLUMNS)}) VALUES ({', '.join('?' * len(STEP_COLUMNS))})",
                     rows)
    for epoch in (0, 1):
        of = [s for s in steps if s["epoch"] == epoch]
        conn.execute("INSERT INTO epochs (run_id, epoch, step, skip_rate, attenuate_rate, val_margin, val_cos)"
                     " VALUES (?, ?, ?, ?, ?, 0, 0)", (run, epoch, of[-1]["step"], sum(s.get("skip", 0) for s in of) / len(of),
                                                       sum(s.get("attenuate", 0) for s in of) / len(of)))
    return run


def _old_edge_steps() -> list[dict]:
    """Capped at .25, as the old trainer wrote it: ρ_pre one float32 step over flagged attenuated."""
    out = []
    for step in range(1, 41):
        s = {"step": step, "epoch": (step - 1) // 20, "rho": 0.2, "rho_pre": 0.2}
        if step % 10 == 1:
            s |= {"rho_pre": EDGE, "rho": f32(CAP), "attenuate": 1.0}     # the old trainer's flag at the edge
        elif step % 10 == 2:
            s |= {"rho_pre": 0.3, "rho": f32(CAP), "attenuate": 1.0}
        elif step % 10 == 3:
            s |= {"rho_pre": EDGE, "rho": EDGE}                           # the new trainer's: not attenuated
        if step % 7 == 0:
            s |= {"skip": 1.0, "pos": -0.01}
        out.append(s)
    return out


def _uncapped_steps() -> list[dict]:
    """v1 (no cap): ρ judged against the seed's 0.25 by the same rule; nothing is attenuated."""
    values = {1: EDGE, 2: OVER, 3: 0.4, 4: f32(CAP)}
    return [{"step": step, "epoch": (step - 1) // 5, "rho": values.get(step, 0.1), "rho_pre": values.get(step, 0.1)}
            for step in range(1, 11)]


@pytest.fixture(scope="module")
def counts_db(tiny_data, tmp_path_factory):
    """Run 1: a real tiny run at the edge (epoch 0) and over the cap (epoch 1); runs 2 and 3 by hand."""
    folder = tmp_path_factory.mktemp("counts")
    (folder / "edge.toml").write_text(EDGE_TOML)
    db = folder / "lvmd.db"
    lvmd("run", str(folder / "edge.toml"), "--db", str(db), "--quiet", *TINY_MODEL, *data_overrides(tiny_data),
         "train.epochs=2", "train.batch_size=4", "train.device=cpu", "eval.fivecat_every=0", "name=edge", check=True)
    conn = connect(db)
    _hand_run(conn, "old-edge", CAP, _old_edge_steps())
    _hand_run(conn, "uncapped", 0.0, _uncapped_steps())
    conn.close()
    return db


def _truth(conn, run_id: int) -> dict:
    """The facts, from the step rows: the flags the trainer stored, ρ by the one rule."""
    run = conn.execute("SELECT config_json FROM runs WHERE id = ?", (run_id,)).fetchone()
    loss = json.loads(run[0])["loss"]
    steps = [dict(r) for r in conn.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY step", (run_id,))]

    def cap_at(epoch: int) -> float:
        stage = next((g for g in loss.get("ramp", []) if epoch < g["until"]), {})
        return stage.get("rho_cap") or loss.get("rho_cap") or 0.25
    return {"steps": len(steps), "attenuated": int(sum(s["attenuate"] for s in steps)),
            "skips": int(sum(s["skip"] for s in steps)), "pos_negative": sum(s["pos"] < 0 for s in steps),
            "over_cap": sum(rho_cap.over_cap(s["rho"], cap_at(s["epoch"])) for s in steps),
            "rho_max": max(s["rho"] for s in steps),
            "by_epoch": {e: int(sum(s["attenuate"] for s in steps if s["epoch"] == e)) for e in {s["epoch"] for s in steps}}}


def _cli(capsys, *argv) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_the_edge_runs_are_what_they_claim(counts_db):
    conn = open_readonly(counts_db)
    truth = {r: _truth(conn, r) for r in (1, 2, 3)}
    # the real run: at the cap in epoch 0 nothing is attenuated, over it in epoch 1 every step is
    epoch0 = [r["rho_pre"] for r in conn.execute("SELECT rho_pre FROM steps WHERE run_id = 1 AND epoch = 0")]
    assert max(epoch0) <= rho_cap.threshold(CAP) and truth[1]["by_epoch"][0] == 0
    assert truth[1]["by_epoch"][1] == conn.execute("SELECT COUNT(*) FROM steps WHERE run_id = 1 AND epoch = 1").fetchone()[0]
    assert (truth[2]["attenuated"], truth[2]["skips"], truth[2]["over_cap"]) == (8, 5, 0)
    assert (truth[3]["attenuated"], truth[3]["over_cap"]) == (0, 2)     # OVER and 0.4; EDGE and the cap are not
    conn.close()


def test_every_surface_counts_the_same(counts_db, capsys):
    db = str(counts_db)
    conn = open_readonly(counts_db)
    truth = {r: _truth(conn, r) for r in (1, 2, 3)}

    # the views
    for run_id, t in truth.items():
        g = dict(conn.execute("SELECT * FROM v_guardrail_checks WHERE run_id = ?", (run_id,)).fetchone())
        assert (g["attenuated_steps"], g["rho_pre_over_cap_steps"]) == (t["attenuated"], t["attenuated"])
        assert (g["skips"], g["pos_negative_steps"], g["rho_over_cap_steps"]) == (t["skips"], t["pos_negative"],
                                                                                  t["over_cap"])
        assert g["rho_held"] == int(t["over_cap"] == 0)
        per_epoch = {r["epoch"]: r for r in conn.execute("SELECT * FROM v_skip_rate_by_epoch WHERE run_id = ?", (run_id,))}
        assert {e: r["attenuations"] for e, r in per_epoch.items()} == t["by_epoch"]
        assert sum(r["skips"] for r in per_epoch.values()) == t["skips"]
        # the trainer's own epoch rows count the same flags
        for e in conn.execute("SELECT * FROM epochs WHERE run_id = ?", (run_id,)):
            assert round(e["attenuate_rate"] * per_epoch[e["epoch"]]["steps"]) == t["by_epoch"][e["epoch"]]
        summary = dict(conn.execute("SELECT * FROM v_run_summary WHERE run_id = ?", (run_id,)).fetchone())
        assert summary["skip_rate"] == pytest.approx(t["skips"] / t["steps"])

    # lvmd compare: the table a person reads
    table = {line.split("  ")[0].strip(): line.split()[-3:]
             for line in _cli(capsys, "compare", "1", "2", "3", "--db", db).splitlines()}
    assert [int(x) for x in table["steps attenuated"]] == [truth[r]["attenuated"] for r in (1, 2, 3)]
    assert table["skip share"] == [f"{truth[r]['skips'] / truth[r]['steps']:.2%}" for r in (1, 2, 3)]

    # lvmd report
    for run_id, t in truth.items():
        checks = {c["key"]: c for c in json.loads(_cli(capsys, "report", str(run_id), "--db", db, "--json"))["guardrails"]}
        attenuated = f"in {t['attenuated']} steps (attenuated)"
        assert (attenuated in checks["rho"]["answer"]) == (t["attenuated"] > 0), checks["rho"]["answer"]
        assert checks["rho"]["passed"] == (t["over_cap"] == 0)
        if t["over_cap"]:
            assert checks["rho"]["answer"].startswith(f"yes: max ρ {t['rho_max']:.3f} in {t['over_cap']} steps")
        assert checks["skips"]["answer"].startswith(f"{t['skips']} of {t['steps']} batches")

    # lvmd export: the step rows' flags and the events, as a spreadsheet would count them
    for run_id, t in truth.items():
        steps = list(csv.DictReader(io.StringIO(_cli(capsys, "export", str(run_id), "--table", "steps", "--db", db))))
        events = list(csv.DictReader(io.StringIO(_cli(capsys, "export", str(run_id), "--table", "events", "--db", db))))
        assert sum(float(s["attenuate"]) for s in steps) == t["attenuated"]
        assert sum(float(s["skip"]) for s in steps) == t["skips"]
        assert [e["kind"] for e in events].count("attenuate") == t["attenuated"]
        assert [e["kind"] for e in events].count("skip") == t["skips"]
    conn.close()

    # the store readers the TUI draws from: events, the binned step series, the runs list
    read = connect(counts_db, readonly=True)
    summaries = {r.id: r for r in reader.run_summaries(read)}
    for run_id, t in truth.items():
        kinds = [e["kind"] for e in reader.events_after(read, run_id, 0)]
        assert (kinds.count("attenuate"), kinds.count("skip")) == (t["attenuated"], t["skips"])
        series = step_series.StepSeries(run_id, target_bins=16)
        with reader.read_snapshot(read):
            series.refresh(read)
        snap = series.snapshot()
        assert (snap.count, snap.skips) == (t["steps"], t["skips"])
        assert summaries[run_id].skip_rate == pytest.approx(t["skips"] / t["steps"])
        assert summaries[run_id].rho_max == t["rho_max"]
    read.close()
