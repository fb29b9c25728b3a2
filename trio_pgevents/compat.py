"""Drop-in replacement for psycopg2-pgevents (0.2.2).

Users of `psycopg2-pgevents <https://github.com/shawalli/psycopg2-pgevents>`_
switch by changing one import::

    from trio_pgevents.compat import (install_trigger_function, install_trigger,
                                      register_event_channel, poll)

Every top-level name of the original is here (``execute``, ``log`` and
``set_debug`` too), with its signature. The same as the original: the channel
(``psycopg2_pgevents_channel``), the trigger function
(``public.psycopg2_pgevents_create_event()``), the trigger name, the event
JSON (``event_id``, ``event_type``, ``schema_name``, ``table_name``,
``row_id``), the order ``poll`` yields events in (the order the server sent
them), :class:`Event` (hashable, equal only to itself, the same ``repr``),
``row_id`` where the original delivered one (``id`` converted to an integer
as the original's trigger did: text ``'42'`` gives ``42``, numeric ``4.5``
gives ``5``), table and schema names as SQL reads them (``"MyTable"`` is
``mytable``; ``'"MyTable"'`` is exactly ``MyTable``), and ``set_debug(True)``
printing the same lines to stdout on the same loggers (``pgevents.*``).

What differs, on purpose:

- no ``uuid-ossp`` extension: ``event_id`` comes from the built-in
  ``gen_random_uuid()`` (Postgres 13+);
- writes the original failed (its trigger made the user's INSERT fail) are
  delivered: an ``id`` that is no integer (uuid, ``'abc'``, past 2**31) is
  delivered as it is; a table with no ``id`` column gives its primary key
  (its value, or an object of its columns for a composite key), else
  ``null``;
- a name that is not a valid SQL identifier (spaces, quotes, a mixed-case
  name of a table created quoted) names exactly that table, where the
  original failed on it: the names SQL reads are tried first, then the name
  as it is; identifiers are always quoted (nothing can be injected);
  ``trigger_installed`` finds a trigger under the name it was installed by
  (the original's said ``False`` for ``"MyTable"``);
- ``search_path`` is never changed (the original reset it to
  ``"$user", public`` after every install);
- ``poll`` yields notifications already buffered on the connection at once
  (the original waited for more data to arrive first, and returned nothing
  when none did), leaves notifications of other channels on the connection
  (the original parsed them as events), and skips a payload that is not an
  event -- not JSON, nested past the parser's depth, fields of the wrong
  type -- with a warning on the ``trio_pgevents.compat`` logger (a few
  lines per interval at most), where the original raised and ended the
  iteration: any role can NOTIFY any channel. ``Event.fromjson`` raises a
  ``ValueError`` (also a :class:`~trio_pgevents.TrioPgEventsError`) for such
  text, where the original raised ``ValueError`` or ``KeyError``.

Every function takes a plain psycopg2 connection and commits its own work,
like the original. For everything else, see :class:`trio_pgevents.Installer`.
"""

from __future__ import annotations

import json
import re
import select
import string
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from psycopg2 import sql

from ._compat_log import _execute, execute, log, set_debug
from ._errors import PayloadError
from ._payload import SetAsideLog, parse_json, why
from ._secrets import get_logger

__all__ = [
    "CHANNEL",
    "Event",
    "execute",
    "install_trigger",
    "install_trigger_function",
    "log",
    "poll",
    "register_event_channel",
    "set_debug",
    "trigger_function_installed",
    "trigger_installed",
    "uninstall_trigger",
    "uninstall_trigger_function",
    "unregister_event_channel",
]

#: The channel psycopg2-pgevents' trigger function notifies on.
CHANNEL = "psycopg2_pgevents_channel"
_FUNCTION = sql.SQL("public.psycopg2_pgevents_create_event")
_TRIGGER = sql.Identifier("psycopg2_pgevents_trigger")
#: The values of ``event_type`` (the trigger fires AFTER INSERT OR UPDATE OR DELETE).
_EVENT_TYPES = frozenset({"INSERT", "UPDATE", "DELETE"})
#: Payloads ``poll`` skipped: one warning each, then a count every interval.
_SKIPPED = SetAsideLog(get_logger("trio_pgevents.compat"), "skipped: not a psycopg2-pgevents event")

_FUNCTION_BODY = """
DECLARE
    rec record;
    row_json jsonb;
    pk text[];
    row_id jsonb;
    int_id integer;
BEGIN
    IF TG_OP = 'DELETE' THEN rec := OLD; ELSE rec := NEW; END IF;
    row_json := pg_catalog.to_jsonb(rec);
    IF row_json ? 'id' THEN
        row_id := row_json -> 'id';
        -- The original's conversion (an integer variable assigned NEW.id): text '42' gives 42,
        -- numeric 4.5 gives 5. Where it fails (uuid, 'abc', past 2**31) the original failed the
        -- write; here the value is delivered as it is. Integers and uuids need no attempt.
        IF row_id <> 'null'::jsonb AND pg_catalog.pg_typeof(rec.id) NOT IN (
            'pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
            'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.uuid'::pg_catalog.regtype
        ) THEN
            BEGIN
                int_id := rec.id;
                row_id := pg_catalog.to_jsonb(int_id);
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END IF;
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

# ---- events ----------------------------------------------------------------------------------------


class Event:
    """A psycopg2-pgevents event (the original's attributes, ``repr``, hash and equality).

    Hashable, and equal only to itself, like the original's (events are
    told apart by identity: two Events made from one JSON are two events).

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
        # The original's, character for character (it has no closing ">").
        return (
            f"<Event id:{self.id} type:{self.type} table:{self.schema_name}.{self.table_name} "
            f"row-id:{self.row_id}"
        )

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


# ---- table names -----------------------------------------------------------------------------------

#: A name SQL reads unquoted (and folds to lower case): letters, digits, ``_``, ``$``, any non-ASCII.
_UNQUOTED = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*\Z")
#: A quoted identifier: ``"..."`` with ``""`` for a quote inside.
_QUOTED = re.compile(r'"((?:[^"]|"")+)"\Z')
_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # Postgres folds ASCII only
#: The first (schema, table) pair that exists; ``::name`` truncates as the parser does (63 bytes).
_FIND = sql.SQL(
    """SELECT n.nspname, c.relname
         FROM ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]))
              WITH ORDINALITY AS x(s, t, o)
         JOIN pg_catalog.pg_namespace n ON n.nspname = x.s::name
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = x.t::name
        ORDER BY x.o LIMIT 1"""
)


def _spellings(name: str) -> list[str]:
    """The names ``name`` may mean: SQL's reading of it (the original's) first, then ``name`` itself."""
    quoted = _QUOTED.match(name)
    if quoted:
        read = quoted.group(1).replace('""', '"')
    elif _UNQUOTED.match(name):
        read = name.translate(_FOLD)
    else:
        read = name
    return [read] if read == name else [read, name]


def _resolve(connection: Any, table: str, schema: str) -> tuple[str, str]:
    """The exact (schema, table) meant: the first spelling pair naming a relation, else SQL's reading."""
    pairs = [(s, t) for s in _spellings(schema) for t in _spellings(table)]
    if len(pairs) > 1:
        rows = _execute(connection, _FIND, ([s for s, _ in pairs], [t for _, t in pairs]))
        if rows:
            return rows[0][0], rows[0][1]
    return pairs[0]


def _table(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


# ---- triggers --------------------------------------------------------------------------------------


def trigger_function_installed(connection: Any) -> bool:
    """True if the psycopg2-pgevents trigger function exists."""
    log("Checking if trigger function installed...", logger_name="pgevents.trigger")
    rows = _execute(
        connection,
        sql.SQL("SELECT pg_catalog.to_regprocedure('public.psycopg2_pgevents_create_event()') IS NOT NULL"),
    )
    installed = bool(rows and rows[0][0])
    log("...{}installed".format("" if installed else "NOT "), logger_name="pgevents.trigger")
    return installed


def trigger_installed(connection: Any, table: str, schema: str = "public") -> bool:
    """True if the psycopg2-pgevents trigger is on ``schema.table`` (names as :func:`install_trigger`)."""
    log(f"Checking if {schema}.{table} trigger installed...", logger_name="pgevents.trigger")
    rows = _execute(
        connection,
        sql.SQL(
            """SELECT true FROM pg_catalog.pg_trigger t
                 JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %s AND c.relname = %s AND t.tgname = 'psycopg2_pgevents_trigger'"""
        ),
        _resolve(connection, table, schema),
    )
    installed = bool(rows)
    log("...{}installed".format("" if installed else "NOT "), logger_name="pgevents.trigger")
    return installed


def install_trigger_function(connection: Any, overwrite: bool = False) -> None:
    """Install the trigger function (skipped if present, unless ``overwrite``).

    A database set up by the original already has its function: pass
    ``overwrite=True`` once to replace it with this one.
    """
    if not overwrite and trigger_function_installed(connection):
        log("Trigger function already installed; skipping...", logger_name="pgevents.trigger")
        return
    log("Installing trigger function...", logger_name="pgevents.trigger")
    statement = sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        _FUNCTION, sql.Literal(_FUNCTION_BODY)
    )
    _execute(connection, statement)


def uninstall_trigger_function(connection: Any, force: bool = False) -> None:
    """Drop the trigger function; ``force`` also drops the triggers using it (CASCADE)."""
    log(f"Uninstalling trigger function (cascade={force})...", logger_name="pgevents.trigger")
    modifier = sql.SQL(" CASCADE" if force else "")
    _execute(connection, sql.SQL("DROP FUNCTION IF EXISTS {}(){}").format(_FUNCTION, modifier))


def install_trigger(connection: Any, table: str, schema: str = "public", overwrite: bool = False) -> None:
    """Put the trigger on ``schema.table`` (skipped if present, unless ``overwrite``).

    Names are read as SQL reads them, as the original did (``MyTable`` is
    ``mytable``, ``'"MyTable"'`` is ``MyTable``); when no such table exists,
    the name as given is tried (so ``"Order Lines"`` names that table).
    """
    if not overwrite and trigger_installed(connection, table, schema):
        log(f"{schema}.{table} trigger already installed; skipping...", logger_name="pgevents.trigger")
        return
    log(f"Installing {schema}.{table} trigger...", logger_name="pgevents.trigger")
    target = _table(*_resolve(connection, table, schema))
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
    """Remove the trigger from ``schema.table`` (no error if absent; names as :func:`install_trigger`)."""
    log(f"Uninstalling {schema}.{table} trigger...", logger_name="pgevents.trigger")
    target = _table(*_resolve(connection, table, schema))
    _execute(connection, sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(_TRIGGER, target))


# ---- the channel -----------------------------------------------------------------------------------


def register_event_channel(connection: Any) -> None:
    """``LISTEN`` to the psycopg2-pgevents channel on ``connection``."""
    log("Registering psycopg2-pgevents channel...", logger_name="pgevents.event")
    _execute(connection, sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))


def unregister_event_channel(connection: Any) -> None:
    """``UNLISTEN`` the psycopg2-pgevents channel."""
    log("Unregistering psycopg2-pgevents channel...", logger_name="pgevents.event")
    _execute(connection, sql.SQL("UNLISTEN {}").format(sql.Identifier(CHANNEL)))


def poll(connection: Any, timeout: float = 1.0) -> Iterator[Event]:
    """Yield the events waiting on ``connection``, in the order they were sent (as the original).

    Blocks up to ``timeout`` seconds for the first one (0: do not block);
    yields nothing if none arrives. Where it differs from the original:
    notifications already buffered on the connection (read while it ran
    another statement) are yielded at once, without waiting for more data;
    notifications on other channels are left on the connection; a payload
    that is not a psycopg2-pgevents event -- whatever it holds -- is skipped
    with a warning (rate-limited) instead of raising.
    """
    blocking = f"Blocking, {timeout} seconds" if timeout > 0.0 else "Non-Blocking"
    log(f"Polling for events ({blocking})...", logger_name="pgevents.event")
    if not connection.notifies:
        ready, _, _ = select.select([connection], [], [], max(0.0, timeout))
        if not ready:
            log("...No events found", logger_name="pgevents.event")
            return
    log("Events", logger_name="pgevents.event")
    log("------", logger_name="pgevents.event")
    connection.poll()
    pending = connection.notifies
    kept = []
    while pending:
        notify = pending.pop(0)
        if notify.channel != CHANNEL:
            kept.append(notify)
            continue
        log(str(notify), logger_name="pgevents.event")
        try:
            event = Event.fromjson(notify.payload)
        except Exception as exc:  # PayloadError; anything else is no reason to stop either
            _SKIPPED.note(notify.channel, notify.payload, str(exc))
            continue
        yield event
    pending.extend(kept)
