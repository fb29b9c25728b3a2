"""Settings for durable workers in tests/test_cli_consumers.py (run with ``--callback-arg event``).

Each row handled prints ``ROW <n> pid=<pid>``; a row with a negative ``n``
fails every time (to be retried, then dead-lettered).
"""

from __future__ import annotations

import os
import sys
from typing import Any

PG_EVENTS_DATABASE_URL = "postgres://nobody:secret@127.0.0.1:1/nowhere"


def on_row(event: Any) -> None:
    """Print the row's ``n``; raise for a negative one."""
    n = event.new_data["n"]
    if n < 0:
        raise RuntimeError(f"row {n} fails on purpose")
    sys.stdout.write(f"ROW {n} pid={os.getpid()}\n")
    sys.stdout.flush()


def on_schema(event: Any) -> None:
    """DDL events are not what these tests are about."""


PG_EVENTS_DATA_UPDATE_CALLBACK = on_row
PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK = on_schema
