"""Every registered model (timm-style test over the registry): forward, backward, new head, grayscale."""

import pytest
import torch

from imgcls.models import MODELS, ModelError, build_model
from imgcls.models.base import adapt_first_conv

ALL = MODELS.list() + ["timm/resnet18"]


@pytest.mark.parametrize("name", ALL)
def test_model_contract(name):
    torch.manual_seed(0)
    gray = build_model(name, num_classes=4, in_chans=1, input_size=28)  # small input, one channel
    x = torch.rand(2, 1, 28, 28)
    out = gray(x)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in gray.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    gray.eval()
    feats = gray.forward_features(x)
    assert feats.shape == (2, gray.num_features)
    assert torch.allclose(gray.forward_head(feats), gray(x), atol=1e-5)  # forward = head(features)
    gray.reset_classifier(7)
    assert gray(x).shape == (2, 7) and gray.meta.num_classes == 7
    assert gray.meta.in_chans == 1 and gray.meta.input_size == 28 and gray.meta.name == name


@pytest.mark.parametrize("name", ["tutorial-cnn", "smallnet", "resnet18", "vit_b_16"])
def test_rgb_inputs_and_meta(name):
    model = build_model(name, num_classes=3, in_chans=3, input_size=32).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    assert len(model.meta.mean) == 3


def test_inception_resizes_small_inputs_up():
    model = build_model("inception_v3", num_classes=2, in_chans=1, input_size=28)
    assert model.arch_size == 75


def test_param_groups_exempt_biases_and_norms_from_decay():
    model = build_model("smallnet", num_classes=3, in_chans=1, input_size=28)
    decay, no_decay = model.param_groups(5e-4)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_bias_lr_scale_speeds_up_biases_and_norms_only():
    from imgcls.config import OptimConfig
    from imgcls.engine.optim import build_optimizer

    model = build_model("smallnet", num_classes=3, in_chans=1, input_size=28)
    weights, norms = build_optimizer(model, OptimConfig(lr=0.1, bias_lr_scale=8)).param_groups
    assert weights["lr"] == 0.1 and norms["lr"] == pytest.approx(0.8)
    assert all(p.ndim <= 1 for p in norms["params"])


def test_dirac_init_passes_each_conv_input_through():
    from imgcls.models.base import dirac_init

    model = build_model("smallnet", num_classes=3, in_chans=1, input_size=28, width=4)
    dirac_init(model.backbone)
    stem, first_group = model.backbone[0], model.backbone[3][0]
    x = torch.rand(1, 1, 6, 6)
    assert torch.allclose(torch.nn.functional.conv2d(x, stem.weight[:1], padding=1), x)
    y = torch.rand(1, first_group.in_channels, 6, 6)
    assert torch.allclose(torch.nn.functional.conv2d(y, first_group.weight[: y.shape[1]], padding=1), y)
    assert first_group.weight[y.shape[1] :].abs().sum() > 0  # the other filters keep their random init


def test_adapt_first_conv_sums_rgb_filters_for_grayscale():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    rgb_weight = net[0].weight.detach().clone()
    adapt_first_conv(net, 1)
    assert net[0].in_channels == 1
    assert torch.allclose(net[0].weight, rgb_weight.sum(1, keepdim=True))


def test_unknown_models_are_clear_errors():
    from imgcls.registry import RegistryError

    with pytest.raises(RegistryError, match="Did you mean: resnet18"):
        build_model("resnet81", num_classes=2)
    with pytest.raises(ModelError, match="unknown timm model"):
        build_model("timm/not_a_model_xyz", num_classes=2)
    with pytest.raises(ModelError, match="no pretrained weights"):
        build_model("smallnet", num_classes=2, pretrained=True)


@pytest.mark.parametrize("name", ["resnet18", "timm/resnet18"])
def test_small_stem_keeps_small_images_whole(name):
    model = build_model(name, num_classes=4, in_chans=1, input_size=28, small_stem=True)
    assert model.arch_size is None  # no resize up
    assert model.backbone.conv1.stride == (1, 1) and isinstance(model.backbone.maxpool, torch.nn.Identity)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 4)
    assert model.meta.arch == {"small_stem": True}


def test_options_a_model_lacks_are_errors():
    with pytest.raises(ModelError, match="small-input stem"):
        build_model("vgg11_bn", num_classes=2, small_stem=True)
    with pytest.raises(ModelError, match="no option"):
        build_model("tutorial-cnn", num_classes=2, width=8)


def test_smallnet_width():
    narrow = build_model("smallnet", num_classes=10, in_chans=1, input_size=28, width=8)
    wide = build_model("smallnet", num_classes=10, in_chans=1, input_size=28, width=32)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < count(wide) / 10 and narrow.meta.arch == {"width": 8}
