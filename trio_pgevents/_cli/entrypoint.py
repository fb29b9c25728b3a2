"""``main``: parse the command line, set up logging, run the command, map errors to exit statuses."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from .._errors import ConfigurationError, TrioPgEventsError
from .._secrets import RedactingFilter, scrub
from .exits import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ExitStatus, print_error
from .parser import build_parser

__all__ = ["main"]


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (nurseries wrap errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        # Other libraries' records too (SQLAlchemy logs URLs): no secret reaches stderr.
        handler.addFilter(RedactingFilter())


def _exit_status(raised: BaseException, debug: bool) -> int:
    """The exit status for what a command raised, after printing its one line (and traceback)."""
    exc = _leaf(raised)
    if isinstance(exc, ExitStatus):
        return print_error(exc.message, exc.status) if exc.message else exc.status
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        # Piped into `head` or similar: the reader went away; that is not an error.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    if debug:
        sys.stderr.write(scrub("".join(traceback.format_exception(raised))))
    if isinstance(exc, TrioPgEventsError):
        return print_error(str(exc), EXIT_USAGE if isinstance(exc, ConfigurationError) else EXIT_FAILURE)
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    hint = "" if debug else " (--debug shows the traceback)"
    return print_error(f"unexpected {type(exc).__name__}: {exc}{hint}", EXIT_FAILURE)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return int(args.func(args))
    except BaseException as raised:
        return _exit_status(raised, args.debug)
