"""Reading a change stream's snapshot: the published tables, their rows typed as pgoutput's values.

Blocking code, run in worker threads by :mod:`.snapshot`. The rows are read
in the snapshot the slot exported, through a server-side cursor per table;
their values arrive as the server's text form (raw bytes: psycopg2's own
conversions are turned off for the query's types) and are converted by the
same converters as a change stream's (:mod:`.values`), so a ``READ`` event's
values equal what an ``INSERT`` of the same row would carry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .. import _connection as conn_mod
from .._events import Event, RowChange
from .._options import StreamOptions
from .._threads import Handoff
from .session import close_quietly, with_connect_timeout
from .values import _BYTES_OK, Converter, DomainTypes, _careful_value, converter_for_type, read_domain_types

__all__ = ["RowConverter", "Table", "declare", "open_snapshot", "read_event"]

_new = tuple.__new__


# ---------------------------------------------------------------------------
# the tables and their rows
# ---------------------------------------------------------------------------


class Table(NamedTuple):
    schema: str
    name: str
    select: sql.Composed


_TABLES_SQL = """
SELECT pt.schemaname, pt.tablename, {columns}, {row_filter}, c.relkind
FROM pg_catalog.pg_publication_tables pt
JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
WHERE pt.pubname = %s ORDER BY 1, 2
"""
#: Before PostgreSQL 15 every column is published but generated ones (no column lists, no row filters).
_ALL_COLUMNS = (
    "ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid "
    "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum)"
)


def _published_tables(cursor: Any, publication: str, server_version: int) -> list[Table]:
    """The publication's tables, each with the query that reads what it publishes."""
    if server_version >= 150000:
        query = _TABLES_SQL.format(columns="pt.attnames::text[]", row_filter="pt.rowfilter")
    else:
        query = _TABLES_SQL.format(columns=_ALL_COLUMNS, row_filter="NULL::text")
    cursor.execute(query, (publication,))
    tables = []
    for schema, name, columns, row_filter, kind in cursor.fetchall():
        # ONLY: a table's own rows (an inheritance child is published, and read, by itself);
        # a partitioned table published by its root is read whole.
        statement = sql.SQL("SELECT {} FROM {}{}.{}").format(
            sql.SQL(", ").join(sql.Identifier(column) for column in columns),
            sql.SQL("" if kind == "p" else "ONLY "),
            sql.Identifier(schema),
            sql.Identifier(name),
        )
        if row_filter:  # the publication's row filter, as the server prints it
            statement = sql.Composed([statement, sql.SQL(" WHERE "), sql.SQL(row_filter)])
        tables.append(Table(schema, name, statement))
    return tables


def open_snapshot(
    dsn: str, snapshot_name: str, publication: str, options: StreamOptions, handoff: Handoff
) -> tuple[Any, list[Table], DomainTypes] | None:
    """Thread: connect, import the snapshot, list what to read (None: the caller gave up)."""
    conn = psycopg2.connect(with_connect_timeout(dsn, options.connect_timeout))
    try:
        handoff.attach(conn.fileno())
        if options.keepalive is not None:
            conn_mod.set_keepalive(conn.fileno(), options.keepalive)
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cursor:
            cursor.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
            tables = _published_tables(cursor, publication, conn.server_version)
            domains = read_domain_types(cursor)
    except BaseException:
        handoff.detach()
        close_quietly(conn)
        raise
    opened: tuple[Any, list[Table], DomainTypes] | None = handoff.deliver((conn, tables, domains))
    return opened


RowConverter = Callable[[tuple[Any, ...]], dict[str, Any]]


def _step(convert: Converter | None, encoding: str) -> Callable[[bytes], Any]:
    """One column: raw bytes -> value (ints and floats parse the bytes, as pgoutput's parser does)."""
    if convert is None:
        return functools.partial(bytes.decode, encoding=encoding)
    if convert in _BYTES_OK:
        return convert  # type: ignore[return-value]  # int() and float() take bytes too
    return lambda raw: convert(raw.decode(encoding))


def _row_converter(names: list[str], oids: list[int], domains: DomainTypes, encoding: str) -> RowConverter:
    """Raw column bytes -> the row as a change stream types it (the same converters as pgoutput)."""
    converters: list[Converter | None] = [converter_for_type(oid, domains) for oid in oids]
    steps = [_step(convert, encoding) for convert in converters]
    columns = list(zip(names, steps, strict=True))
    careful = list(zip(names, converters, strict=True))

    def row(values: tuple[Any, ...]) -> dict[str, Any]:
        try:
            return {
                name: None if raw is None else step(raw)
                for (name, step), raw in zip(columns, values, strict=True)
            }
        except Exception:
            # A value the fast path cannot convert: the rest of the row is still typed.
            return {
                name: None if raw is None else _careful_value(raw, convert, encoding, name)
                for (name, convert), raw in zip(careful, values, strict=True)
            }

    return row


def declare(conn: Any, table: Table, domains: DomainTypes, index: int) -> tuple[Any, RowConverter]:
    """Thread: a server-side cursor over ``table`` whose values arrive as raw bytes, and their converter."""
    with conn.cursor() as probe:
        probe.execute(sql.Composed([table.select, sql.SQL(" LIMIT 0")]))
        description = probe.description
    names = [column.name for column in description]
    oids = [column.type_code for column in description]
    if oids:
        # The text form as the server sent it: converted below exactly as pgoutput's values are.
        raw = psycopg2.extensions.new_type(tuple(set(oids)), "TRIO_PGEVENTS_RAW", psycopg2.extensions.BYTES)
        psycopg2.extensions.register_type(raw, conn)
    encoding = psycopg2.extensions.encodings.get(conn.encoding, "utf-8")
    cursor = conn.cursor(name=f"trio_pgevents_snapshot_{index}")
    cursor.execute(table.select)
    return cursor, _row_converter(names, oids, domains, encoding)


def read_event(channel: str, source: str, lsn: str, index: int, table: Table, row: dict[str, Any]) -> Event:
    event = _new(RowChange, (channel, None, 0, source, lsn, "READ", index))
    event.__dict__["data"] = {
        "table_schema": table.schema,
        "table_name": table.name,
        "session_user": None,
        "method": "READ",
        "old_data": None,
        "new_data": row,
        "query": None,
        "lsn": lsn,
        "txid": None,
        "commit_time": None,
    }
    # Acknowledging a READ event confirms nothing; the last one confirms the consistent
    # point (where the slot already is): that is how the stream knows it was processed.
    event.__dict__["_ack"] = 0
    return event
