"""Live progress on a terminal, in one place: a transient rich display when stderr is a terminal, nothing
in logs, pipes and CI (where the per-epoch log lines say the same)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def live_progress(*columns: Any, enabled: bool = True) -> Any:
    """A rich `Progress` (not started) with these columns (rich's default ones if none), or None off a terminal."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from rich.progress import Progress

    return Progress(*columns, transient=True)


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A bar for `total` items on a terminal; yields advance(n), which does nothing elsewhere."""
    progress = live_progress() if total >= 2 else None
    if progress is None:
        yield lambda n: None
        return
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
