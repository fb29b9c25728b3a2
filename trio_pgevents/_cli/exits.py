"""Exit statuses of the command line, the exception that ends a command with one, the error line."""

from __future__ import annotations

import sys

from .._secrets import scrub
from .defaults import PROG

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_LAG",
    "EXIT_OK",
    "EXIT_USAGE",
    "ExitStatus",
    "print_error",
]

#: The command did what it was asked.
EXIT_OK = 0
#: It failed, or ``status`` found something OUTDATED/MISSING, or the user said no.
EXIT_FAILURE = 1
#: Bad usage or settings: one line on stderr names what was wrong.
EXIT_USAGE = 2
#: ``status``: a change stream slot is past ``--max-slot-lag`` (or lost), or a durable consumer
#: past ``--max-consumer-lag``; nothing OUTDATED/MISSING.
EXIT_LAG = 3
#: Interrupted before the command could stop gracefully (a second signal, or Ctrl-C too early).
EXIT_INTERRUPTED = 130


class ExitStatus(Exception):
    """Raised to end a command with a given exit status after printing a message."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def print_error(message: str, status: int) -> int:
    """Print ``trio-pgevents: error: MESSAGE`` on stderr as one line, secrets masked; return ``status``."""
    line = scrub(" ".join(message.split()))  # one line, always, and no secret in it
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return status
