"""Out-of-fold predicted probabilities (cross-fitting): k models, each trained on all folds but one and
predicting the fold it never saw, so every image's probabilities come from a model that did not learn its
label. Either the full training loop per fold, or, for a pretrained backbone, a linear head per fold on
features computed once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imgcls.config import Config, ConfigError
from imgcls.data.loader import build_loader
from imgcls.data.types import Split
from imgcls.engine.callbacks import ProgressLogger
from imgcls.engine.evaluate import predict_features, predict_split
from imgcls.engine.train import Plan, fit, new_state
from imgcls.models import Classifier
from imgcls.utils.env import autocast_dtype

log = logging.getLogger("imgcls")
PROBE_STEPS = 100  # L-BFGS iterations of a linear head
PROBE_DECAY = 1e-4  # its L2 penalty (on standardized features)


@dataclass
class CrossFit:
    probs: np.ndarray  # N x K out-of-fold probabilities
    embeddings: np.ndarray  # N x D unit vectors, one space for all images (neighbours, outliers)
    fold_accuracy: list[float]  # each held-out fold's agreement with its given labels


def stratified_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold per image. Groups (copies of one picture) stay whole; the groups are dealt to the folds in
    turn, class by class in a seeded random order, so each fold holds about 1/k of every class."""
    ids, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    group_label = labels[first]
    order = np.random.default_rng(seed).permutation(len(ids))
    order = order[np.argsort(group_label[order], kind="stable")]
    fold_of_group = np.empty(len(ids), dtype=np.int64)
    fold_of_group[order] = np.arange(len(ids)) % k
    return fold_of_group[inverse]


def cross_fit(
    cfg: Config,
    split: Split,
    folds: np.ndarray,
    num_classes: int,
    make_model: Callable[[], Classifier],
    settings: dict[str, Any],
    deadline: float | None = None,
) -> CrossFit:
    """Trains a model per fold with the run's recipe (epochs, or an equal share of the time left before
    `deadline`, a perf_counter time) and predicts the held-out fold."""
    k = int(folds.max()) + 1
    probs = np.zeros((len(split), num_classes), dtype=np.float32)
    accuracy = []
    for fold in range(k):
        held, kept = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        torch.manual_seed(cfg.train.seed + fold)
        model = make_model()
        loader = build_loader(split.subset(kept), cfg.data, train=True, num_classes=num_classes, **settings)
        share = None if deadline is None else (deadline - time.perf_counter()) / (k - fold)
        if share is not None and share <= 0:
            raise ConfigError(
                f"the time budget is used up before fold {fold + 1} of {k}: give the command more time"
            )
        log.info(
            "fold %d/%d: training on %d images%s, predicting %d",
            fold + 1,
            k,
            len(kept),
            f" for {share:.0f}s" if share else "",
            len(held),
        )
        state = new_state(model, cfg, timed=share is not None)
        plan = Plan(cfg.train.epochs, len(loader), budget_s=share)
        state = fit(
            cfg, state, plan, loader, None, None, [ProgressLogger(cfg.log.progress, epoch_lines=False)]
        )
        probs[held] = _held_out(cfg, state.eval_model, split.subset(held), settings)
        accuracy.append(float((probs[held].argmax(1) == split.labels[held].numpy()).mean()))
        last = state.history[-1]
        log.info(
            "fold %d/%d: %d epochs, train_acc %.4f, %.0f img/s; held-out agreement with the given labels %.4f",
            fold + 1,
            k,
            state.epoch,
            last["train_acc"],
            last["train_img_s"],
            accuracy[-1],
        )
    model = state.eval_model
    embeddings = predict_features(
        model,
        build_loader(split, cfg.data, train=False, **settings),
        amp_dtype=autocast_dtype(next(model.parameters()).device, cfg.train.amp),
        channels_last=cfg.train.channels_last,
    )
    return CrossFit(probs, _unit(embeddings.numpy()), accuracy)


def _held_out(cfg: Config, model: Classifier, split: Split, settings: dict[str, Any]) -> np.ndarray:
    device = next(model.parameters()).device
    logits, _ = predict_split(
        model,
        build_loader(split, cfg.data, train=False, **settings),
        amp_dtype=autocast_dtype(device, cfg.train.amp),
        channels_last=cfg.train.channels_last,
    )
    return torch.softmax(logits.float(), 1).numpy()


def probe_cross_fit(
    features: np.ndarray, labels: np.ndarray, folds: np.ndarray, num_classes: int
) -> CrossFit:
    """A linear head (multinomial logistic regression, L-BFGS) per fold on fixed features."""
    k = int(folds.max()) + 1
    probs = np.zeros((len(labels), num_classes), dtype=np.float32)
    accuracy = []
    x_all, y_all = torch.from_numpy(features).float(), torch.from_numpy(labels).long()
    for fold in range(k):
        held, kept = folds == fold, folds != fold
        mean, std = x_all[kept].mean(0), x_all[kept].std(0).clamp_min(1e-6)
        head = linear_probe((x_all[kept] - mean) / std, y_all[kept], num_classes)
        with torch.no_grad():
            probs[held] = torch.softmax(head((x_all[held] - mean) / std), 1).numpy()
        accuracy.append(float((probs[held].argmax(1) == labels[held]).mean()))
        log.info(
            "fold %d/%d: linear head, held-out agreement with the given labels %.4f",
            fold + 1,
            k,
            accuracy[-1],
        )
    return CrossFit(probs, _unit(features), accuracy)


def linear_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.nn.Linear:
    head = torch.nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + PROBE_DECAY * head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
