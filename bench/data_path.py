"""The data path alone: images/s of one training epoch of Fashion-MNIST batches, no model.

    .venv/bin/python bench/data_path.py

Compares imgcls's in-memory fast path (uint8 tensor, batched augmentation) with its streaming path
(per-sample torchvision v2 transforms through a DataLoader) and with the tutorial posts' path
(torchvision FashionMNIST + ToTensor through a DataLoader), all measured in this run.

Then Fashion-MNIST's 60,000 training images written as PNG files to each source imgcls reads (a class
folder tree, Parquet through Hugging Face `datasets`, WebDataset tar shards packed by `imgcls data pack`):
for each, the time to open (list / index) it, the decode into RAM (the first run; later runs hit the decode
cache) and one streamed epoch (data.cache=off, the DataLoader workers imgcls picks), all without augmentation.
Needs the hf and wds extras (the dev install has them).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from bench.common import machine, save
from imgcls.config import DataConfig
from imgcls.data.datasets import data_root, open_dataset
from imgcls.data.decode import open_image
from imgcls.data.loader import build_loader
from imgcls.data.memory import decode_files
from imgcls.data.shards import pack
from imgcls.data.transforms import to_square
from imgcls.utils.env import available_cores


def images_per_second(loader, epochs: int = 1) -> float:
    start, n = time.perf_counter(), 0
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for x, _ in loader:
            n += len(x)
    return n / (time.perf_counter() - start)


def main() -> None:
    import torchvision
    from torchvision.transforms import ToTensor

    print(f"machine: {machine()}")
    device = torch.device("cpu")
    rows = {}
    tutorial = torchvision.datasets.FashionMNIST(str(data_root()), train=True, transform=ToTensor())
    rows["tutorial DataLoader + ToTensor (batch 64)"] = images_per_second(
        torch.utils.data.DataLoader(tutorial, batch_size=64, shuffle=True)
    )
    for cache, label in (
        ("ram", "imgcls fast path (RAM, batched)"),
        ("off", "imgcls streaming path (v2, per sample)"),
    ):
        for augment in ("none", "crop-flip"):
            cfg = DataConfig(name="fashion-mnist", cache=cache, augment=augment, batch_size=128, workers=0)
            bundle = open_dataset(cfg)
            loader = build_loader(bundle.train, cfg, size=28, channels=1, device=device, train=True)
            rows[f"{label}, augment={augment} (batch 128)"] = images_per_second(
                loader, epochs=3 if cache == "ram" else 1
            )
    formats = file_formats()
    rows |= {f"{name}: {what}": value for name, result in formats.items() for what, value in result.items()}
    base = rows["tutorial DataLoader + ToTensor (batch 64)"]
    for name, rate in rows.items():
        if "open" in name:
            print(f"{name:60s} {rate:12.1f} s")
        else:
            print(f"{name:60s} {rate:12,.0f} img/s  {rate / base:7.1f}x")
    print(
        f"saved {save('data-path', {'images_per_second': rows, 'ratio_vs_tutorial': {k: round(v / base, 1) for k, v in rows.items()}})}"
    )


def write_formats(root: Path) -> dict[str, str]:
    """Fashion-MNIST's training images as PNG files in a class tree, Parquet files and tar shards."""
    import datasets

    bundle = open_dataset(DataConfig(name="fashion-mnist", val_split=0))
    pngs = []
    for image in bundle.train.images:
        buffer = io.BytesIO()
        Image.fromarray(image[0].numpy()).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    labels = bundle.train.labels.tolist()
    for i, (data, label) in enumerate(zip(pngs, labels)):
        folder = root / "folder" / "train" / bundle.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(data)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=bundle.classes)}
    )
    rows = {"image": [{"bytes": b, "path": None} for b in pngs], "label": labels}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "train.parquet"))
    pack(open_dataset(DataConfig(name=str(root / "folder"), val_split=0)), root / "shards", 10**9)
    return {
        "folder": str(root / "folder"),
        "parquet": str(root / "train.parquet"),
        "shards": str(root / "shards"),
    }


def file_formats() -> dict[str, dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # datasets keeps an Arrow copy of the Parquet file in its cache: here, so it goes with the rest.
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf-cache")
        sources = write_formats(Path(tmp))
        for name, data in sources.items():
            start = time.perf_counter()
            bundle = open_dataset(DataConfig(name=data, val_split=0, test_split=0))
            opened = time.perf_counter() - start
            start = time.perf_counter()
            images, _, failed = decode_files(bundle.train.paths, 28, 1)
            decoded = len(images) / (time.perf_counter() - start)
            assert len(images) == 60_000 and not failed, (name, len(images), failed[:3])
            cfg = DataConfig(name=data, cache="off", augment="none", batch_size=128)
            loader = build_loader(
                bundle.train, cfg, size=28, channels=1, device=torch.device("cpu"), train=True
            )
            results[f"{name} (PNG files)"] = {
                "open, seconds": opened,
                "decode to RAM (first run)": decoded,
                "streaming epoch, augment=none (batch 128)": images_per_second(loader),
            }
            if name == "folder":
                results["folder (PNG files)"]["decode to RAM, one image at a time (before)"] = one_by_one(
                    bundle.train.paths, 28
                )
    return results


def one_by_one(paths: list, size: int) -> float:
    """The decode as it was: each image squared on its own (to_square) in the same threads, no batching."""
    square = to_square(size)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(16, available_cores())) as pool:
        done = list(pool.map(lambda p: square(open_image(p, 1)), paths, chunksize=64))
    return len(done) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
