"""Finding mislabeled images: Fashion-MNIST with 5% of its training labels flipped at random (seeded) to
another class, written as PNG files with a CSV manifest (path, label, split; the 10,000 test images keep
their labels), as a user would have them.

1. `imgcls data labels noisy.csv` (the whole command, timed as a user runs it): how many of the flipped
   images are in the top 2 x (number flipped) rows of the review queue, and the queue's precision.
2. A simulated reviewer (who knows the original labels) fills review.csv's action column: relabel where the
   given label is wrong (editing `suggested` where it is wrong too), keep the rest; `imgcls data apply`
   writes fixed.csv. Also the no-reviewer variant: every "label" row of the training split relabelled to
   its suggestion (never the test split's: relabelling test images to the model's view flatters it).
3. Default `imgcls train` runs on the clean, noisy, reviewed and auto-relabelled manifests: test accuracy.

    python -m bench.label_errors          # ~10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import imgcls
from bench.common import save
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset


def write_images(root: Path, seed: int, rate: float) -> tuple[list[str], dict[str, str], set[str]]:
    """PNG files root/images/{train,test}NNNNN.png, clean.csv and noisy.csv; returns the classes, each
    file's true label and the flipped files."""
    fm = open_dataset(DataConfig(name="fashion-mnist", val_split=0.0))
    classes = fm.classes
    rng = np.random.default_rng(seed)
    n = len(fm.train)
    flipped = rng.choice(n, int(rate * n), replace=False)
    noisy = fm.train.labels.numpy().copy()
    noisy[flipped] = (noisy[flipped] + rng.integers(1, len(classes), len(flipped))) % len(classes)
    (root / "images").mkdir(parents=True)
    truth, rows = {}, {"clean": [], "noisy": []}
    for split, data, given in (("train", fm.train, noisy), ("test", fm.test, fm.test.labels.numpy())):
        for i, (image, label) in enumerate(zip(data.images.numpy(), data.labels.tolist())):
            name = f"images/{split}{i:05d}.png"
            Image.fromarray(image[0]).save(root / name)
            truth[str(root / name)] = classes[label]
            rows["clean"].append((name, classes[label], split))
            rows["noisy"].append((name, classes[given[i]], split))
    for kind, lines in rows.items():
        with open(root / f"{kind}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("path", "label", "split"), *lines])
    return classes, truth, {str(root / f"images/train{i:05d}.png") for i in flipped.tolist()}


def review(queue: Path, out: Path, truth: dict[str, str], auto: bool) -> None:
    """review.csv with its action column filled by a reviewer who knows the truth (or, `auto`, by taking
    every likely label error's suggestion)."""
    with open(queue, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if auto:  # the test split stays as it is: relabelling it to the model's view would flatter the model
            row["action"] = "relabel" if row["issue"] == "label" and row["split"] != "test" else ""
        elif truth[row["path"]] != row["given"]:
            row["action"], row["suggested"] = "relabel", truth[row["path"]]
        else:
            row["action"] = "keep"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.05, help="share of training labels flipped")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results: dict = {"rate": args.rate, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="imgcls-labels-") as tmp:
        root = Path(tmp)
        classes, truth, flipped = write_images(root, args.seed, args.rate)
        start = time.perf_counter()
        command = [
            sys.executable,
            "-m",
            "imgcls",
            "data",
            "labels",
            str(root / "noisy.csv"),
            "--out",
            str(root / "review"),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        results["labels_wall_s"] = round(time.perf_counter() - start, 1)
        summary = json.loads((root / "review" / "labels.json").read_text())
        with open(root / "review" / "review.csv", newline="") as f:
            queue = list(csv.DictReader(f))
        top = queue[: 2 * len(flipped)]
        label_rows = [r for r in queue if r["issue"] == "label"]
        results |= {
            "flipped": len(flipped),
            "queue": len(queue),
            "issues": summary["issues"],
            "found_in_top_2x": round(sum(r["path"] in flipped for r in top) / len(flipped), 4),
            "label_rows_precision": round(sum(r["path"] in flipped for r in label_rows) / len(label_rows), 4),
            "label_rows_recall": round(sum(r["path"] in flipped for r in label_rows) / len(flipped), 4),
            "estimated_noise_rate": summary["estimated_noise_rate"],
            "oof_agreement": summary["oof_agreement"],
            "test_rows_in_queue": sum(r["split"] == "test" for r in queue),
        }
        for kind, auto in (("reviewed", False), ("auto", True)):
            review(root / "review" / "review.csv", root / "review" / f"{kind}.csv", truth, auto)
            applied = imgcls.apply_review(root / "review" / f"{kind}.csv", out=root / f"{kind}.csv")
            results[f"{kind}_apply"] = applied
        for kind in ("clean", "noisy", "reviewed", "auto"):
            t = time.perf_counter()
            run = imgcls.train(
                data=str(root / f"{kind}.csv"), out=root / f"run-{kind}", overrides={"log.progress": False}
            )
            results[kind] = {"accuracy": run.test["accuracy"], "wall_s": round(time.perf_counter() - t, 1)}
    print(
        f"\n{results['flipped']} of 60,000 training labels flipped; imgcls data labels in {results['labels_wall_s']}s: "
        f"{results['queue']} images to review {results['issues']}; {results['found_in_top_2x']:.1%} of the flipped "
        f"in the top {2 * results['flipped']} rows; 'label' rows: precision {results['label_rows_precision']:.1%}, "
        f"recall {results['label_rows_recall']:.1%}"
    )
    for kind in ("clean", "noisy", "reviewed", "auto"):
        print(f"  train on {kind + '.csv':13s} test accuracy {results[kind]['accuracy']:.4f}")
    print(f"saved {save('label_errors', results)}")


if __name__ == "__main__":
    main()
