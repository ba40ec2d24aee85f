"""The installed `imgcls` in a real (pseudo-)terminal, the way a person meets it: the live progress bar
draws, the final table prints, Ctrl-C stops a run with exit 130 and a resume hint, and no command ends
in a traceback. CI has no terminal: without these tests nothing would run the live paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import terminal
from tests.conftest import write_class_tree


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("terminal")
    write_class_tree(root / "photos", per_class=4)
    return root


def imgcls(*args: str, **kwargs) -> terminal.Screen:
    screen = terminal.run([terminal.IMGCLS, *args], **kwargs)
    assert "Traceback" not in screen.text, screen.text[-3000:]
    return screen


def test_train_then_every_command_in_a_terminal(workdir: Path):
    run = workdir / "run"
    train = imgcls(
        "train",
        "--data",
        "digits",
        "--model",
        "tutorial-cnn",
        "--epochs",
        "2",
        "--out",
        str(run),
        cwd=workdir,
    )
    assert train.exit_code == 0, train.text[-3000:]
    assert "━" in train.raw  # rich's live bar was drawn (it is transient: gone from the final screen)
    assert "epoch 1/2" in train.text and "epoch 2/2" in train.text
    assert "macro avg" in train.text and "test accuracy" in train.text  # the final table and line

    evaluate = imgcls("eval", str(run))
    assert evaluate.exit_code == 0 and "macro avg" in evaluate.text, evaluate.text[-2000:]

    digit = workdir / "digit.png"
    from PIL import Image

    Image.new("L", (8, 8), 0).save(digit)
    predict = imgcls("predict", str(run), str(digit))
    assert predict.exit_code == 0 and f"{digit}:" in predict.text, predict.text[-2000:]

    check = imgcls("data", "check", str(workdir / "photos"), "--out", str(workdir / "check.json"))
    assert check.exit_code == 0 and "photos: 12 images checked" in check.text, check.text[-2000:]

    export = imgcls("export", str(run))
    assert export.exit_code == 0 and "top-1 agreement with PyTorch 100.00%" in export.text, export.text[
        -2000:
    ]


def test_ctrl_c_stops_with_a_resume_hint_and_the_run_resumes(workdir: Path):
    run = workdir / "interrupted"
    screen = imgcls(
        "train",
        "--data",
        "digits",
        "--model",
        "smallnet",
        "--epochs",
        "40",
        "--out",
        str(run),
        interrupt_after="epoch 2/40",
    )  # epoch 1 is saved by then
    assert screen.exit_code == 130, screen.text[-2000:]
    words = " ".join(screen.text.split())  # rich wraps long lines at the terminal's width
    assert f"continue with: imgcls train --resume {run}" in words, screen.text[-2000:]
    resumed = imgcls("train", "--resume", str(run), "--epochs", "3")
    assert resumed.exit_code == 0, resumed.text[-2000:]
    assert "resumed" in resumed.text and "epoch 3/3" in resumed.text
