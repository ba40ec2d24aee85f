"""The training loop: one plain epoch/batch loop with AMP, clipping, per-step schedule and callbacks."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.config import Config
from imgcls.engine.callbacks import call
from imgcls.engine.evaluate import autocast, loss_and_accuracy, predict_logits
from imgcls.engine.optim import build_optimizer, build_scheduler
from imgcls.engine.state import STATE_FILE, TrainState, save_weights
from imgcls.models import Classifier
from imgcls.utils.env import autocast_dtype

log = logging.getLogger("imgcls")


def new_state(model: Classifier, cfg: Config, steps_per_epoch: int) -> TrainState:
    """Fresh optimizer, per-step schedule and grad scaler for `model`."""
    device = next(model.parameters()).device
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs, steps_per_epoch)
    fp16 = autocast_dtype(device, cfg.train.amp) == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    return TrainState(model, optimizer, scheduler, scaler)


def fit(
    cfg: Config,
    state: TrainState,
    train_loader: Iterable,
    val_loader: Iterable | None,
    run_dir: str | Path,
    callbacks: Sequence[Any] = (),
) -> TrainState:
    """Trains `state.model` from `state.epoch` to `cfg.train.epochs`, validating and checkpointing each epoch.

    Writes RUN_DIR/state.pt (last, for --resume) and RUN_DIR/model.safetensors (best on validation,
    or last when there is no validation split).

    Example:
        >>> state = fit(cfg, new_state(model, cfg, len(train)), train, val, "runs/x")   # doctest: +SKIP
    """
    model, run_dir = state.model, Path(run_dir)
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    channels_last = cfg.train.channels_last
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    call(callbacks, "on_fit_start", state=state, epochs=cfg.train.epochs)

    for epoch in range(state.epoch, cfg.train.epochs):
        model.train()
        train_loader.set_epoch(epoch)
        call(callbacks, "on_epoch_start", state=state, epoch=epoch, num_steps=len(train_loader))
        start = time.perf_counter()
        # Running sums stay on the device: no host sync per step.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in train_loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                logits = model(x)
            loss = criterion(logits.float(), y)
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                state.scaler.unscale_(state.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            state.scaler.step(state.optimizer)
            state.scaler.update()
            state.scheduler.step()
            state.step += 1
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            call(callbacks, "on_step_end", state=state, loss_sum=loss_sum, correct=correct, seen=seen)

        train_time = time.perf_counter() - start
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum.item() / max(seen, 1),
            "train_acc": correct.item() / max(seen, 1),
            "lr": state.optimizer.param_groups[0]["lr"],
            "train_img_s": seen / train_time,
        }
        if val_loader is not None:
            logits, labels = predict_logits(
                model, val_loader, amp_dtype=amp_dtype, channels_last=channels_last
            )
            val_loss, val_acc = loss_and_accuracy(logits, labels, cfg.train.label_smoothing)
            metrics |= {"val_loss": val_loss, "val_acc": val_acc}
        metrics["time_s"] = time.perf_counter() - start
        state.epoch = epoch + 1
        state.history.append(metrics)
        call(callbacks, "on_eval_end", state=state, metrics=metrics)

        score = metrics.get("val_acc", float(state.epoch))  # without validation, the last epoch is "best"
        if score > state.best_metric:
            state.best_metric, state.best_epoch = score, state.epoch
            save_weights(
                model, run_dir, {"best_epoch": state.best_epoch, "best_val_acc": metrics.get("val_acc")}
            )
        state.save(run_dir / STATE_FILE, cfg.to_dict())
        call(callbacks, "on_checkpoint", state=state, path=run_dir / STATE_FILE)
        if state.should_stop:
            log.info("stopping early after epoch %d (asked by a callback)", state.epoch)
            break

    call(callbacks, "on_fit_end", state=state)
    return state
