"""Optimizer and learning-rate schedule from the `optim` config section.

The schedule is a function of training progress (0 -> 1), so it stays right when a run is resumed
or extended and needs no per-epoch bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from imgcls.config import OptimConfig
from imgcls.models import Classifier


def build_optimizer(model: Classifier, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = model.param_groups(cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, foreach=True
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)


def lr_factor(cfg: OptimConfig, epochs: int) -> Callable[[float], float]:
    """Multiplier of the base lr at progress p in [0, 1] of the whole run."""
    warmup = min(cfg.warmup_epochs / epochs, 0.5) if epochs else 0.0

    def warm(p: float) -> float | None:
        return (p + 1e-8) / warmup if p < warmup else None

    def cosine(p: float) -> float:
        w = warm(p)
        return w if w is not None else 0.5 * (1 + math.cos(math.pi * (p - warmup) / (1 - warmup)))

    def onecycle(p: float) -> float:  # linear up to the peak at 25%, then linear down to 0
        return 0.1 + 0.9 * p / 0.25 if p < 0.25 else max(0.0, (1 - p) / 0.75)

    def step(p: float) -> float:
        w = warm(p)
        return w if w is not None else cfg.step_gamma ** int(p * epochs // cfg.step_epochs)

    def constant(p: float) -> float:
        w = warm(p)
        return w if w is not None else 1.0

    return {"cosine": cosine, "onecycle": onecycle, "step": step, "constant": constant}[cfg.schedule]


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following `lr_factor` over `epochs * steps_per_epoch` steps."""
    total = max(1, epochs * steps_per_epoch)
    factor = lr_factor(cfg, epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(min(step / total, 1.0)))
