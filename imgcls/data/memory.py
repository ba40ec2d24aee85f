"""The in-memory path: a split as one uint8 tensor on the training device, batched augmentation.

No per-sample Python, no DataLoader workers: indexing, random crops and flips run on whole batches.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.data.transforms import crop_padding, to_float, to_square

log = logging.getLogger("imgcls")


class BatchAugment:
    """Random translation (reflect-padded crop) and horizontal flip, applied per sample to a batch."""

    def __init__(self, size: int, flip: bool) -> None:
        self.pad = crop_padding(size)
        self.flip = flip

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
        x = padded.gather(2, rows.expand(n, x.shape[1], h, w + 2 * p))
        x = x.gather(3, cols.expand(n, x.shape[1], h, w))
        if self.flip:
            flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


class MemoryLoader:
    """Iterates (float images in [0, 1], labels) batches from uint8 tensors held on `device`.

    The order and augmentation of epoch `e` depend only on (seed, e), so a resumed run sees the
    same batches as an uninterrupted one.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool = False,
        augment: BatchAugment | None = None,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.drop_last = drop_last and len(labels) > batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order.to(self.labels.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = to_float(self.images[idx])
            if self.augment is not None:
                x = self.augment(x, gen)
            yield x, self.labels[idx]


def decode_files(
    paths: list[Path], size: int, channels: int, threads: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Decodes and squares every file into one uint8 tensor (N, C, size, size).

    Returns the images, the indices of the files that decoded, and (path, reason) for those that did not.
    """
    square = to_square(size)

    def load(path: Path) -> torch.Tensor | str:
        try:
            return square(open_image(path, channels))
        except ImageDecodeError as e:
            return e.reason

    threads = threads or min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes without the GIL
        results = list(pool.map(load, paths, chunksize=64))
    ok = [i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    failed = [(str(paths[i]), r) for i, r in enumerate(results) if isinstance(r, str)]
    images = (
        torch.stack([results[i] for i in ok])
        if ok
        else torch.zeros(0, channels, size, size, dtype=torch.uint8)
    )
    return images, torch.tensor(ok, dtype=torch.long), failed
