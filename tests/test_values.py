"""One value model on every path (issue 16): events' rows equal psycopg2's SELECT of them.

A table with a column of each type: the row is read back with psycopg2 and
received as an event through a NOTIFY trigger, the durable outbox and a
change stream; every column compares equal, with the same Python type.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, assert_never

import psycopg2
import psycopg2.extras
import pytest
from sqlalchemy.engine import Engine

from trio_pgevents import (
    AnyEvent,
    Installer,
    Notification,
    Overflow,
    RowChange,
    SchemaChange,
    StreamGap,
    decode_trigger_payload,
    open_change_stream,
    open_durable_stream,
    open_event_stream,
)
from trio_pgevents._values import parse_array, text_converter

from .conftest import Names, Query, take

COLUMNS = """
    id int PRIMARY KEY, i2 int2, i8 int8, o oid, n numeric, f4 float4, f8 float8, b bool,
    t text, vc varchar(20), c char(5), nm name, j json, jb jsonb, tstz timestamptz,
    ts timestamp, d date, tm time, u uuid, by bytea, ai int4[], at text[], an numeric[],
    au uuid[], a2 int4[][], dom positive_amount
"""
ROW = """
    1, 32000, 9007199254740993, 4000000000, 12345678901234567.89, 1.5, 0.1, true,
    'héllo "w"', 'var', 'ab', 'nm', '{"x": 1.5, "y": [1, 2]}', '{"x": 1.25, "z": null}',
    '2026-11-30 10:11:12.123456+02', '2026-11-30 10:11:12.5', '2026-11-30', '23:59:58.25',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', '{1,NULL,3}', '{"a b","c,d",NULL,"NULL"}',
    '{1.10,2}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '{{1,2},{3,4}}', 10.50
"""


def selected(dsn: str, table: str) -> dict[str, Any]:
    conn = psycopg2.connect(dsn)
    try:
        psycopg2.extras.register_uuid(conn_or_curs=conn)  # type: ignore[no-untyped-call]
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
            cursor.execute(f"SELECT * FROM {table} WHERE id = 1")
            found = cursor.fetchone()
            assert found is not None
            row = dict(found)
    finally:
        conn.close()
    row["by"] = bytes(row["by"])  # psycopg2 gives a memoryview
    return row


def assert_same(event_row: dict[str, Any], select_row: dict[str, Any]) -> None:
    assert set(event_row) == set(select_row)
    for column, expected in select_row.items():
        got = event_row[column]
        assert got == expected, (column, got, expected)
        assert type(got) is type(expected) or column == "tstz", (column, type(got), type(expected))
    assert event_row["n"] == Decimal("12345678901234567.89")  # every digit
    assert event_row["tstz"].tzinfo is UTC
    assert event_row["tstz"] == datetime(2026, 11, 30, 8, 11, 12, 123456, tzinfo=UTC)


@pytest.fixture
async def typed_table(query: Query, unique: Callable[[str], str]) -> str:
    table = unique("typed")
    await query(
        "DO $$ BEGIN CREATE DOMAIN positive_amount AS numeric CHECK (VALUE > 0); "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    await query(f"CREATE TABLE {table} ({COLUMNS})")
    return table


async def test_notify_path_rows_equal_select(
    pg_url: str, pg_dsn: str, query: Query, typed_table: str, unique: Callable[[str], str]
) -> None:
    channel, schema = unique("typedch"), unique("typeds")
    installer = Installer(pg_url, schema=schema, channel=channel)
    installer.watch_table(typed_table)
    try:
        async with open_event_stream(pg_url, [channel], decoders={channel: decode_trigger_payload}) as events:
            await query(f"INSERT INTO {typed_table} VALUES ({ROW})")
            (event,) = await take(events, 1, only=RowChange)
        assert event.new_data is not None
        assert_same(event.new_data, selected(pg_dsn, typed_table))
        assert event.payload.startswith("{")  # the raw text the server sent, unchanged
    finally:
        installer.uninstall()


async def test_notify_path_old_and_new_rows_equal_select(
    pg_url: str, pg_dsn: str, query: Query, typed_table: str, unique: Callable[[str], str]
) -> None:
    # UPDATE: new_data is typed on delivery, old_data when read; DELETE: old_data on delivery.
    channel, schema = unique("typeduch"), unique("typedu")
    await query(f"INSERT INTO {typed_table} VALUES ({ROW})")
    before = selected(pg_dsn, typed_table)
    installer = Installer(pg_url, schema=schema, channel=channel)
    installer.watch_table(typed_table)
    try:
        async with open_event_stream(pg_url, [channel], decoders={channel: decode_trigger_payload}) as events:
            await query(f"UPDATE {typed_table} SET n = n + 1, tstz = tstz + interval '1 hour' WHERE id = 1")
            (update,) = await take(events, 1, only=RowChange)
            after = selected(pg_dsn, typed_table)
            await query(f"DELETE FROM {typed_table} WHERE id = 1")
            (delete,) = await take(events, 1, only=RowChange)
        assert update.new_data is not None
        assert update.old_data is not None
        assert_same(update.old_data, before)
        assert update.new_data["n"] == Decimal("12345678901234568.89")
        assert all(update.new_data[c] == after[c] for c in after)
        assert delete.new_data is None
        assert delete.old_data is not None
        assert all(delete.old_data[c] == after[c] for c in after)
        assert type(delete.old_data["n"]) is Decimal
    finally:
        installer.uninstall()


async def test_durable_path_rows_equal_select(
    pg_url: str, pg_dsn: str, query: Query, typed_table: str, unique: Callable[[str], str]
) -> None:
    channel, schema = unique("typeddch"), unique("typedd")
    installer = Installer(pg_url, schema=schema, channel=channel)
    installer.watch_table(typed_table, durable=True)
    try:
        await query(f"INSERT INTO {typed_table} VALUES ({ROW})")
        async with open_durable_stream(pg_url, "typed", schema=schema, channel=channel) as events:
            (event,) = await take(events, 1, only=RowChange)
        assert event.new_data is not None
        assert_same(event.new_data, selected(pg_dsn, typed_table))
    finally:
        installer.uninstall()


async def test_change_stream_rows_equal_select(
    pg_engine: Engine, pg_dsn: str, query: Query, typed_table: str, cdc_names: Callable[..., Names]
) -> None:
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[typed_table]
    ) as changes:
        await query(f"INSERT INTO {typed_table} VALUES ({ROW})")
        (event,) = await take(changes, 1, only=RowChange)
    assert event.new_data is not None
    assert_same(event.new_data, selected(pg_dsn, typed_table))


async def test_values_python_cannot_hold_stay_text_on_every_path(
    pg_url: str,
    query: Query,
    typed_table: str,
    unique: Callable[[str], str],
    pg_engine: Engine,
    cdc_names: Callable[..., Names],
) -> None:
    channel, schema = unique("typedxch"), unique("typedx")
    installer = Installer(pg_url, schema=schema, channel=channel)
    installer.watch_table(typed_table)
    slot, publication = cdc_names()
    special = "2, 'NaN', 'Infinity', 'infinity', '-infinity', '0044-03-15 BC', '24:00:00'"
    try:
        async with (
            open_event_stream(pg_url, [channel], decoders={channel: decode_trigger_payload}) as events,
            open_change_stream(
                pg_engine, slot=slot, publication=publication, tables=[typed_table]
            ) as changes,
        ):
            await query(f"INSERT INTO {typed_table} (id, n, f8, tstz, ts, d, tm) VALUES ({special})")
            rows = [(await take(events, 1, only=RowChange))[0], (await take(changes, 1, only=RowChange))[0]]
        for event in rows:
            new = event.new_data
            assert new is not None
            assert new["n"].is_nan()
            assert new["f8"] == float("inf")
            assert new["tstz"] == "infinity"
            assert new["ts"] == "-infinity"
            assert new["d"] == "0044-03-15 BC"
            assert new["tm"] == "24:00:00"
    finally:
        installer.uninstall()


def test_array_literals() -> None:
    assert parse_array('{1,2,NULL,"3"}', int) == [1, 2, None, 3]
    assert parse_array('{{"a\\\\b","c\\"d"},{NULL,"NULL"}}', None) == [["a\\b", 'c"d'], [None, "NULL"]]
    assert parse_array("[0:1]={1,2}", int) == [1, 2]
    assert parse_array("{}", int) == []
    convert = text_converter(2951)  # uuid[]
    assert convert is not None
    assert convert("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}") == [
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    ]
    assert text_converter(1184) is not None
    assert text_converter(1184)("2026-11-30 10:00:00+02") == datetime(2026, 11, 30, 8, tzinfo=UTC)  # type: ignore[misc]
    assert date(2026, 1, 1) == text_converter(1082)("2026-01-01")  # type: ignore[misc]
    assert time(1, 2) == text_converter(1083)("01:02:00")  # type: ignore[misc]


async def test_a_column_added_later_is_typed_too(
    pg_url: str, query: Query, unique: Callable[[str], str]
) -> None:
    table, channel, schema = unique("grow"), unique("growch"), unique("grows")
    await query(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    installer = Installer(pg_url, schema=schema, channel=channel)
    installer.watch_table(table)
    try:
        async with open_event_stream(pg_url, [channel], decoders={channel: decode_trigger_payload}) as events:
            await query(f"INSERT INTO {table} VALUES (1)")
            await take(events, 1, only=RowChange)
            await query(f"ALTER TABLE {table} ADD COLUMN amount numeric")
            await query(f"INSERT INTO {table} VALUES (2, 1.10)")
            (event,) = await take(events, 1, only=RowChange)
        assert event.new_data == {"id": 2, "amount": Decimal("1.10")}
        assert type(event.new_data["amount"]) is Decimal
    finally:
        installer.uninstall()


def _kind(event: AnyEvent) -> str:
    # mypy --strict checks this match is exhaustive (assert_never): AnyEvent is every event type.
    match event:
        case RowChange():
            return f"row {event.method}"
        case SchemaChange():
            return "ddl"
        case StreamGap():
            return "gap"
        case Overflow():
            return "overflow"
        case Notification():
            return "notification"
        case _:
            assert_never(event)


def test_any_event_matches_exhaustively() -> None:
    row = RowChange.from_data("c", {"table_name": "t", "method": "READ", "new_data": {"a": 1}}, 0, "s")
    assert _kind(row) == "row READ"
    assert _kind(Notification("c", "p", 1, "s")) == "notification"
    assert _kind(Overflow("s", 3)) == "overflow"
