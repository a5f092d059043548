"""Issue 15, the CLI as people use it: help for users, `lvmd status` aligned and counting epochs
from 1 with a speed that leaves out pauses, every table exportable, the demo script's log."""
from __future__ import annotations

import json
import re
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from store.commands import ack, complete, enqueue
from store.db import connect
from store.runs import create_run, step_rate, update_run
from store.schema import STEP_METRICS

from conftest import ROOT, lvmd


def add_run(db: Path, name: str, *, state: str = "running", steps: int = 0, gap_at: int | None = None,
            epoch: int = 0, total_epochs: int = 12, eval_epoch: int | None = None) -> int:
    """A run row with `steps` step rows two a second (an hour's gap before step gap_at)."""
    conn = connect(db)
    run_id = create_run(conn, name=name, preset="v2.1", compat="none", config={}, data={},
                        total_epochs=total_epochs, total_steps=1000, state=state)
    t0 = time.time() - 7200
    rows = [(run_id, s, epoch, t0 + 0.5 * s + (3600.0 if gap_at is not None and s >= gap_at else 0.0), 5e-4,
             *[0.0] * len(STEP_METRICS)) for s in range(steps)]
    marks = ", ".join("?" * (5 + len(STEP_METRICS)))
    conn.executemany(f"INSERT INTO steps (run_id, step, epoch, t, lr, {', '.join(STEP_METRICS)}) VALUES ({marks})",
                     rows)
    if eval_epoch is not None:
        conn.execute("INSERT INTO evals (run_id, epoch, step, trigger, gates_passed, gates_total, verdict_3of5)"
                     " VALUES (?, ?, 99, 'epoch', 3, 5, 1)", (run_id, eval_epoch))
    update_run(conn, run_id, step=max(steps - 1, 0), epoch=epoch, heartbeat_at=time.time(), pid=os.getpid())
    conn.commit()
    conn.close()
    return run_id


def test_help_speaks_to_users_not_developers():
    out = lvmd("--help", check=True).stdout
    assert "lvmd/cli" not in out and "register(" not in out and "cli_" not in out
    assert "Train latent-vector models" in out


def test_step_rate_leaves_out_paused_and_stopped_time(tmp_path):
    from store.runs import active_rate

    assert active_rate([(0, 0.0), (1, 0.5), (2, 1.0), (3, 3601.0), (4, 3601.5)]) == 2.0
    assert active_rate([(5, 1.0)]) is None
    db = tmp_path / "lvmd.db"
    run_id = add_run(db, "gap", steps=150, gap_at=120)   # 120 steps, an hour stopped, 30 more
    conn = connect(db)
    assert step_rate(conn, run_id) == 2.0
    conn.close()
    status = json.loads(lvmd("status", str(run_id), "--json", "--db", str(db), check=True).stdout)
    assert status["steps_per_s"] == 2.0 and status["eta_s"] == (1000 - 149) / 2


def test_status_block_counts_epochs_from_one(tmp_path):
    db = tmp_path / "lvmd.db"
    run_id = add_run(db, "r", steps=10, epoch=1, eval_epoch=0)   # in epoch 2 of 12; epoch 1's 5CAT done
    out = lvmd("status", str(run_id), "--db", str(db), check=True).stdout
    assert "epoch 2/12" in out and "epoch 1, step 99" in out and "epoch 0" not in out


def test_status_table_aligns_long_names(tmp_path):
    db = tmp_path / "lvmd.db"
    add_run(db, "demo-wiki-v2.1-20261129-123456", steps=10)
    add_run(db, "x", state="finished", steps=10)
    lines = lvmd("status", "--db", str(db), check=True).stdout.splitlines()
    header, rows = lines[0], [line for line in lines[2:] if line.strip()]
    assert len(rows) == 2
    for column in ("state", "step", "gates"):
        at = header.index(column)
        cells = [row[at:].split()[0] for row in rows]
        assert cells[0] and cells[1], (column, rows)
    at = header.index("state")
    assert [row[at:].split()[0] for row in rows] == ["running", "finished"]


def test_export_every_table_with_help(tmp_path, capsys):
    from lvmd.cli.main import main

    db = tmp_path / "lvmd.db"
    run_id = add_run(db, "r", steps=5)
    conn = connect(db)
    command = enqueue(conn, run_id, "pause")
    ack(conn, command, 4)
    complete(conn, command, result={"step": 4})
    conn.close()
    assert main(["export", str(run_id), "--db", str(db), "--table", "commands", "--format", "jsonl"]) == 0
    [record] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (record["verb"], record["state"], record["acked_step"]) == ("pause", "done", 4)
    out = " ".join(lvmd("export", "--help", check=True).stdout.split())
    for table in ("steps", "events", "epochs", "gates", "evals", "eval_metrics", "commands"):
        assert table in out
    assert "which table" in out and "jsonl (one JSON object per row)" in out


def _fake_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of scripts/demo.sh in a tree whose setup and lvmd are stand-ins recording their calls."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "demo.sh", tree / "scripts" / "demo.sh")
    calls = tmp_path / "calls"
    scripts = {
        tree / "scripts" / "setup.sh": "#!/usr/bin/env bash\necho 'setup: venv ready' >&2\n",
        tree / ".venv" / "bin" / "lvmd": f"#!/usr/bin/env bash\necho \"$*\" >> {calls}\n"
                                          "if [ \"$1\" = start ]; then echo 'run 7 running (pid 1); log x.log'; fi\n"
                                          "if [ \"$1\" = status ]; then echo 'run 7: running'; fi\n",
    }
    for path, text in scripts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (tree / "lvmd" / "demo" / "wiki-minilm").mkdir(parents=True)
    (tree / "lvmd" / "demo" / "wiki-minilm" / "train.npz").write_bytes(b"")
    return tree, calls


def test_demo_script_keeps_a_redirected_log_and_names_each_run(tmp_path):
    tree, calls = _fake_tree(tmp_path)
    log = tmp_path / "demo.log"
    exports = []
    for cwd in (tree, tmp_path):
        with open(log, "w") as err:   # `scripts/demo.sh 2>log`
            proc = subprocess.run(["bash", str(tree / "scripts" / "demo.sh")], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=err, text=True, timeout=60, cwd=cwd,
                                  env={**os.environ, "LVMD_DEMO_WAIT": "0"})
        assert proc.returncode == 0 and "run 7: running" in proc.stdout
        exports += [line.strip() for line in log.read_text().splitlines() if "export LVMD_DB=" in line]
        time.sleep(1.1)  # names carry the second
    text = log.read_bytes()
    assert b"\x00" not in text
    assert b"setup: venv ready" in text and b"run 7 running" in text and b"lvmd stop 7" in text
    # issue 22.9: the demo names its database once for the shell, relative where the user stands
    assert exports == ["source .venv/bin/activate && export LVMD_DB=demo/lvmd.db",
                       f"source .venv/bin/activate && export LVMD_DB={tree}/demo/lvmd.db"]
    starts = [line.split() for line in calls.read_text().splitlines() if line.startswith("start ")]
    names = [next(a for a in argv if a.startswith("name=")) for argv in starts]
    assert len(names) == 2 and names[0] != names[1] and names[0].startswith("name=demo-wiki-v2.1-")


def test_readme_says_how_to_reach_lvmd_and_hard_codes_no_run_id():
    text = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in text
    assert "stop 1 --db" not in text
    assert "pip install pandas" in text


def test_data_report_tells_its_progress_before_the_report():
    """Progress goes to stderr stage by stage (a rich bar on a terminal), the report to stdout after."""
    fixture = ROOT / "tests" / "fixtures" / "wiki-minilm"
    proc = subprocess.run([sys.executable, "-m", "lvmd", "data", "report", str(fixture), "--max-samples", "100"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    lines = proc.stdout.splitlines()
    progress = [i for i, line in enumerate(lines) if re.match(r"data report: \d+/27 ", line)]
    stages = [i for i in progress if not lines[i].endswith(" windows")]   # a split's chunks say "n/m windows"
    assert len(stages) == 27 and lines[progress[-1]] == "data report: 27/27 5CAT mean_context OOD E bins"
    assert progress == list(range(len(progress)))  # all of it before the first line of the report
    assert "data report: 0/27 train statistics: 171/171 windows" in lines
    quiet = lvmd("data", "report", str(fixture), "--max-samples", "100", "--no-progress", check=True)
    assert quiet.stderr == ""
