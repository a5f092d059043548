"""lvmd/train/checkpoint.py: atomic writes that survive a power cut, and the temp files a
killed writer leaves."""
from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
import torch

from lvmd.errors import UserError

from lvmd.train import checkpoint


def test_the_rename_is_followed_by_an_fsync_of_the_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = checkpoint.save(tmp_path / "last.pt", {"step": 3, "w": torch.ones(2)})
    assert synced == [False, True]                     # the file's data, then the folder's entry
    assert checkpoint.load(path)["step"] == 3
    synced.clear()
    checkpoint.copy(path, tmp_path / "best.pt")
    assert synced == [False, True]


def test_temp_files_of_a_dead_writer_of_this_run_are_removed_and_nothing_else(tmp_path):
    """Only what lvmd can prove it made: its temp name, this run's id, a writer that is gone.
    A user's `.best.pt.123.tmp`, another run's temp and a live writer's temp stay."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        left = [tmp_path / f".last.pt.lvmd-r3-p{dead.pid}.abc123.tmp", tmp_path / f".best.pt.lvmd-r3-p{dead.pid}.x.tmp"]
        keep = [tmp_path / "last.pt", tmp_path / "daemon.log", tmp_path / "notes.tmp",
                tmp_path / ".best.pt.123.tmp", tmp_path / ".last.pt.abc123.tmp",           # not lvmd's names
                tmp_path / f".last.pt.lvmd-r4-p{dead.pid}.abc.tmp",                        # another run's
                tmp_path / f".last.pt.lvmd-r3-p{live.pid}.abc.tmp"]                        # a live writer's
        for p in left + keep:
            p.write_bytes(b"x")
        assert sorted(checkpoint.remove_temp_files(tmp_path, 3)) == sorted(left)
        assert sorted(tmp_path.iterdir()) == sorted(keep)
    finally:
        live.kill()
        live.wait()


def test_a_killed_writer_not_yet_reaped_is_dead(tmp_path):
    """A daemon killed a moment ago is a zombie until init reaps it, and the resume that follows
    the kill at once (its lock is already free) must still remove its temp files."""
    import time

    zombie = subprocess.Popen(["true"])            # exits at once; not waited for: a zombie
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{zombie.pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        else:
            pytest.fail("the child never became a zombie")
        temp = tmp_path / f".last.pt.lvmd-r3-p{zombie.pid}.abc.tmp"
        temp.write_bytes(b"x")
        assert checkpoint.remove_temp_files(tmp_path, 3) == [temp] and not temp.exists()
    finally:
        zombie.wait()


def test_a_checkpoint_names_its_run_and_a_resume_refuses_another(tmp_path):
    ident = checkpoint.identity("db-a", 1, {"name": "a", "data": {"allow_pickle": True}}, {"train": {"sha256": "t1"}})
    path = checkpoint.save(tmp_path / "last.pt", {"step": 3, "identity": ident})
    assert not list(tmp_path.glob(".*.tmp"))
    same = checkpoint.identity("db-a", 1, {"name": "a", "data": {"allow_pickle": False}}, {"train": {"sha256": "t1"}})
    assert checkpoint.load(path, expect=same)["step"] == 3          # the opt-in is not part of the identity
    for other, words in ((checkpoint.identity("db-a", 2, {"name": "a", "data": {}}, {"train": {"sha256": "t1"}}),
                          ["run 1 of database db-a", "not of run 2 of database db-a"]),
                         (checkpoint.identity("db-b", 1, {"name": "a", "data": {}}, {"train": {"sha256": "t1"}}),
                          ["run 1 of database db-a", "not of run 1 of database db-b"]),
                         (checkpoint.identity("db-a", 1, {"name": "b", "data": {}}, {"train": {"sha256": "t1"}}),
                          ["its config"]),
                         (checkpoint.identity("db-a", 1, {"name": "a", "data": {}}, {"train": {"sha256": "t2"}}),
                          ["data.train sha256 t1", "on t2"])):
        with pytest.raises(UserError) as err:
            checkpoint.load(path, expect=other)
        assert all(w in str(err.value) for w in words) and "\n" not in str(err.value), str(err.value)
    bare = checkpoint.save(tmp_path / "old.pt", {"step": 2, "config_json": json.dumps({"name": "a", "data": {}})})
    with pytest.raises(UserError, match="has no identity.*--adopt-folder"):
        checkpoint.load(bare, expect=same)
    assert checkpoint.load(bare, expect=same, adopt=True)["step"] == 2   # an older lvmd's, vouched for


# -- issue 23: one write per epoch (best.pt a hard link to the last.pt just written) ----------
def _train(tiny_data, out_dir, sink, epochs: int, resume_from=None) -> "Trainer":
    from lvmd.config import load_config
    from lvmd.data.train_data import load_train_data
    from lvmd.train.trainer import Trainer
    from tests.conftest import TINY_MODEL, data_overrides

    cfg = load_config(None, [*data_overrides(tiny_data), *TINY_MODEL, "model.kind=amn", f"train.epochs={epochs}",
                             "train.batch_size=32"])
    trainer = Trainer(cfg, load_train_data(cfg), sink, out_dir=out_dir)
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
    assert trainer.run() == "finished"
    return trainer


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_best_pt_is_a_hard_link_to_the_last_pt_of_an_improving_epoch(tiny_data, tmp_path):
    from lvmd.train.sink import ListSink

    out = tmp_path / "run"

    class Watching(ListSink):      # what the folder holds the moment best.pt is made
        def __init__(self):
            super().__init__()
            self.seen = []

        def event(self, kind, *, step=None, epoch=None, detail=None):
            super().event(kind, step=step, epoch=epoch, detail=detail)
            if kind == "checkpoint" and detail["which"] == "best":
                last, best = out / "last.pt", out / "best.pt"
                self.seen.append({"step": step, "how": detail.get("how"), "shared": os.path.samestat(
                    os.stat(last), os.stat(best)), "sha": _sha(best)})

    sink = Watching()
    trainer = _train(tiny_data, out, sink, epochs=2)
    assert sink.seen and all(s["how"] == "link" and s["shared"] for s in sink.seen)
    # last.pt was written again after (the run's end, and epoch 2 if it did not improve): best.pt kept its file
    last, best = out / "last.pt", out / "best.pt"
    assert not os.path.samestat(os.stat(last), os.stat(best))
    assert _sha(best) == sink.seen[-1]["sha"] and stat.S_IMODE(os.stat(best).st_mode) == 0o600
    assert checkpoint.load(best)["step"] == sink.seen[-1]["step"] and checkpoint.load(last)["step"] == trainer.step
    writes = [e for e in sink.events if e["kind"] == "checkpoint" and e["detail"]["which"] == "last"]
    assert len(writes) == 2 + 1            # one per epoch, one at the end: never a second file for best.pt
    # a resume from either works: from best.pt (epoch 1) on to the end, from last.pt into a 3rd epoch
    from_best = _train(tiny_data, tmp_path / "b", ListSink(), epochs=2, resume_from=best)
    assert from_best.step == trainer.step
    from_last = _train(tiny_data, tmp_path / "l", ListSink(), epochs=3, resume_from=last)
    assert from_last.epoch == 3 and from_last.step == 3 * trainer.batches_per_epoch
    assert not list(out.glob(".*.tmp"))


def test_best_pt_is_an_atomic_copy_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    import errno

    last = checkpoint.save(tmp_path / "last.pt", {"step": 7, "w": torch.arange(4.0)})

    def no_links(src, dst, *a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    best, how = checkpoint.link_best(last, tmp_path / "best.pt")
    assert how == "copy" and not os.path.samestat(os.stat(last), os.stat(best))
    assert best.read_bytes() == last.read_bytes() and checkpoint.load(best)["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
