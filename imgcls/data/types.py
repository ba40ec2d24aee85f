"""The shapes every data source produces: a `DataBundle` of train/val/test `Split`s, and `DataError`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from imgcls.errors import ImgclsError


class DataError(ImgclsError, ValueError):
    """The data cannot be used as given; the message says why and what to do."""


class Member:
    """An image stored inside a container (a tar shard, an Arrow table), read and named like a file.

    A split's `paths` may hold members next to (or instead of) files: everything that reads an image
    calls `read_bytes()`, and everything that names one prints `str()`, so the decoder, the in-RAM and
    streaming paths, the data doctor and the reports treat both alike. Subclasses are frozen dataclasses
    (hashable, picklable into DataLoader workers) and define `read_bytes`, `identity` and `__str__`.
    """

    def read_bytes(self) -> bytes:
        raise NotImplementedError

    def identity(self) -> str:
        """What changes when the member's bytes may have changed (decode cache keys)."""
        raise NotImplementedError


ImageSource = Path | Member  # what a split's `paths` holds


@dataclass
class Split:
    """One split: labels plus either uint8 `images` (N, C, H, W) or `paths` (files or members) to decode.

    `labels` holds a class index per image (int64, N), or for multi-label data a 0/1 row per image
    (float32, N x classes; a row of zeros is an image with none of the labels).
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    paths: list[ImageSource] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @classmethod
    def join(cls, splits: list[Split]) -> Split:
        """The splits' images one after another (tensors or paths, whichever all of them have)."""
        return cls(
            torch.cat([s.labels for s in splits]),
            torch.cat([s.images for s in splits]) if all(s.images is not None for s in splits) else None,
            [p for s in splits for p in s.paths] if all(s.paths is not None for s in splits) else None,
        )

    def subset(self, index: torch.Tensor | np.ndarray) -> Split:
        index = torch.as_tensor(index, dtype=torch.long)
        images = self.images[index] if self.images is not None else None
        paths = [self.paths[i] for i in index.tolist()] if self.paths is not None else None
        return Split(self.labels[index], images, paths)


@dataclass
class DataBundle:
    name: str
    classes: list[str]
    train: Split
    val: Split | None = None
    test: Split | None = None
    channels: int | None = None  # known for in-memory data; None: decide from the files
    image_size: int | None = None  # native square size, where the source has one
    flip_ok: bool = True  # horizontal flips keep the label (not for digits)
    single_tree: bool = False  # one class-folder tree or CSV without splits: test is carved too
    val_carved: bool = False  # the val split was carved from train (not the source's own)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or row, reason)

    @classmethod
    def of_splits(
        cls, name: str, classes: list[str], splits: dict[str, Split], skipped: list[tuple[str, str]]
    ) -> DataBundle:
        """The splits a source has (train, maybe val and test); with train alone, val and test are carved."""
        return cls(
            name,
            classes,
            splits["train"],
            splits.get("val"),
            splits.get("test"),
            skipped=skipped,
            single_tree=set(splits) == {"train"},
        )

    @property
    def multilabel(self) -> bool:
        return self.train.multilabel

    @property
    def task(self) -> str:
        return "multilabel" if self.multilabel else "multiclass"

    def split(self, name: str) -> Split:
        split = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if split is None:
            raise DataError(f"dataset {self.name!r} has no {name!r} split")
        return split

    def with_classes(self, classes: list[str]) -> DataBundle:
        """The same images with labels re-indexed to `classes` (a trained model's), matched by name."""
        if self.classes == classes:
            return self
        index = {c: i for i, c in enumerate(classes)}

        def remap(split: Split | None) -> Split | None:
            if split is None:
                return None
            used = split.labels.any(0).nonzero().flatten() if split.multilabel else split.labels.unique()
            unknown = sorted({self.classes[i] for i in used.tolist()} - index.keys())
            if unknown:
                raise DataError(
                    f"the data has classes the model was not trained on: {', '.join(unknown[:10])}"
                )
            if split.multilabel:  # columns by name; a label the data lacks is absent from every image
                labels = torch.zeros(len(split), len(classes))
                for i, name in enumerate(self.classes):
                    if name in index:
                        labels[:, index[name]] = split.labels[:, i]
            else:
                labels = torch.tensor(
                    [index[self.classes[i]] for i in split.labels.tolist()], dtype=torch.long
                )
            return Split(labels, split.images, split.paths)

        return replace(
            self, classes=list(classes), train=remap(self.train), val=remap(self.val), test=remap(self.test)
        )
