"""Transfer learning: pretrained weights into a Classifier, layer groups, freezing, discriminative LRs.

Downloaded weights and `--weights FILE` go through the same functions: a state dict is read (safely:
safetensors, or `torch.load(weights_only=True)`), then `load_backbone` matches it to the backbone by
name, adapts the first conv to the input channels and leaves the head fresh for the new classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.models.base import Classifier, ModelError
from imgcls.models.checkpoint import META_FILE, WEIGHTS_FILE, weights_problem

NUM_GROUPS = 4  # backbone layer groups for freezing and discriminative learning rates
# Wrappers that training scripts put around a state dict: torchvision references ("model"), timm ("state_dict").
CONTAINER_KEYS = ("state_dict_ema", "state_dict", "model_ema", "model")


def weights_path(path: str | Path) -> Path:
    """A weights file, or an imgcls run folder's model.safetensors."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise ModelError(f"no weights at {path} (give a .safetensors/.pth file or an imgcls run folder)")
    return p


def run_meta(path: str | Path) -> dict[str, Any] | None:
    """The model.json beside imgcls weights (architecture options, normalization), if there is one."""
    p = weights_path(path).parent / META_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors by name from .safetensors or a torch file (never unpickling code), wrappers removed."""
    p = weights_path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors/pickle/zip errors: all mean "not usable weights"
        if p.suffix == ".safetensors":
            raise ModelError(f"{p} {weights_problem(p)}") from None
        raise ModelError(f"{p} is not a readable weights file ({type(e).__name__}: {str(e)[:200]})") from None
    for key in CONTAINER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{p} does not hold a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def is_imgcls_state(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.") for k in state) and any(k.startswith("head.") for k in state)


def load_backbone(
    model: Classifier, state: dict[str, torch.Tensor], *, source: str, head: str | None = None,
    skip: tuple[str, ...] = (),
) -> None:  # fmt: skip
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
    loaded, wrong = {}, []
    for key, value in state.items():
        if key not in own or key.startswith(skip):
            continue
        if own[key].shape != value.shape and key == first_conv:
            value = _adapt_channels(value, own[key].shape[1])
        if own[key].shape != value.shape:
            wrong.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            continue
        loaded[key] = value
    missing = [k for k in own if k not in loaded and not k.startswith(skip)]
    unexpected = [k for k in state if k not in own and not (head and k.startswith(head + ".")) and not k.startswith(skip)]
    if missing or unexpected or wrong:
        parts = [(what, keys) for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                  ("shape mismatch", wrong)) if keys]  # fmt: skip
        raise ModelError(
            f"{source} does not fit {model.meta.name or 'this model'}: "
            + "; ".join(
                f"{what}: {', '.join(keys[:3])}" + (" ..." if len(keys) > 3 else "") for what, keys in parts
            )
        )
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
