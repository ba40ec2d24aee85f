"""The data doctor's entry points: the full check, the cheap leakage check run before training, and the
duplicate groups that carving splits keeps together."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from imgcls.data.doctor.findings import (
    ERROR_MESSAGES,
    Pairs,
    class_counts,
    class_findings,
    duplicate_findings,
    file_findings,
    image_stats,
    label_set_stats,
    near_pairs,
)
from imgcls.data.doctor.images import ImageFacts, byte_hash, file_images, tensor_images
from imgcls.data.doctor.records import DataReport, Finding, Record, finding
from imgcls.data.folder import UNUSABLE_PATH
from imgcls.data.types import DataBundle, Split

SPLITS = ("train", "val", "test")


def check(bundle: DataBundle, *, near: bool = True) -> DataReport:
    """Examines every image of a dataset (before decoding for training) and returns the findings.

    Example:
        >>> report = check(open_dataset(DataConfig(name="my_folder")))   # doctest: +SKIP
        >>> [f.kind for f in report.errors]                              # doctest: +SKIP
    """
    start = time.perf_counter()
    splits = _splits(bundle)
    images = (
        tensor_images(splits) if all(s.images is not None for s in splits.values()) else file_images(splits)
    )
    label_images(images, splits, bundle.classes)
    counts = {name: class_counts(split.labels, bundle.classes) for name, split in splits.items()}
    findings = [
        *skipped_findings(bundle.skipped),
        *file_findings(images),
        *class_findings(counts, bundle.classes),
        *duplicate_findings(images, near),
    ]
    report = DataReport(
        bundle.name, sum(len(s) for s in splits.values()), counts, image_stats(images), findings
    )
    report.seconds = round(time.perf_counter() - start, 2)
    if bundle.multilabel:
        report.labels = label_set_stats(splits, bundle.classes)
    return report


def label_images(images: list[ImageFacts], splits: dict[str, Split], classes: list[str]) -> None:
    """Sets each image's class name (multi-label: its labels joined by ';') in its facts, which come split
    by split, each in its split's order."""
    names = []
    for split in splits.values():
        if split.multilabel:
            names += [";".join(classes[j] for j, on in enumerate(row) if on) for row in split.labels.tolist()]
        else:
            names += [classes[i] for i in split.labels.tolist()]
    for img, name in zip(images, names, strict=True):
        img.label = name


def skipped_findings(skipped: list[tuple[str, str]]) -> list[Finding]:
    """What was dropped before splitting: non-images (error), unusable paths (warning), bad manifest rows (error)."""
    groups: dict[str, list[Record]] = {"not-image": [], "unusable-path": [], "unusable-entry": []}
    for where, why in skipped:
        kind = (
            "not-image"
            if "not an image" in why
            else "unusable-path"
            if why.startswith(UNUSABLE_PATH)
            else "unusable-entry"
        )
        groups[kind].append(Record(kind, "", where, why))
    levels = {
        "not-image": ("error", ERROR_MESSAGES["not-image"]),
        "unusable-path": ("warning", "paths that are no readable file (skipped)"),
        "unusable-entry": ("error", "manifest rows that name no usable image"),
    }
    return [finding(levels[k][0], k, levels[k][1], records) for k, records in groups.items() if records]


def leakage(bundle: DataBundle) -> list[Finding]:
    """The cheap checks run before training: identical files (or tensors) in two splits."""
    splits = _splits(bundle)
    if len(splits) < 2:
        return []
    if all(s.images is not None for s in splits.values()):
        images = tensor_images(splits, dhash=False)
    else:
        images = [
            ImageFacts(name, str(p), byte_hash=byte_hash(p))
            for name, s in splits.items()
            for p in s.paths or []
        ]
    return [f for f in duplicate_findings(images, near=False) if f.severity == "error"]


def split_facts(split: Split, name: str = "train") -> list[ImageFacts]:
    """What each image of `split` says about itself (from RAM where it is decoded there)."""
    return tensor_images({name: split}) if split.images is not None else file_images({name: split})


def duplicate_groups(
    split: Split, images: list[ImageFacts] | None = None, close: Pairs | None = None
) -> tuple[np.ndarray, int]:
    """A group id per image: identical and near-identical images (as `check` defines them) share one.

    Returns the ids (each group's smallest index) and the number of groups with more than one image.
    Splits carved along these groups never put two copies of one picture on both sides. `images` and
    their near pairs (`close`) may be given where they are already known.
    """
    images = split_facts(split) if images is None else images
    parent = np.arange(len(images))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)

    index = {id(img): i for i, img in enumerate(images)}
    by_key: dict[str, int] = {}
    for i, img in enumerate(images):
        for key in {img.byte_hash, img.pixel_hash, img.path if split.images is None else ""} - {""}:
            join(by_key.setdefault(key, i), i)
    for a, b in (near_pairs(images) if close is None else close).values():
        join(index[id(a)], index[id(b)])
    groups = np.array([root(i) for i in range(len(images))], dtype=np.int64)
    shared = int((np.bincount(groups, minlength=len(groups)) > 1).sum())
    return groups, shared


def _splits(bundle: DataBundle) -> dict[str, Any]:
    return {name: getattr(bundle, name) for name in SPLITS if getattr(bundle, name) is not None}
