"""Export with preprocessing inside: ONNX and TorchScript agree with PyTorch and describe themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import imgcls
from imgcls import cli
from imgcls.inference import export as export_lib
from imgcls.inference.export import artifact_metadata, load_artifact


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> Path:
    from tests.conftest import write_class_tree

    root = tmp_path_factory.mktemp("export")
    write_class_tree(root / "data", per_class=12)
    over = {"train.amp": "off", "log.progress": False, "data.batch_size": 8}
    return imgcls.train(
        data=str(root / "data"), model="smallnet", epochs=2, out=root / "run", overrides=over
    ).run_dir


@pytest.mark.parametrize(("fmt", "layout"), [("onnx", "nhwc"), ("torchscript", "nchw")])
def test_export_passes_its_parity_check_and_carries_metadata(rgb_run: Path, fmt: str, layout: str, capsys):
    assert cli.main(["export", str(rgb_run), "--format", fmt, "--layout", layout]) == 0
    assert "top-1 agreement with PyTorch 100.00%" in capsys.readouterr().out
    path = rgb_run / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    meta = artifact_metadata(path)
    assert meta["classes"] == ["circle", "cross", "square"] and meta["imgcls_version"] == imgcls.__version__
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["layout"] == layout.upper()
    run = load_artifact(path)
    predictor = imgcls.load(rgb_run, device="cpu")
    image = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    x = image.permute(1, 2, 0)[None] if layout == "nhwc" else image[None]
    probs = run(x.numpy())
    assert probs.shape == (1, 3) and np.isclose(probs.sum(), 1, atol=1e-5)
    expected = predictor.predict(image)[0]
    assert predictor.classes[int(probs.argmax())] == expected["label"]
    assert abs(float(probs.max()) - expected["probability"]) < 1e-4
    wide = torch.randint(0, 255, (3, 30, 70), dtype=torch.uint8)  # not square: resized and cropped inside
    probs = run((wide.permute(1, 2, 0)[None] if layout == "nhwc" else wide[None]).numpy())
    expected = predictor.predict(wide)[0]
    assert predictor.classes[int(probs.argmax())] == expected["label"]
    assert abs(float(probs.max()) - expected["probability"]) < 1e-3


def test_test_time_views_travel_with_the_export(rgb_run: Path, tmp_path: Path, capsys):
    import shutil

    from imgcls.models.checkpoint import update_meta

    run = tmp_path / "run"
    shutil.copytree(rgb_run, run)
    update_meta(run, {"tta": "flip-shift"})  # six views: the image, 1 px moves, and their mirrors
    assert cli.main(["export", str(run), "--format", "onnx", "--layout", "nchw"]) == 0
    assert "top-1 agreement with PyTorch 100.00%" in capsys.readouterr().out
    image = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    probs = load_artifact(run / "model.onnx")(image[None].numpy())
    with_views = imgcls.load(run, device="cpu").predict(image)[0]["probability"]
    without = imgcls.load(rgb_run, device="cpu").predict(image)[0]["probability"]
    assert abs(float(probs.max()) - with_views) < 1e-4 and with_views != without


def test_a_disagreeing_export_fails(rgb_run: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(export_lib, "PROB_TOLERANCE", -1.0)  # ExportError -> one line, exit 2
    assert cli.main(["export", str(rgb_run), "--format", "onnx", "--out", str(tmp_path / "m2.onnx")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'm2.onnx'} disagrees with PyTorch")


def test_predict_with_the_onnx_backend_gives_the_same_output(rgb_run: Path, tmp_path: Path):
    from tests.conftest import write_class_tree

    write_class_tree(tmp_path / "new", per_class=4, seed=5)
    imgcls.api.export(rgb_run, "onnx")
    rows = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.jsonl"
        assert (
            cli.main(
                ["predict", str(rgb_run), str(tmp_path / "new"), "--backend", backend, "--out", str(out)]
            )
            == 0
        )
        rows[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows["torch"]] == [r["label"] for r in rows["onnx"]] and len(
        rows["onnx"]
    ) == 12
    assert all(abs(a["probability"] - b["probability"]) < 1e-4 for a, b in zip(rows["torch"], rows["onnx"]))
    assert (
        cli.main(["predict", str(tmp_path), str(tmp_path / "new"), "--backend", "onnx"]) == 2
    )  # no export there


def test_int8_export_reports_accuracy_and_speed(rgb_run: Path, capsys):
    assert cli.main(["export", str(rgb_run), "--int8"]) == 0
    out = capsys.readouterr().out
    assert "model.int8.onnx: accuracy" in out and "images/s" in out
    run = load_artifact(rgb_run / "model.int8.onnx")
    assert run(np.zeros((2, 32, 32, 3), dtype=np.uint8)).shape == (2, 3)
    assert cli.main(["export", str(rgb_run), "--format", "torchscript", "--int8"]) == 2


def test_photos_of_any_shape_agree_across_backends(rgb_run: Path, tmp_path: Path):
    """210 photos (non-square, EXIF-rotated, RGBA, WebP, tiny, 4000x3000) through predict with every backend."""
    from tests.conftest import CLASSES
    from tests.photos import write_photos

    write_photos(tmp_path / "photos", 210, CLASSES)
    imgcls.api.export(rgb_run, "onnx", check_images=tmp_path / "photos")
    imgcls.api.export(rgb_run, "torchscript")
    rows = {}
    for backend in ("torch", "onnx", "torchscript"):
        out = tmp_path / f"{backend}.jsonl"
        assert (
            cli.main(
                ["predict", str(rgb_run), str(tmp_path / "photos"), "--backend", backend, "--out", str(out)]
            )
            == 0
        )
        rows[backend] = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows["torch"]) == 211
    for backend in ("onnx", "torchscript"):
        assert rows[backend].keys() == rows["torch"].keys()
        same = sum(rows[backend][p]["label"] == r["label"] for p, r in rows["torch"].items())
        assert same / len(rows["torch"]) >= 0.999, backend
        diff = max(
            abs(a["probability"] - b["probability"])
            for p, a in rows["torch"].items()
            for b in rows[backend][p]["top_k"]
            if b["label"] == a["label"]
        )
        assert diff <= 1e-3, backend


def test_a_plain_onnxruntime_client_agrees_with_predict(rgb_run: Path, tmp_path: Path):
    """A client that is not imgcls: reads the export's metadata, decodes with PIL (EXIF applied), feeds raw pixels."""
    import onnxruntime as ort
    from PIL import Image, ImageOps

    from tests.conftest import CLASSES
    from tests.photos import write_photos

    paths = write_photos(tmp_path / "photos", 60, CLASSES, seed=3)
    imgcls.api.export(rgb_run, "onnx", out=tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes, spec = json.loads(meta["classes"]), json.loads(meta["input"])
    assert spec["layout"] == "NHWC" and spec["dtype"] == "uint8" and spec["channels"] == "RGB"
    assert spec["exif_orientation"] == "apply before" and spec["transparency"] == "composite over white"
    torch_preds = imgcls.load(rgb_run, device="cpu").predict(paths)
    agree = 0
    for path, pred in zip(paths, torch_preds):
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
            if rgb.mode == "RGBA":  # the export's contract: transparency over white, as imgcls decodes
                white = Image.new("RGB", rgb.size, "white")
                white.paste(rgb, mask=rgb.getchannel("A"))
                rgb = white
            pixels = np.asarray(rgb, dtype=np.uint8)[None]
        probs = session.run(None, {session.get_inputs()[0].name: pixels})[0][0]
        agree += classes[int(probs.argmax())] == pred["label"]
        assert abs(float(probs.max()) - pred["probability"]) <= 1e-3
    assert agree == len(paths)
