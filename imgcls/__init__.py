"""imgcls: image classification on PyTorch, from a folder of images to a trained, evaluated classifier.

Example:
    >>> import imgcls
    >>> result = imgcls.train(data="digits", epochs=2)          # doctest: +SKIP
    >>> imgcls.load(result.run_dir).predict(["img.png"])         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from imgcls._public import API
from imgcls._version import __version__

# The public functions live in imgcls.api and are imported on first use. No submodule may share one of these
# names: importing it would shadow the function.
__all__ = [*API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in API:
        from imgcls import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgcls' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
