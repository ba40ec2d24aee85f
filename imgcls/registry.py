"""A name -> builder registry with wildcard listing and helpful errors (torchvision `register_model` style)."""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable
from typing import Any

from imgcls.errors import ImgclsError


class RegistryError(ImgclsError, KeyError):
    """An unknown or duplicate name; the message says what to do."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry:
    """Maps names to builder functions.

    A prefix handler (`register_prefix("timm/", fn)`) serves a whole family of names that are not
    listed one by one, such as every timm model.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(*, num_classes: int): ...
        >>> MODELS.list("t*")
        ['tiny']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        self._prefixes: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            return fn

        return wrap

    def register_prefix(self, prefix: str, fn: Callable[..., Any]) -> None:
        """`fn(name_without_prefix, **kwargs)` builds every name that starts with `prefix`."""
        self._prefixes[prefix] = fn

    def __contains__(self, name: str) -> bool:
        return name in self._builders or any(name.startswith(p) for p in self._prefixes)

    def get(self, name: str) -> Callable[..., Any]:
        if name in self._builders:
            return self._builders[name]
        for prefix, fn in self._prefixes.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                return functools.partial(fn, name[len(prefix) :])
        close = difflib.get_close_matches(name, self._builders, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise RegistryError(
            f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._builders))}"
            + "".join(f", {p}<name>" for p in self._prefixes)
        )

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._builders if fnmatch.fnmatch(n, pattern))
