"""Every model family round-trips: from a saved state dict (as a download would give it), trained briefly
at a size that is not the architecture's own, then reloaded, predicted, exported and served: the same
labels everywhere. The large families run with `-m slow`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import timm
import torchvision
from fastapi.testclient import TestClient
from safetensors.torch import save_file

import imgcls
from imgcls.inference.serve import create_app
from imgcls.models import build_model
from tests.conftest import write_class_tree

HEAVY = {
    "resnet18",
    "mobilenet_v3_small",
    "vgg11_bn",
    "inception_v3",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
}  # seconds to minutes each
FAMILIES = ["tutorial-cnn", "smallnet", "timm/resnet10t", *sorted(HEAVY)]


def source_weights(name: str, folder: Path) -> Path:
    """A state dict as its source ships it: torchvision's and timm's ImageNet layout, imgcls's own run layout."""
    if name in ("tutorial-cnn", "smallnet"):
        arch = {"width": 8} if name == "smallnet" else {}  # the width a short run gives smallnet
        state = build_model(name, num_classes=5, in_chans=3, input_size=32, **arch).state_dict()
    elif name.startswith("timm/"):
        state = timm.create_model(name.removeprefix("timm/"), num_classes=1000).state_dict()
    else:
        kwargs = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
        state = torchvision.models.get_model(name, num_classes=1000, **kwargs).state_dict()
    path = folder / f"{name.replace('/', '-')}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in FAMILIES]
)
def test_a_model_family_round_trips(name: str, tmp_path: Path):
    write_class_tree(tmp_path / "data", per_class=4)
    over = {
        "log.progress": False,
        "data.image_size": 40,
        "data.batch_size": 6,
        "model.weights": str(source_weights(name, tmp_path)),
    }
    run = imgcls.train(
        data=str(tmp_path / "data"), model=name, epochs=1, out=tmp_path / "run", overrides=over
    ).run_dir
    images = sorted((tmp_path / "data").rglob("*_0.png"))

    labels = [p["label"] for p in imgcls.load(run, device="cpu").predict(images)]
    export = imgcls.export(run, "onnx", check_limit=8)  # raises unless it agrees with predict
    assert export.agreement >= 0.999
    onnx_labels = {Path(p["path"]).name: p["label"] for p in _predictions(run, images, "onnx")}
    assert [onnx_labels[p.name] for p in images] == labels
    with TestClient(create_app(imgcls.load(run, device="cpu"))) as client:
        files = [("files", (p.name, io.BytesIO(p.read_bytes()), "image/png")) for p in images]
        served = client.post("/predict", files=files).json()["predictions"]
    assert [p["label"] for p in served] == labels


def _predictions(run: Path, images: list[Path], backend: str) -> list[dict]:
    seen: list[dict] = []
    imgcls.predict(run, [str(p) for p in images], backend=backend, on_prediction=seen.append)
    return seen


def test_a_pretrained_vit_is_rebuilt_at_its_weights_size(monkeypatch):
    """ViT weights exist for 224 px only; a run trained on 32 px images from them must reload the same way
    (it failed with a position-embedding shape mismatch before the size was recorded)."""
    from imgcls.models import zoo

    source = torchvision.models.vit_b_16().state_dict()
    monkeypatch.setattr(zoo, "_torchvision_state_dict", lambda arch: source)
    trained = build_model("vit_b_16", num_classes=3, input_size=32, pretrained=True)
    assert trained.meta.arch == {"arch_size": 224}
    reloaded = build_model(
        "vit_b_16", num_classes=3, input_size=32, **trained.meta.arch
    )  # as Predictor.from_run
    reloaded.load_state_dict(trained.state_dict())  # raises on any shape mismatch
    assert build_model("vit_b_16", num_classes=3, input_size=32).meta.arch == {"arch_size": 32}
