"""Any name, any locale: non-ASCII and non-UTF-8 names under a C locale with an ASCII-only terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image

C_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}


def imgcls_c(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **C_LOCALE}
    return subprocess.run(
        [sys.executable, "-m", "imgcls", *args], cwd=cwd, env=env, capture_output=True, timeout=300
    )


@pytest.fixture(scope="module")
def named_tree(tmp_path_factory) -> Path:
    """Classes named in three scripts, and a file whose name is not valid UTF-8."""
    root = tmp_path_factory.mktemp("names")
    tree = os.fsencode(root / "data")
    rng = np.random.default_rng(0)
    for label, name in enumerate(("café", "猫", "Ünïcode dog")):
        folder = os.path.join(tree, name.encode())
        os.makedirs(folder)
        for i in range(10):
            make_image(label, rng).save(
                os.path.join(folder, f"{i}.png".encode()).decode("utf-8", "surrogateescape")
            )
    bad = os.path.join(tree, "café".encode(), b"caf\xe9-latin1.png")  # Latin-1 bytes: not UTF-8
    make_image(0, rng).save(bad.decode("utf-8", "surrogateescape"))
    return root


def test_train_eval_predict_check_under_a_c_locale(named_tree: Path):
    data, run = named_tree / "data", named_tree / "run"
    steps = {
        "train": [
            "train",
            "--data",
            str(data),
            "--model",
            "tutorial-cnn",
            "--epochs",
            "2",
            "--out",
            str(run),
            "--set",
            "data.image_size=16",
            "log.progress=false",
        ],
        "eval": ["eval", str(run)],
        "predict": ["predict", str(run), str(data)],
        "predict-csv": ["predict", str(run), str(data), "--out", str(named_tree / "p.csv")],
        "check": [
            "data",
            "check",
            str(data),
            "--out",
            str(named_tree / "c.json"),
            "--html",
            str(named_tree / "c.html"),
        ],
    }
    stdout = {}
    for name, argv in steps.items():
        out = imgcls_c(*argv, cwd=named_tree)
        err = out.stderr.decode("ascii")  # an ASCII-only terminal: escapes, never raw UTF-8 bytes
        assert out.returncode in ((0, 1) if name == "check" else (0,)), (name, err[-2000:])
        assert "Traceback" not in err, (name, err[-2000:])
        stdout[name] = out.stdout.decode("ascii")
    assert (
        "caf\\udce9-latin1.png" in stdout["predict"] and "\\u732b" in stdout["predict"]
    )  # escaped, not lost
    assert (named_tree / "p.csv").stat().st_size > 0
