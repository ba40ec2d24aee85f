"""Building a registered model: from scratch, from published weights, or from local ones (`--weights`)."""

from __future__ import annotations

import inspect
from typing import Any

from imgcls.models import small, zoo  # noqa: F401  (registers the builders)
from imgcls.models.base import MODELS, Classifier, ModelError
from imgcls.models.checkpoint import is_imgcls_state, read_state_dict, run_meta
from imgcls.models.transfer import load_backbone


def build_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    input_size: int | None = None,
    pretrained: bool = False,
    drop_rate: float = 0.0,
    weights: str | None = None,
    **arch: Any,
) -> Classifier:
    """Builds a registered model (or `timm/<name>`) for `num_classes` and `in_chans`-channel input.

    `pretrained` loads the architecture's published weights (torchvision / timm); `weights` a local
    file instead: a torchvision or timm state dict (.pth/.safetensors, loaded exactly as the downloaded
    ones are) or an imgcls run folder (any model). The head is always new, for `num_classes`.

    Example:
        >>> build_model("tutorial-cnn", num_classes=10, in_chans=1, input_size=28)(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    size = input_size or default_input_size(name)
    builder = MODELS.get(name)
    params = inspect.signature(builder).parameters
    unknown = set(arch) - set(params)
    if unknown:
        raise ModelError(f"model {name!r} has no option(s) {', '.join(sorted(unknown))}")
    common = {"num_classes": num_classes, "in_chans": in_chans, "input_size": size, "drop_rate": drop_rate}
    state = read_state_dict(weights) if weights is not None else None
    if state is not None and is_imgcls_state(state):  # another imgcls run: any architecture, matched by name
        model = builder(pretrained=False, **common, **arch)
        model.meta.name = name
        load_backbone(model, state, source=str(weights))
        meta = run_meta(weights) or {}
        if len(meta.get("mean", ())) == in_chans:  # keep the normalization the features were learnt with
            model.set_normalization(tuple(meta["mean"]), tuple(meta["std"]))
    elif state is not None:
        if "weights_file" not in params:
            raise ModelError(
                f"{weights} holds torchvision/timm weights; {name} takes only imgcls run folders"
            )
        model = builder(pretrained=False, weights_file=str(weights), **common, **arch)
    else:
        model = builder(pretrained=pretrained, **common, **arch)
    model.meta.name = name
    model.meta.arch = {**model.meta.arch, **arch}  # the builder's own records (e.g. a ViT's arch_size) too
    return model


def default_input_size(name: str) -> int:
    """The size a model is built for when the data has no native size (folders of photos)."""
    return getattr(MODELS.get(name), "default_size", 224)


def default_scratch_lr(name: str) -> float | None:
    """The SGD learning rate a model trains well with from scratch, where it differs from the recipe's 0.1."""
    return getattr(MODELS.get(name), "scratch_lr", None)
