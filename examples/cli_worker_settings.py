"""The settings module of ``examples/cli_worker.py``: what a pg_events user already has.

    trio-pgevents build  --settings examples/cli_worker_settings.py
    trio-pgevents worker --settings examples/cli_worker_settings.py

``--settings`` takes a dotted module path (imported with the current
directory on ``sys.path``) or a path to a ``.py`` file. Environment variables
of the same names override these values (the example sets
``PG_EVENTS_DATABASE_URL`` to its embedded server); ``--database-url``
overrides both. A callback is a function, or the dotted path of one.
"""

from __future__ import annotations

import json
import sys

PG_EVENTS_DATABASE_URL = "postgresql://app@localhost/app"


def on_data(payload: str) -> None:
    """Called for every row change, with the pg_events JSON text (in a worker thread)."""
    change = json.loads(payload)
    row = change.get("new_data") or change.get("old_data")  # each is there only when it applies
    sys.stdout.write(f"{change['method']} {change['table_name']} {row}\n")
    sys.stdout.flush()


PG_EVENTS_DATA_UPDATE_CALLBACK = on_data
PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK = None  # DDL events: ignored
