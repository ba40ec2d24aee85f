"""Are the class-activation maps faithful? A synthetic set where only a small coloured patch at a random place
decides the class (the background is grey noise, the same for every class); a faithful map peaks on the patch.

Per model and method: the share of test images whose map peaks inside the patch, and a deletion score
(pytorch-grad-cam's ROAD: the most relevant pixels removed by noisy linear imputation) against removing
random pixels: a faithful map's top pixels cost the predicted class much more probability than random ones.

    python bench/cam_faithfulness.py                   # smallnet and resnet18 (small stem): ~10 minutes
    python bench/cam_faithfulness.py --models smallnet
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import imgcls
from bench.common import save
from imgcls.inference.explain import METHODS

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230), "yellow": (230, 220, 30)}


def make_data(
    root: Path, per_class: dict[str, int], side: int, patch: int, noise: tuple[int, int], seed: int = 0
) -> dict[str, tuple]:
    """root/<split>/<colour>/<i>.png: grey noise in [noise[0], noise[1]) and one patch; each file's patch box."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for split, n in per_class.items():
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = rng.integers(*noise, (side, side, 1), dtype=np.uint8).repeat(3, 2)  # grey noise
                x, y = rng.integers(0, side - patch + 1, 2)
                image[y : y + patch, x : x + patch] = colour
                path = root / split / name / f"{i}.png"
                Image.fromarray(image).save(path)
                boxes[str(path)] = (int(x), int(y), int(x + patch), int(y + patch))
    return boxes


def peak_hits(maps: np.ndarray, boxes: list[tuple]) -> float:
    hits = 0
    for cam, (x0, y0, x1, y1) in zip(maps, boxes):
        y, x = np.unravel_index(cam.argmax(), cam.shape)
        hits += x0 <= x < x1 and y0 <= y < y1
    return hits / len(boxes)


def deletion(model, images: torch.Tensor, maps: np.ndarray, targets: list[int], percentile: int) -> float:
    """Mean drop of the target's probability when the top (100 - percentile)% of pixels by `maps` are removed."""
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    metric = ROADMostRelevantFirst(percentile=percentile)
    changes = [
        metric(
            images[i : i + 64],
            maps[i : i + 64],
            [ClassifierOutputSoftmaxTarget(t) for t in targets[i : i + 64]],
            model,
        )
        for i in range(0, len(images), 64)
    ]
    return float(-np.mean(np.concatenate(changes)))


def evaluate_model(name: str, data: Path, boxes: dict, out: Path, overrides: dict, percentile: int) -> dict:
    start = time.perf_counter()
    run = imgcls.train(data=str(data), model=name, out=out, overrides={"log.progress": False, **overrides})
    train_s = time.perf_counter() - start
    predictor = imgcls.load(run.run_dir, device="cpu")
    files = sorted((data / "test").rglob("*.png"))
    images = torch.stack([predictor.preprocess(f) for f in files]).float() / 255
    targets = [predictor.classes.index(p["label"]) for p in predictor.predict(files)]
    file_boxes = [boxes[str(f)] for f in files]
    random_maps = np.random.default_rng(0).random((len(files), *images.shape[-2:]), dtype=np.float32)
    row = {
        "test_accuracy": run.test["accuracy"],
        "train_s": round(train_s, 1),
        "random_deletion": round(deletion(predictor.model, images, random_maps, targets, percentile), 4),
        "methods": {},
    }
    for method in METHODS:
        t = time.perf_counter()
        maps = predictor.explain(files, target=targets, method=method)
        row["methods"][method] = {
            "peak_on_patch": round(peak_hits(maps, file_boxes), 4),
            "deletion": round(deletion(predictor.model, images, maps, targets, percentile), 4),
            "seconds": round(time.perf_counter() - t, 2),
        }
        m = row["methods"][method]
        print(
            f"{name:>10} {method:>10}: peak on the patch {m['peak_on_patch']:.1%}, probability lost deleting the top "
            f"{100 - percentile}% pixels {m['deletion']:.3f} (random pixels: {row['random_deletion']:.3f}, "
            f"{m['deletion'] / max(row['random_deletion'], 1e-6):.1f}x)"
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smallnet", "resnet18"])
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--percentile", type=int, default=90, help="delete the pixels above this percentile")
    parser.add_argument(
        "--noise", type=int, nargs=2, default=[96, 160], help="grey levels of the background noise"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {
        "side": args.side,
        "patch": args.patch,
        "percentile": args.percentile,
        "noise": args.noise,
        "models": {},
    }
    settings = {
        "smallnet": {"train.epochs": 12},
        # A torchvision CNN from scratch at the data's 32 px (a folder is otherwise resized to the model's 224): with the
        # small-input stem its layer4 map is 4x4.
        "resnet18": {"train.epochs": 8, "model.small_stem": True, "data.image_size": 32},
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "patches"
        split = {"train": args.train_per_class, "test": args.test_per_class}
        boxes = make_data(data, split, args.side, args.patch, tuple(args.noise))
        for name in args.models:
            overrides = {**settings.get(name, {"train.epochs": 6}), "data.val_split": 0.1}
            results["models"][name] = evaluate_model(
                name, data, boxes, Path(tmp) / name, overrides, args.percentile
            )
    name = "cam-faithfulness" + ("" if args.noise == [96, 160] else f"-noise{args.noise[0]}-{args.noise[1]}")
    name += "" if args.models == ["smallnet", "resnet18"] else "-" + "-".join(args.models)
    print(f"results: {save(name, results)}")


if __name__ == "__main__":
    main()
