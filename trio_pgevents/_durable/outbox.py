"""The outbox from the reader's side: its SQL, and rows turned into events (no I/O).

The read statement takes rows in ``(txid, id)`` order, only below the
snapshot's ``xmin`` (:mod:`.follower` says why that is correct).

Every function, operator and type in this SQL is schema-qualified: the
reader runs no code another role put on its connection's search_path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from psycopg2 import sql

from .._columns import RowConverter, Table
from .._events import Event, Notification, RowChange
from .._payload import ROW, SET_ASIDE, jsonb_check_sql
from .prepared import Prepared

__all__ = [
    "OutboxNotification",
    "OutboxSql",
    "Position",
    "make_events",
    "position_of",
    "stored_payload",
    "type_events",
]

#: A position in the events table: ``(txid, id)``; events after it are unread.
Position = tuple[int, int]

_new = tuple.__new__
_UNKNOWN: Any = object()


class OutboxNotification(Notification):
    """An outbox row that is not a change event (written by hand, or in another format).

    It keeps its position, so acknowledging it moves the consumer past it;
    :class:`DurableWorker` moves it to the dead letters rather than skipping it.
    """


def position_of(event: object) -> Position | None:
    """The outbox position of an event a durable stream delivered (None for others)."""
    attributes = getattr(event, "__dict__", None)
    if attributes is None:
        return None
    position: Position | None = attributes.get("_position")
    return position


#: SQL: the row is a row event of the trigger's format (kind, table, method, row data). The
#: server checks it (in C, per row), so the reader parses nothing up front: the payload is
#: parsed on first access of ``data`` (the other fields read as their empty values if a row
#: written by hand gave them the wrong type). The type comes from the "kind" field the
#: trigger wrote, never from row data.
_ROW_EVENT_FIELDS = ("table_name", "method", "old_data", "new_data")
_ROW_EVENT_CHECK = jsonb_check_sql("r.payload", ROW, _ROW_EVENT_FIELDS)


#: The rows still to read after a position: params last txid (text), last id.
_UNREAD = (
    "(e.txid, e.id) OPERATOR(pg_catalog.>) (%s::pg_catalog.xid8, %s::pg_catalog.int8) "
    "AND e.txid OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())"
)

#: The payload of an outbox row ``r`` as text (an object: another JSON value comes as
#: ``{"value": ...}``). :func:`make_events` adds "id" and "txid" to the text (merging them in
#: with jsonb operators here cost the server more than reading the row: 2.9 of 5.5 us per row).
_PAYLOAD_TEXT = (
    "(CASE WHEN pg_catalog.jsonb_typeof(r.payload) OPERATOR(pg_catalog.=) 'object' THEN r.payload "
    "ELSE pg_catalog.jsonb_build_object('value', r.payload) END)::pg_catalog.text"
)


def _event_columns(payload: str = _PAYLOAD_TEXT) -> str:
    """SQL: an outbox row ``r`` as an event, with ``payload`` as its payload's column (NULL: not rendered).

    Columns: id, txid (int8: psycopg2 has no type for xid8), channel, the
    payload as text, whether it is a row event, and its table (schema, name)
    as the payload says.
    """
    return (
        "r.id, r.txid::pg_catalog.text::pg_catalog.int8, r.channel, "
        + payload
        + ", "
        + _ROW_EVENT_CHECK
        + ", r.payload OPERATOR(pg_catalog.->>) 'table_schema', "
        "r.payload OPERATOR(pg_catalog.->>) 'table_name'"
    )


_EVENT_COLUMNS = _event_columns()

#: SQL, of an unread row ``e``: a table field of its payload as a group member looks the
#: table up ("" if absent). One definition for the tables a member learns ahead
#: (:attr:`OutboxSql.tables`) and the key map lookup of its reads (:meth:`OutboxSql.own`).
_TABLE_FIELD = "COALESCE(e.payload OPERATOR(pg_catalog.->>) '{0}', '')"
#: SQL: the unread row ``e`` is a row event (as :data:`_ROW_EVENT_CHECK` for ``r``).
_E_IS_ROW_EVENT = jsonb_check_sql("e.payload", ROW, _ROW_EVENT_FIELDS)

#: SQL: the separator of the parts of a partition key (U+001F, unit separator).
_SEPARATOR = "pg_catalog.chr(31)"


def _partition_key(width: int) -> str:
    """SQL, text: a row's partition key: schema, table and key values, joined by U+001F.

    A value is the payload's text of it (``->>``: a string's characters, a
    number as sent); a missing column or JSON null is left out (``concat_ws``
    skips NULLs), as are the columns past the table's own key (``cols ->> i`` is
    NULL), so a row's key does not depend on other tables' key widths. Two
    different keys may give the same text (a separator in a value, a null):
    they share a partition, as hash collisions do; one row's key is always the same.
    """
    values = "".join(
        f", k.d OPERATOR(pg_catalog.->>) (k.cols OPERATOR(pg_catalog.->>) {i})" for i in range(width)
    )
    return f"pg_catalog.concat_ws({_SEPARATOR}, k.s, k.t{values})"


class OutboxSql:
    """The statements of one consumer of one library schema (quoted once, reused)."""

    def __init__(self, schema: str) -> None:
        events = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("events"))
        consumers = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("consumers"))
        dead = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("dead_letters"))
        #: Params: last txid (text), last id, most rows, byte budget.
        self.read = sql.SQL(
            # At most %s rows, and no more bytes than the read budget (counted as stored,
            # without reading the values: always at least one row), so a few huge rows
            # cannot fill the process's memory. "upto" (bytes up to and with the row)
            # tells a batch the budget cut from the end.
            "SELECT " + _EVENT_COLUMNS + ", r.upto "
            # The LIMIT is innermost: a window function of the same level would see every
            # unread row (a sort of the whole backlog per read).
            "FROM (SELECT l.*, pg_catalog.sum(pg_catalog.pg_column_size(l.payload)) "
            "OVER (ORDER BY l.txid, l.id ROWS UNBOUNDED PRECEDING) AS upto "
            "FROM (SELECT e.id, e.txid, e.channel, e.payload FROM {events} AS e "
            "WHERE " + _UNREAD + " ORDER BY e.txid, e.id LIMIT %s) AS l) AS r "
            "WHERE r.upto OPERATOR(pg_catalog.-) pg_catalog.pg_column_size(r.payload) "
            "OPERATOR(pg_catalog.<) %s::pg_catalog.int8 "
            "ORDER BY r.txid, r.id"
        ).format(events=events)
        self._events = events
        self._prepared_own: dict[int, Prepared] = {}
        #: :attr:`read`, prepared on the connections it runs on.
        self.prepared_read = Prepared(self.read)
        #: Params: last txid (text), last id, most rows. The tables (schema, name) of the row
        #: events among the next unread rows, as :meth:`own` reads them: what a group member
        #: looks up before its first read (much cheaper than an :meth:`own` pass finding them).
        self.tables = Prepared(
            sql.SQL(
                "SELECT DISTINCT "
                + _TABLE_FIELD.format("table_schema")
                + ", "
                + _TABLE_FIELD.format("table_name")
                + " FROM (SELECT e.payload FROM {events} AS e WHERE "
                + _UNREAD
                + " ORDER BY e.txid, e.id LIMIT %s) AS e WHERE "
                + _E_IS_ROW_EVENT
            ).format(events=events)
        )
        #: Params: txid (text), id, consumer, txid, id. Never moves a position backwards.
        self.store = sql.SQL(
            "UPDATE {} SET last_txid = %s::pg_catalog.xid8, last_id = %s, updated_at = pg_catalog.now() "
            "WHERE name OPERATOR(pg_catalog.=) %s::pg_catalog.text "
            "AND (last_txid, last_id) OPERATOR(pg_catalog.<) (%s::pg_catalog.xid8, %s::pg_catalog.int8)"
        ).format(consumers)
        #: Params: consumer, txid (text), id.
        self.register = sql.SQL(
            "INSERT INTO {} (name, last_txid, last_id) VALUES (%s, %s::pg_catalog.xid8, %s) "
            "ON CONFLICT (name) DO NOTHING"
        ).format(consumers)
        #: Params: consumer.
        self.position = sql.SQL(
            "SELECT last_txid::pg_catalog.text, last_id FROM {} "
            "WHERE name OPERATOR(pg_catalog.=) %s::pg_catalog.text"
        ).format(consumers)
        #: No params: the oldest transaction still running (where "latest" starts).
        self.xmin = sql.SQL(
            "SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::pg_catalog.text"
        )
        #: Params: consumer, event id, txid (text), channel, payload (JSON text), error, attempts.
        self.dead_letter = sql.SQL(
            "INSERT INTO {} (consumer, event_id, txid, channel, payload, error, attempts) "
            "VALUES (%s, %s, %s::pg_catalog.xid8, %s, %s::pg_catalog.jsonb, %s, %s) "
            "ON CONFLICT (consumer, event_id) DO UPDATE SET error = EXCLUDED.error, "
            "attempts = EXCLUDED.attempts, failed_at = pg_catalog.now()"
        ).format(dead)
        #: Params: most rows. Deletes what every registered consumer has passed.
        self.delete_acknowledged = sql.SQL(
            "WITH slowest AS (SELECT c.last_txid, c.last_id FROM {consumers} c "
            "ORDER BY c.last_txid, c.last_id LIMIT 1), "
            "doomed AS (SELECT e.id FROM {events} e, slowest s "
            "WHERE (e.txid, e.id) OPERATOR(pg_catalog.<=) (s.last_txid, s.last_id) "
            "ORDER BY e.txid, e.id LIMIT %s) "
            "DELETE FROM {events} e USING doomed WHERE e.id OPERATOR(pg_catalog.=) doomed.id"
        ).format(consumers=consumers, events=events)

    def prepared_own(self, width: int) -> Prepared:
        """:meth:`own`, prepared on the connections it runs on."""
        prepared = self._prepared_own.get(width)
        if prepared is None:
            prepared = self._prepared_own[width] = Prepared(self.own(width))
        return prepared

    def own(self, width: int) -> sql.Composed:
        """A group member's read: the unread rows of its own partitions (keys of ``width`` columns at most).

        Params: byte budget, the partitions wanted (int4[]), the partition count,
        the key columns known (jsonb: schema -> table -> [column, ...]; a keyless
        table: []), last txid (text), last id, most rows looked at.

        The server computes each unread row's partition (:mod:`.partition`
        defines it) and renders only the member's own rows, as :attr:`read` gives
        them (without "upto"), followed by: the partition; whether the row is
        the member's and within the byte budget ("own"; the rows returned for
        another reason are not, and have no payload); the stored bytes of the
        member's rows up to this one (the last row's, compared with the last own
        row's, says whether the budget cut the read); how many rows were looked at up to this one;
        whether this is the last row looked at (returned for its position). A
        row whose table is not in the key columns has partition -1 and is
        returned: look its table up, then read again.
        """
        table = _TABLE_FIELD
        key = f"pg_catalog.convert_to({_partition_key(width)}, 'UTF8')"
        return sql.SQL(
            # Only the member's own rows are rendered: a row returned for its table (to look
            # it up) or its position has no payload, whatever its size.
            "SELECT "
            + _event_columns(f"CASE WHEN x.own THEN {_PAYLOAD_TEXT} END")
            + ", x.part, x.own, x.upto, x.rn, x.last "
            # The window sees narrow rows (no payload): rows are rendered only if returned.
            "FROM (SELECT w.*, w.mine AND w.upto OPERATOR(pg_catalog.-) w.size "
            "OPERATOR(pg_catalog.<) %s::pg_catalog.int8 AS own "
            "FROM (SELECT m.id, m.txid, m.part, m.mine, m.size, "
            # Bytes of the member's rows up to this one: the budget counts only those.
            "COALESCE(pg_catalog.sum(m.size) FILTER (WHERE m.mine) OVER w, 0) AS upto, "
            "pg_catalog.row_number() OVER w AS rn, pg_catalog.lead(m.id) OVER w IS NULL AS last "
            "FROM (SELECT p.*, p.part OPERATOR(pg_catalog.=) ANY (%s::pg_catalog.int4[]) AS mine "
            "FROM (SELECT k.id, k.txid, k.size, "
            "CASE WHEN NOT k.is_row THEN 0 WHEN k.cols IS NULL THEN -1 "
            "ELSE pg_catalog.mod(('x' OPERATOR(pg_catalog.||) pg_catalog.encode(pg_catalog.substr("
            f"pg_catalog.sha256({key}), 1, 4), 'hex'))::pg_catalog.bit(32)::pg_catalog.int8, "
            "%s::pg_catalog.int8)::pg_catalog.int4 END AS part "
            "FROM (SELECT e.id, e.txid, pg_catalog.pg_column_size(e.payload) AS size, "
            + _E_IS_ROW_EVENT
            + " AS is_row, "
            + table.format("table_schema")
            + " AS s, "
            + table.format("table_name")
            + " AS t, "
            "CASE WHEN e.payload OPERATOR(pg_catalog.->>) 'method' OPERATOR(pg_catalog.=) 'DELETE' "
            "THEN e.payload OPERATOR(pg_catalog.->) 'old_data' "
            "ELSE e.payload OPERATOR(pg_catalog.->) 'new_data' END AS d, "
            "%s::pg_catalog.jsonb OPERATOR(pg_catalog.->) "
            + table.format("table_schema")
            + " OPERATOR(pg_catalog.->) "
            + table.format("table_name")
            + " AS cols FROM {events} AS e WHERE "
            + _UNREAD
            # OFFSET 0: the partition computed once per row (the planner would copy its
            # expression into every use above).
            + " ORDER BY e.txid, e.id LIMIT %s) AS k OFFSET 0) AS p) AS m "
            "WINDOW w AS (ORDER BY m.txid, m.id ROWS UNBOUNDED PRECEDING)) AS w) AS x "
            "JOIN {events} AS r ON r.id OPERATOR(pg_catalog.=) x.id "
            "WHERE x.own OR x.part OPERATOR(pg_catalog.=) -1 OR x.last "
            "ORDER BY x.txid, x.id"
        ).format(events=self._events)


def make_events(
    rows: list[Any], source: str, converter: Callable[[Table], tuple[bool, RowConverter | None]]
) -> tuple[list[Event], list[Table]]:
    """The events of rows read by :attr:`OutboxSql.read` (or ``own``), each with its position.

    A row event gets its table's value converter: ``converter(table)`` says
    whether the table's types are known, and the converter (asked once per
    table per call). Returns the events and the tables whose types are not
    known (their events are untyped: look them up, then :func:`type_events`).
    One pass per row: this runs for every event a durable stream delivers.
    """
    events: list[Event] = []
    append = events.append
    converters: dict[Table, RowConverter | None] = {}
    missing: list[Table] = []
    event: Event
    convert: RowConverter | None
    for row in rows:
        event_id, txid, channel, stored, is_row_event, schema, name = row[:7]
        # The stored object's text (jsonb's: "{}" or "{...}") with the position added; a key
        # "id" or "txid" a hand-written row had is overridden (a JSON parser keeps the last).
        if stored == "{}":
            payload = f'{{"id": {event_id}, "txid": {txid}}}'
        else:
            payload = f'{stored[:-1]}, "id": {event_id}, "txid": {txid}}}'
        if is_row_event:
            event = _new(RowChange, (channel, payload, 0, source))
            table = (schema, name)
            convert = converters.get(table, _UNKNOWN)
            if convert is _UNKNOWN:
                known, convert = converter(table)
                if known:
                    converters[table] = convert
                else:
                    missing.append(table)
                    converters[table] = convert = None
        else:
            # A row written by hand, or another format: set aside (and logged, at a limited
            # rate), never mistaken for a change. It keeps its position: acknowledged like
            # any event, moved to the dead letters by DurableWorker.
            SET_ASIDE.note(channel, payload, "an outbox row that is not a row event of the trigger's format")
            event = _new(OutboxNotification, (channel, payload, 0, source))
            convert = None
        attributes = event.__dict__
        # Known without parsing the payload: acknowledging needs it for every event.
        attributes["_position"] = (txid, event_id)
        if convert is not None:
            attributes["_row_types"] = convert
        append(event)
    return events, missing


def type_events(
    events: list[Event],
    rows: list[Any],
    tables: list[Table],
    converter: Callable[[Table], tuple[bool, RowConverter | None]],
) -> None:
    """Give the row events of ``tables`` their converters (the tables' types were looked up).

    ``events`` are :func:`make_events`' of ``rows``.
    """
    converters = {table: converter(table)[1] for table in tables}
    for event, row in zip(events, rows, strict=True):
        if row[4]:
            convert = converters.get((row[5], row[6]))
            if convert is not None:
                event.__dict__["_row_types"] = convert


def stored_payload(text: str) -> str:
    """The payload as the outbox stored it: the reader's text without the ``id``/``txid`` it added."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return json.dumps({"unparsed_payload": text})
    if isinstance(data, dict):
        data.pop("id", None)
        data.pop("txid", None)
    return json.dumps(data)
