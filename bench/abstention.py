"""Answering "I don't know" on Fashion-MNIST: a model trained on classes 0-4 (T-shirt/top, Trouser, Pullover,
Dress, Coat), with classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) as images of none of its classes.

The training images are written as PNG class folders, the out-of-distribution ones as a folder of PNGs. One
default run (`imgcls train`), then for each target precision `imgcls eval --abstain P --ood FOLDER` on a
copy of the run: the threshold is chosen on the validation split; the table shows what it does on the
5,000 test images of classes 0-4 (never used to choose anything) and on the 5,000 of classes 5-9.

Then one review round with the 0.99 run: `imgcls predict RUN known/ unknown/ --sort-into sorted/` on all
10,000 test images; a simulated reviewer moves each image in `_review/` of a known class into its class
folder and deletes the others; `imgcls data manifest sorted/` lists what goes back into training.

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
        results["review_round"] = review_round(root, fm.classes)
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
    r = results["review_round"]
    print(
        f"\nsorting 10,000 test images (5,000 of known classes) with the 0.99 model: {r['sorted']} sorted "
        f"({r['sorted_known']} known at accuracy {r['sorted_accuracy']:.4f}, {r['sorted_unknown']} unknown "
        f"sorted into a class), {r['review']} to review ({r['review_known']} known, {r['review_unknown']} "
        f"unknown); after the review, the manifest holds {r['manifest_rows']} images, "
        f"{r['manifest_wrong']} of them under a wrong class"
    )
    print(f"saved {save('abstention', results)}")


def review_round(root: Path, classes: list[str]) -> dict:
    """Sort the test images, review the queue as a person who knows the truth would, list the result."""
    known, unknown = root / "data" / "test", root / "ood"
    # Files are named by their index in the test set: a name says the image's true class.
    # (The class folder is the first part below the split: "T-shirt/top" is the folder T-shirt/ holding top/.)
    truth = {p.name: p.relative_to(base).parts[0] for base in (known, unknown) for p in base.rglob("*.png")}
    known_names = {classes[c].split("/")[0] for c in KNOWN}  # as folders: "T-shirt/top" is T-shirt/
    out = root / "sorted"
    summary = imgcls.predict(root / "run-0.99", [known, unknown], sort_into=out)["sorting"]
    placed = {p.name: p.parent.name for p in out.rglob("*.png") if p.parent.name != "_review"}
    review = list((out / "_review").glob("*.png"))
    for p in review:  # the reviewer: an image of a known class goes to its folder, the rest is deleted
        if truth[p.name] in known_names:
            (out / truth[p.name]).mkdir(exist_ok=True)
            p.rename(out / truth[p.name] / p.name)
        else:
            p.unlink()
    manifest = imgcls.manifest_data(out)
    rows = [line.rsplit(",", 1) for line in (out / "labels.csv").read_text().splitlines()[1:]]
    sorted_known = [name for name in placed if truth[name] in known_names]
    return {
        "sorted": summary["sorted"],
        "review": summary["review"],
        "sorted_known": len(sorted_known),
        "sorted_unknown": len(placed) - len(sorted_known),
        "sorted_accuracy": round(
            sum(truth[n] == placed[n] for n in sorted_known) / max(1, len(sorted_known)), 4
        ),
        "review_known": sum(truth[p.name] in known_names for p in review),
        "review_unknown": sum(truth[p.name] not in known_names for p in review),
        "manifest_rows": manifest["rows"],
        "manifest_wrong": sum(truth[Path(path).name] != label for path, label in rows),
    }


if __name__ == "__main__":
    main()
