"""One error type: every error imgcls raises for a user is an ImgclsError, and the CLI turns any of them into
one line with the error's exit code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import imgcls
from imgcls import cli
from imgcls.errors import ImgclsError


def imgcls_exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(imgcls.__path__, "imgcls."):
        if info.name == "imgcls.__main__":  # importing it runs the CLI
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    return found


def test_every_error_class_is_an_imgcls_error_and_keeps_its_builtin_base():
    classes = imgcls_exception_classes()
    assert len(classes) >= 10  # ConfigError, DataError, ModelError, CheckpointError, ... and the base
    for cls in classes:
        assert issubclass(cls, ImgclsError), cls
    from imgcls.config import ConfigError
    from imgcls.engine.train import TrainingError
    from imgcls.registry import RegistryError

    assert issubclass(ConfigError, ValueError) and issubclass(RegistryError, KeyError)
    assert TrainingError.exit_code == 1 and ConfigError.exit_code == 2


def test_the_cli_turns_any_imgcls_error_into_one_line_with_its_exit_code(monkeypatch, capsys):
    class Refused(ImgclsError):
        exit_code = 3

    def boom(args):
        raise Refused("the input was refused, and here is why")

    monkeypatch.setitem(cli.COMMANDS, "models", (boom, *cli.COMMANDS["models"][1:]))
    assert cli.main(["models"]) == 3
    assert capsys.readouterr().err == "error: the input was refused, and here is why\n"

    monkeypatch.setitem(
        cli.COMMANDS, "models", (lambda args: 1 / 0, *cli.COMMANDS["models"][1:])
    )  # a bug is not a user mistake: it surfaces
    with pytest.raises(ZeroDivisionError):
        cli.main(["models"])


def test_a_missing_file_inside_imgcls_is_a_bug_with_its_traceback(monkeypatch):
    """Only user mistakes become one line: a FileNotFoundError that imgcls's own checks did not turn into an
    ImgclsError is a bug, and it surfaces (it used to be hidden as a one-line exit 2)."""

    def lost(args):
        Path("/nonexistent/internal/file").read_text()

    monkeypatch.setitem(cli.COMMANDS, "models", (lost, *cli.COMMANDS["models"][1:]))
    with pytest.raises(FileNotFoundError):
        cli.main(["models"])
