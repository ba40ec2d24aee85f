"""The guarantees of folders hold for Hugging Face datasets and tar shards: exact resume after a crash or
SIGKILL (mid-epoch, in RAM and streamed), 1 process = 2 gloo processes, and the data doctor's view."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import imgcls
from imgcls.engine.state import read_state
from tests.engine.test_crash import CrashAtStep, assert_same_weights
from tests.sources import digits_parquet, saved_dataset, shard_set
from tests.utils.test_dist import ARGS, _imgcls

SMALL = {"train.amp": "off", "log.progress": False, "data.batch_size": 8, "optim.lr": 0.05, "model.width": 8}
# Everything that draws random numbers: dropout, EMA, crops, mixup.
RANDOM = {**SMALL, "model.drop_rate": 0.2, "train.ema_decay": 0.9, "data.augment": "crop", "data.mixup": 0.2}


def _source(kind: str, tmp_path: Path, split_tree: Path) -> tuple[str, dict]:
    """(data, overrides): a saved HF dataset streamed row by row, or shards decoded into RAM."""
    if kind == "hf":
        return str(saved_dataset(tmp_path / "saved", train=16, test=4)), {
            "data.cache": "off",
            "data.workers": 0,
        }
    return str(shard_set(tmp_path, split_tree)), {"data.cache": "ram"}


@pytest.mark.parametrize("kind", ["hf", "shards"])
def test_a_crash_mid_epoch_resumes_to_identical_weights(tmp_path: Path, split_tree: Path, kind: str):
    data, cache = _source(kind, tmp_path, split_tree)
    # 42 (hf) or 48 (shards) training images: 5 or 6 steps an epoch; checkpoints every 4 steps and at epoch ends.
    args = {"data": data, "epochs": 2, "overrides": {**RANDOM, **cache, "train.checkpoint_every": 4}}
    straight = imgcls.train(out=tmp_path / "a", **args)
    with pytest.raises(RuntimeError, match="simulated crash"):
        imgcls.train(out=tmp_path / "b", callbacks=[CrashAtStep(9)], **args)
    saved = read_state(tmp_path / "b" / "state.pt")
    assert saved["step"] == 8 and saved["epoch"] == 1 and saved["batch_in_epoch"] > 0  # mid-epoch 2
    resumed = imgcls.train(resume=tmp_path / "b")
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    assert straight.test["accuracy"] == resumed.test["accuracy"]


def test_the_data_doctor_sees_shards_as_it_sees_their_folder(tmp_path: Path, split_tree: Path):
    folder = imgcls.check_data(str(split_tree), out=None)
    shards = imgcls.check_data(str(shard_set(tmp_path, split_tree)), out=None)
    assert shards["ok"] and shards["findings"] == folder["findings"]
    for key in ("num_images", "class_counts", "stats"):
        assert shards[key] == folder[key], key


def _digits_source(kind: str, tmp_path: Path) -> list[str]:
    """Flags for digits as Parquet files (in RAM) or as tar shards (streamed)."""
    if kind == "parquet":
        return ["--data", digits_parquet(tmp_path / "parquet"), "--set", "data.cache=ram"]
    imgcls.pack_data("digits", tmp_path / "shards", shard_size="200KB")  # payload bytes: 2 train shards
    last = len(list((tmp_path / "shards").glob("train-*.tar"))) - 1
    pattern = f"{tmp_path / 'shards'}/train-{{000000..{last:06d}}}.tar"
    return ["--data", pattern, "--set", "data.cache=off", "data.workers=1"]


def _background(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "imgcls", "-q", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


TRAIN = ["train", *ARGS[ARGS.index("--epochs") :]]  # test_dist's run (2 epochs, batch 64), on another source


@pytest.mark.slow  # three CLI runs of digits: ~40 s each source
@pytest.mark.parametrize("kind", ["parquet", "shards"])
def test_sigkill_mid_epoch_then_resume_ends_with_identical_weights(tmp_path: Path, kind: str):
    source = _digits_source(kind, tmp_path)
    extra = ["train.checkpoint_every=3", "train.deterministic=true", "train.threads=1", "data.augment=crop"]
    command = lambda out: [*TRAIN, "--out", str(out), *source, *extra]  # noqa: E731
    _imgcls(*command(tmp_path / "straight"))
    victim = _background(*command(tmp_path / "killed"))
    state_file = tmp_path / "killed" / "state.pt"
    deadline = time.monotonic() + 120
    while not state_file.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.02)
    time.sleep(random.Random(11).uniform(0.0, 0.5))
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    assert read_state(state_file)["epoch"] < 2
    _imgcls("train", "--resume", str(tmp_path / "killed"))
    assert_same_weights(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.slow  # torchrun start-up and two processes: ~30 s each source
@pytest.mark.parametrize("kind", ["parquet", "shards"])
def test_two_gloo_processes_match_one(tmp_path: Path, kind: str):
    source = _digits_source(kind, tmp_path)
    # No BatchNorm (per-rank batch statistics differ by design); the built-in's 8 px, as test_dist compares.
    model = ["data.image_size=8", "--model", "tutorial-cnn"]  # the first extends the source's --set
    _imgcls(*TRAIN, "--out", str(tmp_path / "ddp"), *source, *model, nproc=2)
    _imgcls(*TRAIN, "--out", str(tmp_path / "single"), *source, *model)
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("ddp", "single"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    ea, eb = (json.loads((tmp_path / run / "eval.json").read_text()) for run in ("ddp", "single"))
    assert ea["num_samples"] == eb["num_samples"] and abs(ea["accuracy"] - eb["accuracy"]) <= 0.005
    assert torch.tensor(ea["confusion_matrix"]).sum() == ea["num_samples"]
