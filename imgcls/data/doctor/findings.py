"""Turning what the images say into findings: broken files, odd images, class counts and imbalance,
classes missing from a split, exact and near duplicates within a split and across splits (leakage), and
the dataset's sizes and per-channel mean/std."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from imgcls.data.doctor.images import EXTREME_ASPECT, TINY_SIDE, ImageFacts
from imgcls.data.doctor.records import Finding, Record, finding
from imgcls.data.stats import mean_std

IMBALANCE_WARNING = 10.0  # largest / smallest training class
NEAR_BITS = 4  # difference-hash distance (of 64 bits) at or under which two images are candidates...
NEAR_PIXELS = 4.0  # ...confirmed when their 16x16 gray thumbnails differ by at most this (of 255) on average
MAX_BUCKET = 256  # hash buckets larger than this (flat, near-empty images) are not paired exhaustively


ODD_MESSAGES = {
    "cmyk": "CMYK images (converted to RGB; colours may shift)",
    "16-bit": "16-bit or float images (scaled to 8 bits by their type's range)",
    "palette-transparency": "palette images with transparency (composited over white)",
    "animated": "animated images (only the first frame is used)",
    "exif-rotated": "EXIF-rotated images (rotated upright when decoded)",
    "extreme-aspect": f"extreme aspect ratios (over {EXTREME_ASPECT:g}:1; squashed by square resizing)",
    "tiny": f"tiny images (a side under {TINY_SIDE} px)",
}
ERROR_MESSAGES = {
    "unreadable": "files that cannot be read",
    "zero-byte": "zero-byte files",
    "not-image": "non-image files",
    "bomb": "decompression bombs (refused)",
    "truncated": "truncated images",
    "corrupt": "undecodable images",
}


def file_findings(images: list[ImageFacts]) -> list[Finding]:
    findings = []
    for kind, message in ERROR_MESSAGES.items():
        records = [
            Record(kind, i.split, i.path, i.error[1]) for i in images if i.error and i.error[0] == kind
        ]
        if kind == "not-image" and records:  # files with image extensions that are not images
            message += " (with an image extension)"
        if records:
            findings.append(finding("error", kind, message, records))
    for kind, message in ODD_MESSAGES.items():
        records = [Record(kind, i.split, i.path) for i in images if kind in i.odd]
        if records:
            findings.append(finding("warning", kind, message, records))
    return findings


def class_counts(labels: torch.Tensor, classes: list[str]) -> dict[str, int]:
    """Images per class; multi-label: images carrying each label."""
    counts = labels.sum(0).long() if labels.ndim == 2 else torch.bincount(labels, minlength=len(classes))
    return dict(zip(classes, counts.tolist()))


def label_set_stats(splits: dict[str, Any], classes: list[str], top: int = 10) -> dict[str, Any]:
    """Multi-label data: images with no label and labels per image (each split), each label's share of the
    training images and its imbalance (negatives per positive), and the most frequent label pairs."""
    train = splits["train"].labels > 0.5
    together = (train.T.long() @ train.long()).triu(1)
    pairs = [
        {"labels": [classes[int(i)], classes[int(j)]], "count": int(together[i, j])}
        for i, j in zip(
            *np.unravel_index(np.argsort(-together.flatten().numpy(), kind="stable")[:top], together.shape)
        )
        if together[i, j] > 0
    ]
    positives = train.sum(0)
    return {
        "task": "multilabel",
        "no_label": {name: int((s.labels.sum(1) == 0).sum()) for name, s in splits.items()},
        "labels_per_image": {name: round(float(s.labels.sum(1).mean()), 3) for name, s in splits.items()},
        "positive_rate": {c: round(float(n) / len(train), 4) for c, n in zip(classes, positives.tolist())},
        "imbalance": {
            c: round((len(train) - n) / n, 2) if n else None for c, n in zip(classes, positives.tolist())
        },
        "frequent_pairs": pairs,
    }


def class_findings(counts: dict[str, dict[str, int]], classes: list[str]) -> list[Finding]:
    findings = []
    train = counts.get("train", {})
    empty = [c for c in classes if not train.get(c)]
    if empty:
        records = [Record("empty-class", "train", label=c) for c in empty]
        findings.append(finding("warning", "empty-class", "classes with no training images", records))
    for split in ("val", "test"):
        if split in counts:
            kind = f"missing-in-{split}"
            missing = [
                Record(kind, split, label=c) for c in classes if train.get(c) and not counts[split].get(c)
            ]
            if missing:
                findings.append(finding("warning", kind, f"classes with no {split} images", missing))
    sizes = [n for n in train.values() if n]
    if sizes and max(sizes) / min(sizes) >= IMBALANCE_WARNING:
        big, small = max(train, key=train.get), min((c for c in train if train[c]), key=train.get)
        message = (
            f"training classes are imbalanced {max(sizes) / min(sizes):.1f}:1 ({big} {train[big]}, "
            f"{small} {train[small]}); the small classes will be learnt poorly; collect more of them or weight the loss"
        )
        records = [Record("imbalance", "train", label=c, reason=f"{train[c]} images") for c in (big, small)]
        findings.append(finding("warning", "imbalance", message, records))
    return findings


Pairs = dict[tuple[str, str], tuple[ImageFacts, ImageFacts]]


def duplicate_pairs(images: list[ImageFacts], near: bool) -> tuple[Pairs, Pairs]:
    """Pairs of the same bytes or pixels (exact), and of close difference hashes (near, not exact)."""
    exact: dict[str, list[ImageFacts]] = defaultdict(list)
    for img in images:
        for key in {img.byte_hash, img.pixel_hash} - {""}:
            exact[key].append(img)
    pairs: Pairs = {}
    for group in exact.values():
        for other in group[1:]:
            pairs.setdefault(_pair_key(group[0], other), (group[0], other))
    close = {k: v for k, v in near_pairs(images).items() if k not in pairs} if near else {}
    return pairs, close


def label_conflicts(pairs: Pairs, close: Pairs) -> list[tuple[ImageFacts, ImageFacts]]:
    return [(a, b) for a, b in [*pairs.values(), *close.values()] if a.label != b.label]


def duplicate_findings(images: list[ImageFacts], near: bool) -> list[Finding]:
    """Same bytes or same pixels (exact), or close difference hashes (near), within and across splits;
    a pair under two different labels is a label conflict instead."""
    pairs, close = duplicate_pairs(images, near)
    conflicts = label_conflicts(pairs, close)
    findings = _conflict_findings(conflicts)
    pairs = {k: (a, b) for k, (a, b) in pairs.items() if a.label == b.label}
    findings += _pair_findings(pairs, "duplicate", "leak", "identical images (same bytes or pixels)")
    if near:
        findings += _pair_findings(
            {k: (a, b) for k, (a, b) in close.items() if a.label == b.label},
            "near-duplicate",
            "near-leak",
            f"near-identical images (e.g. re-encoded: 16x16 thumbnails within {NEAR_PIXELS:g}/255)",
        )
    return findings


def _conflict_findings(conflicts: list[tuple[ImageFacts, ImageFacts]]) -> list[Finding]:
    """One picture (same pixels, or near-identical) filed under two different classes: one of the labels
    is wrong (or the task is multi-label). Named once, as a conflict, whatever splits the copies are in."""
    records = [
        Record(
            "label-conflict",
            a.split,
            a.path,
            reason=f"{a.label or '(no label)'} here, {b.label or '(no label)'} there",
            other=b.path,
            other_split=b.split,
        )
        for a, b in conflicts
    ]
    message = "the same picture filed under two classes (one label is wrong, or the task is multi-label)"
    return [finding("warning", "label-conflict", message, records)] if records else []


def _pair_key(a: ImageFacts, b: ImageFacts) -> tuple[str, str]:
    return tuple(sorted((a.path, b.path)))  # type: ignore[return-value]


def _pair_findings(pairs: dict, within_kind: str, across_kind: str, what: str) -> list[Finding]:
    def record(kind: str, a: ImageFacts, b: ImageFacts) -> Record:
        return Record(kind, a.split, a.path, other=b.path, other_split=b.split)

    within = [record(within_kind, a, b) for a, b in pairs.values() if a.split == b.split]
    across = [record(across_kind, a, b) for a, b in pairs.values() if a.split != b.split]
    findings = []
    if across:
        severity = "error" if across_kind == "leak" else "warning"
        findings.append(
            finding(severity, across_kind, f"{what} in two splits: test results would be inflated", across)
        )
    if within:
        findings.append(finding("warning", within_kind, f"{what} within a split", within))
    return findings


def near_pairs(images: list[ImageFacts]) -> dict[tuple[str, str], tuple[ImageFacts, ImageFacts]]:
    """Pairs within NEAR_BITS: two codes that close agree exactly on at least one of 5 bands (pigeonhole)."""
    usable = [i for i in images if i.error is None and i.thumb is not None]
    if len(usable) < 2:
        return {}
    codes = np.array([i.dhash for i in usable], dtype=np.uint64)
    found: dict[tuple[str, str], tuple[ImageFacts, ImageFacts]] = {}
    for band in range(NEAR_BITS + 1):
        shift, width = band * 13, 13 if band < NEAR_BITS else 64 - 13 * NEAR_BITS
        keys = (codes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        for bucket in np.split(order, bounds):
            if len(bucket) < 2 or len(bucket) > MAX_BUCKET:
                continue
            sub = codes[bucket]
            dist = _popcount(sub[:, None] ^ sub[None, :])
            for a, b in zip(*np.nonzero(np.triu(dist <= NEAR_BITS, k=1))):
                ia, ib = usable[bucket[a]], usable[bucket[b]]
                if np.abs(ia.thumb.astype(np.int16) - ib.thumb).mean() <= NEAR_PIXELS:
                    found.setdefault(_pair_key(ia, ib), (ia, ib))
    return found


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.astype(">u8").view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def image_stats(images: list[ImageFacts]) -> dict[str, Any]:
    ok = [i for i in images if i.error is None]
    sums = [i.sums for i in ok if i.sums is not None]
    stats: dict[str, Any] = {"readable": len(ok), "unreadable": len(images) - len(ok)}
    if ok:
        widths = np.array([i.size[0] for i in ok])
        heights = np.array([i.size[1] for i in ok])
        stats |= {
            "width": {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())},
            "height": {
                "min": int(heights.min()),
                "median": float(np.median(heights)),
                "max": int(heights.max()),
            },
            "channels": 1 if all(i.gray for i in ok) else 3,
        }
    if sums:
        mean, std = mean_std(torch.stack(sums).sum(0))
        if stats.get("channels") == 1:
            mean, std = mean[:1], std[:1]
        stats |= {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std]}
    return stats
