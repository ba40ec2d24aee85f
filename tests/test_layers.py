"""Imports flow one way (shared/STYLE.md): the import-linter contracts in pyproject.toml hold, and would
catch a new upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the package under `root` shadows the installed one
    return subprocess.run(
        [LINT, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "3 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path):
    shutil.copytree(ROOT / "imgcls", tmp_path / "imgcls", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    io = tmp_path / "imgcls" / "utils" / "io.py"
    io.write_text(io.read_text() + "\n\ndef _upward():\n    from imgcls import api  # noqa: F401\n")
    predict = tmp_path / "imgcls" / "inference" / "predict.py"
    predict.write_text(
        predict.read_text() + "\n\ndef _sideways():\n    from imgcls.engine import train  # noqa: F401\n"
    )
    datasets = tmp_path / "imgcls" / "data" / "datasets.py"  # data.loader imports data.datasets: a cycle
    datasets.write_text(
        datasets.read_text() + "\n\ndef _cycle():\n    from imgcls.data import loader  # noqa: F401\n"
    )
    out = lint(tmp_path)
    assert out.returncode != 0
    assert (
        "imgcls.utils.io -> imgcls.api" in out.stdout
        and "imgcls.inference.predict -> imgcls.engine" in out.stdout
    )
    assert "No cycles are allowed in imgcls.data" in out.stdout
