"""Drives a command in a pseudo-terminal, as a person at a terminal runs it: stdin, stdout and stderr are a
tty (so live progress bars draw), the terminal has a size, and Ctrl-C is a real keystroke."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Z0-9])")
IMGCLS = str(Path(sys.executable).with_name("imgcls"))  # the installed console script


@dataclass
class Screen:
    raw: str  # everything the terminal received, escape codes included
    exit_code: int

    @property
    def text(self) -> str:
        """What a person reads: escape codes removed, carriage-return redraws collapsed to their last state."""
        lines = ANSI.sub("", self.raw).replace("\r\n", "\n").split("\n")
        return "\n".join(line.split("\r")[-1] for line in lines)


def run(
    args: list[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    interrupt_after: str | None = None,
    columns: int = 110,
) -> Screen:
    """Runs `args` in a new pseudo-terminal until it exits; with `interrupt_after`, types Ctrl-C once that
    text has appeared on the screen. Fails the test (AssertionError) on a timeout."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        try:
            # As a shell starts a foreground command: Ctrl-C at its default. An ignored SIGINT survives exec,
            # and the test process may have inherited one (the suite's runner): then Ctrl-C did nothing.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if cwd:
                os.chdir(cwd)
            os.execvpe(
                args[0],
                args,
                {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), **(env or {})},
            )
        finally:
            os._exit(127)
    import fcntl

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    out, interrupted, deadline = b"", False, time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(
                    f"{' '.join(args)} did not finish in {timeout}s; screen:\n{out.decode(errors='replace')[-3000:]}"
                )
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if (
                interrupt_after
                and not interrupted
                and interrupt_after in ANSI.sub("", out.decode(errors="replace"))
            ):
                os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the foreground process group
                interrupted = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return Screen(out.decode(errors="replace"), os.waitstatus_to_exitcode(status))
