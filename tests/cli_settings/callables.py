"""Settings holding the callables themselves (pg_events also took dotted paths)."""

from tests.cli_settings.callbacks import on_data_async, on_schema

PG_EVENTS_DATABASE_URL = "postgres://nobody:secret@127.0.0.1:1/nowhere"
PG_EVENTS_DATA_UPDATE_CALLBACK = on_data_async
PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK = on_schema
