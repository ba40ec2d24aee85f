"""Preprocessing shared by training, evaluation and prediction (torchvision transforms v2).

Images are resized (shorter side) and center-cropped to a square uint8 tensor once; normalization
lives inside the model, so every consumer of a checkpoint preprocesses identically. torchvision is
imported on first use: the in-memory path never needs it, and it costs ~2 s of start-up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def crop_padding(size: int) -> int:
    """Random-crop padding: ~1/14 of the side (2 px at 28-32 px, 16 px at 224 px)."""
    return max(1, round(size / 14))


def resize_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) pixel values in [0, 255] -> (N, C, size, size) float pixel values, rounded.

    The shorter side is resized to `size` with antialiasing (the longer side to floor(size * long / short),
    as torchvision's Resize(size)), the result is rounded to whole pixel values (half-way up), then the centre square
    is cut (offset floor((side - size) / 2)). Written with shape arithmetic alone, so the same function
    traces into an ONNX/TorchScript graph with dynamic H and W: exported models preprocess exactly as
    `imgcls predict` does.
    """
    height, width = images.shape[-2], images.shape[-1]
    # sym_min keeps torch.export from specializing on which side is shorter; TorchScript has min.
    short = min(height, width) if torch.jit.is_scripting() else torch.sym_min(height, width)
    new_h, new_w = size * height // short, size * width // short
    x = F.interpolate(
        images.float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
    )
    # Half-way values are common (upsampling averages two pixels) and onnxruntime lands a hair either side
    # of .5 where PyTorch lands on it: round half up past a margin far above float noise, so both agree.
    x = torch.floor(x + 0.5009765625).clamp(0, 255)  # 0.5 + 2**-10, written out for TorchScript
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x.narrow(2, top, size).narrow(3, left, size)  # narrow: the output size stays known when traced


def to_square(size: int) -> Callable[[Any], torch.Tensor]:
    """PIL image (or uint8 C, H, W tensor) -> uint8 tensor (C, size, size) by `resize_crop`.

    A partial of a module function, not a closure: it pickles into DataLoader worker processes.
    """
    return functools.partial(_square, size=size)


def _square(image: Any, size: int) -> torch.Tensor:
    x = image if isinstance(image, torch.Tensor) else pil_to_tensor(image)
    return resize_crop(x.unsqueeze(0), size)[0].to(torch.uint8)


def with_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """A uint8 (C, H, W) image with 1 or 3 channels converted to `channels` as the decoder converts files."""
    if image.shape[0] == channels:
        return image
    from PIL import Image

    from imgcls.data.decode import to_channels

    mode = "L" if image.shape[0] == 1 else "RGB"
    pil = Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy(), mode)
    return pil_to_tensor(to_channels(pil, channels))


def pil_to_tensor(image: Any) -> torch.Tensor:
    """An 'L' or 'RGB' PIL image -> uint8 tensor (C, H, W), without importing torchvision."""
    import numpy as np

    array = np.asarray(image, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


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
