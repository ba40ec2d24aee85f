"""Transfer learning: local torchvision/timm weights load like downloaded ones; freezing, groups, recipes."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import imgcls
from imgcls.engine.state import read_state
from imgcls.models import ModelError, build_model, zoo
from imgcls.models.transfer import discriminative_param_groups, layer_groups, set_frozen

FAST = {"train.amp": "off", "log.progress": False, "data.batch_size": 12}


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[torchvision.models.ResNet, Path]:
    net = torchvision.models.resnet18(num_classes=1000)  # what the ImageNet download holds
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    net = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path_factory.mktemp("w") / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net, path


@pytest.mark.parametrize("in_chans", [3, 1])
def test_torchvision_weights_file_loads_like_the_download(resnet18_file, monkeypatch, in_chans: int):
    source, path = resnet18_file
    from_file = build_model("resnet18", num_classes=5, in_chans=in_chans, input_size=32, weights=str(path))
    # The download path: torchvision's state dict, then the same loader.
    monkeypatch.setattr(zoo, "_torchvision_state_dict", lambda arch: source.state_dict())
    downloaded = build_model("resnet18", num_classes=5, in_chans=in_chans, input_size=32, pretrained=True)
    for (k, a), b in zip(from_file.backbone.state_dict().items(), downloaded.backbone.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(from_file.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    conv1 = source.conv1.weight if in_chans == 3 else source.conv1.weight.sum(1, keepdim=True)
    assert torch.equal(from_file.backbone.conv1.weight, conv1)
    assert from_file.head.out_features == 5 and from_file(torch.rand(2, in_chans, 32, 32)).shape == (2, 5)
    assert from_file.meta.mean == ((0.485, 0.456, 0.406) if in_chans == 3 else (0.449,))  # the weights' own


@pytest.mark.parametrize("in_chans", [3, 1])
def test_timm_weights_file_loads_through_timms_loader(timm_file, in_chans: int):
    source, path = timm_file
    model = build_model("timm/resnet10t", num_classes=7, in_chans=in_chans, input_size=32, weights=str(path))
    assert torch.equal(model.backbone.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    stem = source.conv1[0].weight
    assert torch.allclose(
        model.backbone.conv1[0].weight, stem if in_chans == 3 else stem.sum(1, keepdim=True)
    )
    assert model(torch.rand(2, in_chans, 32, 32)).shape == (2, 7)


def test_weights_errors_are_clear(tmp_path: Path, resnet18_file, monkeypatch):
    _, path = resnet18_file
    with pytest.raises(ModelError, match=r"does not fit vgg11_bn: missing: features.0.weight"):
        build_model("vgg11_bn", num_classes=3, weights=str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable weights file"):
        build_model("resnet18", num_classes=3, weights=str(tmp_path / "junk.pth"))
    with pytest.raises(ModelError, match="no weights at"):
        build_model("resnet18", num_classes=3, weights=str(tmp_path / "missing.pth"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        ModelError, match=r"download once into the torch cache .* pass a local file with --weights"
    ):
        build_model("resnet18", num_classes=3, pretrained=True)


def test_layer_groups_freezing_and_discriminative_lrs():
    model = build_model("resnet18", num_classes=3, input_size=32)
    groups = layer_groups(model)
    assert len(groups) == 4 and sum(len(g) for g in groups) == len(list(model.backbone.parameters()))
    set_frozen(model, 4)
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters()) and model.head.weight.requires_grad
    assert not model.backbone.bn1.training  # frozen BatchNorm keeps its pretrained statistics
    set_frozen(model, 1)
    assert model.backbone.layer4[1].bn2.training and not model.backbone.bn1.training
    lrs = [g["lr"] for g in discriminative_param_groups(model, 1e-3, 0.01, 0.01)]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5) and lrs[-1] == 1e-3


def test_finetune_from_a_weights_file_end_to_end(tmp_path: Path, image_tree: Path, resnet18_file):
    source, path = resnet18_file
    small = FAST | {"data.image_size": 32}  # the folder's own size: resnet18's 224 would cost 50x the compute
    probe = imgcls.train(
        data=str(image_tree),
        model="resnet18",
        epochs=2,
        out=tmp_path / "probe",
        overrides=small | {"model.weights": str(path), "model.freeze": "backbone"},
    )
    config = (probe.run_dir / "config.yaml").read_text()
    assert "recipe: finetune" in config and "name: adamw" in config
    # Linear probing: the backbone, BatchNorm statistics included, is exactly the pretrained one.
    weights = read_state(probe.run_dir / "state.pt")["model"]
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(weights[f"backbone.{key}"], value), key
    full = imgcls.train(
        data=str(image_tree),
        model="resnet18",
        epochs=5,
        out=tmp_path / "full",
        overrides=small | {"model.weights": str(path)},
    )
    after = read_state(full.run_dir / "state.pt")["model"]
    assert not torch.equal(after["backbone.layer4.1.conv2.weight"], source.layer4[1].conv2.weight)  # unfrozen
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]


class LrLog:
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_step_end(self, state) -> None:
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


def test_resume_with_more_epochs_replans_the_schedule(tmp_path: Path):
    args = {"data": "digits", "model": "tutorial-cnn", "overrides": FAST | {"data.batch_size": 64}}
    long_log, short_log, extended_log = LrLog(), LrLog(), LrLog()
    imgcls.train(epochs=5, out=tmp_path / "long", callbacks=[long_log], **args)
    imgcls.train(epochs=2, out=tmp_path / "short", callbacks=[short_log], **args)
    imgcls.train(resume=tmp_path / "short", epochs=5, callbacks=[extended_log])
    steps = len(short_log.lrs)
    assert read_state(tmp_path / "short" / "state.pt")["epoch"] == 5
    assert len(extended_log.lrs) == len(long_log.lrs) - steps
    assert extended_log.lrs == pytest.approx(long_log.lrs[steps:], rel=1e-9)  # from the point of extension on
    assert "epochs: 5" in (tmp_path / "short" / "config.yaml").read_text()


def test_early_stopping_on_the_validation_metric(tmp_path: Path):
    over = FAST | {"optim.lr": 1e-12, "optim.schedule": "constant", "train.patience": 2}  # nothing improves
    result = imgcls.train(data="digits", model="tutorial-cnn", epochs=10, out=tmp_path / "r", overrides=over)
    assert len(result.history) == 3  # epoch 1 is the best; 2 more without improvement
    assert read_state(tmp_path / "r" / "state.pt")["best_epoch"] == 1


def test_lr_find_and_lr_auto(tmp_path: Path):
    found = imgcls.lr_find(data="digits", model="tutorial-cnn", out=tmp_path / "lrf", overrides=FAST)
    assert (tmp_path / "lrf" / "lr_find.png").stat().st_size > 0
    assert 1e-6 < found["suggestion"] < 10 and found["suggestion"] == pytest.approx(found["min_loss_lr"] / 10)
    losses = found["losses"]
    assert min(losses) < losses[0]  # the curve went down before it went up
    result = imgcls.train(
        data="digits",
        model="tutorial-cnn",
        epochs=1,
        out=tmp_path / "auto",
        overrides=FAST | {"optim.lr": "auto"},
    )
    lr = imgcls.config.load(result.run_dir / "config.yaml").optim.lr
    assert isinstance(lr, float) and (result.run_dir / "lr_find.png").is_file()
