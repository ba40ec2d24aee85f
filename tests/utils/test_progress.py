"""The one live progress helper: a bar on a terminal, nothing in logs, pipes and CI."""

from __future__ import annotations

import io

from imgcls.utils import progress


def test_off_a_terminal_there_is_no_bar_and_advance_does_nothing(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress.live_progress() is None
    with progress.progress_bar(10, "predicting") as advance:
        advance(3)
    assert progress.live_progress(enabled=False) is None


def test_on_a_terminal_a_transient_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    bar = progress.live_progress()
    assert bar is not None and bar.live.transient
    assert progress.live_progress(enabled=False) is None  # the user's log.progress=false wins
