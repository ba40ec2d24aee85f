"""Classic architectures: torchvision's by their torchvision names, and any timm model as `timm/<name>`.

Each is wrapped in a Classifier: its own classifier layer becomes the Classifier's head, its first
conv is rebuilt for grayscale input, and inputs smaller than the architecture can take are resized up
inside the model (the data stays small in memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from imgcls.models.base import MODELS, Classifier, ModelError, adapt_first_conv
from imgcls.models.checkpoint import read_state_dict, weights_path
from imgcls.models.transfer import load_backbone

# name -> (path of the final Linear, smallest input side the architecture handles)
TORCHVISION_MODELS: dict[str, tuple[str, int]] = {
    "resnet18": ("fc", 32),
    "resnet34": ("fc", 32),
    "resnet50": ("fc", 32),
    "vgg11_bn": ("classifier.6", 32),
    "vgg16_bn": ("classifier.6", 32),
    "inception_v3": ("fc", 75),
    "efficientnet_b0": ("classifier.1", 32),
    "mobilenet_v3_small": ("classifier.3", 32),
    "mobilenet_v3_large": ("classifier.3", 32),
    "convnext_tiny": ("classifier.2", 32),
    "vit_b_16": ("heads.head", 32),
}
# Where class-activation maps are computed: the last spatial feature map of each torchvision family.
CAM_LAYERS = {
    "resnet": "layer4",
    "vgg": "features",
    "inception": "Mixed_7c",
    "efficientnet": "features",
    "mobilenet": "features",
    "convnext": "features",
}
TIMM_MIN_SIZE = 32
# Parts of the published weights the models here leave out: Inception's auxiliary classifier, which only
# helped train ImageNet (the model is built with aux_logits=False).
DROPPED = {"inception_v3": ("AuxLogits.",)}


def use_small_stem(net: nn.Module, name: str) -> None:
    """ResNet stem for small images: a 3x3 stride-1 conv and no max-pool (CIFAR-style).

    The ImageNet stem shrinks 28x28 to 7x7 before the first block; this keeps 28x28, at ~16x the
    FLOPs. Pretrained stem weights are dropped (the new conv is trained from scratch).
    """
    conv = getattr(net, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(net, "maxpool"):
        raise ModelError(f"{name} has no small-input stem option (ResNets have)")
    net.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()


def _torchvision_builder(arch: str, head_path: str, min_size: int) -> Callable[..., Classifier]:
    def build(
        *,
        num_classes: int,
        in_chans: int = 3,
        input_size: int = 224,
        pretrained: bool = False,
        drop_rate: float = 0.0,
        small_stem: bool = False,
        weights_file: str | None = None,
        arch_size: int | None = None,
    ) -> Classifier:
        import torchvision

        loading = pretrained or weights_file is not None
        recorded = arch_size  # a ViT's size, as recorded when it was built with weights
        arch_size, kwargs = max(input_size, min_size), {}
        if arch == "inception_v3":
            kwargs = {"aux_logits": False, "init_weights": not loading, "transform_input": False}
        if arch.startswith("vit"):
            # Pretrained position embeddings exist for 224 px only; else the patch grid must be whole.
            arch_size = recorded or (224 if loading else math.ceil(arch_size / 16) * 16)
            kwargs = {"image_size": arch_size}
        net = torchvision.models.get_model(arch, weights=None, **kwargs)
        num_features = net.get_submodule(head_path).in_features
        parent, _, attr = head_path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, nn.Identity())
        if small_stem:
            use_small_stem(net, arch)
            arch_size = input_size  # the small stem takes any size from 8 px up
        adapt_first_conv(net, in_chans)
        model = Classifier(
            net,
            num_features,
            num_classes=num_classes,
            in_chans=in_chans,
            input_size=input_size,
            arch_size=arch_size,
            drop_rate=drop_rate,
        )
        if arch.startswith("vit"):
            model.meta.arch["arch_size"] = arch_size  # rebuilt at this size, whatever the weights were
        _torchvision_cam_layer(model, net, arch)
        if loading:
            # Downloaded or local, the weights take one path: a state dict matched by name.
            model.meta.name = arch  # named in load errors
            state = read_state_dict(weights_file) if weights_file else _torchvision_state_dict(arch)
            load_backbone(
                model,
                state,
                source=weights_file or f"torchvision {arch} weights",
                head=head_path,
                skip=(*DROPPED.get(arch, ()), *(("conv1.",) if small_stem else ())),
            )
            tf = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
            model.set_normalization(*_for_channels(tuple(tf.mean), tuple(tf.std), in_chans))
        return model

    build.default_size = 299 if arch == "inception_v3" else 224
    build.__doc__ = f"torchvision {arch}."
    return build


def _torchvision_cam_layer(model: Classifier, net: nn.Module, arch: str) -> None:
    """A ViT: the last block's input norm. The class token attends to the patch tokens there; the block's own
    output patch tokens no longer reach the class token, so their gradient is zero. A CNN: CAM_LAYERS."""
    if arch.startswith("vit"):
        last = list(dict(net.encoder.layers.named_children()))[-1]
        model.cam_target = f"backbone.encoder.layers.{last}.ln_1"
        model.cam_prefix_tokens = 1
    else:
        model.cam_target = "backbone." + next(v for k, v in CAM_LAYERS.items() if arch.startswith(k))


def _torchvision_state_dict(arch: str) -> dict:
    """torchvision's ImageNet weights: from the torch cache, downloaded there when missing."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        raise ModelError(
            f"could not get the pretrained {arch} weights ({type(e).__name__}: {str(e)[:150]}). They download once "
            f"into the torch cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch) from {weights.url}; "
            "connect to the internet, copy that file there, or pass a local file with --weights"
        ) from None


for _name, (_head, _min) in TORCHVISION_MODELS.items():
    MODELS.register(_name)(_torchvision_builder(_name, _head, _min))


def timm_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    input_size: int = 224,
    pretrained: bool = False,
    drop_rate: float = 0.0,
    small_stem: bool = False,
    weights_file: str | None = None,
) -> Classifier:
    """Any timm model, e.g. `timm/resnet18` or `timm/convnext_nano`.

    Pretrained weights come through timm's own loader (which drops the classifier and adapts the first
    conv to the input channels) from the Hugging Face cache, or from `weights_file` via timm's file override.
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        raise ModelError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    arch_size = max(input_size, TIMM_MIN_SIZE)
    pretrained = pretrained or weights_file is not None
    kwargs = {"pretrained": pretrained, "num_classes": 0, "in_chans": in_chans}
    if weights_file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights_path(weights_file))}
    try:
        try:
            net = timm.create_model(name, img_size=arch_size, **kwargs)  # ViT-like models take a size
        except TypeError:
            net = timm.create_model(name, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        where = (
            f" from {weights_file}"
            if weights_file
            else " (downloaded once into the Hugging Face cache, ~/.cache/huggingface)"
        )
        raise ModelError(
            f"could not create timm/{name}{' with pretrained weights' + where if pretrained else ''}: "
            f"{type(e).__name__}: {str(e)[:300]}"
        ) from None
    if small_stem:
        use_small_stem(net, f"timm/{name}")
        arch_size = input_size
    model = Classifier(
        net,
        net.num_features,
        num_classes=num_classes,
        in_chans=in_chans,
        input_size=input_size,
        arch_size=arch_size,
        drop_rate=drop_rate,
    )
    if pretrained:
        cfg = net.pretrained_cfg
        model.set_normalization(*_for_channels(tuple(cfg["mean"]), tuple(cfg["std"]), in_chans))
    _timm_cam_layer(model, net)
    return model


def _timm_cam_layer(model: Classifier, net: nn.Module) -> None:
    """A timm ViT-like model: its last block's input norm, with its prefix tokens; a CNN: the last feature
    stage that timm itself declares (`feature_info`)."""
    if hasattr(net, "blocks") and hasattr(net, "num_prefix_tokens"):
        model.cam_target = f"backbone.blocks.{len(net.blocks) - 1}.norm1"
        model.cam_prefix_tokens = net.num_prefix_tokens
    elif getattr(net, "feature_info", None):
        model.cam_target = "backbone." + net.feature_info[-1]["module"]


timm_model.default_size = 224
MODELS.register_prefix("timm/", timm_model)


def _for_channels(mean: tuple, std: tuple, in_chans: int) -> tuple[tuple, tuple]:
    if in_chans == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return mean, std
