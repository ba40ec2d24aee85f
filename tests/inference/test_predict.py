"""imgcls.load(run).predict on paths, PIL images and tensors gives the same answers."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.data.decode import ImageDecodeError


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pred") / "run"
    imgcls.train(
        data="digits",
        model="tutorial-cnn",
        epochs=3,
        out=out,
        overrides={"train.amp": "off", "log.progress": False, "optim.lr": 0.05, "data.batch_size": 64},
    )
    return out


def test_predict_accepts_paths_pil_and_tensors(digits_run: Path, tmp_path: Path):
    from sklearn.datasets import load_digits

    image = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    pil = Image.fromarray(image, "L")
    pil.save(tmp_path / "d.png")
    predictor = imgcls.load(digits_run)
    from_path = predictor.predict(tmp_path / "d.png", top_k=3)
    from_pil = predictor.predict([pil], top_k=3)
    from_uint8 = predictor.predict(torch.from_numpy(image)[None], top_k=3)
    from_float = predictor.predict(torch.from_numpy(image)[None].float() / 255, top_k=3)
    from_rgb = predictor.predict(pil.convert("RGB"), top_k=3)
    assert from_path == from_pil == from_uint8 == from_float == from_rgb
    assert from_path[0]["label"] in predictor.classes and len(from_path[0]["top_k"]) == 3
    probs = [t["probability"] for t in from_path[0]["top_k"]]
    assert probs == sorted(probs, reverse=True)


def test_batch_of_tensors_and_errors(digits_run: Path):
    predictor = imgcls.load(digits_run)
    out = predictor.predict(torch.rand(5, 1, 8, 8), top_k=1)
    assert len(out) == 5 and all(len(p["top_k"]) == 1 for p in out)
    with pytest.raises(ImageDecodeError):
        predictor.predict(Path("/no/such.png"))
    with pytest.raises(ValueError, match="image tensor"):
        predictor.predict(torch.rand(2, 5, 8, 8))


def test_streamed_prediction_in_worker_processes_keeps_order_and_skips(digits_run: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(11):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(path)
        files.append(path)
    (tmp_path / "5.png").write_bytes(b"broken")
    predictor = imgcls.load(digits_run)
    inline = list(predictor.predict_stream(files, batch_size=4, workers=0))
    parallel = list(predictor.predict_stream(files, batch_size=4, workers=2))
    assert inline == parallel and len(inline) == 3
    preds = [p for batch, _ in parallel for p in batch]
    skipped = [s for _, batch in parallel for s in batch]
    assert [p["path"] for p in preds] == [str(f) for f in files if f.name != "5.png"]
    assert skipped == [(str(tmp_path / "5.png"), skipped[0][1])] and "not an image" in skipped[0][1]
    assert [p["label"] for p in preds] == [
        p["label"] for p in predictor.predict([f for f in files if f.name != "5.png"])
    ]
