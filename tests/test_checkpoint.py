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
