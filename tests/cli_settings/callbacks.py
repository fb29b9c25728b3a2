"""Callbacks the CLI tests configure; each prints one line the test waits for.

Lines are ``KIND thread=main|worker type=<argument type> <payload>`` so a test
can tell that plain functions ran in a worker thread and ``async def`` ones on
the Trio thread, and what they were given.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import trio

NOT_CALLABLE = 42
_lock = threading.Lock()


def _line(kind: str, argument: Any) -> None:
    thread = "main" if threading.current_thread() is threading.main_thread() else "worker"
    text = argument if isinstance(argument, str) else getattr(argument, "payload", repr(argument))
    # One write per line, under a lock: callbacks run in several threads at once, and print()
    # writes the text and the newline separately (lines would interleave).
    with _lock:
        sys.stdout.write(f"{kind} thread={thread} type={type(argument).__name__} {text}\n")
        sys.stdout.flush()


def on_data(payload: Any) -> None:
    """A plain (sync) data callback, pg_events style."""
    _line("DATA", payload)


async def on_data_async(payload: Any) -> None:
    """An ``async def`` data callback."""
    await trio.lowlevel.checkpoint()
    _line("ADATA", payload)


def on_schema(payload: Any) -> None:
    """A plain (sync) DDL callback."""
    _line("SCHEMA", payload)


async def on_schema_async(payload: Any) -> None:
    """An ``async def`` DDL callback."""
    await trio.lowlevel.checkpoint()
    _line("ASCHEMA", payload)


def on_data_raises(payload: Any) -> None:
    """Raises for payloads containing "boom", prints the others."""
    if "boom" in str(payload):
        raise RuntimeError("callback exploded on purpose")
    _line("DATA", payload)


def on_data_slow(payload: Any) -> None:
    """Takes $CLI_TEST_SLOW seconds (default 0.5); prints START and END lines."""
    _line("START", payload)
    time.sleep(float(os.environ.get("CLI_TEST_SLOW", "0.5")))
    _line("END", payload)
