"""Evaluation: logits for a whole split in large batches, then metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F

from imgcls.metrics import mean_average_precision
from imgcls.models import Classifier
from imgcls.utils import dist


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`, or a no-op context for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.inference_mode()
def _outputs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    model: Classifier,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`forward` of every batch of `loader` (float32), with `model` in eval mode, and the labels."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs, labels = [], []
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            outputs.append(forward(x).float())
        labels.append(y)
    model.train(was_training)
    return outputs, labels


def predict_logits(
    model: Classifier,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs `model` in eval mode over `loader`; returns (float32 logits, labels) on the CPU."""
    logits, labels = _outputs(model, model, loader, amp_dtype, channels_last)
    if not logits:
        return torch.zeros(0, model.meta.num_classes), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits).cpu(), torch.cat(labels).cpu()


def predict_features(
    model: Classifier,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """The pooled pre-logit features of every image of `loader` (float32, on the CPU), in eval mode."""
    features, _ = _outputs(model.forward_features, model, loader, amp_dtype, channels_last)
    return torch.cat(features).cpu() if features else torch.zeros(0, model.num_features)


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


def multilabel_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy per label; smoothing pulls each 0/1 target towards 1/2 by `label_smoothing`/2."""
    targets = targets.float() * (1 - label_smoothing) + label_smoothing / 2
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


def build_criterion(
    multilabel: bool, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0
):
    """Cross-entropy over classes, or binary cross-entropy per label (`class_weights`: positive weights)."""
    if multilabel:
        return partial(multilabel_loss, label_smoothing=label_smoothing, pos_weight=class_weights)
    return torch.nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)


def validation_metrics(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> dict[str, float]:
    """val_loss and the score that picks the best epoch: accuracy, or for multi-label (2-D labels) the
    macro mean average precision (threshold-free: the thresholds are tuned after training)."""
    if labels.ndim == 1:
        loss, accuracy = loss_and_accuracy(logits, labels, label_smoothing)
        return {"val_loss": loss, "val_acc": accuracy}
    if not len(labels):
        return {"val_loss": float("nan"), "val_map": float("nan")}
    loss = multilabel_loss(logits, labels, label_smoothing).item()
    return {"val_loss": loss, "val_map": mean_average_precision(logits.sigmoid(), labels)}


def loss_and_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[float, float]:
    """Mean loss (with the training run's label smoothing, so curves compare) and accuracy."""
    if not len(labels):
        return float("nan"), float("nan")
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()
