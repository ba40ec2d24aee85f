"""Time budgets and run-length planning."""

from pathlib import Path

import pytest
import torch

import imgcls
from imgcls.api.planning import run_length, size_to_run
from imgcls.api.runs import run_config
from imgcls.config import ConfigError, load, parse_duration
from imgcls.data.datasets import open_dataset
from imgcls.engine.state import read_state
from imgcls.engine.train import Plan


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1.5h", 5400.0), (" 20S ", 20.0)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "m", "-5s", "five minutes", "0"])
def test_bad_durations(bad):
    with pytest.raises(ConfigError, match="train.time"):
        load(None, {"train.time": bad})


def test_a_budgeted_run_ends_within_its_budget(tmp_path: Path):
    result = imgcls.train(
        data="digits", time="10s", out=tmp_path / "r", overrides={"log.progress": False, "train.amp": "off"}
    )  # set-up takes ~2 s idle, over 5.5 s when the other test worker keeps both cores busy: 10 s leaves room
    # Judged on the run's own clock (no wall-clock bound on a shared machine): training took what the
    # budget left after set-up, and the schedule ran its course in that time.
    # How far it gets in that time is the machine's business (bench/ measures it), so no accuracy bound.
    trained = read_state(result.run_dir / "state.pt")["train_seconds"]
    assert 0 < trained <= 10
    assert result.history[-1]["lr"] < 0.01 * 0.1  # the schedule annealed to (near) zero on time
    assert result.test["num_samples"] == 359
    # A budgeted run with a test split validates nothing: the images it would carve for that train too.
    cfg = run_config(result.run_dir)
    assert cfg.data.val_split == 0.0 and len(open_dataset(cfg.data).train) == 1797 - 359


# digits: 1,797 images, 359 of them its test split; 143 of the rest carved for validation
@pytest.mark.parametrize(("unused_val", "train_size"), [("train", 1797 - 359), ("keep", 1797 - 359 - 143)])
def test_unused_val_keep_holds_the_carved_validation_images_out(unused_val, train_size):
    from imgcls.api.training import train_on_unused_val

    cfg = load(None, {"data.name": "digits", "train.time": "10s", "data.unused_val": unused_val})
    bundle = open_dataset(cfg.data)
    planned, merged = train_on_unused_val(cfg, bundle)
    assert len(merged.train) == train_size and (merged.val is None) == (unused_val == "train")
    assert planned.data.val_split == (0.0 if unused_val == "train" else 0.1)


def test_too_small_a_budget_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="leaves no time to train"):
        imgcls.train(data="digits", time="0.01s", out=tmp_path / "r", overrides={"log.progress": False})


def test_plan_progress_by_steps_and_by_clock():
    assert Plan(epochs=2, steps_per_epoch=10).progress(step=5, train_seconds=999) == 0.25
    timed = Plan(epochs=2, steps_per_epoch=10, budget_s=20)
    assert timed.progress(step=999, train_seconds=5) == 0.25 and timed.max_epochs > 1000


@pytest.mark.parametrize(
    ("overrides", "length", "width", "augment"),
    [
        ({"train.epochs": 4}, "short", 8, "none"),
        ({"train.time": "20s"}, "short", 8, "none"),
        ({"train.time": "2m"}, "short", 8, "none"),
        ({"train.epochs": 10}, "medium", 16, "flip"),
        ({"train.time": "5m"}, "medium", 16, "flip"),
        ({"train.time": "20m"}, "long", 32, "crop-flip"),
        ({"train.time": "20m", "model.width": 12, "data.augment": "crop"}, "long", 12, "crop"),
    ],
)
def test_auto_settings_follow_the_run_length(overrides, length, width, augment):
    cfg = load(None, overrides)
    assert run_length(cfg) == length
    sized = size_to_run(cfg, flip_ok=True)
    assert sized.model.width == width and sized.data.augment == augment


def test_no_flips_for_data_whose_labels_flips_change():
    assert size_to_run(load(None, {"train.epochs": 20}), flip_ok=False).data.augment == "crop"
    assert size_to_run(load(None, {"train.epochs": 10}), flip_ok=False).data.augment == "crop"
    assert size_to_run(load(None, {"train.epochs": 3}), flip_ok=False).data.augment == "none"


def test_flip_tta_averages_image_and_mirror():
    from imgcls.models import build_model

    model = build_model("smallnet", num_classes=3, in_chans=1, input_size=16, width=4).eval()
    x = torch.rand(2, 1, 16, 16)
    plain = model(x)
    model.meta.tta = "flip"
    assert torch.allclose(
        model(x), (plain + model.forward_head(model.forward_features(x.flip(3)))) / 2, atol=1e-6
    )
    model.train()
    assert model(x).shape == (2, 3)  # training forward ignores TTA


def test_shift_tta_adds_the_image_moved_one_pixel_both_ways_at_half_weight():
    from imgcls.models import build_model

    model = build_model("smallnet", num_classes=3, in_chans=1, input_size=16, width=4).eval()
    x = torch.rand(2, 1, 16, 16)
    logits = lambda image: model.forward_head(model.forward_features(image))  # noqa: E731
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :16, :16], padded[..., 2:, 2:]
    assert torch.equal(up_left[..., 1:, 1:], x[..., :15, :15])  # moved by one pixel, not cropped elsewhere
    model.meta.tta = "shift"
    expected = (logits(x) + (logits(up_left) + logits(down_right)) / 2) / 2
    assert torch.allclose(model(x), expected, atol=1e-6)
    model.meta.tta = "flip-shift"
    both = [(logits(v) + logits(v.flip(3))) / 2 for v in (x, up_left, down_right)]
    assert torch.allclose(model(x), (both[0] + (both[1] + both[2]) / 2) / 2, atol=1e-6)


@pytest.mark.parametrize(
    ("augment", "tta"), [("none", "off"), ("flip", "flip"), ("crop", "shift"), ("crop-flip", "flip-shift")]
)
def test_auto_tta_uses_the_moves_training_saw(augment, tta):
    from imgcls.api.planning import plan_run
    from imgcls.data.types import DataBundle, Split

    images = torch.zeros(8, 1, 12, 12, dtype=torch.uint8)
    bundle = DataBundle("tiny", ["a", "b"], Split(torch.tensor([0, 1] * 4), images), channels=1)
    assert plan_run(load(None, {"data.augment": augment}), bundle).train.tta == tta
    chosen = load(None, {"data.augment": augment, "train.tta": "shift"})
    assert plan_run(chosen, bundle).train.tta == "shift"  # a chosen TTA stays


def test_unset_epochs_give_a_small_dataset_enough_steps():
    from imgcls.api.planning import resolve_epochs

    cfg = load(None, {"data.batch_size": 8})
    assert cfg.train.epochs is None
    assert resolve_epochs(load(None), 54_000).train.epochs == 4  # Fashion-MNIST: 422 steps per epoch
    assert resolve_epochs(cfg, 60).train.epochs == 13  # 8 steps per epoch: 13 epochs reach 100 steps
    assert resolve_epochs(cfg, 3).train.epochs == 30  # one step per epoch: at most 30 epochs
    assert resolve_epochs(cfg.replace({"train.epochs": 2}), 60).train.epochs == 2  # what is said is used
