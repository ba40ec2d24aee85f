"""Answering "I don't know" on Fashion-MNIST: a model trained on classes 0-4 (T-shirt/top, Trouser, Pullover,
Dress, Coat), with classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) as images of none of its classes.

The training images are written as PNG class folders, the out-of-distribution ones as a folder of PNGs. One
default run (`imgcls train`), then for each target precision `imgcls eval --abstain P --ood FOLDER` on a
copy of the run: the threshold is chosen on the validation split; the table shows what it does on the
5,000 test images of classes 0-4 (never used to choose anything) and on the 5,000 of classes 5-9.

    python -m bench.abstention          # ~2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import imgcls
from bench.common import save
from bench.finetune_demo import write_split
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset

KNOWN, UNKNOWN = range(0, 5), range(5, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="0.95,0.99,0.995", help="target precisions (comma-separated)")
    args = parser.parse_args()
    fm = open_dataset(DataConfig(name="fashion-mnist", val_split=0.0))
    train = (fm.train.images.numpy(), fm.train.labels.numpy())
    test = (fm.test.images.numpy(), fm.test.labels.numpy())
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="imgcls-abstain-") as tmp:
        root = Path(tmp)
        write_split(root / "data" / "train", *train, fm.classes, KNOWN, None, 0)
        write_split(root / "data" / "test", *test, fm.classes, KNOWN, None, 0)
        write_split(root / "ood", *test, fm.classes, UNKNOWN, None, 0)
        start = time.perf_counter()
        run = imgcls.train(data=str(root / "data"), out=root / "run", overrides={"log.progress": False})
        results["train"] = {"accuracy": run.test["accuracy"], "wall_s": round(time.perf_counter() - start, 1)}
        for target in args.targets.split(","):
            copy = root / f"run-{target}"
            shutil.copytree(root / "run", copy)
            r = imgcls.evaluate(copy, abstain=target, ood=str(root / "ood"), show=False)
            a, ood = r["abstention"], r["ood"]
            results[target] = {
                "threshold": round(a["threshold"], 4),
                "coverage": a["coverage"],
                "accuracy_answered": a["accuracy_answered"],
                "accuracy_all": r["accuracy"],
                "abstained_ood": ood["abstained_ood"],
                "auroc": ood["auroc"],
                "aurc": r["risk_coverage"]["aurc"],
            }
    print(
        f"\ntrained on classes 0-4: test accuracy {results['train']['accuracy']:.4f} ({results['train']['wall_s']}s)"
    )
    print(
        f"{'target':>8s} {'threshold':>10s} {'answered':>9s} {'acc. answered':>14s} {'OOD declined':>13s} {'AUROC':>7s}"
    )
    for target in args.targets.split(","):
        r = results[target]
        print(
            f"{target:>8s} {r['threshold']:10.4f} {r['coverage']:9.2%} {r['accuracy_answered']:14.4f} "
            f"{r['abstained_ood']:13.2%} {r['auroc']:7.4f}"
        )
    print(f"saved {save('abstention', results)}")


if __name__ == "__main__":
    main()
