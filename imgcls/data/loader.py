"""Turns a DataBundle into batch iterators: in RAM when it fits (fast path), else streamed from disk.

Both paths yield the same kind of batch: float32 images in [0, 1] of shape (N, C, S, S) on the
training device, and int64 labels.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from imgcls.config import DataConfig
from imgcls.data.datasets import DataBundle, DataError, Split, data_root
from imgcls.data.decode import GRAY_MODES, ImageDecodeError, open_image
from imgcls.data.memory import (
    BatchAugment,
    BatchMix,
    MemoryLoader,
    batch_generator,
    decode_files,
    decode_files_cached,
    epoch_batches,
)
from imgcls.data.stats import ChannelStats, channel_stats_of
from imgcls.data.transforms import to_float, to_square, train_augment
from imgcls.data.types import ImageSource
from imgcls.utils.env import available_cores

log = logging.getLogger("imgcls")
RAM_FRACTION = 0.25  # cache a dataset in RAM when it takes at most this share of physical memory


def resolve_channels(bundle: DataBundle, cfg: DataConfig) -> int:
    """cfg.data.channels, else the data's own: 1 when every training image is grayscale, else 3."""
    if cfg.channels:
        return cfg.channels
    if bundle.channels:
        return bundle.channels
    paths = bundle.train.paths or []

    def mode(p: ImageSource) -> str | None:
        try:
            with Image.open(p if isinstance(p, Path) else io.BytesIO(p.read_bytes())) as im:
                return im.mode
        except Exception:  # unreadable files are reported when decoded
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        modes = {m for m in pool.map(mode, paths) if m is not None}
    return 1 if modes and modes <= GRAY_MODES else 3


def use_ram(bundle: DataBundle, cfg: DataConfig, size: int, channels: int) -> bool:
    if cfg.cache != "auto":
        return cfg.cache == "ram"
    n = sum(len(s) for s in (bundle.train, bundle.val, bundle.test) if s is not None)
    return n * channels * size * size <= RAM_FRACTION * _physical_memory()


def prepare(bundle: DataBundle, cfg: DataConfig, size: int, channels: int) -> DataBundle:
    """Decodes file splits into RAM (when they fit) and brings tensor splits to (channels, size).

    Unreadable files are skipped with one warning naming each (an error with `data.strict`).
    """
    in_ram = use_ram(bundle, cfg, size, channels)
    skipped = list(bundle.skipped)
    splits = {}
    for name in ("train", "val", "test"):
        split = getattr(bundle, name)
        if split is not None and split.images is None and in_ram:
            images, ok, failed = decode_files_cached(
                split.paths or [], size, channels, _decode_cache_dir(cfg)
            )
            skipped += failed
            split = Split(split.labels[ok], images, [split.paths[i] for i in ok.tolist()])
        elif split is not None and split.images is not None:
            split = Split(split.labels, _adapt(split.images, size, channels), split.paths)
        splits[name] = split
    report_skipped(skipped, cfg.strict)
    return replace(bundle, skipped=skipped, channels=channels, **splits)


STATS_SAMPLE = 4096  # images a file dataset's mean/std is measured on (all of a smaller one)


def channel_stats(source: Split, prepared: Split, size: int, channels: int) -> ChannelStats:
    """Per-channel mean/std of the training images, the same whether they sit in RAM or stream.

    Built-in tensors: all of them. Files: a seeded sample of the source's file list (every file of a
    dataset up to STATS_SAMPLE), taken from RAM where `prepare` decoded it, else decoded now; files that
    do not decode drop out of both alike.
    """
    if source.images is not None:
        return channel_stats_of(prepared.images)
    paths = source.paths or []
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE]
    sample = [paths[i] for i in sorted(order.tolist())]
    if prepared.images is not None:
        where = {p: i for i, p in enumerate(prepared.paths or [])}
        images = prepared.images[[where[p] for p in sample if p in where]]
    else:
        images, _, _ = decode_files(sample, size, channels)
    return channel_stats_of(images)


def report_skipped(skipped: list[tuple[str, str]], strict: bool) -> None:
    if not skipped:
        return
    lines = "\n".join(f"  {where}: {why}" for where, why in skipped)
    if strict:
        raise DataError(f"{len(skipped)} unusable file(s)/row(s) (data.strict is on):\n{lines}")
    log.warning("skipped %d unusable file(s)/row(s):\n%s", len(skipped), lines)


def build_loader(
    split: Split,
    cfg: DataConfig,
    *,
    size: int,
    channels: int,
    device: torch.device,
    train: bool,
    flip: bool = True,
    seed: int = 0,
    num_classes: int | None = None,
    rank: int = 0,
    world: int = 1,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """A MemoryLoader for in-RAM splits (unless data.cache=off), else a streaming DataLoader.

    Training batches get the configured augmentation; mixup/cutmix (which need `num_classes`) turn
    their labels into soft label vectors. In a distributed run (`world` > 1) each rank gets its share:
    its part of every global batch of `cfg.batch_size` when training, a contiguous chunk when evaluating.
    """
    batch = cfg.batch_size if train else cfg.eval_batch_size
    aug_mode = cfg.augment if cfg.augment != "auto" else ("crop-flip" if flip else "crop")
    crop = train and aug_mode in ("crop", "crop-flip")
    use_flip = train and aug_mode in ("flip", "crop-flip")
    cutout = cfg.cutout if train else 0
    mix = None
    if train and (cfg.mixup > 0 or cfg.cutmix > 0):
        if num_classes is None:
            raise DataError("mixup/cutmix need the number of classes")
        mix = BatchMix(num_classes, cfg.mixup, cfg.cutmix)
    weights = balanced_weights(split.labels) if train and cfg.sampler == "balanced" else None
    if split.images is not None and cfg.cache != "off":
        augment = BatchAugment(size, use_flip, cutout, crop=crop) if crop or use_flip or cutout else None
        return MemoryLoader(
            split.images,
            split.labels,
            batch,
            device=device,
            shuffle=train,
            augment=augment,
            mix=mix,
            drop_last=train,
            seed=seed,
            rank=rank,
            world=world,
            sample_weights=weights,
        )
    transform = train_augment(size, use_flip, cutout, crop=crop) if crop or use_flip or cutout else None
    dataset = StreamDataset(split, size, channels, transform, seed=seed)
    return StreamLoader(
        dataset,
        batch,
        device=device,
        shuffle=train,
        drop_last=train,
        seed=seed,
        workers=_workers(cfg, split),
        mix=mix,
        rank=rank,
        world=world,
        sample_weights=weights,
    )


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights 1 / (size of its class): every class is drawn equally often. Multi-label: the
    rarest of an image's labels decides (images with no label count as one more class)."""
    if labels.ndim == 2:
        present = torch.cat([labels > 0, (labels.sum(1, keepdim=True) == 0)], 1).double()
        inverse = 1.0 / present.sum(0).clamp_min(1)
        return (present * inverse).max(1).values
    counts = torch.bincount(labels).double()
    return (1.0 / counts.clamp_min(1))[labels]


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights n / (classes present x class count) (scikit-learn's "balanced"):
    every class weighs the same in total, and the whole training set keeps its total weight.
    Multi-label: each label's positive weight, negatives / positives (as BCEWithLogitsLoss's pos_weight)."""
    if labels.ndim == 2:
        positives = labels.sum(0)
        return torch.where(positives > 0, (len(labels) - positives) / positives.clamp_min(1), 1.0)
    counts = torch.bincount(labels, minlength=num_classes).float()
    weights = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()), 0.0)
    return weights


class StreamDataset(torch.utils.data.Dataset):
    """Per-sample decoding (files) or indexing (tensors), then torchvision v2 augmentation.

    Each sample's augmentation draws from its own seed (seed, epoch, index), whichever worker decodes
    it, so the streamed batches of an epoch are the same on every run and after a resume.
    """

    def __init__(self, split: Split, size: int, channels: int, transform=None, seed: int = 0) -> None:
        self.split, self.size, self.channels, self.transform = split, size, channels, transform
        self.square = to_square(size)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.split.images is not None:
            image = _adapt(self.split.images[i : i + 1], self.size, self.channels)[0]
        else:
            try:
                image = self.square(open_image(self.split.paths[i], self.channels))
            except ImageDecodeError as e:
                log.warning("skipped unreadable image %s", e)
                return None
        if self.transform is not None:
            # torchvision transforms draw from the global RNG: fork it so training's own stream is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(batch_generator(self.seed, self.epoch, i).initial_seed())
                image = self.transform(image)
        return image, self.split.labels[i]


class _EpochBatches(torch.utils.data.Sampler):
    """The DataLoader's batch sampler: `epoch_batches` of the current epoch, from `start` on."""

    def __init__(self, n: int, batch_size: int, **kwargs) -> None:
        self.n, self.batch_size, self.kwargs = n, batch_size, kwargs
        self.epoch, self.start = 0, 0

    def _batches(self) -> list[torch.Tensor]:
        return epoch_batches(self.n, self.batch_size, epoch=self.epoch, **self.kwargs)

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches()[self.start :]:
            yield batch.tolist()


class StreamLoader:
    """A DataLoader whose batches (order, rank shard, augmentation) depend only on (seed, epoch)."""

    def __init__(
        self,
        dataset: StreamDataset,
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        workers: int,
        mix: BatchMix | None = None,
        rank: int = 0,
        world: int = 1,
        sample_weights: torch.Tensor | None = None,
    ) -> None:
        self.device, self.seed, self.epoch, self.start_batch, self.mix = device, seed, 0, 0, mix
        self.rank, self.world, self.dataset = rank, world, dataset
        self.sampler = _EpochBatches(
            len(dataset),
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            rank=rank,
            world=world,
            weights=sample_weights,
        )
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=_collate_present,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            multiprocessing_context=_worker_context(workers),
            # Its own generator: each epoch's iterator draws a worker seed, which from the global RNG would
            # shift dropout's stream, and a run resumed mid-epoch would then differ from an uninterrupted one.
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Workers start at iter() with a copy of the dataset: set the epoch first.
        self.sampler.epoch, self.sampler.start, self.dataset.epoch = self.epoch, self.start_batch, self.epoch
        for b, (images, labels) in enumerate(self.loader, start=self.start_batch):
            if not len(labels):
                if self.world > 1:  # skipping alone would leave the other ranks waiting for this one
                    raise DataError(
                        f"batch {b} on rank {self.rank} has no readable image; with several processes use "
                        "data.cache=ram (unreadable files are dropped before training) or remove the files"
                    )
                continue
            x, y = (
                to_float(images.to(self.device, non_blocking=True)),
                labels.to(self.device, non_blocking=True),
            )
            if self.mix is not None:
                x, y = self.mix(x, y, batch_generator(self.seed, self.epoch, b, self.rank))
            yield x, y


def _worker_context(workers: int) -> multiprocessing.context.BaseContext | None:
    """Workers forked from a clean forkserver (imgcls's loader imported once), not from the training process.

    Forking the training process can hang the new worker for good: CPython 3.11 deadlocks in a child forked
    while another thread starts or ends (the previous DataLoader's queue thread does, between epochs; gloo
    and OpenMP run threads too). Seen as a 2-process run stuck at its first validation.
    """
    if workers == 0 or sys.platform != "linux":
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _collate_present(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    items = [it for it in items if it is not None]
    if not items:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _adapt(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Resizes/re-channels uint8 tensor images (built-ins asked for another size or channel count)."""
    if images.shape[1] != channels:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:  # ITU-R 601 luma, as PIL's convert("L")
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(
            images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def _decode_cache_dir(cfg: DataConfig) -> Path | None:
    """Decoded folders are cached under $IMGCLS_DATA/cache/decoded unless data.cache=off."""
    return None if cfg.cache == "off" else data_root() / "cache" / "decoded"


def _workers(cfg: DataConfig, split: Split) -> int:
    if cfg.workers is not None:
        return cfg.workers
    if split.images is not None:
        return 0  # indexing a tensor: worker processes only add overhead
    cores = available_cores()
    return min(8, max(1, cores // 2))


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
