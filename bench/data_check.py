"""How long the data doctor takes on Fashion-MNIST's 60,000 training images (+10,000 test).

Two forms: the built-in dataset (uint8 tensors) and the same images as a folder of PNG files, the way a
user's data arrives. Baseline, measured in the same run: only opening and decoding every PNG with PIL
(4 threads), the least any file checker must do. The doctor also hashes, thumbnails, collects stats and
searches for near-duplicates.

    python -m bench.data_check        # ~2 minutes on 2 cores (writing the PNGs included)
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import save
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset
from imgcls.data.doctor import check


def write_pngs(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        Image.fromarray(images[i, 0]).save(root / classes[labels[i]] / f"{i}.png")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(len(images)), chunksize=256))


def decode_only(paths: list[Path]) -> float:
    start = time.perf_counter()

    def one(p: Path) -> None:
        with Image.open(p) as im:
            im.load()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, paths, chunksize=256))
    return time.perf_counter() - start


def main() -> None:
    fm = open_dataset(DataConfig(name="fashion-mnist", val_split=0.0))
    start = time.perf_counter()
    builtin = check(fm)
    builtin_s = time.perf_counter() - start
    print(
        f"built-in fashion-mnist (70,000 tensors): {builtin_s:.1f} s, findings: "
        + ", ".join(f"{f.kind} {f.count}" for f in builtin.findings)
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_pngs(root / "train", fm.train.images.numpy(), fm.train.labels.numpy(), fm.classes)
        write_pngs(root / "test", fm.test.images.numpy(), fm.test.labels.numpy(), fm.classes)
        paths = sorted(root.rglob("*.png"))
        baseline_s = decode_only(paths)
        start = time.perf_counter()
        folder = check(open_dataset(DataConfig(name=str(root), val_split=0.0)))
        folder_s = time.perf_counter() - start
    print(
        f"folder of {len(paths)} PNGs: doctor {folder_s:.1f} s vs decode-only baseline {baseline_s:.1f} s "
        f"({folder_s / baseline_s:.1f}x the bare decode)"
    )
    path = save(
        "data-check",
        {
            "builtin_seconds": round(builtin_s, 2),
            "folder_seconds": round(folder_s, 2),
            "decode_only_seconds": round(baseline_s, 2),
            "ratio_vs_decode_only": round(folder_s / baseline_s, 2),
            "images": len(paths),
            "findings_builtin": {f.kind: f.count for f in builtin.findings},
            "findings_folder": {f.kind: f.count for f in folder.findings},
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
