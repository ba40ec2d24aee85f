"""Class-activation maps: every model family gives a map of the image's size that is finite and not constant;
the Python API, `predict --explain` and a missing extra behave as a user expects."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import imgcls
from imgcls import cli
from imgcls.inference import explain
from imgcls.models import MODELS, build_model
from tests.conftest import write_class_tree

# The smallest input at which each family's CAM layer is at least 2x2 (a 1x1 map is constant by nature).
SIZES = {
    "inception_v3": 128,
    "smallnet": 16,
    "tutorial-cnn": 16,
    "vit_b_16": 32,
    "timm/vit_tiny_patch16_224": 32,
}
# The default suite: both small nets, a torchvision and a timm CNN, a ViT; every other family and variant runs
# with `-m slow` (as in test_families.py: the large ones take seconds each).
QUICK = {"smallnet", "tutorial-cnn", "resnet18", "timm/resnet10t", "timm/vit_tiny_patch16_224"}
NAMES = sorted({*MODELS.list(), "timm/resnet10t", "timm/vit_tiny_patch16_224"})


@pytest.mark.parametrize(
    "name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in NAMES]
)
def test_every_model_gives_a_map_of_the_image_size(name: str):
    torch.manual_seed(0)
    size = SIZES.get(name, 64)
    model = build_model(name, num_classes=3, in_chans=1, input_size=size)
    assert model.cam_target  # declared by the builder: the contract, not a guess
    images = torch.rand(4, 1, size, size)
    for method in ("gradcam", "eigencam"):
        maps = explain.Explainer(model, method).maps(images, targets=[0, 2, 1, 0])
        assert maps.shape == (4, size, size) and maps.dtype == np.float32
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        # Not constant. An untrained net's Grad-CAM may be all negative (so all 0 after its ReLU) for a class
        # it does not see; the principal component of EigenCAM always varies.
        varying = [m.std() > 0 for m in maps]
        assert all(varying) if method == "eigencam" else any(varying), method


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("explain")
    write_class_tree(root / "data", per_class=8)
    over = {"log.progress": False, "data.batch_size": 8}
    return imgcls.train(
        data=str(root / "data"), model="tutorial-cnn", epochs=2, out=root / "run", overrides=over
    ).run_dir


def test_load_explain_by_name_index_or_prediction(run: Path, tmp_path: Path):
    predictor = imgcls.load(run, device="cpu")
    files = sorted((run.parent / "data").rglob("*.png"))[:3]
    maps = predictor.explain(files)
    assert maps.shape == (3, predictor.meta.input_size, predictor.meta.input_size)
    predicted = [p["label"] for p in predictor.predict(files)]
    assert np.array_equal(maps, predictor.explain(files, target=predicted))  # default: the predicted class
    by_index = predictor.explain(files[0], target=predictor.classes.index("cross"))
    assert np.array_equal(by_index, predictor.explain(files[0], target="cross"))
    layercam = predictor.explain(files[0], method="layercam")
    assert layercam.shape == by_index.shape
    with pytest.raises(imgcls.errors.ImgclsError, match="unknown class 'giraffe'"):
        predictor.explain(files[0], target="giraffe")
    with pytest.raises(imgcls.errors.ImgclsError, match="unknown explanation method"):
        predictor.explain(files[0], method="magic")


def test_predict_explain_writes_one_overlay_per_image(run: Path, tmp_path: Path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    for folder in ("a", "b"):  # the same file name in two folders: two overlays
        (photos / folder).mkdir(parents=True)
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
            photos / folder / "x.png"
        )
    out = tmp_path / "maps"
    assert cli.main(["predict", str(run), str(photos), "--explain", str(out), "--json"]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = sorted(p.name for p in out.iterdir())
    assert (
        written == ["x-1.cam.png", "x.cam.png"]
        and sorted(Path(p["explanation"]).name for p in preds) == written
    )
    with Image.open(out / "x.cam.png") as overlay:
        assert overlay.size[0] >= 224 and overlay.mode == "RGB"
    a_file = tmp_path / "taken.png"
    a_file.write_bytes(b"not a folder")
    assert cli.main(["predict", str(run), str(photos), "--explain", str(a_file)]) == 2
    assert "--explain" in capsys.readouterr().err and a_file.read_bytes() == b"not a folder"


def test_without_the_extra_one_error_line_names_it(run: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as if `imgcls[explain]` were not installed
    assert not explain.available()
    photo = sorted((run.parent / "data").rglob("*.png"))[0]
    assert cli.main(["predict", str(run), str(photo), "--explain", str(tmp_path / "maps")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {explain.EXTRA}" and "imgcls[explain]" in err
    assert not (tmp_path / "maps").exists()


def test_the_cli_offers_every_method_and_the_same_default():
    options = cli.OWN["predict"]["--explain-method"][1]
    assert options["choices"] == list(explain.METHODS) and options["default"] == explain.DEFAULT_METHOD
