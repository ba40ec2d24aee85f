"""Per-channel pixel statistics of uint8 images (mean and std of values in [0, 1]): the normalization a
model trained from scratch is given, and the numbers the data check reports. Said once, in chunks, so a
large dataset is never copied to float whole."""

from __future__ import annotations

import torch

ChannelStats = tuple[tuple[float, ...], tuple[float, ...]]


def pixel_sums(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 images -> float64 [sum of each channel, sum of its squares, pixel count] (2C + 1)."""
    c = images.shape[1]
    total, total_sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for chunk in images.split(4096):
        x = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        total_sq += (x * x).sum(1)
        count += x.shape[1]
    return torch.cat([total, total_sq, torch.tensor([float(count)], dtype=torch.float64)])


def mean_std(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std from `pixel_sums` (added up over any number of images)."""
    c = (len(sums) - 1) // 2
    count = max(float(sums[-1]), 1.0)
    mean = sums[:c] / count
    return mean, (sums[c : 2 * c] / count - mean**2).clamp_min(0).sqrt()


def channel_stats_of(images: torch.Tensor) -> ChannelStats:
    """Mean/std of uint8 images, rounded, with a floor on std (a constant channel must not divide by 0)."""
    mean, std = mean_std(pixel_sums(images))
    return tuple(round(v, 5) for v in mean.tolist()), tuple(round(max(v, 1e-3), 5) for v in std.tolist())
