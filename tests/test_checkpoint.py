"""lvmd/train/checkpoint.py: atomic writes that survive a power cut, and the temp files a
killed writer leaves."""
from __future__ import annotations

import os
import stat

import torch

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


def test_temp_files_of_a_dead_writer_are_removed_and_nothing_else(tmp_path):
    left = [tmp_path / ".last.pt.abc123.tmp", tmp_path / ".best.pt.x.tmp"]
    for p in left:
        p.write_bytes(b"")
    keep = [tmp_path / "last.pt", tmp_path / "daemon.log", tmp_path / "notes.tmp"]
    for p in keep:
        p.write_bytes(b"x")
    assert sorted(checkpoint.remove_temp_files(tmp_path)) == sorted(left)
    assert sorted(tmp_path.iterdir()) == sorted(keep)
