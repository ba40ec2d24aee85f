"""Preprocessing shared by training, evaluation and prediction (torchvision transforms v2).

Images are resized (shorter side) and center-cropped to a square uint8 tensor once; normalization
lives inside the model, so every consumer of a checkpoint preprocesses identically. torchvision is
imported on first use: the in-memory path never needs it, and it costs ~2 s of start-up.
"""

from __future__ import annotations

from typing import Any

import torch


def crop_padding(size: int) -> int:
    """Random-crop padding: ~1/14 of the side (2 px at 28-32 px, 16 px at 224 px)."""
    return max(1, round(size / 14))


def to_square(size: int) -> Any:
    """PIL image -> uint8 tensor (C, size, size): shorter side to `size`, then a center crop."""
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def train_augment(size: int, flip: bool, cutout: int = 0, crop: bool = True) -> Any:
    """Per-sample augmentation for the streaming path; `memory.BatchAugment` is its batched twin."""
    from torchvision.transforms import v2

    steps: list = [v2.RandomCrop(size, padding=crop_padding(size), padding_mode="reflect")] if crop else []
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if cutout:
        area = min(1.0, (cutout / size) ** 2)
        steps.append(v2.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0))
    return v2.Compose(steps)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return images.float().div_(255.0)
