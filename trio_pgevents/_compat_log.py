"""psycopg2-pgevents' ``log``, ``set_debug`` and ``execute`` (its debug.py and sql.py), for compat.

The original's debug lines go to the same loggers (``pgevents``,
``pgevents.debug``, ``pgevents.sql``, ``pgevents.trigger``,
``pgevents.event``) and, while debug is on, to stdout in the same format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from psycopg2 import sql

from ._errors import ConfigurationError
from ._secrets import get_logger

__all__ = ["execute", "log", "set_debug"]

# ---- debug logging, as the original's ------------------------------------------------------------

_debug = False
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_FORMAT = logging.Formatter("%(asctime)s %(levelname)-5s [%(name)s]: %(message)s")


def set_debug(enabled: bool) -> None:
    """Turn the debug lines of every function here on or off (off at import), like the original."""
    global _debug
    if not enabled:
        log("Disabling debug output...", logger_name="pgevents.debug")
        _debug = False
    else:
        _debug = True
        log("Enabling debug output...", logger_name="pgevents.debug")


def log(message: str, *args: Any, category: str = "info", logger_name: str = "pgevents") -> None:
    """Log ``message % args`` to ``logger_name`` if debug is on (see :func:`set_debug`); else nothing.

    As the original: the line is printed to stdout (``time LEVEL [logger]:
    message``) and passed to the logger's handlers and its ancestors',
    whatever the logger's level; ``category`` is the level (``"info"``,
    ``"error"``...; below ``info`` is never shown). Unlike the original it
    changes no logger's level or handlers, even for a moment (safe from
    threads), and masks any secret the library knows.

    Raises:
        ConfigurationError: (a ``ValueError``) for an unknown ``category``.
    """
    level = _LEVELS.get(category)
    if level is None:
        raise ConfigurationError(f'Invalid log category "{category}"')
    logger = get_logger(logger_name)
    if not _debug or level < logging.INFO or logger.manager.disable >= level or logger.disabled:
        return
    exc_info = sys.exc_info() if category == "exception" else None
    record = logger.makeRecord(logger.name, level, "(compat)", 0, message, args, exc_info)
    if not logger.filter(record):  # the library's secret-masking filter, and the user's
        return
    printer = logging.StreamHandler(sys.stdout)
    printer.setFormatter(_FORMAT)
    printer.handle(record)
    current: logging.Logger | None = logger
    while current is not None:  # Logger.callHandlers, without the stderr last resort
        for handler in current.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
        current = current.parent if current.propagate else None


# ---- statements ------------------------------------------------------------------------------------


def execute(connection: Any, statement: str | sql.Composable) -> list[tuple[Any, ...]] | None:
    """Run ``statement`` on ``connection`` and commit; its rows, or ``None`` if it gave none.

    The original's helper: on error the transaction is rolled back and the
    driver's error raised. With debug on (:func:`set_debug`) the statement,
    and the rows or the error, are logged to ``pgevents.sql``.
    """
    return _execute(connection, statement)


def _execute(
    connection: Any, statement: str | sql.Composable, params: Any = None
) -> list[tuple[Any, ...]] | None:
    # ``with connection`` commits, or rolls back on error, like the original.
    with connection, connection.cursor() as cursor:
        if _debug:
            log("Query", logger_name="pgevents.sql")
            log("-----", logger_name="pgevents.sql")
            log("%s", cursor.mogrify(statement, params).decode(errors="replace"), logger_name="pgevents.sql")
        try:
            cursor.execute(statement, params)
        except Exception as exc:
            log("Exception", category="error", logger_name="pgevents.sql")
            log("---------", category="error", logger_name="pgevents.sql")
            log("%s: %s", type(exc).__name__, exc, category="error", logger_name="pgevents.sql")
            raise
        rows = list(cursor.fetchall()) if cursor.description is not None else []
        if not rows:
            log("<No Response>", logger_name="pgevents.sql")
            return None
        if _debug:
            log("Response", logger_name="pgevents.sql")
            log("--------", logger_name="pgevents.sql")
            for row in rows:
                log("%s", row, logger_name="pgevents.sql")
        return rows
