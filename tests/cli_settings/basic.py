"""A pg_events settings module, written as a pg_events user would.

The URL points nowhere on purpose: tests give the real one with
--database-url or the environment, which must override it.
"""

PG_EVENTS_DATABASE_URL = "postgres://nobody:secret@127.0.0.1:1/nowhere"
PG_EVENTS_DATA_UPDATE_CALLBACK = "tests.cli_settings.callbacks.on_data"
PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK = "tests.cli_settings.callbacks.on_schema_async"
