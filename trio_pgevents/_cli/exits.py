"""Exit statuses of the command line, and the exception that ends a command with one."""

from __future__ import annotations

__all__ = ["EXIT_SLOT_LAG", "ExitStatus"]

#: ``status`` exits with this when a change stream slot is past ``--max-slot-lag``.
EXIT_SLOT_LAG = 3


class ExitStatus(Exception):
    """Raised to end a command with a given exit status after printing a message."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
