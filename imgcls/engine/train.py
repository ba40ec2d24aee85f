"""The training loop: one plain epoch/batch loop with AMP, clipping, a progress-driven schedule and callbacks."""

from __future__ import annotations

import logging
import math
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
from imgcls.engine.evaluate import autocast, build_criterion, predict_split, validation_metrics
from imgcls.engine.optim import build_optimizer, build_schedule
from imgcls.engine.state import STATE_FILE, TrainState, rng_states
from imgcls.errors import ImgclsError
from imgcls.models import Classifier, ModelMeta
from imgcls.models.checkpoint import save_weights
from imgcls.utils import dist
from imgcls.utils.env import autocast_dtype

log = logging.getLogger("imgcls")
FINITE_CHECK_STEPS = 50  # steps between checks for a non-finite loss (each check syncs the device)
EXPLODING = 10.0  # an epoch's training loss this many times chance level (ln C) is called exploded


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


def head_phase(cfg: Config, timed: bool = False) -> float:
    """The share of a fine-tuning run that trains the head alone (0 from scratch)."""
    if cfg.train.recipe != "finetune" or cfg.train.freeze_epochs <= 0:
        return 0.0
    return 0.1 if timed else min(cfg.train.freeze_epochs / cfg.train.epochs, 0.5)


def new_state(model: Classifier, cfg: Config, timed: bool = False) -> TrainState:
    """Fresh optimizer, schedule and grad scaler for `model`."""
    device = next(model.parameters()).device
    optimizer = build_optimizer(model, cfg.optim, finetune=cfg.train.recipe == "finetune")
    epochs = None if timed else cfg.train.epochs
    schedule = build_schedule(optimizer, cfg.optim, epochs, restart_at=head_phase(cfg, timed))
    fp16 = autocast_dtype(device, cfg.train.amp) == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    return TrainState(model, optimizer, schedule, scaler, ema=build_ema(model, cfg.train.ema_decay))


class TrainingError(ImgclsError, RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the step and the checkpoint kept."""

    exit_code = 1  # the input was valid; the run failed


def fit(
    cfg: Config,
    state: TrainState,
    plan: Plan,
    train_loader: Iterable,
    val_loader: Iterable | None,
    run_dir: str | Path | None,
    callbacks: Sequence[Any] = (),
    class_weights: torch.Tensor | None = None,
) -> TrainState:
    """Trains `state.model` until `plan` is done, validating and checkpointing after each epoch.

    Time-budgeted runs validate once, at the end (validation would eat the budget). Writes
    RUN_DIR/state.pt (last, for --resume; also every `train.checkpoint_every` steps) and
    RUN_DIR/model.safetensors (best on validation, or last when there is no validation split).
    In a distributed run every rank calls fit on its shard; only rank 0 writes. With no `run_dir` nothing
    is written (cross-fitting's models, thrown away once they have predicted their fold).

    Example:
        >>> fit(cfg, new_state(model, cfg), Plan(10, len(train)), train, val, "runs/x")   # doctest: +SKIP
    """
    model, run_dir = state.model, Path(run_dir) if run_dir is not None else None
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    criterion = build_criterion(model.meta.multilabel, class_weights, cfg.train.label_smoothing)
    # DDP and the compiled module share the model's parameters; evaluation and checkpoints use the model.
    forward = dist.wrap(
        model, device, sync_bn=cfg.train.sync_bn, partly_frozen=cfg.train.recipe == "finetune"
    )
    forward = torch.compile(forward) if cfg.train.compile else forward
    saved = _Saver(cfg, state, run_dir)
    skip_each = cfg.train.skip_nonfinite and not state.scaler.is_enabled()
    watch = _FiniteWatch(device, enabled=not skip_each and not state.scaler.is_enabled())
    call(
        callbacks,
        "on_fit_start",
        state=state,
        epochs=None if plan.timed else plan.epochs,
        progress=_progress(plan, state.step, state.train_seconds),
    )

    for epoch in range(state.epoch, plan.max_epochs):
        if _progress(plan, state.step, state.train_seconds) >= 1:
            break
        model.train()
        train_loader.set_epoch(epoch, state.batch_in_epoch)
        call(callbacks, "on_epoch_start", state=state, epoch=epoch, num_steps=len(train_loader))
        start, base_seconds = time.perf_counter(), state.train_seconds
        sums = _EpochSums(
            device, state.epoch_sums, model.meta.multilabel
        )  # resumed mid-epoch: the sums so far
        skipped_before = state.skipped_steps
        for x, y in train_loader:
            progress = _progress(plan, state.step, base_seconds + time.perf_counter() - start)
            if progress >= 1:
                break
            state.schedule.set(progress)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                logits = forward(x)
            loss = criterion(logits.float(), y)
            state.step += 1
            state.batch_in_epoch += 1
            # fp16: the grad scaler skips non-finite steps itself. Skipping needs a check before each step
            # (a device sync); otherwise the watch reads a device-side flag every few steps.
            if skip_each and not _finite(loss):
                _nonfinite(cfg, state, epoch, loss, saved)
                continue
            watch.add(loss)
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                state.scaler.unscale_(state.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            state.scaler.step(state.optimizer)
            state.scaler.update()
            if state.ema is not None:
                state.ema.update_parameters(model)
            sums.add(loss, logits, y)
            call(
                callbacks,
                "on_step_end",
                state=state,
                loss_sum=sums.loss,
                correct=sums.correct,
                seen=sums.seen,
                progress=_progress(plan, state.step, base_seconds + time.perf_counter() - start),
            )
            checkpoint = cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0
            if checkpoint or state.step % FINITE_CHECK_STEPS == 0:
                watch.check(state, epoch, saved)  # before any checkpoint: it never holds NaN-touched weights
            if checkpoint:
                state.train_seconds = base_seconds + time.perf_counter() - start
                state.epoch_sums = sums.to_dict()
                saved.save_state()

        watch.check(state, epoch, saved)
        train_time = time.perf_counter() - start
        state.train_seconds = base_seconds + train_time
        state.epoch, state.batch_in_epoch, state.epoch_sums = epoch + 1, 0, {}
        finished = state.epoch >= plan.max_epochs or _progress(plan, state.step, state.train_seconds) >= 1
        metrics = {"epoch": state.epoch, **sums.reduced(), "lr": state.optimizer.param_groups[0]["lr"]}
        if not metrics["seen"] and state.skipped_steps > skipped_before:
            raise TrainingError(
                f"every step of epoch {state.epoch} had a non-finite loss; the model is broken. "
                "Lower optim.lr or set train.grad_clip"
            )
        metrics["train_img_s"] = metrics.pop("seen") / max(train_time, 1e-9)
        _warn_if_exploding(metrics["train_loss"], model.meta, state.epoch, cfg)
        if val_loader is not None and (finished or not plan.timed):
            logits, labels = predict_split(
                state.eval_model, val_loader, amp_dtype=amp_dtype, channels_last=cfg.train.channels_last
            )
            metrics |= validation_metrics(logits, labels, cfg.train.label_smoothing)
        if state.skipped_steps:
            metrics["skipped_steps"] = state.skipped_steps
        metrics["time_s"] = time.perf_counter() - start
        state.history.append(metrics)
        call(callbacks, "on_eval_end", state=state, metrics=metrics)
        saved.save_epoch(metrics)
        call(callbacks, "on_checkpoint", state=state, path=run_dir / STATE_FILE if run_dir else None)
        if state.should_stop and not finished:
            log.info("stopping early after epoch %d (asked by a callback)", state.epoch)
            break

    dist.barrier()  # rank 0's last checkpoint is complete before any rank reads it
    call(callbacks, "on_fit_end", state=state)
    return state


def _progress(plan: Plan, step: int, train_seconds: float) -> float:
    """The plan's progress; a timed distributed run takes the furthest rank's clock, so all stop together."""
    progress = plan.progress(step, train_seconds)
    if plan.timed and dist.is_distributed():
        progress = float(dist.all_reduce_max(torch.tensor([progress], dtype=torch.float64))[0])
    return progress


def _finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (one rank's NaN must stop or skip the step everywhere)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    return not bool(dist.all_reduce_max(bad)[0])


class _FiniteWatch:
    """Notices a non-finite loss without a device-to-host sync per step: a flag kept on the device is
    read every FINITE_CHECK_STEPS steps, at each epoch's end and before every checkpoint. A NaN may touch
    the weights for a few steps, but never a checkpoint: the last good one stays good."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self.bad = torch.zeros(1, device=device)
        self.checked_step: int | None = None

    def add(self, loss: torch.Tensor) -> None:
        if self.enabled:
            self.bad = torch.maximum(self.bad, (~torch.isfinite(loss.detach())).float().reshape(1))

    def check(self, state: TrainState, epoch: int, saved: _Saver) -> None:
        if not self.enabled:
            return
        if not bool(dist.all_reduce_max(self.bad)[0]):  # every rank stops together
            self.checked_step = state.step
            return
        since = f"after step {self.checked_step}" if self.checked_step is not None else "in its first steps"
        raise TrainingError(
            f"the loss became non-finite (NaN or inf) {since}, by step {state.step} (epoch {epoch + 1}); "
            f"training stopped and {saved.kept()}. Try a lower optim.lr, train.grad_clip=1.0 or "
            "train.amp=off, or skip such steps with train.skip_nonfinite=true"
        )


def _warn_if_exploding(train_loss: float, meta: ModelMeta, epoch: int, cfg: Config) -> None:
    """A loss far above chance level (ln C; ln 2 per label) means the learning rate is too high for this model."""
    chance = math.log(2 if meta.multilabel else max(2, meta.num_classes))
    if math.isfinite(train_loss) and train_loss > EXPLODING * chance:
        log.warning(
            "the training loss exploded: %.4g in epoch %d, where guessing at random scores %.2f; "
            "lower optim.lr (now %s) or set train.grad_clip=1.0",
            train_loss,
            epoch,
            chance,
            cfg.optim.lr,
        )


def _nonfinite(cfg: Config, state: TrainState, epoch: int, loss: torch.Tensor, saved: _Saver) -> None:
    """Skips the step (train.skip_nonfinite) or stops with the step's name; the last good checkpoint stays."""
    where = f"step {state.step} (epoch {epoch + 1}, batch {state.batch_in_epoch})"
    if cfg.train.skip_nonfinite:
        state.skipped_steps += 1
        log.warning(
            "skipped %s: the loss is %s (%d step(s) skipped so far)", where, loss.item(), state.skipped_steps
        )
        return
    raise TrainingError(
        f"the loss became {loss.item()} at {where}; training stopped and {saved.kept()}. Try a lower optim.lr, "
        "train.grad_clip=1.0 or train.amp=off, or skip such steps with train.skip_nonfinite=true"
    )


def _correct(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Right answers in a batch: the class (mixed soft targets count by their main class), or for
    multi-label the whole label set at probability 1/2 (exact match)."""
    if multilabel:
        return ((logits > 0) == (y > 0.5)).all(1).sum()
    hard = y if y.ndim == 1 else y.argmax(1)
    return (logits.argmax(1) == hard).sum()


class _EpochSums:
    """Loss, correct and seen counts of the epoch so far, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device, start: dict[str, float], multilabel: bool = False) -> None:
        self.multilabel = multilabel
        self.loss = torch.tensor(float(start.get("loss", 0.0)), device=device)
        self.correct = torch.tensor(int(start.get("correct", 0)), device=device)
        self.seen = int(start.get("seen", 0))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach() * len(y)
        self.correct += _correct(logits.detach(), y, self.multilabel)
        self.seen += len(y)

    def to_dict(self) -> dict[str, float]:
        return {"loss": self.loss.item(), "correct": int(self.correct.item()), "seen": self.seen}

    def reduced(self) -> dict[str, float]:
        """train_loss/train_acc over every rank's samples, and the number seen."""
        total = torch.stack([self.loss.double(), self.correct.double(), torch.tensor(float(self.seen))])
        loss, correct, seen = dist.all_reduce_sum(total.to(self.loss.device)).tolist()
        if not seen:
            return {"train_loss": math.nan, "train_acc": math.nan, "seen": 0}
        return {"train_loss": loss / seen, "train_acc": correct / seen, "seen": seen}


class _Saver:
    """Writes checkpoints from rank 0 only and remembers the step of the last complete one."""

    def __init__(self, cfg: Config, state: TrainState, run_dir: Path | None) -> None:
        self.cfg, self.state, self.run_dir = cfg, state, run_dir
        self.state_path = run_dir / STATE_FILE if run_dir else None
        self.step: int | None = state.step if self.state_path and self.state_path.is_file() else None

    def kept(self) -> str:
        if self.step is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint, {self.state_path} (after step {self.step}), is kept"

    def save_state(self) -> None:
        if self.state_path is None:
            return
        rngs = dist.gather_objects(rng_states()) if dist.is_distributed() else None
        if dist.is_main():
            self.state.save(self.state_path, self.cfg.to_dict(), rngs)
        self.step = self.state.step

    def save_epoch(self, metrics: dict[str, float]) -> None:
        """Best weights (by validation accuracy, else the latest epoch) and the full state, both atomically."""
        key = "val_map" if "val_map" in metrics else "val_acc"  # multi-label: mean average precision
        state, score = self.state, metrics.get(key)
        if score is None or score > state.best_metric:
            if score is not None:
                state.best_metric = score
            state.best_epoch = state.epoch
            if dist.is_main() and self.run_dir is not None:
                save_weights(
                    state.eval_model, self.run_dir, {"best_epoch": state.best_epoch, f"best_{key}": score}
                )
        self.save_state()
