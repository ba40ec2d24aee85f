"""The uniform model contract: every registered model is a `Classifier` carrying its metadata.

A Classifier takes float images in [0, 1] at the data's size, resizes them up where the
architecture needs more pixels, normalizes them with its own mean/std, and returns logits. So a
checkpoint alone is enough to predict: no training config, no re-implemented preprocessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import ImgclsError
from imgcls.registry import Registry

MODELS = Registry("model")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(ImgclsError, ValueError):
    """A model cannot be built or loaded as asked; the message says why."""


@dataclass
class ModelMeta:
    """What predict/export/serve need, saved as model.json beside the weights."""

    name: str
    num_classes: int
    in_chans: int
    input_size: int
    classes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    drop_rate: float = 0.0
    tta: str = "off"  # eval-mode forward: mean logits of test-time views (flip, shift, flip-shift)
    temperature: float = (
        1.0  # eval-mode logits are divided by it (temperature scaling, `imgcls eval --calibrate`)
    )
    arch: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. {"width": 8}
    task: str = "multiclass"  # or "multilabel": independent (sigmoid) probabilities, one per label
    thresholds: list[float] = field(default_factory=list)  # multilabel: a label is present at p >= its own
    label_sep: str = ";"  # multilabel: how a label set is written in one CSV cell (as the manifest had it)
    abstain_threshold: float | None = None  # below this (calibrated) top probability: "I don't know"
    abstain_rule: str = ""  # how the threshold was chosen, e.g. "precision 0.99 on the validation split"

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes, or for multi-label a sigmoid per label."""
        return logits.sigmoid() if self.multilabel else logits.softmax(1)

    def answers(self, probs: torch.Tensor) -> torch.Tensor:
        """Single-label decisions: each image's class index, or -1 where the model abstains."""
        confidence, index = probs.max(1)
        if self.abstain_threshold is None:
            return index
        return torch.where(confidence >= self.abstain_threshold, index, -1)

    def label_sets(self, probs: torch.Tensor) -> torch.Tensor:
        """Multi-label decisions (N, labels) as booleans: each probability against its label's threshold."""
        thresholds = torch.tensor(self.thresholds or [0.5] * probs.shape[1], dtype=probs.dtype)
        return probs >= thresholds.to(probs.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        meta = cls(**known)
        meta.mean, meta.std = tuple(meta.mean), tuple(meta.std)
        return meta


class Classifier(nn.Module):
    """backbone (pooled features) -> dropout -> linear head, behind resize + normalize.

    Args:
        backbone: maps normalized images to (N, num_features) features.
        num_features: width of the backbone's output.
        num_classes: outputs of the head.
        in_chans: 1 or 3 input channels.
        input_size: the side of the square images it is fed.
        arch_size: the side the architecture needs; inputs are resized to it when different.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        *,
        num_classes: int,
        in_chans: int,
        input_size: int,
        arch_size: int | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes)
        self.arch_size = arch_size if arch_size and arch_size != input_size else None
        default_mean = IMAGENET_MEAN if in_chans == 3 else (sum(IMAGENET_MEAN) / 3,)
        default_std = IMAGENET_STD if in_chans == 3 else (sum(IMAGENET_STD) / 3,)
        self.meta = ModelMeta(
            "", num_classes, in_chans, input_size, mean=default_mean, std=default_std, drop_rate=drop_rate
        )
        self.register_buffer("mean", torch.tensor(default_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(default_std).view(1, -1, 1, 1), persistent=False)
        # Class-activation maps: the builder names the layer whose activations they weigh, and for a ViT
        # how many leading tokens (class, registers) are not patches.
        self.cam_target = ""
        self.cam_prefix_tokens: int | None = None

    def cam_layer(self) -> nn.Module:
        """The layer class-activation maps are computed on, as the builder declared it: a CNN's last spatial
        feature map, a ViT's last block input (tokens, reshaped to the patch grid); never guessed by name."""
        if not self.cam_target:
            raise ModelError(f"{self.meta.name or 'this model'} declares no layer for class-activation maps")
        return self.get_submodule(self.cam_target)

    def set_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if len(mean) != self.meta.in_chans or len(std) != self.meta.in_chans:
            raise ModelError(f"mean/std need {self.meta.in_chans} values")
        self.meta.mean, self.meta.std = tuple(mean), tuple(std)
        self.mean.copy_(torch.tensor(mean).view(1, -1, 1, 1))
        self.std.copy_(torch.tensor(std).view(1, -1, 1, 1))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch_size is not None:
            x = F.interpolate(x, size=(self.arch_size, self.arch_size), mode="bilinear", align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features of images in [0, 1]."""
        return self.backbone(self.prepare(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Test-time augmentation lives in the model, so eval, predict and export agree.
        tta = "off" if self.training else self.meta.tta
        logits = self._views(x, tta) if tta != "off" else self.forward_head(self.forward_features(x))
        if self.meta.temperature != 1.0 and not self.training:
            # Calibrated probabilities live in the model too; dividing by T > 0 never changes the argmax.
            logits = logits / self.meta.temperature
        return logits

    def _views(self, x: torch.Tensor, tta: str) -> torch.Tensor:
        """Mean logits over the test-time views: the image and its mirror ("flip"), and/or the image moved
        1 px up-left and down-right ("shift", reflect-padded), the moved views weighing half (airbench's TTA)."""

        def view(image: torch.Tensor) -> torch.Tensor:
            logits = self.forward_head(self.forward_features(image))
            if "flip" in tta:
                logits = (logits + self.forward_head(self.forward_features(image.flip(3)))) / 2
            return logits

        if "shift" not in tta:
            return view(x)
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return (view(x) + (view(padded[..., :h, :w]) + view(padded[..., 2:, 2:])) / 2) / 2

    def train(self, mode: bool = True) -> Classifier:
        """Train mode, except for frozen BatchNorm layers: their running statistics stay as pretrained."""
        super().train(mode)
        if mode:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and not m.weight.requires_grad:
                    m.eval()
        return self

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for a new class count (transfer learning)."""
        self.head = nn.Linear(self.num_features, num_classes).to(self.head.weight.device)
        self.meta.num_classes = num_classes
        self.meta.classes = []

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on weights only: biases and normalization parameters (1-D) are exempt."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def dirac_init(module: nn.Module) -> None:
    """Each convolution's first `in_channels` filters pass their input through unchanged (airbench's
    identity init: a deep net starts close to a shallow one). It did not pay on Fashion-MNIST (README)."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.out_channels >= conv.in_channels:
            nn.init.dirac_(conv.weight[: conv.in_channels])


def adapt_first_conv(module: nn.Module, in_chans: int) -> None:
    """Rebuilds the first Conv2d for `in_chans` inputs; pretrained RGB filters are summed for grayscale."""
    for path, conv in module.named_modules():  # noqa: B007  (path is used after the loop)
        if isinstance(conv, nn.Conv2d):
            break
    else:
        raise ModelError("model has no Conv2d to adapt to the input channels")
    if conv.in_channels == in_chans:
        return
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        if in_chans == 1:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent_path, _, attr = path.rpartition(".")
    setattr(module.get_submodule(parent_path) if parent_path else module, attr, new)
