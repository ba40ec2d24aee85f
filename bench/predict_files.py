"""Batch prediction over files: images/s of `imgcls predict` (worker processes decode batches ahead of
the model) against the same Predictor decoding in the main process (the baseline, measured in the same
run), on Fashion-MNIST's 10,000 test images as 28 px PNGs and on 2,000 of them as 512 px JPEG photos.

    python -m bench.predict_files RUN_DIR        # RUN_DIR: a Fashion-MNIST run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench.common import save
from bench.data_check import write_pngs
from imgcls.config import DataConfig
from imgcls.data.datasets import open_dataset
from imgcls.inference.predict import Predictor


def rate(predictor: Predictor, files: list[Path], workers: int | None) -> float:
    start = time.perf_counter()
    count = sum(len(preds) for preds, _ in predictor.predict_stream(files, workers=workers))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    args = parser.parse_args()
    fm = open_dataset(DataConfig(name="fashion-mnist", val_split=0.0))
    predictor = Predictor.from_run(args.run_dir, device="cpu")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pngs, jpgs = Path(tmp) / "png", Path(tmp) / "jpg"
        write_pngs(pngs, fm.test.images.numpy(), fm.test.labels.numpy(), fm.classes)
        jpgs.mkdir()
        for i in range(2000):
            photo = Image.fromarray(fm.test.images[i, 0].numpy()).resize((512, 512)).convert("RGB")
            photo.save(jpgs / f"{i}.jpg", quality=90)
        rate(predictor, sorted(pngs.rglob("*.png"))[:512], None)  # warm-up
        for name, folder in (("28px PNG", pngs), ("512px JPEG", jpgs)):
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            baseline, parallel = rate(predictor, files, workers=0), rate(predictor, files, workers=None)
            results[name] = {
                "images": len(files),
                "baseline_img_s": round(baseline),
                "imgcls_img_s": round(parallel),
                "speedup": round(parallel / baseline, 2),
            }
            print(
                f"{len(files)} {name}: decoding in the main process {baseline:,.0f} img/s, imgcls predict "
                f"{parallel:,.0f} img/s ({parallel / baseline:.2f}x)"
            )
    save("predict-files", {"run": args.run_dir, "results": results})


if __name__ == "__main__":
    main()
