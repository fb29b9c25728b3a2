"""The outbox from the reader's side: its SQL, and rows turned into events (no I/O).

The read statement takes rows in ``(txid, id)`` order, only below the
snapshot's ``xmin`` (:mod:`.follower` says why that is correct).

Every function, operator and type in this SQL is schema-qualified: the
reader runs no code another role put on its connection's search_path.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg2 import sql

from .._events import Event, Notification, RowChange
from .._payload import ROW, SET_ASIDE, jsonb_check_sql
from .prepared import Prepared

__all__ = ["OutboxNotification", "OutboxSql", "Position", "make_event", "position_of", "stored_payload"]

#: A position in the events table: ``(txid, id)``; events after it are unread.
Position = tuple[int, int]

_new = tuple.__new__


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
_ROW_EVENT_CHECK = jsonb_check_sql("r.payload", ROW, ("table_name", "method", "old_data", "new_data"))


#: The rows still to read after a position: params last txid (text), last id.
_UNREAD = (
    "(e.txid, e.id) OPERATOR(pg_catalog.>) (%s::pg_catalog.xid8, %s::pg_catalog.int8) "
    "AND e.txid OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())"
)

#: An outbox row ``r`` as an event: id, txid (text: psycopg2 has no type for xid8), channel,
#: the payload as text (an object: another JSON value comes as ``{"value": ...}``), whether
#: it is a row event, and its table (schema, name) as the payload says. :func:`make_event`
#: adds "id" and "txid" to the text (merging them in with jsonb operators here cost the
#: server more than reading the row: 2.9 of 5.5 us per row).
_EVENT_COLUMNS = (
    "r.id, r.txid::pg_catalog.text, r.channel, "
    "(CASE WHEN pg_catalog.jsonb_typeof(r.payload) OPERATOR(pg_catalog.=) 'object' THEN r.payload "
    "ELSE pg_catalog.jsonb_build_object('value', r.payload) END)::pg_catalog.text, "
    + _ROW_EVENT_CHECK
    + ", r.payload OPERATOR(pg_catalog.->>) 'table_schema', "
    "r.payload OPERATOR(pg_catalog.->>) 'table_name'"
)

#: A text field of the payload as RowChange reads it: "" unless it is a JSON string.
_TEXT_FIELD = (
    "CASE WHEN pg_catalog.jsonb_typeof(r.payload OPERATOR(pg_catalog.->) '{0}') "
    "OPERATOR(pg_catalog.=) 'string' THEN r.payload OPERATOR(pg_catalog.->>) '{0}' ELSE '' END"
)


def _key_value(index: int) -> str:
    """SQL: the text of the row's ``index``-th key column value (NULL if not a JSON string or number).

    Another type's text, as Python would write it, differs from the server's
    (``true``/``True``), so the member parses those rows itself.
    """
    value = f"(r.d OPERATOR(pg_catalog.->) (r.cols OPERATOR(pg_catalog.->>) {index}))"
    return (
        f"CASE WHEN pg_catalog.jsonb_typeof({value}) OPERATOR(pg_catalog.=) ANY "
        f"('{{{{string,number}}}}'::pg_catalog.text[]) "
        f"THEN {value} OPERATOR(pg_catalog.#>>) '{{{{}}}}'::pg_catalog.text[] END"
    )


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
        self._prepared_candidates: dict[int, Prepared] = {}
        #: Params: ids (int8[]). The rows of :attr:`candidates` a member keeps, as :attr:`read`
        #: gives them (without "upto").
        self.fetch = sql.SQL(
            "SELECT " + _EVENT_COLUMNS + " FROM {events} AS r "
            "WHERE r.id OPERATOR(pg_catalog.=) ANY (%s::pg_catalog.int8[]) ORDER BY r.txid, r.id"
        ).format(events=events)
        #: :attr:`read` and :attr:`fetch`, prepared on the connections they run on.
        self.prepared_read = Prepared(self.read)
        self.prepared_fetch = Prepared(self.fetch)
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

    def prepared_candidates(self, width: int) -> Prepared:
        """:meth:`candidates`, prepared on the connections it runs on."""
        prepared = self._prepared_candidates.get(width)
        if prepared is None:
            prepared = self._prepared_candidates[width] = Prepared(self.candidates(width))
        return prepared

    def candidates(self, width: int) -> sql.Composed:
        """A group member's first read: the unread rows without their payloads.

        Params: key columns (jsonb: schema -> table -> [column, ...]), last txid
        (text), last id, most rows. Gives id, txid, stored size, whether it is a
        row event, the table (schema, name) as :class:`RowChange` reads it, and
        the text of its first ``width`` key values (of the old row for a
        DELETE): what says which partition a row belongs to
        (:mod:`.partition`). Only the rows of the member's own partitions are
        then fetched (:attr:`fetch`): the server renders no payload for another
        member's rows.
        """
        values = ", ".join(_key_value(i) for i in range(width)) or "NULL"
        return sql.SQL(
            "SELECT r.id, r.txid::pg_catalog.text, pg_catalog.pg_column_size(r.payload), "
            + _ROW_EVENT_CHECK
            + ", "
            + _TEXT_FIELD.format("table_schema")
            + ", "
            + _TEXT_FIELD.format("table_name")
            + ", ARRAY["
            + values
            + "]::pg_catalog.text[] "
            "FROM (SELECT e.id, e.txid, e.payload, "
            "CASE WHEN e.payload OPERATOR(pg_catalog.->>) 'method' OPERATOR(pg_catalog.=) 'DELETE' "
            "THEN e.payload OPERATOR(pg_catalog.->) 'old_data' "
            "ELSE e.payload OPERATOR(pg_catalog.->) 'new_data' END AS d, "
            "%s::pg_catalog.jsonb OPERATOR(pg_catalog.->) "
            "(e.payload OPERATOR(pg_catalog.->>) 'table_schema') "
            "OPERATOR(pg_catalog.->) (e.payload OPERATOR(pg_catalog.->>) 'table_name') AS cols "
            "FROM {events} AS e WHERE " + _UNREAD + " ORDER BY e.txid, e.id LIMIT %s) AS r "
            "ORDER BY r.txid, r.id"
        ).format(events=self._events)


def make_event(row: tuple[Any, ...], source: str) -> Event:
    """The event of one row read by :attr:`OutboxSql.read` (its position attached)."""
    event_id, txid_text, channel, stored, is_row_event = row[:5]
    # The stored object's text (jsonb's: "{}" or "{...}") with the position added; a key
    # "id" or "txid" a hand-written row had is overridden (a JSON parser keeps the last).
    position = f'"id": {event_id}, "txid": {txid_text}}}'
    payload = "{" + position if stored == "{}" else f"{stored[:-1]}, {position}"
    event: Event
    if is_row_event:
        event = _new(RowChange, (channel, payload, 0, source))
    else:
        # A row written by hand, or another format: set aside (and logged, at a limited
        # rate), never mistaken for a change. It keeps its position: acknowledged like any
        # event, moved to the dead letters by DurableWorker.
        SET_ASIDE.note(channel, payload, "an outbox row that is not a row event of the trigger's format")
        event = _new(OutboxNotification, (channel, payload, 0, source))
    # Known without parsing the payload: acknowledging needs it for every event.
    event.__dict__["_position"] = (int(txid_text), event_id)
    return event


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
