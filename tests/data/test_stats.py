"""Per-channel statistics, said once: worked examples, and the same numbers in chunks as whole."""

from __future__ import annotations

import torch

from imgcls.data.stats import channel_stats_of, mean_std, pixel_sums


def test_a_worked_example():
    # One image, two channels: channel 0 is half black, half white; channel 1 is all 51 (0.2).
    image = torch.zeros(1, 2, 2, 2, dtype=torch.uint8)
    image[0, 0, 0] = 255
    image[0, 1] = 51
    sums = pixel_sums(image)
    assert sums.tolist() == [2.0, 0.8, 2.0, 0.16000000000000003, 4.0]
    mean, std = mean_std(sums)
    assert torch.allclose(mean, torch.tensor([0.5, 0.2], dtype=torch.float64))
    assert torch.allclose(std, torch.tensor([0.5, 0.0], dtype=torch.float64), atol=1e-7)
    assert channel_stats_of(image) == ((0.5, 0.2), (0.5, 0.001))  # a constant channel's std is floored


def test_sums_add_up_across_chunks_and_images():
    images = torch.randint(0, 256, (9000, 3, 4, 4), dtype=torch.uint8)  # more than one 4096-image chunk
    whole = mean_std(pixel_sums(images))
    parts = mean_std(pixel_sums(images[:5000]) + pixel_sums(images[5000:]))
    x = images.double().div(255).transpose(0, 1).reshape(3, -1)
    for got in (whole, parts):
        assert torch.allclose(got[0], x.mean(1)) and torch.allclose(got[1], x.std(1, unbiased=False))
