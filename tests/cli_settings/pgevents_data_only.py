"""pg_events settings without PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK (valid with --auto-rebuild false).

The URL comes from ``PG_EVENTS_ORIGINAL_URL`` (pg_events reads no environment).
"""

import os

PG_EVENTS_DATABASE_URL = os.environ.get("PG_EVENTS_ORIGINAL_URL", "postgresql://nobody@127.0.0.1:1/nowhere")
PG_EVENTS_DATA_UPDATE_CALLBACK = "tests.cli_settings.callbacks.on_data"
