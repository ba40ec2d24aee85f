"""Photos as people have them: any shape and size, JPEG with EXIF orientation, PNG with alpha, gray,
12-megapixel and thumbnail-sized. Each shows its class the way the synthetic training data does (one
bright colour channel), so a trained model answers with some confidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# (width, height) cycled over the corpus: landscape, portrait, square, panorama, tiny, odd.
SHAPES = (
    (640, 480),
    (480, 640),
    (300, 300),
    (1200, 400),
    (7, 5),
    (33, 91),
    (800, 533),
    (96, 128),
    (250, 251),
)
ORIENTATIONS = (1, 3, 6, 8)  # EXIF: upright, 180, 90 cw, 90 ccw


def photo(label: int, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A smooth colour field (upsampled noise) in which channel `label` is bright."""
    coarse = rng.integers(0, 70, (max(2, height // 40), max(2, width // 40), 3)).astype(np.uint8)
    coarse[..., label % 3] = rng.integers(140, 255, coarse.shape[:2])
    return Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BILINEAR)


def write_photos(root: Path, count: int, classes: tuple[str, ...], seed: int = 0) -> list[Path]:
    """`count` photos in root/<class>/ plus one 4000x3000 JPEG; every fourth JPEG is EXIF-rotated."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        label = i % len(classes)
        width, height = SHAPES[i % len(SHAPES)]
        image = photo(label, width, height, rng)
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        kind = i % 4
        if kind == 0:  # EXIF-rotated JPEG: stored sideways, shown upright
            path = folder / f"p{i}.jpg"
            exif = Image.Exif()
            exif[0x0112] = ORIENTATIONS[(i // 4) % len(ORIENTATIONS)]
            image.save(path, quality=90, exif=exif)
        elif kind == 1:
            path = folder / f"p{i}.png"
            image.convert("RGBA").save(path)  # alpha, composited over white by the decoder
        elif kind == 2:
            path = folder / f"p{i}.jpeg"
            image.save(path, quality=85)
        else:
            path = folder / f"p{i}.webp"
            image.save(path, quality=90)
        paths.append(path)
    big = root / classes[0] / "large.jpg"
    photo(0, 4000, 3000, rng).save(big, quality=80)
    return [*paths, big]
