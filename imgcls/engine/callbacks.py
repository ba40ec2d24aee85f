"""Callbacks observe training through six events, dispatched by method name (Fabric style).

A callback is any object with some of: on_fit_start, on_epoch_start, on_step_end, on_eval_end,
on_checkpoint, on_fit_end. Each receives only the keyword arguments its signature names. Callbacks may
set `state.should_stop`; they never change control flow any other way.
"""

from __future__ import annotations

import csv
import inspect
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imgcls.models.transfer import NUM_GROUPS, set_frozen
from imgcls.utils.extras import require
from imgcls.utils.progress import live_progress

log = logging.getLogger("imgcls")
EVENTS = ("on_fit_start", "on_epoch_start", "on_step_end", "on_eval_end", "on_checkpoint", "on_fit_end")


def call(callbacks: Iterable[Any], event: str, **kwargs: Any) -> None:
    """Calls `event` on every callback that has it, passing the kwargs its signature accepts."""
    assert event in EVENTS, event
    for cb in callbacks:
        method = getattr(cb, event, None)
        if method is None:
            continue
        params = inspect.signature(method).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            method(**kwargs)
        else:
            method(**{k: v for k, v in kwargs.items() if k in params})


class Unfreeze:
    """Fine-tuning's two phases: only the head trains until progress `at`, then the backbone unfreezes
    except its first `keep_frozen` layer groups (all of them: linear probing).

    The phase is a function of progress alone, so a resumed run is in the same phase as an uninterrupted one.
    """

    def __init__(self, at: float, keep_frozen: int) -> None:
        self.at, self.keep_frozen, self.frozen = at, keep_frozen, None

    def _apply(self, state, progress: float) -> None:
        frozen = NUM_GROUPS if progress < self.at else self.keep_frozen
        if frozen != self.frozen:
            set_frozen(state.model, frozen)
            if self.frozen is not None:
                log.info("unfroze the backbone (%d of %d layer groups stay frozen)", frozen, NUM_GROUPS)
            self.frozen = frozen

    def on_fit_start(self, state, progress: float) -> None:
        self._apply(state, progress)

    def on_step_end(self, state, progress: float) -> None:
        self._apply(state, progress)


class EarlyStopping:
    """Stops the run when validation accuracy has not improved for `patience` epochs."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_eval_end(self, state, metrics: dict[str, float]) -> None:
        val = metrics.get("val_acc", metrics.get("val_map"))
        if val is None or val > state.best_metric:
            return
        if state.epoch - state.best_epoch >= self.patience:
            log.info(
                "early stopping: no better validation accuracy than %.4f (epoch %d) for %d epochs",
                state.best_metric,
                state.best_epoch,
                self.patience,
            )
            state.should_stop = True


class CSVLogger:
    """metrics.csv: one row per epoch, rewritten whole each epoch (it survives resume)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_eval_end(self, state) -> None:
        rows = state.history
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


class TensorBoardLogger:
    """TensorBoard event files in RUN_DIR/tensorboard (needs the `tensorboard` package)."""

    def __init__(self, log_dir: str | Path) -> None:
        tensorboard = require("torch.utils.tensorboard", "tensorboard", "log.tensorboard=true")
        self.writer = tensorboard.SummaryWriter(str(log_dir))

    def on_eval_end(self, state, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, global_step=int(metrics["epoch"]))
        self.writer.flush()

    def on_fit_end(self) -> None:
        self.writer.close()


class ProgressLogger:
    """A live progress bar (loss, accuracy, images/s) on a terminal; one line per epoch everywhere (unless
    `epoch_lines` is off: cross-fitting logs a line per fold instead)."""

    def __init__(self, enabled: bool = True, refresh_s: float = 0.5, epoch_lines: bool = True) -> None:
        self.enabled = enabled
        self.refresh_s = refresh_s
        self.epoch_lines = epoch_lines
        self.progress = None

    def on_fit_start(self, epochs: int | None) -> None:
        self.of = f"/{epochs}" if epochs else ""  # time-budgeted runs have no epoch count
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        self.progress = live_progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            enabled=self.enabled,
        )
        if self.progress:
            self.progress.start()

    def on_epoch_start(self, epoch: int, num_steps: int) -> None:
        self.start = self.last = time.perf_counter()
        if self.progress:
            self.task = self.progress.add_task("", total=num_steps, epoch=f"{epoch + 1}{self.of}", stats="")

    def on_step_end(self, loss_sum, correct, seen: int) -> None:
        if not self.progress:
            return
        now = time.perf_counter()
        stats = None
        if (
            now - self.last >= self.refresh_s
        ):  # reading the running sums syncs the device: only twice a second
            self.last = now
            stats = f"loss {float(loss_sum) / seen:.4f}  acc {float(correct) / seen:.4f}  {seen / (now - self.start):,.0f} img/s"
        self.progress.update(self.task, advance=1, **({"stats": stats} if stats else {}))

    def on_eval_end(self, metrics: dict[str, float]) -> None:
        if self.progress:
            self.progress.remove_task(self.task)
        if not self.epoch_lines:
            return
        parts = [f"epoch {int(metrics['epoch'])}{self.of}"]
        parts += [f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("loss", "acc", "map"))]
        parts += [f"{metrics['train_img_s']:,.0f} img/s", f"{metrics['time_s']:.1f}s"]
        log.info("  ".join(parts))

    def on_fit_end(self) -> None:
        self.close()

    def close(self) -> None:
        """Ends the live display (also after an interrupt); what it held back is printed then."""
        if self.progress:
            self.progress.stop()
            self.progress = None
