"""Files: atomic writes (a crash never leaves a half-written file) and run folders."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not safe while other threads create files.
UMASK = _umask()


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Calls `write(tmp_path)` then renames tmp over `path`; the old file survives any failure.

    The file gets the mode any new file gets (0644 under umask 022), not mkstemp's private 0600, so a
    teammate or a serving container running as another user can read the run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def write_text(path: str | Path, text: str) -> None:
    """UTF-8 whatever the locale; a file name's undecodable bytes (surrogate escapes) become \\xNN."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="backslashreplace"))


def new_run_dir(base: str | Path, stem: str) -> Path:
    """runs/<stem>-<YYYYmmdd-HHMMSS>, with a numeric suffix if two runs start in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = Path(base) / (f"{stem}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {base}")
