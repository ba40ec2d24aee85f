"""Distributed training with torchrun: 2 gloo processes on CPU match one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imgcls.data.memory import epoch_batches

ARGS = [
    "--data",
    "digits",
    "--model",
    "tutorial-cnn",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--lr",
    "0.05",
    "--set",
    "train.amp=off",
    "log.progress=false",
]
# Stated tolerance: the same global batch gives the same averaged gradient; only float summation order differs.
WEIGHT_ATOL = 1e-4
ACCURACY_TOL = 0.005


def _imgcls(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, *launcher, "-m", "imgcls", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_training_shards_cover_each_global_batch_exactly_once(world: int):
    args = {"shuffle": True, "drop_last": True, "seed": 1, "epoch": 4}
    single = epoch_batches(103, 12, **args)
    shards = [epoch_batches(103, 12, rank=r, world=world, **args) for r in range(world)]
    assert all(len(s) == len(single) == 103 // 12 for s in shards)
    for b, batch in enumerate(single):
        assert torch.equal(torch.cat([s[b] for s in shards]), batch)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_evaluation_chunks_restore_every_sample_in_order(world: int):
    chunks = [
        torch.cat(
            epoch_batches(359, 50, shuffle=False, drop_last=False, seed=0, epoch=0, rank=r, world=world)
        )
        for r in range(world)
    ]
    assert torch.equal(torch.cat(chunks), torch.arange(359))


@pytest.mark.slow  # torchrun start-up and two processes: ~25 s
def test_two_process_ddp_matches_a_single_process_run(tmp_path: Path):
    ddp = _imgcls("train", *ARGS, "--out", str(tmp_path / "ddp"), nproc=2)
    single = _imgcls("train", *ARGS, "--out", str(tmp_path / "single"))

    a, b = (
        load_file(str(tmp_path / "ddp" / "model.safetensors")),
        load_file(str(tmp_path / "single" / "model.safetensors")),
    )
    assert max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_ATOL
    ea, eb = (json.loads((tmp_path / run / "eval.json").read_text()) for run in ("ddp", "single"))
    assert (
        ea["num_samples"] == eb["num_samples"] == 359
    )  # odd: 2 ranks get 180 + 179, nothing doubled or dropped
    assert sum(map(sum, ea["confusion_matrix"])) == 359
    assert abs(ea["accuracy"] - eb["accuracy"]) <= ACCURACY_TOL

    config = (tmp_path / "ddp" / "config.yaml").read_text()
    assert (
        "world_size: 2" in config
        and "batch_size_per_rank: 32" in config
        and "global_batch_size: 64" in config
    )
    assert "world_size=2" in ddp.stderr and ddp.stdout.count("test accuracy") == 1  # rank 0 alone reports
    assert "world_size" not in single.stderr


@pytest.mark.slow  # torchrun start-ups: ~20 s each
def test_ddp_evaluation_equals_single_process_evaluation(tmp_path: Path):
    _imgcls("train", *ARGS, "--epochs", "1", "--out", str(tmp_path / "run"))
    single = json.loads(_imgcls("eval", str(tmp_path / "run"), "--json").stdout)
    ddp = json.loads(_imgcls("eval", str(tmp_path / "run"), "--json", nproc=2).stdout)
    assert ddp["num_samples"] == single["num_samples"] == 359
    assert ddp["confusion_matrix"] == single["confusion_matrix"]
    assert ddp["accuracy"] == single["accuracy"]


@pytest.mark.slow
def test_a_timed_ddp_run_stops_on_every_rank_together(tmp_path: Path):
    # Each rank has its own clock; the run must still end at the same step everywhere (no hang).
    out = _imgcls(
        "train",
        "--data",
        "digits",
        "--model",
        "smallnet",
        "--time",
        "12s",
        "--out",
        str(tmp_path / "t"),
        nproc=2,
    )
    assert "test accuracy" in out.stdout
    assert json.loads((tmp_path / "t" / "eval.json").read_text())["num_samples"] == 359
