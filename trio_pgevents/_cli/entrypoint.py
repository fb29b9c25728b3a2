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
from .defaults import PROG
from .exits import ExitStatus
from .parser import build_parser

__all__ = ["main"]


def _fail(message: str, status: int) -> int:
    line = scrub(" ".join(message.split()))  # one line, always, and no secret in it
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return status


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (nurseries wrap errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        # Other libraries' records too (SQLAlchemy logs URLs): no secret reaches stderr.
        handler.addFilter(RedactingFilter())
    try:
        return int(args.func(args))
    except BaseException as raised:
        exc = _leaf(raised)
        if isinstance(exc, ExitStatus):
            return _fail(exc.message, exc.status) if exc.message else exc.status
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, BrokenPipeError):
            # Piped into `head` or similar: the reader went away; that is not an error.
            # Point stdout at /dev/null so the interpreter's final flush stays quiet.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if args.debug:
            sys.stderr.write(scrub("".join(traceback.format_exception(raised))))
        if isinstance(exc, TrioPgEventsError):
            return _fail(str(exc), 2 if isinstance(exc, ConfigurationError) else 1)
        if isinstance(exc, SystemExit):
            return exc.code if isinstance(exc.code, int) else 1
        hint = "" if args.debug else " (--debug shows the traceback)"
        return _fail(f"unexpected {type(exc).__name__}: {exc}{hint}", 1)
