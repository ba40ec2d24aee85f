"""Imbalanced Fashion-MNIST: classes 5-9 keep 2% of their training images (108 each), classes 0-4 all
(5,400 each after the validation hold-out). Three runs, same budget: plain, `train.class_weights=auto`,
`data.sampler=balanced`; the per-class table of the test set shows what each does for the rare classes.

    python -m bench.imbalance            # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import imgcls
from bench.common import save
from bench.finetune_demo import write_split
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset

RARE, KEEP = range(5, 10), 0.02
RUNS = {
    "plain": {},
    "class_weights=auto": {"train.class_weights": "auto"},
    "sampler=balanced": {"data.sampler": "balanced"},
}


def main() -> None:
    fm = open_dataset(DataConfig(name="fashion-mnist", val_split=0.0))
    x, y = fm.train.images.numpy(), fm.train.labels.numpy()
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [
            np.flatnonzero(y == c)
            if c not in RARE
            else rng.choice(np.flatnonzero(y == c), int(KEEP * (y == c).sum()), replace=False)
            for c in range(10)
        ]
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_split(root / "train", x[keep], y[keep], fm.classes, range(10), None, 0)
        write_split(
            root / "test", fm.test.images.numpy(), fm.test.labels.numpy(), fm.classes, range(10), None, 0
        )
        for name, over in RUNS.items():
            out = imgcls.train(
                data=str(root),
                epochs=4,
                out=root / "runs" / name.replace("=", "-"),
                overrides={"log.progress": False, **over},
            )
            per = out.test["per_class"]
            rare = [fm.classes[c] for c in RARE]
            results[name] = {
                "accuracy": out.test["accuracy"],
                "f1_macro": out.test["f1_macro"],
                "rare_recall_mean": round(float(np.mean([per[c]["recall"] for c in rare])), 4),
                "common_recall_mean": round(
                    float(np.mean([per[c]["recall"] for c in per if c not in rare])), 4
                ),
                "recall": {c: per[c]["recall"] for c in per},
            }
            r = results[name]
            print(
                f"{name:20s} accuracy {r['accuracy']:.4f}  macro F1 {r['f1_macro']:.4f}  "
                f"recall rare {r['rare_recall_mean']:.4f}  common {r['common_recall_mean']:.4f}"
            )
    print(f"saved {save('imbalance', {'setup': __doc__.split(chr(10) + chr(10))[0], 'runs': results})}")


if __name__ == "__main__":
    main()
