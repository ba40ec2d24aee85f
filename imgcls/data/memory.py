"""The in-memory path: a split as one uint8 tensor on the training device, batched augmentation.

No per-sample Python, no DataLoader workers: indexing, random crops and flips run on whole batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from imgcls.data.decode import ImageDecodeError, open_image
from imgcls.data.transforms import crop_padding, pil_to_tensor, resize_crop, to_float, to_square
from imgcls.data.types import ImageSource, Member
from imgcls.utils.env import available_cores
from imgcls.utils.io import atomic_write

log = logging.getLogger("imgcls")


class BatchAugment:
    """Random translation (reflect-padded crop), horizontal flip and cutout, per sample, on a whole batch."""

    def __init__(self, size: int, flip: bool, cutout: int = 0, crop: bool = True) -> None:
        self.pad = crop_padding(size) if crop else 0
        self.flip = flip
        self.cutout = cutout

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.pad:
            x = self._translate(x, gen)
        if self.flip:
            flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.cutout:
            cy = torch.randint(0, h, (n,), generator=gen).to(x.device)[:, None, None, None]
            cx = torch.randint(0, w, (n,), generator=gen).to(x.device)[:, None, None, None]
            r = torch.arange(h, device=x.device)[None, None, :, None]
            c = torch.arange(w, device=x.device)[None, None, None, :]
            half = self.cutout / 2
            x = x.masked_fill(((r - cy).abs() < half) & ((c - cx).abs() < half), 0.0)
        return x

    def _translate(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
        x = padded.gather(2, rows.expand(n, x.shape[1], h, w + 2 * p))
        return x.gather(3, cols.expand(n, x.shape[1], h, w))


class BatchMix:
    """Mixup / CutMix on a batch: returns mixed images and soft labels (N, num_classes).

    The mixing weight comes from Beta(alpha, alpha) per batch; with both enabled, each batch uses one
    of them at random (as timm does). Used by both the in-memory and the streaming path.
    """

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0) -> None:
        self.num_classes, self.mixup, self.cutmix = num_classes, mixup, cutmix

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or torch.rand((), generator=gen) < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        # From `gen`, not the global RNG: a batch's mixing is then a function of its seed alone.
        lam = float(np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen))).beta(alpha, alpha))
        perm = torch.randperm(len(y), generator=gen).to(x.device)
        if use_cutmix:
            h, w = x.shape[-2:]
            bh, bw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
            top = int(torch.randint(0, h - bh + 1, (), generator=gen))
            left = int(torch.randint(0, w - bw + 1, (), generator=gen))
            x = x.clone()
            x[..., top : top + bh, left : left + bw] = x[perm][..., top : top + bh, left : left + bw]
            lam = 1 - bh * bw / (h * w)  # the area actually pasted
        else:
            x = lam * x + (1 - lam) * x[perm]
        # Multi-label targets mix as they are (soft multi-hot); class indices become one-hot first.
        target = y.float() if y.ndim == 2 else F.one_hot(y, self.num_classes).float()
        return x, lam * target + (1 - lam) * target[perm]


def batch_generator(seed: int, epoch: int, batch: int, rank: int = 0) -> torch.Generator:
    """The random stream of one batch: a function of (seed, epoch, batch, rank) only.

    Seeding each batch on its own lets a run resumed in the middle of an epoch draw exactly the
    augmentations it would have drawn without the interruption.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{batch}:{rank}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def epoch_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    weights: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The sample indices of each of this rank's batches in one epoch.

    With per-sample `weights` (class-balanced sampling) the epoch draws n indices with replacement,
    with probabilities proportional to the weights, instead of a permutation.

    Training (shuffle): one permutation per (seed, epoch), cut into global batches of `batch_size`,
    each split into `world` equal parts; rank r takes part r. So N ranks together see exactly the
    batches a single process would, and their averaged gradients equal its gradient.
    Evaluation: rank r takes the r-th contiguous chunk, so gathering in rank order restores the order.
    """
    if not shuffle:
        own = torch.arange(n).tensor_split(world)[rank]
        return list(own.split(batch_size))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = (
        torch.randperm(n, generator=gen)
        if weights is None
        else torch.multinomial(weights, n, True, generator=gen)
    )
    count = n // batch_size if drop_last and n > batch_size else math.ceil(n / batch_size)
    return [order[b * batch_size : (b + 1) * batch_size].tensor_split(world)[rank] for b in range(count)]


class MemoryLoader:
    """Iterates (float images in [0, 1], labels) batches from uint8 tensors held on `device`.

    Order and augmentation depend only on (seed, epoch, batch index, rank), so a resumed run (even one
    resumed mid-epoch with `set_epoch(epoch, start_batch)`) sees the same batches as an uninterrupted one.
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
        mix: BatchMix | None = None,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        sample_weights: torch.Tensor | None = None,
    ) -> None:
        self.images = images.to(device)
        self.sample_weights = sample_weights
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.mix, self.seed = shuffle, augment, mix, seed
        self.drop_last, self.rank, self.world = drop_last, rank, world
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Selects the epoch to iterate, starting at batch `start_batch` (to resume mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def _batches(self) -> list[torch.Tensor]:
        return epoch_batches(
            len(self.labels),
            self.batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world=self.world,
            weights=self.sample_weights,
        )

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._batches()
        for b in range(self.start_batch, len(batches)):
            idx = batches[b].to(self.labels.device)
            x = to_float(self.images[idx])
            y = self.labels[idx]
            gen = batch_generator(self.seed, self.epoch, b, self.rank)
            if self.augment is not None:
                x = self.augment(x, gen)
            if self.mix is not None:
                x, y = self.mix(x, y, gen)
            yield x, y


CACHE_VERSION = 3  # bump when decoding or squaring changes what a file decodes to


def decode_files_cached(
    paths: list[ImageSource], size: int, channels: int, cache_dir: Path | None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """`decode_files`, remembered on disk: a second run over unchanged files skips decoding.

    The cache key covers every path with its inode, size, modification and change times (a member of a tar
    shard or Arrow table: its own identity), and the target size and channels, so a changed, added or
    removed file decodes afresh. The change time (ctime) matters:
    an edit can keep size and mtime (`cp -p`, `touch -r`), but no user call sets the ctime back.
    """
    if cache_dir is None or not paths:
        return decode_files(paths, size, channels)
    key = hashlib.sha256(f"{CACHE_VERSION}:{size}:{channels}\n".encode())
    for p in paths:
        key.update(_identity(p))
    path = cache_dir / f"{key.hexdigest()[:32]}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                failed = [tuple(x) for x in json.loads(f.metadata()["failed"])]
                return f.get_tensor("images"), f.get_tensor("ok"), failed
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            log.warning("ignoring unreadable decode cache %s (%s)", path, e)
    images, ok, failed = decode_files(paths, size, channels)
    try:
        tensors = {"images": images.contiguous(), "ok": ok}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"failed": json.dumps(failed)}))
    except OSError as e:
        log.warning("could not write the decode cache %s: %s", path, e)
    return images, ok, failed


def _identity(source: ImageSource) -> bytes:
    """A file's path with its inode, size, modification and change times; a member's own identity."""
    if isinstance(source, Member):
        return source.identity().encode() + b"\n"
    try:
        st = source.stat()
        return (
            os.fsencode(source)
            + f"\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode()
        )
    except OSError:
        return os.fsencode(source) + b"\0missing\n"


DECODE_CHUNK = 1024  # files decoded before their small images are resized together (bounds the memory held)


def decode_files(
    paths: list[ImageSource], size: int, channels: int, threads: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Decodes and squares every file into one uint8 tensor (N, C, size, size).

    Returns the images, the indices of the files that decoded, and (path, reason) for those that did not.
    Each image is squared exactly as `to_square` does; small ones (up to 4x the target area) are resized a
    chunk at a time, one interpolation per shape: per image, the call overhead of torch was most of the
    time a small picture took to decode.
    """
    square = to_square(size)

    def load(path: ImageSource) -> torch.Tensor | str:
        try:
            image = pil_to_tensor(open_image(path, channels))
        except ImageDecodeError as e:
            return e.reason
        return image if image.shape[1] * image.shape[2] <= 4 * size * size else square(image)

    threads = threads or min(16, available_cores())
    parts, ok, failed = [], [], []
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes without the GIL
        for start in range(0, len(paths), DECODE_CHUNK):
            chunk = paths[start : start + DECODE_CHUNK]
            # Slices of 64 per task: a future per file costs more than a small PNG takes to decode.
            slices = pool.map(
                lambda part: [load(p) for p in part], [chunk[i : i + 64] for i in range(0, len(chunk), 64)]
            )
            results = [r for part in slices for r in part]
            good = [r for r in results if isinstance(r, torch.Tensor)]
            ok += [start + i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
            failed += [(str(paths[start + i]), r) for i, r in enumerate(results) if isinstance(r, str)]
            if good:
                parts.append(_squared(good, size))
    images = torch.cat(parts) if parts else torch.zeros(0, channels, size, size, dtype=torch.uint8)
    return images, torch.tensor(ok, dtype=torch.long), failed


def _squared(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 (C, H, W) images of any sizes -> (N, C, size, size), each shape resized in one call."""
    out = torch.empty(len(images), images[0].shape[0], size, size, dtype=torch.uint8)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape), []).append(i)
    for shape, index in by_shape.items():
        batch = torch.stack([images[i] for i in index])
        out[index] = batch if shape[1:] == (size, size) else resize_crop(batch, size).to(torch.uint8)
    return out
