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


def lr_factor(cfg: OptimConfig, epochs: float | None) -> Callable[[float], float]:
    """Multiplier of the base lr at progress p in [0, 1] of the whole run (epochs None: time-budgeted)."""
    # Time-budgeted runs do not know their epoch count: warm up over 5% of the run, step every third.
    warmup = min(cfg.warmup_epochs / epochs, 0.5) if epochs else (0.05 if cfg.warmup_epochs > 0 else 0.0)
    step_every = cfg.step_epochs / epochs if epochs else 1 / 3

    def warm(p: float) -> float | None:
        return (p + 1e-8) / warmup if p < warmup else None

    def cosine(p: float) -> float:
        w = warm(p)
        return w if w is not None else 0.5 * (1 + math.cos(math.pi * (p - warmup) / (1 - warmup)))

    def onecycle(p: float) -> float:  # linear up to the peak at 25%, then linear down to 0
        return 0.1 + 0.9 * p / 0.25 if p < 0.25 else max(0.0, (1 - p) / 0.75)

    def step(p: float) -> float:
        w = warm(p)
        return w if w is not None else cfg.step_gamma ** int(p // step_every + 1e-9)

    def constant(p: float) -> float:
        w = warm(p)
        return w if w is not None else 1.0

    return {"cosine": cosine, "onecycle": onecycle, "step": step, "constant": constant}[cfg.schedule]


class ProgressSchedule:
    """Sets each group's lr to its base lr times `factor(progress)`, progress being in [0, 1].

    Progress comes from the training loop: steps done / steps planned, or training seconds / time
    budget. So one schedule serves epoch-planned and time-budgeted runs, and an extended run re-plans.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[float], float]) -> None:
        self.optimizer, self.factor = optimizer, factor
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.set(0.0)

    def set(self, progress: float) -> None:
        scale = self.factor(min(max(progress, 0.0), 1.0))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale

    def state_dict(self) -> dict[str, list[float]]:
        return {"base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.base_lrs = list(state["base_lrs"])


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: float | None
) -> ProgressSchedule:
    """The configured schedule shape; `epochs` (planned or estimated) sizes the warm-up and step intervals."""
    return ProgressSchedule(optimizer, lr_factor(cfg, epochs))
