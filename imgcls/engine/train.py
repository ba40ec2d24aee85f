"""The training loop: one plain epoch/batch loop with AMP, clipping, a progress-driven schedule and callbacks."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.config import Config
from imgcls.engine.callbacks import call
from imgcls.engine.ema import build_ema
from imgcls.engine.evaluate import autocast, loss_and_accuracy, predict_logits
from imgcls.engine.optim import build_optimizer, build_schedule
from imgcls.engine.state import STATE_FILE, TrainState, save_weights
from imgcls.models import Classifier
from imgcls.utils.env import autocast_dtype

log = logging.getLogger("imgcls")


@dataclass(frozen=True)
class Plan:
    """How long a run trains: `epochs` epochs of `steps_per_epoch` steps, or `budget_s` seconds of steps."""

    epochs: int
    steps_per_epoch: int
    budget_s: float | None = None

    @property
    def timed(self) -> bool:
        return self.budget_s is not None

    @property
    def max_epochs(self) -> int:
        return 1_000_000 if self.timed else self.epochs

    def progress(self, step: int, train_seconds: float) -> float:
        """Fraction of the run done, in [0, 1]: by the clock when timed, else by steps."""
        if self.budget_s is not None:
            return train_seconds / self.budget_s
        return step / max(1, self.epochs * self.steps_per_epoch)


def new_state(model: Classifier, cfg: Config, timed: bool = False) -> TrainState:
    """Fresh optimizer, schedule and grad scaler for `model`."""
    device = next(model.parameters()).device
    optimizer = build_optimizer(model, cfg.optim)
    schedule = build_schedule(optimizer, cfg.optim, None if timed else cfg.train.epochs)
    fp16 = autocast_dtype(device, cfg.train.amp) == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    return TrainState(model, optimizer, schedule, scaler, ema=build_ema(model, cfg.train.ema_decay))


def fit(
    cfg: Config,
    state: TrainState,
    plan: Plan,
    train_loader: Iterable,
    val_loader: Iterable | None,
    run_dir: str | Path,
    callbacks: Sequence[Any] = (),
) -> TrainState:
    """Trains `state.model` until `plan` is done, validating and checkpointing after each epoch.

    Time-budgeted runs validate once, at the end (validation would eat the budget). Writes
    RUN_DIR/state.pt (last, for --resume) and RUN_DIR/model.safetensors (best on validation, or last
    when there is no validation split).

    Example:
        >>> fit(cfg, new_state(model, cfg), Plan(10, len(train)), train, val, "runs/x")   # doctest: +SKIP
    """
    model, run_dir = state.model, Path(run_dir)
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    # The compiled module shares the model's parameters; evaluation and checkpoints use the model itself.
    forward = torch.compile(model) if cfg.train.compile else model
    call(callbacks, "on_fit_start", state=state, epochs=None if plan.timed else plan.epochs)

    for epoch in range(state.epoch, plan.max_epochs):
        if plan.progress(state.step, state.train_seconds) >= 1:
            break
        model.train()
        train_loader.set_epoch(epoch)
        call(callbacks, "on_epoch_start", state=state, epoch=epoch, num_steps=len(train_loader))
        start, base_seconds = time.perf_counter(), state.train_seconds
        # Running sums stay on the device: no host sync per step.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in train_loader:
            progress = plan.progress(state.step, base_seconds + time.perf_counter() - start)
            if progress >= 1:
                break
            state.schedule.set(progress)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                logits = forward(x)
            loss = criterion(logits.float(), y)
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                state.scaler.unscale_(state.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            state.scaler.step(state.optimizer)
            state.scaler.update()
            if state.ema is not None:
                state.ema.update_parameters(model)
            state.step += 1
            loss_sum += loss.detach() * len(y)
            hard = y if y.ndim == 1 else y.argmax(1)  # mixed (soft) targets count by their main class
            correct += (logits.detach().argmax(1) == hard).sum()
            seen += len(y)
            call(callbacks, "on_step_end", state=state, loss_sum=loss_sum, correct=correct, seen=seen)

        train_time = time.perf_counter() - start
        state.train_seconds = base_seconds + train_time
        state.epoch = epoch + 1
        finished = state.epoch >= plan.max_epochs or plan.progress(state.step, state.train_seconds) >= 1
        metrics = {
            "epoch": state.epoch,
            "train_loss": loss_sum.item() / max(seen, 1),
            "train_acc": correct.item() / max(seen, 1),
            "lr": state.optimizer.param_groups[0]["lr"],
            "train_img_s": seen / max(train_time, 1e-9),
        }
        if val_loader is not None and (finished or not plan.timed):
            logits, labels = predict_logits(
                state.eval_model, val_loader, amp_dtype=amp_dtype, channels_last=cfg.train.channels_last
            )
            val_loss, val_acc = loss_and_accuracy(logits, labels, cfg.train.label_smoothing)
            metrics |= {"val_loss": val_loss, "val_acc": val_acc}
        metrics["time_s"] = time.perf_counter() - start
        state.history.append(metrics)
        call(callbacks, "on_eval_end", state=state, metrics=metrics)
        _checkpoint(cfg, state, metrics, run_dir)
        call(callbacks, "on_checkpoint", state=state, path=run_dir / STATE_FILE)
        if state.should_stop and not finished:
            log.info("stopping early after epoch %d (asked by a callback)", state.epoch)
            break

    call(callbacks, "on_fit_end", state=state)
    return state


def _checkpoint(cfg: Config, state: TrainState, metrics: dict[str, float], run_dir: Path) -> None:
    """Best weights (by validation accuracy, else the latest epoch) and the full state, both atomically."""
    val_acc = metrics.get("val_acc")
    if val_acc is None or val_acc > state.best_metric:
        if val_acc is not None:
            state.best_metric = val_acc
        state.best_epoch = state.epoch
        save_weights(state.eval_model, run_dir, {"best_epoch": state.best_epoch, "best_val_acc": val_acc})
    state.save(run_dir / STATE_FILE, cfg.to_dict())
