"""The layers of DESIGN.md, checked by import-linter (contracts in pyproject.toml): the real
tree keeps them, and a copy of the tree with one wrong-way import breaks the named contract."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy's packages shadow the editable install of the real ones
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_tree_keeps_every_layer_contract():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("lvmd/train/trainer.py", "from lvmd.run import runner", "lvmd layers"),        # train → run: upward
    ("lvmd/data/formats.py", "from lvmd.eval import verdict", "lvmd layers"),       # data → eval: upward
    ("store/writer.py", "import torch", "store is the bottom"),
    ("store/runs.py", "from lvmd.config import RunConfig", "store is the bottom"),
    ("tui/tail.py", "from lvmd.train import trainer", "the TUI reads the store"),
    ("lvmd/eval/verdict.py", "import textual", "lvmd below the command line"),
])
def test_a_wrong_way_import_breaks_its_contract(tmp_path, module, line, contract):
    for part in ("lvmd", "store", "tui"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "demo"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _wrong_way():\n    {line}\n")  # a lazy import counts too
    out = _lint(tmp_path)
    assert out.returncode != 0
    broken = [ln for ln in out.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), out.stdout
