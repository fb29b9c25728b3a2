"""Settings without PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK: the worker must refuse them."""

PG_EVENTS_DATABASE_URL = "postgres://nobody:secret@127.0.0.1:1/nowhere"
PG_EVENTS_DATA_UPDATE_CALLBACK = "tests.cli_settings.callbacks.on_data"
