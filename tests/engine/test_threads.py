"""Choosing the thread count: the fastest of a few counts, timed on training steps that leave the model
and the random state as they were; a busy core makes training pick fewer threads (`-m slow`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from imgcls.config import load
from imgcls.engine.threads import fastest_threads, thread_candidates, training_step
from imgcls.models import build_model
from imgcls.utils.env import available_cores


def test_candidates_are_all_cores_one_fewer_half_and_one():
    assert thread_candidates(2) == [2, 1]
    assert thread_candidates(8) == [8, 7, 4, 1]
    assert thread_candidates(1) == [1]


def test_the_fastest_count_is_kept(monkeypatch):
    before = torch.get_num_threads()
    now = [0.0]
    cost = {4: 3.0, 3: 1.0, 2: 2.0, 1: 5.0}  # seconds per step at each count: one core is busy

    def step():
        now[0] += cost[torch.get_num_threads()]

    try:
        best, seconds = fastest_threads(step, [4, 3, 2, 1], steps=2, clock=lambda: now[0])
        assert best == 3 and torch.get_num_threads() == 3
        assert seconds == {4: 3.0, 3: 1.0, 2: 2.0, 1: 5.0}
    finally:
        torch.set_num_threads(before)


def test_the_probe_changes_neither_the_model_nor_the_random_state():
    model = build_model("smallnet", num_classes=3, in_chans=1, input_size=28)
    model.meta.classes = ["a", "b", "c"]
    cfg = load(None, {"train.amp": "off"})
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    step = training_step(model, cfg, batch_size=8)
    step()
    step()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # BatchNorm stats too
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.skipif(available_cores() < 2, reason="needs 2 cores")
def test_a_busy_core_makes_training_use_fewer_threads(tmp_path):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {sorted(os.sched_getaffinity(0))[0]})
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "imgcls",
                "train",
                "--data",
                "digits",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "r"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    finally:
        busy.kill()
    assert out.returncode == 0, out.stderr[-2000:]
    chosen = re.search(r"threads: (\d+) of (\d+) cores: other processes are using the rest", out.stderr)
    assert chosen and int(chosen[1]) < int(chosen[2]) == available_cores(), out.stderr[-2000:]
