"""Drop-in replacement for psycopg2-pgevents' functions.

Users of `psycopg2-pgevents <https://github.com/shawalli/psycopg2-pgevents>`_
switch by changing one import::

    from trio_pgevents.compat import (install_trigger_function, install_trigger,
                                      register_event_channel, poll)

The names, signatures, the channel (``psycopg2_pgevents_channel``), the
trigger function (``public.psycopg2_pgevents_create_event()``), the trigger
name and the event JSON (``event_id``, ``event_type``, ``schema_name``,
``table_name``, ``row_id``) are the original's. What differs, on purpose:

- no ``uuid-ossp`` extension: ``event_id`` comes from the built-in
  ``gen_random_uuid()`` (Postgres 13+);
- no required ``id`` column: ``row_id`` is the ``id`` column when the table
  has one (as before), else the primary key (its value, or an object of its
  columns for a composite key), else ``null``;
- ``poll`` yields events in the order the server sent them;
- schema and table names are quoted identifiers (spaces, quotes, upper case
  work; nothing can be injected);
- ``search_path`` is never changed (the original reset it to
  ``"$user", public`` after every install);
- a payload on the channel that is not an event -- whatever it holds: not
  JSON, nested past the parser's depth, fields of the wrong type -- is
  skipped by ``poll`` with a warning (a few lines per interval at most) and
  makes ``Event.fromjson`` raise a ``ValueError`` that is also a
  :class:`~trio_pgevents.TrioPgEventsError`: any role can NOTIFY any channel.

Every function takes a plain psycopg2 connection and commits its own work,
like the original. For everything else, see :class:`trio_pgevents.Installer`.
"""

from __future__ import annotations

import json
import select
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from psycopg2 import sql

from ._errors import PayloadError
from ._payload import SetAsideLog, parse_json, why
from ._secrets import get_logger

__all__ = [
    "CHANNEL",
    "Event",
    "install_trigger",
    "install_trigger_function",
    "poll",
    "register_event_channel",
    "trigger_function_installed",
    "trigger_installed",
    "uninstall_trigger",
    "uninstall_trigger_function",
    "unregister_event_channel",
]

logger = get_logger("trio_pgevents.compat")

#: The channel psycopg2-pgevents' trigger function notifies on.
CHANNEL = "psycopg2_pgevents_channel"
_FUNCTION = sql.SQL("public.psycopg2_pgevents_create_event")
_TRIGGER = sql.Identifier("psycopg2_pgevents_trigger")
#: The values of ``event_type`` (the trigger fires AFTER INSERT OR UPDATE OR DELETE).
_EVENT_TYPES = frozenset({"INSERT", "UPDATE", "DELETE"})
#: Payloads ``poll`` skipped: one warning each, then a count every interval.
_SKIPPED = SetAsideLog(logger, "skipped: not a psycopg2-pgevents event")

_FUNCTION_BODY = """
DECLARE
    rec record;
    row_json jsonb;
    pk text[];
    row_id jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN rec := OLD; ELSE rec := NEW; END IF;
    row_json := pg_catalog.to_jsonb(rec);
    IF row_json ? 'id' THEN
        row_id := row_json -> 'id';
    ELSE
        SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) INTO pk
          FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = TG_RELID AND i.indisprimary;
        IF pg_catalog.array_length(pk, 1) = 1 THEN
            row_id := row_json -> pk[1];
        ELSIF pk IS NOT NULL THEN
            row_id := (SELECT pg_catalog.jsonb_object_agg(e.key, e.value)
                         FROM pg_catalog.jsonb_each(row_json) e WHERE e.key = ANY (pk));
        END IF;
    END IF;
    PERFORM pg_catalog.pg_notify('psycopg2_pgevents_channel', pg_catalog.json_build_object(
        'event_id', pg_catalog.gen_random_uuid(),
        'event_type', TG_OP,
        'schema_name', TG_TABLE_SCHEMA,
        'table_name', TG_TABLE_NAME,
        'row_id', row_id
    )::text);
    RETURN NULL;
END
"""


class Event:
    """A psycopg2-pgevents event (same attributes as the original's).

    Attributes:
        id: the event's UUID.
        type: ``INSERT``, ``UPDATE`` or ``DELETE``.
        schema_name: schema of the changed table.
        table_name: the changed table.
        row_id: the row's ``id`` (or primary key, see the module docstring).
    """

    def __init__(self, id_: UUID, type_: str, schema_name: str, table_name: str, row_id: Any) -> None:
        self.id = id_
        self.type = type_
        self.schema_name = schema_name
        self.table_name = table_name
        self.row_id = row_id

    def __repr__(self) -> str:
        return (
            f"<Event id:{self.id} type:{self.type} table:{self.schema_name}.{self.table_name} "
            f"row-id:{self.row_id}>"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the original

    @classmethod
    def fromjson(cls, json_string: str) -> Event:
        """Create an Event from its JSON (the notification payload).

        Raises ``ValueError`` (a :class:`~trio_pgevents.TrioPgEventsError` too)
        saying why, for any text that is not such an event -- whatever it
        holds, even nesting deeper than Python parses.
        """
        try:
            obj = parse_json(json_string, exact=False)
        except Exception as exc:  # RecursionError too, not only ValueError
            raise PayloadError(f"not JSON ({why(exc)})") from None
        if type(obj) is not dict:
            raise PayloadError(f"JSON {type(obj).__name__}, not an object")
        for key in ("event_id", "event_type", "schema_name", "table_name", "row_id"):
            if key not in obj:
                raise PayloadError(f"no {key!r} key")
        event_id, event_type = obj["event_id"], obj["event_type"]
        if type(event_id) is not str:
            raise PayloadError(f"event_id is {type(event_id).__name__}, not a UUID string")
        try:
            uuid = UUID(event_id)
        except ValueError:
            raise PayloadError(f"event_id {event_id[:40]!r} is not a UUID") from None
        if type(event_type) is not str:
            raise PayloadError(f"event_type is {type(event_type).__name__}, not a string")
        if event_type not in _EVENT_TYPES:
            raise PayloadError(f"event_type {event_type[:40]!r} is not INSERT, UPDATE or DELETE")
        for key in ("schema_name", "table_name"):
            if type(obj[key]) is not str:
                raise PayloadError(f"{key} is {type(obj[key]).__name__}, not a string")
        return cls(uuid, event_type, obj["schema_name"], obj["table_name"], obj["row_id"])

    def tojson(self) -> str:
        """Serialise the Event to JSON (the payload's format)."""
        return json.dumps(
            {
                "event_id": str(self.id),
                "event_type": self.type,
                "schema_name": self.schema_name,
                "table_name": self.table_name,
                "row_id": self.row_id,
            }
        )


def _execute(connection: Any, statement: sql.Composable, params: Any = None) -> list[tuple[Any, ...]] | None:
    # Like the original: one statement, committed (``with connection`` commits or rolls back).
    with connection, connection.cursor() as cursor:
        cursor.execute(statement, params)
        if cursor.description is None:
            return None
        rows = list(cursor.fetchall())
        return rows or None


def _table(table: str, schema: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def trigger_function_installed(connection: Any) -> bool:
    """True if the psycopg2-pgevents trigger function exists."""
    rows = _execute(
        connection,
        sql.SQL("SELECT pg_catalog.to_regprocedure('public.psycopg2_pgevents_create_event()') IS NOT NULL"),
    )
    return bool(rows and rows[0][0])


def trigger_installed(connection: Any, table: str, schema: str = "public") -> bool:
    """True if the psycopg2-pgevents trigger is on ``schema.table``."""
    rows = _execute(
        connection,
        sql.SQL(
            """SELECT true FROM pg_catalog.pg_trigger t
                 JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %s AND c.relname = %s AND t.tgname = 'psycopg2_pgevents_trigger'"""
        ),
        (schema, table),
    )
    return bool(rows)


def install_trigger_function(connection: Any, overwrite: bool = False) -> None:
    """Install the trigger function (skipped if present, unless ``overwrite``)."""
    if not overwrite and trigger_function_installed(connection):
        logger.debug("trigger function already installed; skipping")
        return
    logger.debug("installing trigger function")
    statement = sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        _FUNCTION, sql.Literal(_FUNCTION_BODY)
    )
    _execute(connection, statement)


def uninstall_trigger_function(connection: Any, force: bool = False) -> None:
    """Drop the trigger function; ``force`` also drops the triggers using it (CASCADE)."""
    logger.debug("uninstalling trigger function (cascade=%s)", force)
    modifier = sql.SQL(" CASCADE" if force else "")
    _execute(connection, sql.SQL("DROP FUNCTION IF EXISTS {}(){}").format(_FUNCTION, modifier))


def install_trigger(connection: Any, table: str, schema: str = "public", overwrite: bool = False) -> None:
    """Put the trigger on ``schema.table`` (skipped if present, unless ``overwrite``)."""
    if not overwrite and trigger_installed(connection, table, schema):
        logger.debug("%s.%s trigger already installed; skipping", schema, table)
        return
    logger.debug("installing %s.%s trigger", schema, table)
    target = _table(table, schema)
    # One transaction: no moment without a trigger when replacing.
    _execute(
        connection,
        sql.SQL(
            "DROP TRIGGER IF EXISTS {trigger} ON {table}; "
            "CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION {function}()"
        ).format(trigger=_TRIGGER, table=target, function=_FUNCTION),
    )


def uninstall_trigger(connection: Any, table: str, schema: str = "public") -> None:
    """Remove the trigger from ``schema.table`` (no error if absent)."""
    logger.debug("uninstalling %s.%s trigger", schema, table)
    _execute(connection, sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(_TRIGGER, _table(table, schema)))


def register_event_channel(connection: Any) -> None:
    """``LISTEN`` to the psycopg2-pgevents channel on ``connection``."""
    _execute(connection, sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))


def unregister_event_channel(connection: Any) -> None:
    """``UNLISTEN`` the psycopg2-pgevents channel."""
    _execute(connection, sql.SQL("UNLISTEN {}").format(sql.Identifier(CHANNEL)))


def poll(connection: Any, timeout: float = 1.0) -> Iterator[Event]:
    """Yield the events waiting on ``connection``, in the order they were sent.

    Blocks up to ``timeout`` seconds for the first one (0: do not block);
    yields nothing if none arrives. Notifications on other channels are left
    alone; payloads that are not psycopg2-pgevents events -- whatever they
    hold -- are skipped with a warning (rate-limited).
    """
    if not connection.notifies:
        ready, _, _ = select.select([connection], [], [], max(0.0, timeout))
        if not ready:
            return
    connection.poll()
    # Pop from the front: the seed's pop() from the end reversed the order.
    pending = connection.notifies
    kept = []
    while pending:
        notify = pending.pop(0)
        if notify.channel != CHANNEL:
            kept.append(notify)
            continue
        try:
            event = Event.fromjson(notify.payload)
        except Exception as exc:  # PayloadError; anything else is no reason to stop either
            _SKIPPED.note(notify.channel, notify.payload, str(exc))
            continue
        yield event
    pending.extend(kept)
