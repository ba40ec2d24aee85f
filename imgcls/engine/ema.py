"""Exponential moving average of the weights (torch.optim.swa_utils), evaluated and saved in their place."""

from __future__ import annotations

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from imgcls.models import Classifier


def build_ema(model: Classifier, decay: float) -> AveragedModel | None:
    """An EMA copy of `model` (parameters and BatchNorm buffers), or None when `decay` is 0.

    Example:
        >>> ema = build_ema(model, 0.999)       # doctest: +SKIP
        >>> ema.update_parameters(model)        # after each optimizer step
    """
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
