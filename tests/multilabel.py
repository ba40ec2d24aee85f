"""Tiny multi-label data for tests: each label is a colour channel that is bright on the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("blue", "green", "red")
CHANNEL = {"red": 0, "green": 1, "blue": 2}


def make_multilabel_image(labels: set[str], rng: np.random.Generator, size: int = 32) -> Image.Image:
    arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    for label in labels:
        arr[..., CHANNEL[label]] = rng.integers(150, 255, (size, size), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def label_sets(n: int, rng: np.random.Generator) -> list[set[str]]:
    """n label sets: every image has 0-3 labels, each label on about half of them."""
    return [{label for label in LABELS if rng.random() < 0.5} for _ in range(n)]


def write_multilabel_manifest(
    root: Path, n: int = 48, seed: int = 0, sep: str = ";", pairs: bool = False, splits: bool = False
) -> Path:
    """root/images/*.png and root/data.csv: path,labels with `sep` (or one row per (path, label) with
    `pairs`; an image with no label gets one row with an empty label); with `splits`, a split column
    puts a sixth of the images in val and a sixth in test."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,labels" + (",split" if splits else "")]
    for i, labels in enumerate(label_sets(n, rng)):
        name = f"images/img{i:03d}.png"
        make_multilabel_image(labels, rng).save(root / name)
        split = ("," + ("val" if i % 6 == 1 else "test" if i % 6 == 2 else "train")) if splits else ""
        cells = sorted(labels) if pairs else [sep.join(sorted(labels))]
        for cell in cells or [""]:
            lines.append(f'{name},"{cell}"{split}')
    path = root / "data.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
