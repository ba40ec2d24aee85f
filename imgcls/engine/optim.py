"""Optimizer and learning-rate schedule from the `optim` config section.

The schedule is a function of training progress (0 -> 1), so it stays right when a run is resumed
or extended and needs no per-epoch bookkeeping.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from imgcls.config import ConfigError, OptimConfig
from imgcls.engine.muon import Muon
from imgcls.models import Classifier
from imgcls.models.transfer import discriminative_param_groups


def build_optimizer(model: Classifier, cfg: OptimConfig, finetune: bool = False) -> torch.optim.Optimizer:
    """SGD, AdamW or Muon over the model's groups; fine-tuning gives each layer group its own lr (see
    transfer.py).

    `auto`/unset name, lr and weight decay take the recipe's defaults (see `resolve_optim`).
    """
    cfg = resolve_optim(cfg, finetune)
    if not isinstance(cfg.lr, float):
        raise ValueError("optim.lr=auto must be resolved by an LR range test first (imgcls.api does this)")
    if finetune:
        groups = discriminative_param_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_ratio)
    else:
        groups = model.param_groups(cfg.weight_decay)
        groups[1]["lr"] = cfg.lr * cfg.bias_lr_scale  # the no-decay group: biases and normalization
    return OPTIMIZERS[cfg.name](groups, cfg)


def _sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    nesterov = cfg.nesterov and cfg.momentum > 0
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, foreach=True)


def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)


def _muon(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Nesterov SGD for the weights and the no-decay group, as `_sgd`; the conv filters (>= 3-D) move
    to a Muon group of their own, last, so the first group's lr is still the one `optim.lr` sets."""
    decay, no_decay = groups
    filters = [p for p in decay["params"] if p.ndim >= 3]
    decay = {**decay, "params": [p for p in decay["params"] if p.ndim < 3]}
    muon = {"params": filters, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum, "muon": True}
    return Muon([decay, no_decay, muon], lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adamw": _adamw,
    "muon": _muon,
}


def resolve_optim(cfg: OptimConfig, finetune: bool, scratch_lr: float | None = None) -> OptimConfig:
    """Fills in `auto`/unset settings: fine-tuning uses AdamW at 3e-3 for the new head (the backbone's
    layer groups get 0.1x up to ~0.6x of it) with weight decay 0.01; from scratch SGD (nesterov) at 0.1
    (or the model's own `scratch_lr`) with weight decay 5e-4. AdamW at 1e-3 left the new head
    under-trained in bench/finetune_demo.py."""
    name = cfg.name if cfg.name != "auto" else ("adamw" if finetune else "sgd")
    if name == "muon" and finetune:
        raise ConfigError(
            "optim.name=muon trains from scratch only (it resets each filter bank's norm, which pretrained "
            "weights carry): use sgd or adamw to fine-tune"
        )
    sgd_lr = 0.01 if finetune else (scratch_lr or 0.1)
    lr = cfg.lr if cfg.lr is not None else (3e-3 if name == "adamw" else sgd_lr)
    weight_decay = cfg.weight_decay if cfg.weight_decay is not None else (0.01 if name == "adamw" else 5e-4)
    return dataclasses.replace(cfg, name=name, lr=lr, weight_decay=weight_decay)


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
        # The base lrs come from the config, not the checkpoint: `--resume RUN --lr X` takes effect.
        if len(state["base_lrs"]) != len(self.base_lrs):
            raise ValueError(
                f"the checkpoint has {len(state['base_lrs'])} lr groups, this optimizer {len(self.base_lrs)}"
            )


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: float | None, restart_at: float = 0.0
) -> ProgressSchedule:
    """The configured schedule shape; `epochs` (planned or estimated) sizes the warm-up and step intervals.

    With `restart_at` in (0, 1) the shape runs twice, over [0, restart_at] and [restart_at, 1]: fine-tuning's
    head-only phase and the unfrozen phase each get a whole cycle (fastai's fine_tune does the same).
    """
    if not 0 < restart_at < 1:
        return ProgressSchedule(optimizer, lr_factor(cfg, epochs))
    first = lr_factor(cfg, epochs * restart_at if epochs else None)
    second = lr_factor(cfg, epochs * (1 - restart_at) if epochs else None)

    def phased(p: float) -> float:
        return first(p / restart_at) if p < restart_at else second((p - restart_at) / (1 - restart_at))

    return ProgressSchedule(optimizer, phased)
