"""`imgcls` command line: parses arguments into config overrides or a call, then hands over to imgcls.api.

- flags: every flag, declared once with the config key it sets   - commands: the commands and their table
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import Any

from imgcls._version import __version__
from imgcls.cli.commands import COMMANDS
from imgcls.cli.flags import KEY_PREFIX, OWN, SHARED, is_rank_zero, overrides_of
from imgcls.errors import ImgclsError

__all__ = ["main", "build_parser", "overrides_of", "COMMANDS", "OWN", "SHARED"]
log = logging.getLogger("imgcls")


def _add(parser: argparse.ArgumentParser, name: str, key: str | None, options: dict[str, Any]) -> None:
    """One flag (or positional argument); a flag with a config key stores under cfg:<key>, and its help names
    the key, so the flag and its --set / YAML spelling are found together."""
    options = dict(options)
    if key:
        options["help"] = f"{options.get('help', '')} [{key}]".lstrip()
        if "const" not in options:
            options.setdefault("metavar", name.lstrip("-").upper().replace("-", "_"))
        options["dest"] = KEY_PREFIX + key
    parser.add_argument(name, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="Train, evaluate and use image classifiers.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = {"": sub}
    for command, (run, shared, summary, description) in COMMANDS.items():
        group, _, name = command.rpartition(" ")
        if group not in groups:  # "data check": the data command's first tool makes its group
            tools = sub.add_parser(
                group, help=f"{group} tools: `imgcls {command} ...`", description=f"{group} tools."
            )
            groups[group] = tools.add_subparsers(dest=f"{group}_command", metavar="SUBCOMMAND", required=True)
        command_parser = groups[group].add_parser(name, help=summary, description=description)
        for flag in shared:
            _add(command_parser, flag, *SHARED[flag])
        for flag, (key, options) in OWN[command].items():
            _add(command_parser, flag, key, options)
        command_parser.set_defaults(func=run)
    return parser


def setup_logging(quiet: bool) -> None:
    """Rich output on a terminal; plain lines (no wrapping, no colour codes) in logs and CI."""
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet or not is_rank_zero() else logging.INFO)
    log.propagate = False


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


def _safe_streams() -> None:
    """Characters the terminal's encoding lacks (a C locale, a non-UTF-8 file name) print as escapes
    instead of raising UnicodeEncodeError halfway through a run."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _safe_streams()
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except ImgclsError as e:  # a user mistake, or a run that cannot go on: one line, never a traceback
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if "torch" in sys.modules:  # leave torchrun's process group cleanly
            from imgcls.utils import dist

            dist.shutdown()
        if argv is None:  # the `imgcls` process ends here (tests pass argv and go on)
            # Exit's garbage collection would walk every object torch made: 1.5 s; frozen, they are skipped.
            gc.freeze()


if __name__ == "__main__":
    raise SystemExit(main())
