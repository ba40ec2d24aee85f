"""Crash safety: mid-epoch checkpoints, exact resume after SIGKILL, non-finite losses, broken checkpoints."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import imgcls
from imgcls import cli
from imgcls.engine.state import read_state
from imgcls.engine.train import TrainingError

FAST = {"train.amp": "off", "log.progress": False, "data.batch_size": 64, "optim.lr": 0.05}
# Everything that draws random numbers during training: dropout, EMA, crops, mixup.
RANDOM = {**FAST, "model.drop_rate": 0.2, "train.ema_decay": 0.9, "data.augment": "crop", "data.mixup": 0.2}


class CrashAtStep:
    """Simulates a crash (an exception out of the loop) right after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        if state.step == self.step:
            raise RuntimeError("simulated crash")


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = read_state(a / "state.pt"), read_state(b / "state.pt")
    assert sa["step"] == sb["step"] and sa["epoch"] == sb["epoch"]
    for part in ("model", "ema"):
        for key, tensor in (sa[part] or {}).items():
            assert torch.equal(tensor, sb[part][key]), f"{part}.{key} differs"


def test_mid_epoch_checkpoint_resumes_exactly(tmp_path: Path):
    # digits: 1295 training images / 64 = 20 steps per epoch; checkpoints at steps 7, 14, 21, ...
    args = {
        "data": "digits",
        "model": "smallnet",
        "epochs": 2,
        "overrides": {**RANDOM, "train.checkpoint_every": 7},
    }
    straight = imgcls.train(out=tmp_path / "a", **args)
    with pytest.raises(RuntimeError, match="simulated crash"):
        imgcls.train(out=tmp_path / "b", callbacks=[CrashAtStep(17)], **args)
    saved = read_state(tmp_path / "b" / "state.pt")
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (14, 0, 14)  # the last complete one
    resumed = imgcls.train(resume=tmp_path / "b")
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    assert straight.test["accuracy"] == resumed.test["accuracy"]


def _train_command(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imgcls",
        "-q",
        "train",
        "--data",
        "digits",
        "--model",
        "smallnet",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--set",
        "data.image_size=24",
        "model.width=12",
        "train.checkpoint_every=3",
        "train.deterministic=true",
        "train.threads=1",
        "model.drop_rate=0.1",
        "data.augment=crop",
        "train.amp=off",
        "log.progress=false",
        *extra,
    ]


def test_sigkill_mid_epoch_then_resume_ends_with_identical_weights(tmp_path: Path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(
        _train_command(tmp_path / "straight"), check=True, env=env, capture_output=True, timeout=300
    )

    victim = subprocess.Popen(
        _train_command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state_file = tmp_path / "killed" / "state.pt"
    deadline = time.monotonic() + 120
    while not state_file.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.02)
    time.sleep(random.Random(7).uniform(0.0, 0.6))  # a moment of the run, between or during checkpoint writes
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"

    at_kill = read_state(state_file)  # never half-written: this must load
    assert at_kill["epoch"] < 2
    resumed = subprocess.run(
        [sys.executable, "-m", "imgcls", "-q", "train", "--resume", str(tmp_path / "killed")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "straight", tmp_path / "killed")


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path):
    # A huge learning rate blows the weights up within a few steps.
    over = {**FAST, "optim.lr": 1e12, "optim.schedule": "constant", "optim.warmup_epochs": 0.0}
    with pytest.raises(
        TrainingError,
        match=r"the loss became non-finite \(NaN or inf\) in its first steps, by step \d+ \(epoch 1\)",
    ):
        imgcls.train(data="digits", model="tutorial-cnn", epochs=2, out=tmp_path / "r", overrides=over)
    assert not (
        tmp_path / "r" / "state.pt"
    ).exists()  # it failed before the first checkpoint: nothing written

    # A step schedule that multiplies the lr by 1e13 after epoch 1: epoch 1 is fine, epoch 2 diverges.
    over = {**FAST, "optim.schedule": "step", "optim.step_epochs": 1, "optim.step_gamma": 1e13}
    with pytest.raises(TrainingError, match=r"last good checkpoint, .*state.pt \(after step 20\), is kept"):
        imgcls.train(data="digits", model="tutorial-cnn", epochs=3, out=tmp_path / "g", overrides=over)
    kept = read_state(tmp_path / "g" / "state.pt")
    assert kept["epoch"] == 1 and kept["step"] == 20
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


def test_skip_nonfinite_counts_skipped_steps(tmp_path: Path, caplog):
    over = {**FAST, "optim.lr": 1e12, "optim.schedule": "constant", "train.skip_nonfinite": True}
    with pytest.raises(TrainingError, match="every step of epoch 2 had a non-finite loss"):
        imgcls.train(data="digits", model="tutorial-cnn", epochs=3, out=tmp_path / "r", overrides=over)
    first = read_state(tmp_path / "r" / "state.pt")
    assert first["epoch"] == 1 and 0 < first["skipped_steps"] <= 20
    assert "skipped step" in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_resume_from_a_damaged_checkpoint_is_one_clear_error(tmp_path: Path, damage: str, capsys):
    # In-process through cli.main (tests/test_cli.py and test_terminal.py cover real processes).
    run = imgcls.train(
        data="digits", model="tutorial-cnn", epochs=1, out=tmp_path / "r", overrides=FAST
    ).run_dir
    path = run / "state.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"error: {path} is not a readable imgcls checkpoint")
    assert "Traceback" not in err


def test_resume_with_another_class_count_is_one_clear_error(tmp_path: Path, image_tree: Path, capsys):
    run = imgcls.train(
        data="digits", model="tutorial-cnn", epochs=1, out=tmp_path / "r", overrides=FAST
    ).run_dir
    capsys.readouterr()
    argv = [
        "train",
        "--resume",
        str(run),
        "--data",
        str(image_tree),
        "--set",
        "data.channels=1",
        "data.image_size=8",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "does not fit this model/optimizer" in err and "Traceback" not in err
