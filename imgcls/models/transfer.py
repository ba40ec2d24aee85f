"""Transfer learning: pretrained weights into a Classifier, layer groups, freezing, discriminative LRs.

Downloaded weights and `--weights FILE` go through the same functions: a state dict is read (safely:
safetensors, or `torch.load(weights_only=True)`), then `load_backbone` matches it to the backbone by
name, adapts the first conv to the input channels and leaves the head fresh for the new classes.
"""

from __future__ import annotations

import torch
from torch import nn

from imgcls.models.base import Classifier, ModelError
from imgcls.models.checkpoint import is_imgcls_state, mismatch

NUM_GROUPS = 4  # backbone layer groups for freezing and discriminative learning rates


def load_backbone(
    model: Classifier,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    head: str | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Loads `state` into `model.backbone` by name; the Classifier's head stays fresh.

    Args:
        state: a torchvision/timm state dict, or an imgcls one (backbone.* / head.*).
        source: named in errors.
        head: the prefix of the original classifier's keys in `state` (dropped), e.g. "fc".
        skip: prefixes of parts rebuilt on purpose (a small-input stem) that keep their new init, or that
            the weights have and the model drops (Inception's auxiliary ImageNet classifier).
    """
    if is_imgcls_state(state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    own = model.backbone.state_dict()
    first_conv = next(
        (n + ".weight" for n, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)), None
    )
    loaded = {}
    for key, value in state.items():
        if head and key.startswith(head + "."):
            continue  # the original classifier: the Classifier's head replaces it
        if key == first_conv and key in own and own[key].shape != value.shape:
            value = _adapt_channels(value, own[key].shape[1])
        loaded[key] = value
    problems = mismatch(own, loaded, ignore=skip)
    if problems:
        raise ModelError(f"{source} does not fit {model.meta.name or 'this model'}: {problems}")
    loaded = {k: v for k, v in loaded.items() if not k.startswith(skip)}
    model.backbone.load_state_dict({**own, **loaded})


def _adapt_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB filters for grayscale input are summed (the same response to a gray image); gray ones are spread."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    return weight


def layer_groups(model: Classifier, n: int = NUM_GROUPS) -> list[list[nn.Parameter]]:
    """The backbone's parameters in `n` groups from input to output (by parametrized layer, in order)."""
    layers = [m for m in model.backbone.modules() if any(True for _ in m.parameters(recurse=False))]
    n = max(1, min(n, len(layers)))
    bounds = [round(i * len(layers) / n) for i in range(n + 1)]
    return [
        [p for m in layers[bounds[i] : bounds[i + 1]] for p in m.parameters(recurse=False)] for i in range(n)
    ]


def discriminative_param_groups(
    model: Classifier, lr: float, weight_decay: float, ratio: float
) -> list[dict]:
    """Optimizer groups: the head at `lr`, backbone groups from lr*ratio (input side) up towards lr.

    Early layers hold generic features worth keeping; late layers and the new head need to move most
    (fastai's discriminative learning rates). Biases and norms get no weight decay, as in training from scratch.
    """
    groups = layer_groups(model)
    scales = [ratio ** (1 - i / len(groups)) for i in range(len(groups))] + [1.0]
    params = [*groups, list(model.head.parameters())]
    out = []
    for scale, group in zip(scales, params):
        decay = [p for p in group if p.ndim > 1]
        no_decay = [p for p in group if p.ndim <= 1]
        out += [
            {"params": decay, "weight_decay": weight_decay, "lr": lr * scale},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr * scale},
        ]
    return [g for g in out if g["params"]]


def set_frozen(model: Classifier, frozen_groups: int) -> None:
    """Freezes the first `frozen_groups` backbone groups (all of them: the whole backbone), unfreezes the rest.

    Frozen BatchNorm layers also stop updating their running statistics (see Classifier.train), so a
    frozen backbone computes exactly the features it was pretrained to compute.
    """
    for i, group in enumerate(layer_groups(model)):
        for p in group:
            p.requires_grad_(i >= frozen_groups)
    model.train(model.training)  # re-applies the eval mode of frozen BatchNorm layers
