"""The column types of the tables events come from: learned once, used to type each row.

:mod:`trio_pgevents._values` says which Python value each type becomes. A
trigger's row (``row_to_json``) carries no types: a stream reads the
columns' types from the catalog the first time it meets a table
(:class:`ColumnCatalog`), and again when a row has a column it does not
know or a DDL event names the table.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._connection import DB_ERRORS, run_on_connection
from ._errors import TrioPgEventsError
from ._events import RowChange, SchemaChange
from ._payload import NULL_ROW, parse_json
from ._rows import RowDecoder, row_decoder
from ._secrets import get_logger
from ._threads import run_abandonable
from ._values import JsonConverter, json_converter

__all__ = [
    "COLUMN_TYPES_SQL",
    "ColumnCatalog",
    "RowConverter",
    "StreamTyping",
    "Table",
    "TableTypes",
    "attach_types",
]

#: A row (column -> JSON value) -> the row typed.
RowConverter = Callable[[dict[str, Any]], dict[str, Any]]
Table = tuple[str, str]
#: A table's column names, how to type a parsed row (None: nothing to convert), and the
#: decoder typing a row straight from its JSON text (``_rows``).
TableTypes = tuple[frozenset[str], RowConverter | None, RowDecoder]

logger = get_logger("trio_pgevents")

#: Seconds a table whose types could not be read goes untyped before they are read again.
_RETRY_UNTYPED = 60.0
_MAX_UNTYPED = 10_000  # tables remembered as untyped; past it, expired ones are dropped

#: Params: schemas (text[]), tables (text[]). Every live column: name, type (a domain's
#: base type), and for arrays the element type (0 otherwise).
COLUMN_TYPES_SQL = (
    "SELECT t.s, t.r, a.attname::pg_catalog.text, b.oid::pg_catalog.int8, "
    "CASE WHEN b.typcategory OPERATOR(pg_catalog.=) 'A' THEN b.typelem::pg_catalog.int8 ELSE 0 END "
    "FROM ROWS FROM (pg_catalog.unnest(%s::pg_catalog.text[]), "
    "pg_catalog.unnest(%s::pg_catalog.text[])) AS t(s, r) "
    "JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) t.s "
    "JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid "
    "AND c.relname OPERATOR(pg_catalog.=) t.r "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid "
    "AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped "
    "JOIN pg_catalog.pg_type d ON d.oid OPERATOR(pg_catalog.=) a.atttypid "
    "JOIN pg_catalog.pg_type b ON b.oid OPERATOR(pg_catalog.=) "
    "CASE WHEN d.typtype OPERATOR(pg_catalog.=) 'd' THEN d.typbasetype ELSE d.oid END "
    "ORDER BY t.s, t.r, a.attnum"
)


def _row_converter(columns: list[tuple[str, int, int]], stale: Callable[[], None]) -> TableTypes:
    """The names of a table's columns, how to type its parsed rows, and its rows' decoder.

    A row with a column not among them calls ``stale()``: the table changed
    since its types were read (they are read again for later rows). The
    decoder takes no such row (the caller takes the converter's path).
    """
    names: list[str] = []
    steps: list[tuple[str, JsonConverter]] = []
    decode = row_decoder(columns)
    for name, type_oid, element_oid in columns:
        names.append(name)
        convert = json_converter(type_oid, element_oid)
        if convert is not None:
            steps.append((name, convert))
    known = frozenset(names)
    if not steps:
        return known, None, decode

    def convert_row(row: dict[str, Any]) -> dict[str, Any]:
        if not known.issuperset(row):
            stale()
        typed = dict(row)
        for name, convert in steps:
            value = typed.get(name)
            if value is not None:
                try:  # noqa: SIM105 - a with-statement per value costs more on this path
                    typed[name] = convert(value)
                except Exception:
                    pass  # a value that will not convert stays as it was sent
        return typed

    return known, convert_row, decode


class ColumnCatalog:
    """The column types of the tables one database's events came from, learned as they appear."""

    def __init__(self) -> None:
        self._tables: dict[Table, TableTypes] = {}
        self._untyped: dict[Table, float] = {}  # table -> monotonic time to try again

    def converter(self, table: Table, row: dict[str, Any] | None) -> tuple[bool, RowConverter | None]:
        """(known, converter) for a row of ``table``: unknown if the table, or a column, is new."""
        entry = self._tables.get(table)
        if entry is None:
            if self._untyped and table in self._untyped:
                if time.monotonic() < self._untyped[table]:
                    return True, None
                del self._untyped[table]
            return False, None
        names, convert, _ = entry
        if row is not None and not names.issuperset(row):
            return False, None  # a column added since: read the types again
        return True, convert

    def entry(self, table: Table) -> TableTypes | None:
        """``table``'s column names, converter and decoder, if its types are known."""
        return self._tables.get(table)

    def untyped(self, tables: Iterable[Table], *, for_seconds: float) -> None:
        """Leave ``tables``' rows as sent for a while (their types could not be read)."""
        now = time.monotonic()
        if len(self._untyped) > _MAX_UNTYPED:  # forged names must not grow this without bound
            self._untyped = {t: at for t, at in self._untyped.items() if at > now}
            if len(self._untyped) > _MAX_UNTYPED:
                self._untyped.clear()
        until = now + for_seconds
        for table in tables:
            self._untyped[table] = until

    def learn(self, cursor: Any, tables: list[Table]) -> None:
        """Read the column types of ``tables`` (blocking; on ``cursor``). Unknown tables: no conversion."""
        cursor.execute(COLUMN_TYPES_SQL, ([s for s, _ in tables], [t for _, t in tables]))
        columns: dict[Table, list[tuple[str, int, int]]] = {table: [] for table in tables}
        for schema, name, column, type_oid, element_oid in cursor.fetchall():
            columns.setdefault((schema, name), []).append((column, int(type_oid), int(element_oid)))
        for table, found in columns.items():
            if found:
                self._tables[table] = _row_converter(found, functools.partial(self.forget, table))
            else:  # no such table (a forged payload, or dropped since): rows as sent, asked again later
                self.untyped([table], for_seconds=_RETRY_UNTYPED)

    def forget(self, table: Table) -> None:
        """Read ``table``'s types again next time (its definition changed)."""
        self._tables.pop(table, None)


# ---- typing a stream's batches --------------------------------------------------------------------


def _could_exist(table: tuple[Any, Any]) -> bool:
    """Whether ``table`` (names from an untrusted payload) could name a table: else its rows go as sent."""
    return all(
        isinstance(name, str) and name and "\x00" not in name and len(name.encode("utf-8", "replace")) <= 63
        for name in table
    )


def attach_types(events: list[Any], catalog: ColumnCatalog) -> list[Table]:
    """Type the row events of ``events`` by their tables' types; return the tables not known yet.

    A DDL event for a table makes its types be read again (ALTER TABLE).
    Runs for every batch: consecutive events of one table (the usual batch)
    cost a string comparison each, and the typing of their row (see
    :func:`_type_rows`).
    """
    missing: list[Table] = []
    last_schema: Any = None
    last_name: Any = None
    entry: TableTypes | None = None
    for event in events:
        kind = type(event)
        if kind is RowChange:
            event_dict = event.__dict__
            envelope = event_dict.get("_env")
            if envelope is not None:
                schema, name = envelope.table_schema, envelope.table_name
            else:
                data = event.data
                schema, name = data.get("table_schema"), data.get("table_name")
            if entry is None or name != last_name or schema != last_schema:
                last_schema, last_name = schema, name
                table = (schema, name)
                entry = catalog.entry(table)
                if entry is None:
                    known, _ = catalog.converter(table, None)  # known: left untyped for a while
                    if not known and table not in missing and _could_exist(table):
                        missing.append(table)
                    entry = _NO_ENTRY
            if entry is _NO_ENTRY:
                continue
            if envelope is not None:
                row = envelope.new_data
                if row != NULL_ROW and envelope.old_data == NULL_ROW:  # an INSERT, inline
                    typed = entry[2](row)
                    if typed is not None:
                        event_dict["new_data"] = typed
                        continue
                    ok = _type_parsed(event_dict, "new_data", row, entry)
                else:
                    ok = _type_rows(event_dict, envelope, entry)
            else:
                ok = _attach_converter(event_dict, data, entry)
            if not ok:  # a column added since: read the types again
                table = (schema, name)
                if table not in missing:
                    missing.append(table)
        elif (
            kind is SchemaChange and event.object_type == "table" and event.schema_name and event.object_name
        ):
            catalog.forget((event.schema_name, event.object_name))
            entry = None  # look again: it may be this batch's table
    return missing


def _type_rows(event_dict: dict[str, Any], envelope: Any, entry: TableTypes) -> bool:
    """Type a LISTEN stream event's row now (its ``old_data`` too when read); False: a column is new.

    Typed on delivery, not when read: a row with a column the table did not
    have when its types were read is found here, and its types are read
    again before the row is delivered.
    """
    raw, key = envelope.new_data, "new_data"
    if raw == NULL_ROW:
        raw, key = envelope.old_data, "old_data"
        if raw == NULL_ROW:
            return True  # TRUNCATE: no row
    elif envelope.old_data != NULL_ROW:
        event_dict["_table"] = entry  # an UPDATE's old row: typed when read
    typed = entry[2](raw)
    if typed is None:
        return _type_parsed(event_dict, key, raw, entry)
    event_dict[key] = typed
    return True


def _type_parsed(event_dict: dict[str, Any], key: str, raw: Any, entry: TableTypes) -> bool:
    """A row the decoder does not take, typed the general way: parsed, then converted."""
    names, convert, _ = entry
    try:
        row = parse_json(raw)
    except Exception:  # nested past this stack's depth: parsed (and reported) when read
        return True
    if not names.issuperset(row):
        return False
    event_dict[key] = convert(row) if convert is not None else row
    return True


def _attach_converter(event_dict: dict[str, Any], data: dict[str, Any], entry: TableTypes) -> bool:
    """Give an event parsed as a whole its table's converter; False: a column is new."""
    names, convert, _ = entry
    row = data.get("new_data")
    if type(row) is not dict:
        row = data.get("old_data")
    if type(row) is dict and not names.issuperset(row):
        return False
    if convert is not None:
        event_dict["_row_types"] = convert
    return True


_NO_ENTRY: TableTypes = (frozenset(), None, lambda raw: None)


class StreamTyping:
    """Types the row events of a LISTEN stream's batches, one catalog per database.

    :meth:`attach` runs on every batch (cheap: a dict lookup per row event);
    when a batch holds a table not met before, :meth:`learn` reads its column
    types (one catalog query, in an abandonable thread bounded by
    ``timeout``) before the batch is delivered. If that fails (the server is
    unreachable), the table's rows go out as sent, and its types are read
    again a minute later.

    Args:
        engines: each source's engine (``Event.source`` -> engine).
        timeout: bound on connecting and on the query, seconds.
    """

    def __init__(self, engines: dict[str, Any], timeout: float) -> None:
        self._engines = engines
        self._catalogs = {source: ColumnCatalog() for source in engines}
        self._timeout = timeout
        self._missing: dict[str, list[Table]] = {}

    def attach(self, batch: list[Any]) -> bool:
        """Type what can be typed; True when nothing is left to learn."""
        if not batch:
            return True
        catalog = self._catalogs.get(batch[0].source)
        if catalog is None:
            return True
        missing = attach_types(batch, catalog)
        if missing:
            self._missing = {batch[0].source: missing}
            return False
        return True

    async def learn(self) -> None:
        """Read the column types :meth:`attach` found missing (never raises a database error)."""
        for source, tables in self._missing.items():
            catalog, engine = self._catalogs[source], self._engines[source]
            work = functools.partial(catalog.learn, tables=tables)
            try:
                await run_abandonable(
                    functools.partial(run_on_connection, engine, work, self._timeout),
                    timeout=2 * self._timeout,
                    what=f"read column types (timeout {self._timeout:g}s)",
                )
            except (TrioPgEventsError, *DB_ERRORS, ValueError) as exc:
                logger.warning(
                    "could not read the column types of %s on %s (their rows go out as sent; "
                    "tried again in %gs): %s",
                    ", ".join(f"{s}.{t}" for s, t in tables),
                    source,
                    _RETRY_UNTYPED,
                    exc,
                )
                catalog.untyped(tables, for_seconds=_RETRY_UNTYPED)
        self._missing = {}
