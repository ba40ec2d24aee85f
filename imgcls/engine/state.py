"""Checkpoints: the full training state for --resume, and the weights + metadata for everything else.

Nothing is ever pickled as code: the training state is a dict of tensors and plain values saved
with torch.save and read with `weights_only=True`; model weights are safetensors. Every write goes to
a temporary file and is renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from imgcls.engine.optim import ProgressSchedule
from imgcls.models import Classifier
from imgcls.models.checkpoint import CheckpointError
from imgcls.utils import dist, run_files
from imgcls.utils.env import git_sha, versions
from imgcls.utils.io import atomic_write

STATE_FILE = run_files.STATE


@dataclass
class TrainState:
    """Everything a training run needs to continue exactly where it stopped."""

    model: Classifier
    optimizer: torch.optim.Optimizer
    schedule: ProgressSchedule
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None = None  # evaluated and saved instead of the raw weights when present
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float = -math.inf
    best_epoch: int = 0
    train_seconds: float = 0.0  # time spent in training steps (drives time-budgeted schedules)
    batch_in_epoch: int = 0  # batches of epoch `epoch` already trained (a mid-epoch checkpoint resumes there)
    epoch_sums: dict[str, float] = field(default_factory=dict)  # the running epoch metrics at that batch
    skipped_steps: int = 0  # steps skipped for a non-finite loss (train.skip_nonfinite)
    should_stop: bool = False  # callbacks may set it
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def eval_model(self) -> Classifier:
        """The weights to validate and save: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(
        self, config: dict[str, Any], rank_rngs: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Plain tensors and values only. `rank_rngs`: every rank's RNG states in a distributed run."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_sums": self.epoch_sums,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "rng": rank_rngs[0] if rank_rngs else rng_states(),
            "rng_ranks": rank_rngs if rank_rngs and len(rank_rngs) > 1 else [],
            "meta": self.model.meta.to_dict(),
            "config": config,
            "provenance": {"git": git_sha(), **versions()},
        }

    def save(
        self, path: str | Path, config: dict[str, Any], rank_rngs: list[dict[str, Any]] | None = None
    ) -> None:
        state = self.state_dict(config, rank_rngs)
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def load(self, path: str | Path) -> None:
        """Restores every part in place from a file written by `save`."""
        ckpt = read_state(path)
        try:
            self._restore(ckpt)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(
                f"{path} does not fit this model/optimizer: {(str(e).splitlines() or [''])[0]}"
            ) from None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise KeyError("the checkpoint has no EMA weights (train.ema_decay was 0)")
            self.ema.load_state_dict(ckpt["ema"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.best_metric, self.best_epoch = float(ckpt["best_metric"]), int(ckpt["best_epoch"])
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        self.batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
        self.epoch_sums = dict(ckpt.get("epoch_sums", {}))
        self.skipped_steps = int(ckpt.get("skipped_steps", 0))
        self.history = list(ckpt.get("history", []))
        ranks = ckpt.get("rng_ranks") or []
        # Each rank continues its own random streams when the world size is unchanged.
        set_rng_states(ranks[dist.rank()] if len(ranks) == dist.world_size() > 1 else ckpt["rng"])


def rng_states() -> dict[str, Any]:
    """Every random stream a training step may draw from, as tensors and plain values (no pickled objects)."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "python" in states:
        py = states["python"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    if "numpy" in states:
        npy = states["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))


def read_state(path: str | Path) -> dict[str, Any]:
    """Reads a training-state file without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types; all mean "not a usable checkpoint"
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path} is not a readable imgcls checkpoint ({type(e).__name__}: {detail})"
        ) from None
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "epoch", "meta"} <= ckpt.keys():
        raise CheckpointError(f"{path} is not an imgcls training state")
    return ckpt
