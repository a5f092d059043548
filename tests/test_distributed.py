"""One run on two processes (torchrun, gloo, CPU), end to end with real `lvmd` subprocesses:
the global-batch math matches one process, one SQLite writer, pause/stop reach both ranks, a
killed rank crashes the run and `lvmd resume` on one process finishes it exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_MODEL, data_overrides, lvmd, query
from store.runs import pid_alive
from test_daemon import max_step, run_row, status, wait_for

# No dropout, so a 2-rank run and a 1-process run draw no random numbers and must agree.
EXACT = [*TINY_MODEL, "model.dropout=0.0", "train.batch_size=8", "train.epochs=1000", "train.max_steps=50",
         "eval.fivecat_every=0"]
COMPARED = ("mse", "lam", "rho", "pos", "neg", "gap", "ratio", "skip", "attenuate", "l_dir", "total", "grad_norm")
# Long enough to be commanded mid-run; telemetry blocks of 16 steps are the ranks' meeting points.
LONG = [*TINY_MODEL, "train.batch_size=16", "train.epochs=100000", "train.telemetry_block=16",
        "eval.fivecat_every=0"]

SQLITE_SPY = textwrap.dedent("""
    import json, os, sqlite3
    _connect = sqlite3.connect
    def connect(database, *args, **kwargs):
        with open(os.environ["LVMD_SQLITE_SPY"], "a") as fh:
            fh.write(json.dumps({"rank": os.environ.get("RANK"), "pid": os.getpid(),
                                 "database": str(database)}) + "\\n")
        return _connect(database, *args, **kwargs)
    sqlite3.connect = connect
""")


def steps_of(db, columns=COMPARED) -> list[tuple]:
    return query(db, f"SELECT step, {', '.join(columns)} FROM steps WHERE run_id = 1 ORDER BY step")


@pytest.fixture(scope="module")
def pair(tiny_data, tmp_path_factory):
    """The same 50 steps by one process and by `torchrun --nproc-per-node 2 -m lvmd run`, the
    second with every sqlite3.connect call logged by rank (a sitecustomize on PYTHONPATH)."""
    out = tmp_path_factory.mktemp("ddp_pair")
    cfg = [*data_overrides(tiny_data), *EXACT]
    lvmd("run", *cfg, "--db", str(out / "one.db"), "--quiet", check=True, timeout=300)
    spy_dir = out / "spy"
    spy_dir.mkdir()
    (spy_dir / "sitecustomize.py").write_text(SQLITE_SPY)
    log = out / "connects.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{spy_dir}{os.pathsep}{ROOT}", "LVMD_SQLITE_SPY": str(log)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "lvmd", "run", *cfg, "--db", str(out / "two.db"), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    connects = [json.loads(line) for line in log.read_text().splitlines()]
    return out / "one.db", out / "two.db", connects


def test_two_ranks_of_half_the_batch_take_the_steps_of_one_process(pair):
    one, two, _ = pair
    a, b = steps_of(one), steps_of(two)
    assert [r[0] for r in a] == [r[0] for r in b] == list(range(1, 51))
    for ra, rb in zip(a, b):
        for name, x, y in zip(("step",) + COMPARED, ra, rb):
            assert abs(x - y) <= 1e-5, f"step {ra[0]}: {name} {x} (1 process) vs {y} (2 ranks)"
    assert 0 < sum(r[COMPARED.index("skip") + 1] for r in a) < 50     # skip decisions were exercised
    assert query(one, "SELECT world_size FROM runs") == [(1,)]
    assert query(two, "SELECT world_size, state FROM runs") == [(2, "finished")]
    # the epoch ends (validation broadcast, scheduler) agree too
    ea, eb = query(one, "SELECT epoch, val_loss, lr FROM epochs"), query(two, "SELECT epoch, val_loss, lr FROM epochs")
    assert len(ea) == len(eb) >= 1
    for (e1, v1, lr1), (e2, v2, lr2) in zip(ea, eb):
        assert e1 == e2 and abs(v1 - v2) <= 1e-5 and lr1 == lr2


def test_rank_1_never_opens_the_database(pair):
    _, two, connects = pair
    by_rank = {}
    for c in connects:
        by_rank.setdefault(c["rank"], []).append(c["database"])
    assert any(str(two) in d for d in by_rank.get("0", [])), by_rank      # the spy saw rank 0 write
    assert by_rank.get("1", []) == []


@pytest.fixture
def db(tmp_path):
    """The test's database; every process of a job still alive at the end is killed by pid."""
    path = tmp_path / "t.db"
    pids: list[int] = []
    yield str(path), pids
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def job_pids(rank0: int) -> tuple[int, int, int]:
    """(torchrun, rank 0, rank 1) from rank 0's pid: torchrun is its parent, rank 1 its sibling."""
    parent = int(Path(f"/proc/{rank0}/stat").read_text().rsplit(")", 1)[1].split()[1])
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    others = [int(p) for p in children if int(p) != rank0]
    assert len(others) == 1, children
    return parent, rank0, others[0]


def start_pair(db: str, pids: list[int], cfg: list[str]) -> tuple[int, int, int]:
    out = lvmd("start", *cfg, "--nproc", "2", "--db", db, check=True, timeout=180).stdout
    assert out.startswith("run 1 running"), out
    torchrun, r0, r1 = job_pids(run_row(db, 1)["pid"])
    pids += [r1, r0, torchrun]
    return torchrun, r0, r1


def test_pause_resume_stop_reach_both_ranks(tiny_data, db):
    db, pids = db
    torchrun, r0, r1 = start_pair(db, pids, [*data_overrides(tiny_data), *LONG, "train.max_steps=40000"])
    wait_for(lambda: max_step(db, 1) >= 20, 120, "the job to step")
    assert status(db, 1)["world_size"] == 2

    out = lvmd("pause", "1", "--db", db, "--timeout", "60", check=True).stdout
    paused = int(out.split("at step")[1])
    assert paused % 16 == 0                                  # taken at a block boundary
    time.sleep(1.5)
    assert max_step(db, 1) == paused and run_row(db, 1)["state"] == "paused"
    assert pid_alive(r0) and pid_alive(r1)                   # rank 1 waits in rank 0's broadcast
    open_files = [os.readlink(f) for f in Path(f"/proc/{r1}/fd").iterdir() if f.is_symlink()]
    # the database and its -wal/-shm (the run folder, "<db name>-runs-<id>", shares the prefix)
    assert not [f for f in open_files if f in (db, f"{db}-wal", f"{db}-shm", f"{db}-journal")], open_files

    lvmd("resume", "1", "--db", db, "--timeout", "60", check=True)
    wait_for(lambda: max_step(db, 1) >= paused + 32, 120, "both ranks to step again")

    out = lvmd("stop", "1", "--db", db, "--grace", "60", check=True, timeout=120).stdout
    stopped = int(out.split("at step")[1].split(";")[0])
    assert stopped % 16 == 0 and run_row(db, 1)["state"] == "stopped"
    wait_for(lambda: not (pid_alive(r1) or pid_alive(torchrun)), 60, "rank 1 and torchrun to exit")
    # the stop's checkpoint was a collective: it holds both ranks' RNG states at that step
    state = torch.load(Path(run_row(db, 1)["out_dir"]) / "last.pt", weights_only=True)
    assert state["step"] == stopped == max_step(db, 1)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    log = (Path(run_row(db, 1)["out_dir"]) / "daemon.log").read_text()
    assert "Traceback" not in log and "ChildFailedError" not in log, log[-3000:]


def test_killed_rank_crashes_the_run_and_one_process_finishes_it(tiny_data, db):
    db, pids = db
    total = 1200  # long enough that a starved test process still finds the job alive (240 could finish first)
    torchrun, r0, r1 = start_pair(db, pids, [*data_overrides(tiny_data), *LONG, f"train.max_steps={total}",
                                             "train.checkpoint_every=20"])
    wait_for(lambda: max_step(db, 1) >= 45, 120, "a few checkpoints")
    os.kill(r1, signal.SIGKILL)
    wait_for(lambda: status(db, 1)["state"] == "crashed", 90, "the run to be marked crashed")
    wait_for(lambda: not (pid_alive(r0) or pid_alive(torchrun)), 60, "the job to go down")
    assert max_step(db, 1) < total

    out = lvmd("resume", "1", "--nproc", "1", "--foreground", "--quiet", "--db", db, check=True, timeout=300)
    assert out.stdout.strip().endswith("run 1 finished")
    steps = [s for (s,) in query(db, "SELECT step FROM steps WHERE run_id = 1 ORDER BY step")]
    assert steps == list(range(1, total + 1))                # no gap, no duplicate
    row = run_row(db, 1)
    assert (row["state"], row["world_size"], row["step"]) == ("finished", 1, total)
    kinds = [k for (k,) in query(db, "SELECT detail FROM events WHERE run_id = 1 AND kind = 'state'")]
    assert any('"state": "crashed"' in k for k in kinds)


# -- the pieces, in process ----------------------------------------------------------------------
class Wire:
    """Stands in for the broadcast: what rank 0 sends, the follower receives."""

    def __init__(self):
        self.sent: list[list[int]] = []

    def leader(self):
        wire = self

        class D:
            main, rank, world = True, 0, 2

            def broadcast_ints(self, values, length):
                wire.sent.append(values + [0] * (length - len(values)))
                return wire.sent[-1]
        return D()

    def follower(self):
        wire = self

        class D:
            main, rank, world = False, 1, 2

            def broadcast_ints(self, values, length):
                return wire.sent.pop(0)
        return D()


def test_control_reaches_the_follower_only_at_block_boundaries_and_while_paused():
    from lvmd.train.control import Control
    from lvmd.train.dist_control import FollowerControl, LeaderControl
    from lvmd.train.sink import ListSink

    wire = Wire()
    inner = Control(ListSink(), install_signals=False)
    lead = LeaderControl(inner, wire.leader(), every=4)
    follow = FollowerControl(wire.follower(), every=4, install_signals=False)

    def both(step):
        a = lead.poll(step, 0)
        b = follow.poll(step, 0)
        return [r.action for r in a], [r.action for r in b]

    inner.request("checkpoint", trigger="watch")
    assert both(1) == ([], []) and wire.sent == []          # between boundaries: no message at all
    assert both(4) == (["checkpoint"], ["checkpoint"])
    inner.request("pause", trigger="watch")
    actions = both(8)
    assert actions == (["pause"], ["pause"])
    inner.paused = True                  # the loop ran the pause: DaemonControl holds rank 0 ...
    follow._hold({})                     # ... and the follower's Request.done holds it
    assert both(8) == ([], []) and follow.paused             # paused: a message every poll, step unchanged
    inner.paused = False
    assert both(8) == ([], []) and not follow.paused
    inner.stop_requested = True
    assert both(9) == ([], [])                               # a signal waits for the boundary too
    assert both(12) == (["stop"], ["stop"])
    assert wire.sent == []


def test_a_global_batch_is_split_in_order_over_the_ranks():
    from lvmd.train.distributed import Dist

    idx = torch.arange(11)
    parts = [Dist(r, 3, r).shard(idx) for r in range(3)]
    assert torch.equal(torch.cat(parts), idx) and [len(p) for p in parts] == [4, 4, 3]
