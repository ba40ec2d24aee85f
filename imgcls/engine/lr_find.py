"""The learning-rate range test (Smith 2015, as in fastai's lr_find): a short run with an exponentially
growing learning rate; the loss curve shows how fast the model can learn without diverging."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

from imgcls.config import Config
from imgcls.engine.evaluate import autocast, build_criterion
from imgcls.engine.optim import build_optimizer
from imgcls.models import Classifier
from imgcls.models.transfer import NUM_GROUPS, set_frozen
from imgcls.utils.env import autocast_dtype


def lr_range_test(
    model: Classifier,
    loader,
    cfg: Config,
    *,
    start: float = 1e-6,
    end: float = 10.0,
    steps: int = 100,
    diverge: float = 4.0,
) -> dict[str, Any]:
    """Trains `steps` batches with the lr growing from `start` to `end`, then restores the model.

    Stops early once the smoothed loss exceeds `diverge` times its minimum. The suggestion is the lr at
    the minimum of the smoothed loss divided by 10: the largest lr still safely on the descending slope.
    Fine-tuning runs are tested as they start, with the backbone frozen.

    Returns:
        {"lrs", "losses" (smoothed), "suggestion", "min_loss_lr"}.

    Example:
        >>> lr_range_test(model, train_loader, cfg)["suggestion"]                   # doctest: +SKIP
    """
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    finetune = cfg.train.recipe == "finetune"
    if finetune:
        set_frozen(model, NUM_GROUPS)
    optimizer = build_optimizer(model, dataclasses.replace(cfg.optim, lr=1.0), finetune=finetune)
    relative = [group["lr"] for group in optimizer.param_groups]  # discriminative ratios stay
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    criterion = build_criterion(model.meta.multilabel, label_smoothing=cfg.train.label_smoothing)
    lrs, losses, avg, best = [], [], 0.0, math.inf
    model.train()
    for i, (x, y) in enumerate(_batches(loader, steps)):
        lr = start * (end / start) ** (i / max(1, steps - 1))
        for group, scale in zip(optimizer.param_groups, relative):
            group["lr"] = lr * scale
        with autocast(device, amp_dtype):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            break
        avg = 0.98 * avg + 0.02 * value
        smoothed = avg / (1 - 0.98 ** (i + 1))  # bias-corrected exponential average
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if i > 10 and smoothed > diverge * best:
            break
    model.load_state_dict(saved)
    if finetune:
        set_frozen(model, 0)
    model.train(was_training)
    if not losses:
        raise ValueError("the LR range test got no finite loss; check the data and model")
    min_lr = lrs[min(range(len(losses)), key=losses.__getitem__)]
    return {"lrs": lrs, "losses": losses, "suggestion": min_lr / 10, "min_loss_lr": min_lr}


def _batches(loader, steps: int):
    """`steps` training batches, going over the loader's epochs as often as needed."""
    done, epoch = 0, 0
    while done < steps:
        loader.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
            done += 1
            if done >= steps:
                return
        if empty:
            return
        epoch += 1
