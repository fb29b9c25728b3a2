"""Settings for the original pg_events (and for trio-pgevents beside it, with --database-url).

pg_events reads no environment: the test puts the database's libpq URL in
``PG_EVENTS_ORIGINAL_URL`` before starting it.
"""

import os

PG_EVENTS_DATABASE_URL = os.environ.get("PG_EVENTS_ORIGINAL_URL", "postgresql://nobody@127.0.0.1:1/nowhere")
PG_EVENTS_DATA_UPDATE_CALLBACK = "tests.cli_settings.callbacks.on_data"
PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK = "tests.cli_settings.callbacks.on_schema"
