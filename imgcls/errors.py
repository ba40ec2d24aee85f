"""One error type for the user's mistakes: every error that means "the input was wrong" (or "this run cannot
go on") is an `ImgclsError`, which carries its exit code; the CLI prints its message as one line.

Each subclass also derives from the built-in type callers caught before (ValueError, KeyError, RuntimeError),
so `except ValueError` around imgcls code keeps working. This module imports nothing.
"""

from __future__ import annotations


class ImgclsError(Exception):
    """A user-facing error: the message says what is wrong and what to do; `exit_code` is the CLI's status."""

    exit_code = 2


class MissingExtraError(ImgclsError, ImportError):
    """An optional feature's library is not installed; the message names the extra to install."""
