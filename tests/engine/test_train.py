"""Training: a tiny run learns, resume equals an uninterrupted run, schedules have the right shape."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import imgcls
from imgcls.config import OptimConfig
from imgcls.engine.optim import lr_factor
from imgcls.engine.state import read_state
from tests.conftest import RUN_FILES

FAST = {"train.amp": "off", "log.progress": False, "data.batch_size": 64, "optim.lr": 0.05}


def test_tiny_run_improves_and_writes_the_run_folder(tmp_path: Path):
    result = imgcls.train(data="digits", model="tutorial-cnn", epochs=6, out=tmp_path / "run", overrides=FAST)
    history = result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.8 and result.test["accuracy"] > 0.8
    files = {p.name for p in result.run_dir.iterdir()}
    expected = set(RUN_FILES)
    assert expected <= files
    assert len((result.run_dir / "metrics.csv").read_text().strip().splitlines()) == 7  # header + 6 epochs
    assert not [p for p in result.run_dir.iterdir() if p.name.endswith(".tmp")]


class StopAfter:
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_eval_end(self, state) -> None:
        state.should_stop = state.epoch >= self.epochs


def test_resume_equals_an_uninterrupted_run_bitwise(tmp_path: Path):
    # Every piece of state at once: dropout, EMA, augmentation and mixup draws, Muon's momentum buffers.
    over = {**FAST, "model.drop_rate": 0.2, "train.ema_decay": 0.9, "data.augment": "crop", "data.mixup": 0.2}
    over |= {"optim.name": "muon"}
    args = {"data": "digits", "model": "smallnet", "epochs": 3, "overrides": over}
    straight = imgcls.train(out=tmp_path / "a", **args)
    imgcls.train(out=tmp_path / "b", callbacks=[StopAfter(1)], **args)  # "crashes" after epoch 1
    assert read_state(tmp_path / "b" / "state.pt")["epoch"] == 1
    resumed = imgcls.train(resume=tmp_path / "b")
    a, b = read_state(tmp_path / "a" / "state.pt"), read_state(tmp_path / "b" / "state.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    for part in ("model", "ema"):
        for key, tensor in a[part].items():
            assert torch.equal(tensor, b[part][key]), f"{part}.{key}"
    assert straight.test["accuracy"] == resumed.test["accuracy"] > 0.8  # and Muon learns the digits
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


class Snapshots:
    """The weights that were evaluated at each epoch's checkpoint."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def on_checkpoint(self, state) -> None:
        self.by_epoch[state.epoch] = {k: v.detach().clone() for k, v in state.eval_model.state_dict().items()}


def test_safetensors_weights_match_the_best_epoch(tmp_path: Path):
    snapshots = Snapshots()
    result = imgcls.train(
        data="digits",
        model="tutorial-cnn",
        epochs=3,
        out=tmp_path / "r",
        overrides=FAST,
        callbacks=[snapshots],
    )
    weights = load_file(str(result.run_dir / "model.safetensors"))
    best = json.loads((result.run_dir / "model.json").read_text())["best_epoch"]
    assert best == max(range(1, 4), key=lambda e: (result.history[e - 1]["val_acc"], -e))  # first of the best
    assert all(torch.equal(weights[k], v) for k, v in snapshots.by_epoch[best].items())


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "step", "constant"])
def test_schedules_warm_up_and_stay_positive(schedule):
    cfg = OptimConfig(schedule=schedule, warmup_epochs=1, step_epochs=2)
    f = lr_factor(cfg, epochs=10)
    values = [f(p / 100) for p in range(101)]
    assert all(v >= 0 for v in values) and max(values) <= 1.0 + 1e-6
    assert values[1] < values[10]  # warming up
    if schedule in ("cosine", "onecycle"):
        assert values[-1] < 0.01


def test_tensorboard_logging(tmp_path: Path):
    pytest.importorskip("tensorboard")
    imgcls.train(
        data="digits",
        model="tutorial-cnn",
        epochs=1,
        out=tmp_path / "r",
        overrides={**FAST, "log.tensorboard": True},
    )
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_compiled_training(tmp_path: Path):
    """torch.compile on CPU takes ~1 minute to compile, so this runs with the slow tests."""
    result = imgcls.train(
        data="digits",
        epochs=2,
        out=tmp_path / "r",
        overrides={**FAST, "train.compile": True, "model.width": 4},
    )
    assert result.test["accuracy"] > 0.5


def test_ema_weights_are_the_ones_saved(tmp_path: Path):
    result = imgcls.train(
        data="digits",
        model="tutorial-cnn",
        epochs=2,
        out=tmp_path / "r",
        overrides={**FAST, "train.ema_decay": 0.5},
    )
    saved = load_file(str(result.run_dir / "model.safetensors"))
    state = read_state(result.run_dir / "state.pt")
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert torch.equal(saved["head.weight"], ema["head.weight"])
    assert not torch.equal(saved["head.weight"], state["model"]["head.weight"])
