"""Class-activation maps: where a model looked for a class, through pytorch-grad-cam (the `explain` extra).

pytorch-grad-cam (MIT, `pip install grad-cam`) was chosen over Captum's LayerGradCam: it offers Grad-CAM,
Grad-CAM++, LayerCAM and EigenCAM behind one interface, handles ViT tokens with a reshape transform, and
batches; Captum has Grad-CAM alone. The layer comes from the model contract (`Classifier.cam_layer()`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from imgcls.config import ConfigError
from imgcls.data.transforms import to_float
from imgcls.errors import MissingExtraError
from imgcls.models import Classifier

METHODS = ("gradcam++", "gradcam", "gradcam-elementwise", "hirescam", "layercam", "eigencam")
# Grad-CAM++ by default: on the patch benchmark (bench/cam_faithfulness.py) its peak falls on the deciding patch
# for 98% of images with smallnet, plain Grad-CAM's for 73%: smallnet ends in global max pooling, and Grad-CAM's
# channel weights (gradients averaged over the map) assume average pooling.
DEFAULT_METHOD = "gradcam++"
EXTRA = "class-activation maps need the explain extra: pip install 'imgcls[explain]'"


def available() -> bool:
    """Whether the explain extra is installed."""
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return False
    return True


def _methods() -> dict[str, type]:
    try:
        import pytorch_grad_cam as cams
    except ImportError:
        raise MissingExtraError(EXTRA) from None
    return {
        "gradcam": cams.GradCAM,
        "gradcam++": cams.GradCAMPlusPlus,
        "gradcam-elementwise": cams.GradCAMElementWise,
        "hirescam": cams.HiResCAM,
        "layercam": cams.LayerCAM,
        "eigencam": cams.EigenCAM,
    }


class _Logits(nn.Module):
    """The model's logits in one pass (no flip TTA, no temperature): the hooks see one activation per image,
    and the temperature, which only scales the logits, would not move the normalized map."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x))


def _tokens_to_grid(prefix: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ViT tokens (N, prefix + g*g, C) -> a (N, C, g, g) map over the patch grid."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:]
        side = round(patches.shape[1] ** 0.5)
        return patches.reshape(len(patches), side, side, -1).permute(0, 3, 1, 2)

    return reshape


class Explainer:
    """Class-activation maps of a Classifier, on its own copy of the model (so a server's predictions in
    another thread never pass through the hooks).

    Example:
        >>> maps = Explainer(model).maps(images)          # (N, H, W) in [0, 1]    # doctest: +SKIP
    """

    def __init__(self, model: Classifier, method: str = DEFAULT_METHOD) -> None:
        methods = _methods()
        if method not in methods:
            raise ConfigError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
        self.model = copy.deepcopy(model).float().eval().requires_grad_(True)
        self.method = method
        prefix = self.model.cam_prefix_tokens
        self.cam = methods[method](
            model=_Logits(self.model),
            target_layers=[self.model.cam_layer()],
            reshape_transform=_tokens_to_grid(prefix) if prefix is not None else None,
        )

    def maps(
        self, images: torch.Tensor, targets: list[int] | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """(N, C, S, S) images (uint8, or float in [0, 1]) -> (N, S, S) float32 maps in [0, 1], for the class
        each target names (default: the predicted class); `batch_size` images at a time (the backward pass
        keeps every activation of a batch)."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = (to_float(chunk) if chunk.dtype == torch.uint8 else chunk.float()).to(device)
            chosen = None
            if targets is not None:
                chosen = [ClassifierOutputTarget(int(t)) for t in targets[start : start + batch_size]]
            with torch.enable_grad():
                out.append(self.cam(input_tensor=x, targets=chosen).astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, *images.shape[-2:]), dtype=np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, side: int | None = None) -> np.ndarray:
    """The map as a heat overlay on the image ((H, W) or (H, W, C) uint8) -> (H, W, 3) uint8, enlarged
    (nearest-neighbour, so small images stay sharp) to `side` pixels when given."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = image[..., None].repeat(3, -1) if image.ndim == 2 else image
    rgb = rgb.repeat(3, -1) if rgb.shape[-1] == 1 else rgb
    if side and side > rgb.shape[0]:
        scale = max(1, side // rgb.shape[0])
        rgb = rgb.repeat(scale, 0).repeat(scale, 1)
        cam = cam.repeat(scale, 0).repeat(scale, 1)
    return show_cam_on_image(rgb.astype(np.float32) / 255, cam, use_rgb=True, image_weight=0.55)
