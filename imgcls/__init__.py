"""imgcls: image classification on PyTorch, from a folder of images to a trained, evaluated classifier.

Example:
    >>> import imgcls
    >>> result = imgcls.train(data="digits", epochs=2)          # doctest: +SKIP
    >>> imgcls.load(result.run_dir).predict(["img.png"])         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "load", "lr_find", "check_data", "report", "predict", "__version__"]


def __getattr__(name: str) -> Any:
    # Import torch only when the API is used, so `imgcls --help` and config checks stay instant.
    if name in ("train", "evaluate", "load", "lr_find", "check_data", "report", "predict"):
        from imgcls import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgcls' has no attribute {name!r}")
