"""Transfer learning on Fashion-MNIST: pretrain on classes 0-4 (all their images), then learn classes 5-9
from only 20 images per class, fine-tuned from the pretrained run vs trained from scratch, same budget.

Everything goes through the public API and real files (PNG class folders), as a user would do it:
the fine-tuned runs pass the pretrained run folder as `model.weights`.

    python -m bench.finetune_demo            # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import imgcls
from bench.common import save
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset

PRETRAIN_CLASSES, TARGET_CLASSES = range(0, 5), range(5, 10)
FEW = 20  # training images per target class
WIDTH = 16
COMMON = {"model.width": WIDTH, "log.progress": False, "data.batch_size": 16, "train.label_smoothing": 0.1}


def write_split(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    keep: range,
    per_class: int | None,
    seed: int,
) -> None:
    """PNG files root/<class>/<i>.png for the classes in `keep` (optionally `per_class` random ones each)."""
    rng = np.random.default_rng(seed)
    for c in keep:
        idx = np.flatnonzero(labels == c)
        if per_class is not None:
            idx = rng.choice(idx, per_class, replace=False)
        folder = root / classes[c]
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(images[i, 0]).save(folder / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, default=3, help="few-shot samples (and training seeds) to average"
    )
    parser.add_argument(
        "--epochs", type=int, nargs="+", default=[10, 30], help="budgets of the few-shot runs"
    )
    parser.add_argument("--workdir", help="keep images and runs here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fm = open_dataset(DataConfig(name="fashion-mnist", val_split=0.0))
    classes = fm.classes
    train_x, train_y = fm.train.images.numpy(), fm.train.labels.numpy()
    test_x, test_y = fm.test.images.numpy(), fm.test.labels.numpy()

    with tempfile.TemporaryDirectory() as scratch_dir:
        tmp = Path(args.workdir or scratch_dir)
        write_split(tmp / "pre" / "train", train_x, train_y, classes, PRETRAIN_CLASSES, None, 0)
        write_split(tmp / "pre" / "test", test_x, test_y, classes, PRETRAIN_CLASSES, None, 0)
        t = time.perf_counter()
        pre = imgcls.train(
            data=str(tmp / "pre"),
            epochs=6,
            out=tmp / "runs" / "pretrain",
            overrides=COMMON | {"data.batch_size": 128},
        )
        pretrain = {"test_accuracy": pre.test["accuracy"], "seconds": round(time.perf_counter() - t, 1)}
        print(f"pretrained on classes 0-4: {pre.test['accuracy']:.4f} in {pretrain['seconds']} s")

        rows = []
        for seed in range(args.seeds):
            few = tmp / f"few{seed}"
            write_split(few / "train", train_x, train_y, classes, TARGET_CLASSES, FEW, seed)
            write_split(few / "test", test_x, test_y, classes, TARGET_CLASSES, None, 0)
            base = COMMON | {"train.seed": seed, "data.val_split": 0.0}
            runs = {
                "scratch": base,
                "finetune": base | {"model.weights": str(pre.run_dir)},
                "linear-probe": base | {"model.weights": str(pre.run_dir), "model.freeze": "backbone"},
            }
            for epochs in args.epochs:
                row = {"seed": seed, "epochs": epochs}
                for name, over in runs.items():
                    out = imgcls.train(
                        data=str(few),
                        epochs=epochs,
                        out=tmp / "runs" / f"{name}{seed}-{epochs}",
                        overrides=over,
                    )
                    row[name] = out.test["accuracy"]
                print(f"seed {seed}, {epochs} epochs: " + "  ".join(f"{k} {row[k]:.4f}" for k in runs))
                rows.append(row)

    summary = {
        f"{epochs} epochs": {
            k: round(statistics.mean(r[k] for r in rows if r["epochs"] == epochs), 4)
            for k in ("scratch", "finetune", "linear-probe")
        }
        for epochs in args.epochs
    }
    for budget, means in summary.items():
        print(
            f"mean test accuracy on classes 5-9 (5,000 images), {budget}: "
            + "  ".join(f"{k} {v:.4f}" for k, v in means.items())
        )
    path = save(
        "finetune-demo",
        {
            "setup": f"pretrain smallnet width {WIDTH} on Fashion-MNIST classes 0-4 (30,000 images, 6 epochs); "
            f"then {FEW} training images per class of classes 5-9, {args.epochs} epochs, batch 16, "
            "test on all 5,000 test images of classes 5-9",
            "pretrain": pretrain,
            "runs": rows,
            "mean": summary,
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
