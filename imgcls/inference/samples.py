"""Images that check an export, and labelled squares that calibrate int8: always a bounded sample.

The check feeds the artifact raw images of many shapes (non-square, tiny, large, extreme aspect) and
compares it with `imgcls predict`'s PyTorch path, which squares them first: a graph that preprocessed
differently could not pass. Nothing here decodes more images than it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from imgcls.data.datasets import Split
from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.data.transforms import pil_to_tensor, with_channels

log = logging.getLogger("imgcls")
# (height factor, width factor) cycled over sampled images: square, landscape, portrait, tiny, large.
VARIANTS = ((1.0, 1.0), (1.0, 4 / 3), (1.5, 1.0), (0.4, 0.7), (3.0, 2.0), (1.0, 3.1))
# Shapes every check includes: a 12 MP photo, a thumbnail, a banner, a needle.
EXTREME_SHAPES = ((3000, 4000), (5, 7), (150, 2000), (640, 24))
# Decoded pixels a sample may hold: 500 twelve-megapixel photos would be 18 GB; this is ~20 of them.
RAW_BUDGET = 768 << 20


def split_sample(
    split: Split, limit: int, channels: int, seed: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Up to `limit` images of a split as raw uint8 (C, H, W) tensors, with their labels.

    Files are decoded as they are (EXIF orientation applied); in-memory images (square at their native
    size) are resized to a cycle of other shapes, so the check covers what photos look like.
    """
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
    images, labels, held = [], [], 0
    for k, i in enumerate(order):
        if held > RAW_BUDGET:
            log.info("checking on %d images: their decoded pixels reached %d MB", len(images), held >> 20)
            break
        if split.images is not None:
            image = reshaped(with_channels(split.images[i], channels), *VARIANTS[k % len(VARIANTS)])
        else:
            try:
                image = pil_to_tensor(open_image(split.paths[i], channels))
            except ImageDecodeError:
                continue
        images.append(image)
        labels.append(split.labels[i])
        held += image.numel()
    return images, torch.stack(labels) if labels else split.labels[:0]


def folder_sample(folder: str | Path, limit: int, channels: int) -> list[torch.Tensor]:
    """Up to `limit` images of a folder (searched recursively, sorted), decoded as they are."""
    from imgcls.inference.inputs import expand_paths

    files, _ = expand_paths([folder])
    images, held = [], 0
    for path in files:
        if len(images) >= limit or held > RAW_BUDGET:
            break
        try:
            images.append(pil_to_tensor(open_image(path, channels)))
            held += images[-1].numel()
        except ImageDecodeError as e:
            log.warning("check image skipped: %s", e)
    return images


def synthetic(channels: int, count: int = 24, seed: int = 0) -> list[torch.Tensor]:
    """Smooth random images (upsampled noise, so they look like something) of varied shapes."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(int(h), int(w)) for h, w in torch.randint(8, 400, (count, 2), generator=gen).tolist()]
    return [_smooth(channels, h, w, gen) for h, w in shapes]


def extremes(channels: int, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [_smooth(channels, h, w, gen) for h, w in EXTREME_SHAPES]


def reshaped(image: torch.Tensor, height_factor: float, width_factor: float) -> torch.Tensor:
    """A uint8 (C, H, W) image resized to another shape (antialiased when shrinking)."""
    if (height_factor, width_factor) == (1.0, 1.0):
        return image
    h, w = image.shape[-2:]
    size = (max(1, round(h * height_factor)), max(1, round(w * width_factor)))
    x = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def squares(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Raw images squared as `imgcls predict` squares them, stacked (N, C, size, size)."""
    from imgcls.data.transforms import to_square

    square = to_square(size)
    return torch.stack([square(image) for image in images])


def _smooth(channels: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(1, channels, max(2, height // 8), max(2, width // 8), generator=gen)
    x = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (x[0] * 255).round().to(torch.uint8)
