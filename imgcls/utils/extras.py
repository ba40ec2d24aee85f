"""Optional integrations: their libraries are imported on first use, and a missing one is one clear error."""

from __future__ import annotations

import importlib
from types import ModuleType

from imgcls.errors import MissingExtraError


def extra_message(extra: str, what: str) -> str:
    """The one line that says which extra a feature needs."""
    return f"{what} need(s) the {extra} extra: pip install 'imgcls[{extra}]'"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Imports `module`, or raises MissingExtraError naming `imgcls[extra]`.

    Example:
        >>> require("datasets", "hf", "Hugging Face datasets")     # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(extra_message(extra, what)) from None
