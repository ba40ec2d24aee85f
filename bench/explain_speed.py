"""Explaining is fast: class-activation maps of 1,000 Fashion-MNIST test images with smallnet, per method,
against predicting the same images (the baseline, measured in the same run).

    python bench/explain_speed.py            # trains a short smallnet run first (~25 s)
    python bench/explain_speed.py --run RUN  # or explains an existing Fashion-MNIST run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import imgcls
from bench.common import save
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset
from imgcls.inference.explain import METHODS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a Fashion-MNIST run folder (default: train one with --time 20s)")
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(
            args.run
            or imgcls.train(time="20s", out=Path(tmp) / "run", overrides={"log.progress": False}).run_dir
        )
        predictor = imgcls.load(run, device="cpu")
        images = open_dataset(DataConfig(name="fashion-mnist")).test.images[: args.images]
        batch = [image for image in images]  # tensors, as a user would pass them
        t = time.perf_counter()
        predictor.predict(batch, batch_size=256)
        predict_s = time.perf_counter() - t
        results = {
            "images": len(batch),
            "model": predictor.meta.name,
            "threads": torch.get_num_threads(),
            "predict_s": round(predict_s, 3),
            "methods": {},
        }
        print(f"predict: {len(batch)} images in {predict_s:.2f}s")
        for method in METHODS:
            predictor.explain(batch[:8], method=method)  # warm-up: the Explainer and its model copy
            t = time.perf_counter()
            for start in range(0, len(batch), 256):
                predictor.explain(batch[start : start + 256], method=method)
            seconds = time.perf_counter() - t
            results["methods"][method] = {
                "seconds": round(seconds, 3),
                "vs_predict": round(seconds / predict_s, 1),
            }
            print(f"{method:>20}: {len(batch)} images in {seconds:.2f}s ({seconds / predict_s:.1f}x predict)")
    print(f"results: {save('explain-speed', results)}")


if __name__ == "__main__":
    main()
