"""Each model trains with a recipe that suits it: the colour folder that made the posts' net diverge under
the from-scratch defaults is learnt perfectly, seed after seed, and an exploding loss is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

import imgcls
from imgcls.api.planning import resolve_recipe
from imgcls.models import default_scratch_lr
from tests.conftest import write_class_tree


def colour_runs(root: Path, per_class: int, model: str, seeds: int = 5) -> list[float]:
    write_class_tree(root / "data", per_class=per_class)
    return [
        imgcls.train(
            data=str(root / "data"),
            model=model,
            batch_size=8,
            out=root / f"seed{seed}",
            overrides={"train.seed": seed, "log.progress": False},
        ).test["accuracy"]
        for seed in range(seeds)
    ]


@pytest.mark.parametrize("model", ["tutorial-cnn", "smallnet"])
def test_the_colour_folder_is_learnt_for_every_seed(model: str, tmp_path: Path):
    # Three seeds here; the larger folder below (-m slow) tries five.
    assert colour_runs(tmp_path, 24, model, seeds=3) == [1.0] * 3


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tutorial-cnn", "smallnet"])
def test_the_larger_colour_folder_is_learnt_for_every_seed(model: str, tmp_path: Path):
    assert colour_runs(tmp_path, 160, model) == [1.0] * 5


def test_the_posts_net_carries_its_own_learning_rate(tmp_path: Path):
    assert default_scratch_lr("tutorial-cnn") == 0.05 and default_scratch_lr("smallnet") is None
    cfg = resolve_recipe(imgcls.make_config(model="tutorial-cnn"))
    assert cfg.optim.lr == 0.05 and cfg.optim.name == "sgd"
    assert resolve_recipe(imgcls.make_config(model="tutorial-cnn", lr=0.2)).optim.lr == 0.2


def test_an_exploding_loss_is_reported(tmp_path: Path, caplog):
    # The recipe's 0.1 held constant on this net (no BatchNorm, batches of 8): the loss leaps to ~1e4.
    write_class_tree(tmp_path / "data", per_class=24)
    over = {"log.progress": False, "optim.schedule": "constant", "optim.warmup_epochs": 0.0}
    with caplog.at_level("WARNING", logger="imgcls"):
        imgcls.train(
            data=str(tmp_path / "data"),
            model="tutorial-cnn",
            batch_size=8,
            lr=0.3,
            epochs=2,
            out=tmp_path / "run",
            overrides=over,
        )
    assert "the training loss exploded" in caplog.text and "lower optim.lr (now 0.3)" in caplog.text
