"""Evaluation: logits for a whole split in large batches, then metrics."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from imgcls.models import Classifier
from imgcls.utils import dist


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`, or a no-op context for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.inference_mode()
def predict_logits(
    model: Classifier,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs `model` in eval mode over `loader`; returns (float32 logits, labels) on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    all_logits, all_labels = [], []
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            all_logits.append(model(x).float())
        all_labels.append(y)
    model.train(was_training)
    if not all_logits:
        return torch.zeros(0, model.meta.num_classes), torch.zeros(0, dtype=torch.long)
    return torch.cat(all_logits).cpu(), torch.cat(all_labels).cpu()


def predict_split(
    model: Classifier,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict_logits` over a whole split; in a distributed run each rank holds a contiguous chunk
    (see `epoch_batches`) and the chunks are gathered in rank order, so every sample counts once, in order.
    """
    logits, labels = predict_logits(model, loader, amp_dtype=amp_dtype, channels_last=channels_last)
    return dist.gather_cat(logits), dist.gather_cat(labels)


def loss_and_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[float, float]:
    """Mean loss (with the training run's label smoothing, so curves compare) and accuracy."""
    if not len(labels):
        return float("nan"), float("nan")
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()
