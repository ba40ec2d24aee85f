"""The data path alone: images/s of one training epoch of Fashion-MNIST batches, no model.

    .venv/bin/python bench/data_path.py

Compares imgcls's in-memory fast path (uint8 tensor, batched augmentation) with its streaming path
(per-sample torchvision v2 transforms through a DataLoader) and with the tutorial posts' path
(torchvision FashionMNIST + ToTensor through a DataLoader), all measured in this run.
"""

from __future__ import annotations

import time

import torch

from bench.common import machine, save
from imgcls.config import DataConfig
from imgcls.data.datasets import data_root, open_dataset
from imgcls.data.loader import build_loader


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
    base = rows["tutorial DataLoader + ToTensor (batch 64)"]
    for name, rate in rows.items():
        print(f"{name:60s} {rate:12,.0f} img/s  {rate / base:7.1f}x")
    print(
        f"saved {save('data-path', {'images_per_second': rows, 'ratio_vs_tutorial': {k: round(v / base, 1) for k, v in rows.items()}})}"
    )


if __name__ == "__main__":
    main()
