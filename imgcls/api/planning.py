"""Planning a run: the config from its sources, then everything that can be known before training
(recipe, optimizer, sizes, width, augmentation, epochs, TTA) resolved in one step into the final Config,
and the time plan of a budgeted run."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from imgcls import config as config_lib
from imgcls.config import Config
from imgcls.data.loader import resolve_channels
from imgcls.data.types import DataBundle, Split
from imgcls.engine.evaluate import predict_logits
from imgcls.engine.optim import resolve_optim
from imgcls.engine.train import Plan
from imgcls.models import Classifier, default_input_size, default_scratch_lr
from imgcls.models.checkpoint import run_meta
from imgcls.utils.env import autocast_dtype

log = logging.getLogger("imgcls")
SHORTHANDS = {
    "data": "data.name",
    "model": "model.name",
    "epochs": "train.epochs",
    "batch_size": "data.batch_size",
    "lr": "optim.lr",
    "out": "out",
    "time": "train.time",
}
DEFAULT_EPOCHS = 4
MIN_STEPS = 100  # optimizer steps a run with the default epoch count takes at least...
MAX_AUTO_EPOCHS = 30  # ...within this many epochs
FINISH_SECONDS = 2.5  # saving, plots and the report after the final evaluation
MULTILABEL_FINISH_SECONDS = (
    4.5  # ... with the multi-label report's precision-recall and co-occurrence figures
)
SMALLNET_WIDTH = {"short": 8, "medium": 16, "long": 32}
AUGMENT = {"short": "none", "medium": "flip", "long": "crop-flip"}  # for data whose labels mirroring keeps
# Test-time views help only a model that saw such moves in training (flip TTA on a model trained
# without flips cost 1 point): auto TTA uses the moves of the training's augmentation.
TRAINED_VIEWS = {"none": "off", "flip": "flip", "crop": "shift", "crop-flip": "flip-shift"}


def make_config(
    config: str | Path | None = None, overrides: dict[str, Any] | None = None, **shorthands: Any
) -> Config:
    """Defaults < YAML file < dotted overrides < shorthands (data=, model=, epochs=, batch_size=, lr=, out=).

    Example:
        >>> imgcls.make_config(data="digits", overrides={"train.epochs": 3}).train.epochs   # doctest: +SKIP
        3
    """
    unknown = set(shorthands) - SHORTHANDS.keys()
    if unknown:
        raise config_lib.ConfigError(
            f"unknown argument(s) {', '.join(sorted(unknown))}; use overrides={{'section.key': value}}"
        )
    merged = dict(overrides or {})
    merged |= {SHORTHANDS[k]: v for k, v in shorthands.items() if v is not None}
    return config_lib.load(config, merged)


def plan_run(cfg: Config, bundle: DataBundle, default_epochs: int = DEFAULT_EPOCHS) -> Config:
    """The run's final config: every `auto` and unset setting that the data and model decide, resolved.

    The dataset is opened (file lists, nothing decoded yet); what comes back is what config.yaml records
    and what the engine and data read. Only `optim.lr=auto` is left for the LR range test.
    """
    cfg = resolve_epochs(size_to_run(resolve_recipe(cfg), bundle.flip_ok), len(bundle.train), default_epochs)
    size = cfg.data.image_size or bundle.image_size or default_input_size(cfg.model.name)
    tta = cfg.train.tta if cfg.train.tta != "auto" else TRAINED_VIEWS[cfg.data.augment]
    # The task as found (auto resolved): eval on other data reads its labels the way the model was trained.
    return cfg.replace(
        {
            "data.image_size": size,
            "data.channels": resolve_channels(bundle, cfg.data),
            "train.tta": tta,
            "data.task": bundle.task,
        }
    )


def run_length(cfg: Config) -> str:
    """short (<= 5 epochs or 150 s), medium (<= 15 epochs or 8 min) or long."""
    if cfg.train.time is not None:
        seconds = config_lib.parse_duration(cfg.train.time)
        return "short" if seconds <= 150 else "medium" if seconds <= 480 else "long"
    epochs = cfg.train.epochs or DEFAULT_EPOCHS
    return "short" if epochs <= 5 else "medium" if epochs <= 15 else "long"


def resolve_epochs(cfg: Config, num_train: int, default: int = DEFAULT_EPOCHS) -> Config:
    """`train.epochs` unset: `default`, or as many (up to MAX_AUTO_EPOCHS) as give MIN_STEPS optimizer
    steps. A run of a few dozen steps leaves BatchNorm's running statistics behind the weights, and
    evaluation then misjudges a model that has learnt (a 72-image folder: 32 steps in 4 epochs)."""
    if cfg.train.epochs is not None:
        return cfg
    steps = max(1, math.ceil(num_train / cfg.data.batch_size))
    epochs = max(default, min(MAX_AUTO_EPOCHS, math.ceil(MIN_STEPS / steps)))
    if epochs > default and cfg.train.time is None:
        log.info(
            "a small dataset (%d steps per epoch): %d epochs, for at least %d optimizer steps (set --epochs to choose)",
            steps,
            epochs,
            min(MIN_STEPS, MAX_AUTO_EPOCHS * steps),
        )
    return cfg.replace({"train.epochs": epochs})


def resolve_recipe(cfg: Config) -> Config:
    """Resolves the recipe and the optimizer defaults that follow from it.

    Starting from pretrained weights (`model.pretrained`, `model.weights`) means fine-tuning: AdamW at
    3e-3 with weight decay 0.01, a head-only phase, then discriminative learning rates. From scratch:
    SGD (nesterov) at 0.1 with weight decay 5e-4. Explicit settings always win.
    """
    updates: dict[str, Any] = {}
    recipe = cfg.train.recipe
    if recipe == "auto":
        recipe = "finetune" if cfg.model.pretrained or cfg.model.weights else "scratch"
        updates["train.recipe"] = recipe
    optim = resolve_optim(
        cfg.optim, finetune=recipe == "finetune", scratch_lr=default_scratch_lr(cfg.model.name)
    )
    updates |= {"optim.name": optim.name, "optim.lr": optim.lr, "optim.weight_decay": optim.weight_decay}
    if (
        cfg.model.weights and cfg.model.width is None
    ):  # another imgcls run's weights: its architecture options
        meta = run_meta(cfg.model.weights) or {}
        if meta.get("name") == cfg.model.name and "width" in meta.get("arch", {}):
            updates["model.width"] = meta["arch"]["width"]
    return cfg.replace(updates)


def size_to_run(cfg: Config, flip_ok: bool) -> Config:
    """Resolves the `auto` settings that depend on the run's length: smallnet's width and augmentation.

    Short runs learn most per second with a narrow net and no augmentation (a few passes over the
    data do not overfit); longer runs can afford width, and need augmentation: mirror images from the
    medium length on, random translation too for long runs (on Fashion-MNIST translation cost a point at 2
    minutes, and 0.46 points at 5, where mirroring alone won: README, Speed).
    """
    length = run_length(cfg)
    updates: dict[str, Any] = {}
    if cfg.model.name == "smallnet" and cfg.model.width is None:
        updates["model.width"] = SMALLNET_WIDTH[length]
    if cfg.data.augment == "auto":
        updates["data.augment"] = AUGMENT[length] if flip_ok else ("none" if length == "short" else "crop")
    return cfg.replace(updates)


def time_plan(
    cfg: Config, start: float, model: Classifier, steps_per_epoch: int, eval_splits: list[Split]
) -> Plan:
    """Epochs, or the seconds of training a time budget leaves after set-up and the final evaluation."""
    if cfg.train.time is None:
        return Plan(cfg.train.epochs, steps_per_epoch)
    budget = config_lib.parse_duration(cfg.train.time)
    finish = MULTILABEL_FINISH_SECONDS if model.meta.multilabel else FINISH_SECONDS
    reserve = estimate_eval_seconds(model, sum(len(s) for s in eval_splits), cfg) + finish
    left = budget - (time.perf_counter() - start) - reserve
    if left <= 0:
        raise config_lib.ConfigError(
            f"train.time={cfg.train.time} leaves no time to train: set-up took {time.perf_counter() - start:.1f}s "
            f"and the final evaluation needs about {reserve:.1f}s"
        )
    log.info("time budget %s: %.1fs of training, %.1fs kept for evaluation", cfg.train.time, left, reserve)
    return Plan(cfg.train.epochs, steps_per_epoch, budget_s=left)


def estimate_eval_seconds(model: Classifier, num_images: int, cfg: Config) -> float:
    """Times a forward pass of one evaluation batch (it also warms up the kernels) and scales it up."""
    if not num_images:
        return 0.0
    device = next(model.parameters()).device
    n = min(num_images, cfg.data.eval_batch_size, 512)
    x = torch.rand(n, model.meta.in_chans, model.meta.input_size, model.meta.input_size, device=device)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fake = [(x, torch.zeros(n, dtype=torch.long, device=device))]
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    for _ in range(2):  # warm-up: the first calls build the kernels
        predict_logits(model, fake, amp_dtype=amp_dtype, channels_last=False)
    t = time.perf_counter()
    predict_logits(model, fake, amp_dtype=amp_dtype, channels_last=False)
    return (time.perf_counter() - t) * num_images / n * 1.2
