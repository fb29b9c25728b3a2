"""Change data capture from logical replication (issue 9), against a real Postgres."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg2
import pytest
import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

import trio_pgevents
from trio_pgevents import (
    ConfigurationError,
    ReplicationError,
    RowChange,
    StreamGap,
    TrioPgEventsError,
    change_stream_status,
    drop_change_stream,
    open_change_stream,
    set_replica_identity,
)
from trio_pgevents._cdc.pgoutput import PgOutputDecoder, ack_position, format_lsn, parse_lsn, widen_xid
from trio_pgevents.testing import EmbeddedPostgres

from .conftest import Query, drain, run_sql, take


@pytest.fixture
def table(query: Query, unique: Callable[[str], str]) -> Callable[..., Any]:
    """``name = await table("cols")``: create a table in public (dropped by name uniqueness)."""

    async def make(columns: str = "id int PRIMARY KEY, name text") -> str:
        name = unique("cdc_t")
        await query(f"CREATE TABLE public.{name} ({columns})")
        return name

    return make


def summary(events: list[Any]) -> list[tuple[Any, ...]]:
    return [(e.method, e.table_name, e.old_data, e.new_data) for e in events]


# ---------------------------------------------------------------------------
# public names
# ---------------------------------------------------------------------------


async def test_public_names() -> None:
    names = {
        "open_change_stream",
        "ChangeStream",
        "drop_change_stream",
        "change_stream_status",
        "ChangeStreamStatus",
        "set_replica_identity",
    }
    for name in names:
        obj = getattr(trio_pgevents, name)
        assert obj.__module__.startswith("trio_pgevents._cdc."), name
        assert obj.__doc__, name
    assert issubclass(ReplicationError, TrioPgEventsError)


# ---------------------------------------------------------------------------
# the pure decoder, on bytes captured from the real server
# ---------------------------------------------------------------------------


def captured_messages(dsn: str, slot: str, publication: str, statements: list[str]) -> list[bytes]:
    """Run ``statements`` (one transaction each) and return pgoutput's messages for them."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            # The SQL decoding interface uses this session's settings; the stream
            # sets the same ones on its replication connection.
            cursor.execute("SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3")
            cursor.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            for statement in statements:
                cursor.execute(statement)
            cursor.execute(
                "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, "
                "'proto_version', '1', 'publication_names', %s)",
                (slot, publication),
            )
            return [bytes(row[0]) for row in cursor.fetchall()]
    finally:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.close()


async def captured_insert(
    pg_dsn: str, query: Query, unique: Callable[[str], str], prefix: str, columns: str, values: str
) -> tuple[str, list[bytes]]:
    """Create and publish a table of ``columns``, insert ``values`` into it: (its name, the messages)."""
    name = unique(prefix)
    publication = unique("cdc_pub")
    slot = unique("cdc_slot")
    await query(f"CREATE TABLE {name} ({columns})")
    await query(f"CREATE PUBLICATION {publication} FOR TABLE {name}")
    try:
        insert = f"INSERT INTO {name} VALUES {values}"
        messages = await trio.to_thread.run_sync(captured_messages, pg_dsn, slot, publication, [insert])
    finally:
        await query(f"DROP PUBLICATION {publication}")
    return name, messages


def decode(messages: list[bytes]) -> list[RowChange]:
    decoder = PgOutputDecoder("chan", "src")
    out: list[Any] = []
    for message in messages:
        decoder.feed(message, out)
    return out


async def test_decoder_converts_types(pg_dsn: str, query: Query, unique: Callable[[str], str]) -> None:
    name, messages = await captured_insert(
        pg_dsn,
        query,
        unique,
        "cdc_types",
        "id bigint PRIMARY KEY, i2 smallint, i4 int, num numeric, nan numeric, "
        "f8 float8, f4 float4, ok bool, no bool, t text, vc varchar(10), ch char(3), js json, jb jsonb, "
        "ts timestamp, tz timestamptz, d date, tm time, inf timestamptz, u uuid, arr int[], "
        "nothing text, ba bytea",
        "(9007199254740993, -32768, 2147483647, 12345678901234567890.0001, "
        "'NaN', 0.1, 1.5, true, false, 'héllo ''q''', 'abc', 'x', '[1, {\"a\": null}]', "
        "'{\"k\": [1, 2.5, \"s\"]}', '2024-02-29 23:59:59.123456', '2024-01-02 03:04:05.5+02', "
        "'2000-01-01', '12:34:56.789', 'infinity', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
        "'{1,2,NULL}', NULL, '\\x00ff')",
    )
    [event] = decode(messages)
    assert event.method == "INSERT"
    assert (event.table_schema, event.table_name) == ("public", name)
    assert event.old_data is None
    row = event.new_data
    assert row is not None
    expected = {
        "id": 9007199254740993,
        "i2": -32768,
        "i4": 2147483647,
        "num": Decimal("12345678901234567890.0001"),
        "f8": 0.1,
        "f4": 1.5,
        "ok": True,
        "no": False,
        "t": "héllo 'q'",
        "vc": "abc",
        "ch": "x  ",
        "js": [1, {"a": None}],
        "jb": {"k": [1, 2.5, "s"]},
        "ts": datetime(2024, 2, 29, 23, 59, 59, 123456),
        "tz": datetime(2024, 1, 2, 1, 4, 5, 500000, tzinfo=UTC),
        "d": date(2000, 1, 1),
        "tm": time(12, 34, 56, 789000),
        "inf": "infinity",
        "u": UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "arr": [1, 2, None],
        "nothing": None,
        "ba": b"\x00\xff",
    }
    for key, value in expected.items():
        assert row[key] == value, key
        assert type(row[key]) is type(value), key
    assert row["nan"].is_nan()
    assert isinstance(row["tz"], datetime)
    assert row["tz"].utcoffset() is not None
    # The pg_events keys are all there, plus lsn/txid/commit_time.
    assert set(event.data) >= {"table_schema", "table_name", "session_user", "method", "old_data", "new_data"}
    assert event.session_user is None
    assert event.query is None
    assert event.txid is not None
    assert event.txid > 0
    assert event.lsn is not None
    assert parse_lsn(event.lsn) > 0
    assert isinstance(event.data["commit_time"], datetime)
    # The payload is the data as JSON text (non-JSON types as strings).
    assert json.loads(event.payload)["new_data"]["i4"] == 2147483647


async def test_decoder_old_rows_and_toast(
    pg_engine: Engine, pg_dsn: str, query: Query, unique: Callable[[str], str]
) -> None:
    keyed = unique("cdc_key")
    full = unique("cdc_full")
    publication = unique("cdc_pub")
    slot = unique("cdc_slot")
    await query(f"CREATE TABLE {keyed} (a int, b int, v text, PRIMARY KEY (a, b))")
    await query(f"CREATE TABLE {full} (id int PRIMARY KEY, big text, n int)")
    await query(f"ALTER TABLE {full} ALTER big SET STORAGE EXTERNAL")  # TOASTed, uncompressed
    await query(f"CREATE PUBLICATION {publication} FOR TABLE {keyed}, {full}")
    await trio.to_thread.run_sync(set_replica_identity, pg_engine, full)
    big = "x" * 10000
    try:
        statements = [
            f"INSERT INTO {keyed} VALUES (1, 2, 'one'); INSERT INTO {full} VALUES (1, '{big}', 1)",
            f"UPDATE {keyed} SET v = 'uno' WHERE a = 1",  # key unchanged: old key from the new row
            f"UPDATE {keyed} SET b = 3 WHERE a = 1",  # key changed: old key sent
            f"UPDATE {full} SET n = 2",  # big unchanged (TOASTed, not resent): taken from the old row
            f"DELETE FROM {keyed}; DELETE FROM {full}",
            f"TRUNCATE {keyed}, {full}",
        ]
        messages = await trio.to_thread.run_sync(captured_messages, pg_dsn, slot, publication, statements)
    finally:
        await query(f"DROP PUBLICATION {publication}")
    events = decode(messages)
    assert summary(events) == [
        ("INSERT", keyed, None, {"a": 1, "b": 2, "v": "one"}),
        ("INSERT", full, None, {"id": 1, "big": big, "n": 1}),
        ("UPDATE", keyed, {"a": 1, "b": 2}, {"a": 1, "b": 2, "v": "uno"}),
        ("UPDATE", keyed, {"a": 1, "b": 2}, {"a": 1, "b": 3, "v": "uno"}),
        ("UPDATE", full, {"id": 1, "big": big, "n": 1}, {"id": 1, "big": big, "n": 2}),
        ("DELETE", keyed, {"a": 1, "b": 3}, None),
        ("DELETE", full, {"id": 1, "big": big, "n": 2}, None),
        ("TRUNCATE", keyed, None, None),
        ("TRUNCATE", full, None, None),
    ]
    # One transaction per statement, in order; changes of one transaction share lsn/txid.
    lsns = [parse_lsn(str(e.lsn)) for e in events]
    assert lsns == sorted(lsns)
    assert events[0].lsn == events[1].lsn
    assert events[0].txid == events[1].txid
    assert len({e.txid for e in events}) == 6
    assert events[-1].lsn == events[-2].lsn


async def test_decoder_rejects_rows_that_do_not_match_the_relation(
    pg_dsn: str, query: Query, unique: Callable[[str], str]
) -> None:
    name, messages = await captured_insert(
        pg_dsn, query, unique, "cdc_bad", "id int PRIMARY KEY, t text", "(1, 'a')"
    )
    assert [chr(m[0]) for m in messages] == ["B", "R", "I", "C"]
    assert decode(messages)[0].new_data == {"id": 1, "t": "a"}
    insert = bytearray(messages[2])
    assert insert[5:8] == b"N\x00\x02"  # 'N', then the column count
    insert[7] = 3
    with pytest.raises(ReplicationError, match=f"row of public.{name} does not match"):
        decode([messages[0], messages[1], bytes(insert)])
    with pytest.raises(ReplicationError, match="before its Relation message"):
        decode([messages[0], messages[2]])


async def test_insert_rows_are_decoded_on_first_access_and_never_raise(
    pg_dsn: str, query: Query, unique: Callable[[str], str]
) -> None:
    name, messages = await captured_insert(
        pg_dsn, query, unique, "cdc_lazy", "id int PRIMARY KEY, t text", "(1, 'a'), (2, 'b')"
    )
    first, second = decode(messages)
    # The acknowledgement position needs no decoding; the row is parsed when read.
    # (The event tuple holds the commit LSN as a number: its text is made when asked for.)
    assert ack_position(first) == first[4]
    assert "data" not in first.__dict__
    assert first.new_data == {"id": 1, "t": "a"}
    assert first.method == "INSERT"
    assert first.table_name == name
    assert first.old_data is None
    assert first.data["new_data"] is first.new_data  # data is built around the row read
    assert parse_lsn(first.data["lsn"]) == first[4]
    assert first.lsn == first.data["lsn"] == second.lsn  # one transaction
    assert "_build" not in first.__dict__
    assert second.data["new_data"] == {"id": 2, "t": "b"}  # through data first
    assert second.new_data == {"id": 2, "t": "b"}
    position = ack_position(second)
    assert position is not None
    assert position > second[4]
    # Malformed past the column count (a server never sends this): reading does not raise.
    insert = bytearray(messages[2])
    assert insert[8] == ord("t")
    insert[8] = ord("z")  # the first column's kind
    (bad,) = decode([messages[0], messages[1], bytes(insert)])
    assert bad.new_data == {}
    assert "malformed pgoutput row" in bad.data["error"]
    assert bad.table_name == name


async def test_lsn_text_round_trip() -> None:
    for value in (0, 0x16B3748, (0xAB << 32) | 0xCDEF0123, (1 << 64) - 1):
        assert parse_lsn(format_lsn(value)) == value
    assert format_lsn(0x16B3748) == "0/16B3748"
    assert format_lsn((1 << 32) | 0xA) == "1/A"
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn("12345")


async def test_decoder_rejects_unknown_message() -> None:
    with pytest.raises(ReplicationError, match="unexpected pgoutput message type 'Z'"):
        PgOutputDecoder("c", "s").feed(b"Z\x00", [])


# ---------------------------------------------------------------------------
# the stream
# ---------------------------------------------------------------------------


async def test_commit_order_values_and_types(
    pg_engine: Engine, pg_dsn: str, query: Query, table: Any, cdc_names: Any
) -> None:
    name = await table("id int PRIMARY KEY, name text, amount numeric(10,2), ok bool, at timestamptz")
    other = await table()
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name, other]
    ) as changes:
        assert changes.connected
        # Single-statement transactions.
        await query(f"INSERT INTO {name} VALUES (1, 'one', 1.50, true, '2024-05-06 07:08:09+00')")
        await query(f"UPDATE {name} SET name = 'uno', amount = amount * 2 WHERE id = 1")
        # A multi-statement transaction over two tables.
        await query(
            f"BEGIN; INSERT INTO {name} VALUES (2, 'two', NULL, false, NULL); "
            f"INSERT INTO {other} VALUES (10, 'x'); DELETE FROM {name} WHERE id = 1; "
            f"UPDATE {other} SET name = 'y'; COMMIT"
        )
        # Two interleaved transactions committed in reverse order of start.
        first = psycopg2.connect(pg_dsn)
        second = psycopg2.connect(pg_dsn)
        try:
            with first.cursor() as c1, second.cursor() as c2:
                c1.execute(f"INSERT INTO {name} VALUES (3, 'started first', 3, true, NULL)")
                c2.execute(f"INSERT INTO {name} VALUES (4, 'started second', 4, true, NULL)")
                c1.execute(f"INSERT INTO {other} VALUES (11, 'first again')")
                c2.execute(f"INSERT INTO {other} VALUES (12, 'second again')")
            second.commit()
            first.commit()
        finally:
            first.close()
            second.close()
        await query(f"TRUNCATE {name}")
        events = await take(changes, 11)
    assert all(isinstance(e, RowChange) for e in events)
    assert summary(events) == [
        (
            "INSERT",
            name,
            None,
            {
                "id": 1,
                "name": "one",
                "amount": Decimal("1.50"),
                "ok": True,
                "at": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
            },
        ),
        (
            "UPDATE",
            name,
            {"id": 1},
            {
                "id": 1,
                "name": "uno",
                "amount": Decimal("3.00"),
                "ok": True,
                "at": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
            },
        ),
        ("INSERT", name, None, {"id": 2, "name": "two", "amount": None, "ok": False, "at": None}),
        ("INSERT", other, None, {"id": 10, "name": "x"}),
        ("DELETE", name, {"id": 1}, None),
        ("UPDATE", other, {"id": 10}, {"id": 10, "name": "y"}),
        # The transaction that committed first comes first.
        (
            "INSERT",
            name,
            None,
            {"id": 4, "name": "started second", "amount": Decimal("4.00"), "ok": True, "at": None},
        ),
        ("INSERT", other, None, {"id": 12, "name": "second again"}),
        (
            "INSERT",
            name,
            None,
            {"id": 3, "name": "started first", "amount": Decimal("3.00"), "ok": True, "at": None},
        ),
        ("INSERT", other, None, {"id": 11, "name": "first again"}),
        ("TRUNCATE", name, None, None),
    ]
    assert type(events[0].new_data["amount"]) is Decimal
    assert len(set(events)) == len(events)  # distinct changes are distinct events
    commit_times = [e.data["commit_time"] for e in events]
    assert commit_times == sorted(commit_times)
    server_now = (await query("SELECT now()"))[0][0]
    assert all(abs((server_now - t).total_seconds()) < 60 for t in commit_times)
    assert all(t.utcoffset() is not None for t in commit_times)
    # Transactions: the multi-statement one shares one lsn and txid; lsn grows in commit order.
    groups = [events[0:1], events[1:2], events[2:6], events[6:8], events[8:10], events[10:11]]
    for group in groups:
        assert len({(e.lsn, e.txid) for e in group}) == 1
    lsns = [parse_lsn(g[0].lsn) for g in groups]
    assert lsns == sorted(lsns)
    assert len(set(lsns)) == len(lsns)
    # The reversed pair: the later-started transaction has the larger xid but committed first.
    assert events[6].txid > events[8].txid
    for event in events:
        assert event.channel == slot
        assert event.pid == 0
        assert event.source == pg_engine.url.render_as_string(hide_password=True)
        assert event.table_schema == "public"


async def test_schema_change_mid_stream(pg_engine: Engine, query: Query, table: Any, cdc_names: Any) -> None:
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        await query(f"INSERT INTO {name} VALUES (1, 'a')")
        await query(f"ALTER TABLE {name} ADD COLUMN amount numeric, DROP COLUMN name")
        await query(f"INSERT INTO {name} VALUES (2, 2.5)")
        first, second = await take(changes, 2)
    assert first.new_data == {"id": 1, "name": "a"}
    assert second.new_data == {"id": 2, "amount": Decimal("2.5")}


async def test_all_tables(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    keyless = await table("a int")
    name = await table()
    slot, publication = cdc_names()
    try:
        async with open_change_stream(pg_engine, slot=slot, publication=publication) as changes:
            assert f"public.{keyless}" in caplog.text  # its UPDATE/DELETE would now fail: said loudly
            assert f"public.{name}" not in caplog.text
            await query(f"INSERT INTO {name} VALUES (1, 'a')")
            [event] = await take(changes, 1)
            assert (event.table_name, event.new_data) == (name, {"id": 1, "name": "a"})
        # An existing FOR ALL TABLES publication is not reused for a table list.
        with pytest.raises(ReplicationError, match="FOR ALL TABLES"):
            async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]):
                pass
    finally:
        # Do not leave a publication that breaks UPDATE/DELETE on keyless tables.
        await trio.to_thread.run_sync(drop_change_stream, pg_engine, slot, publication)
        await query(f"DROP TABLE {keyless}")


async def test_batches_and_receive(pg_engine: Engine, query: Query, table: Any, cdc_names: Any) -> None:
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        await query(f"INSERT INTO {name} SELECT g, 'r' || g FROM generate_series(1, 5000) AS g")
        first = await changes.receive()
        assert isinstance(first, RowChange)
        assert first.new_data == {"id": 1, "name": "r1"}
        seen = [first.new_data["id"]]
        with trio.fail_after(30):
            async for batch in changes.batches():
                seen.extend(e.data["new_data"]["id"] for e in batch if isinstance(e, RowChange))
                if len(seen) == 5000:
                    break
    assert seen == list(range(1, 5001))


async def test_linger_gathers_a_trickle_into_one_batch(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    # The first change after a quiet spell is read at once; changes committed
    # while the reader lingers after it arrive together, as one batch.
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], linger=1.0
    ) as changes:
        batches = changes.batches()
        await query(f"INSERT INTO {name} VALUES (1, 'a')")
        with trio.fail_after(30):
            first = await batches.__anext__()
        assert len(first) == 1
        assert [e.new_data["id"] for e in first if isinstance(e, RowChange) and e.new_data] == [1]
        # Three separate transactions, committed within the 1 s linger.
        await query(f"INSERT INTO {name} VALUES (2, 'b')")
        await query(f"INSERT INTO {name} VALUES (3, 'c')")
        await query(f"INSERT INTO {name} VALUES (4, 'd')")
        with trio.fail_after(30):
            second = await batches.__anext__()
        assert len(second) == 3
        assert [e.new_data["id"] for e in second if isinstance(e, RowChange) and e.new_data] == [2, 3, 4]


async def test_linger_never_slows_a_flood(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    # The reader lingers after a read cycle (which drains the socket), never
    # per message: a backlog of 20,000 changes in 2,000 transactions is read at
    # full speed even at the longest linger (per message, it would take hours).
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]):
        pass
    await query(
        "DO $$ BEGIN FOR i IN 1..2000 LOOP "
        f"INSERT INTO {name} SELECT g, repeat('x', 100) FROM generate_series(i * 10, i * 10 + 9) AS g; "
        "COMMIT; END LOOP; END $$"
    )
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], linger=1.0
    ) as changes:
        assert await drain(changes, 20_000, timeout=30) == 20_000


async def test_resume_after_acknowledged_transaction(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], auto_ack=False
    ) as changes:
        await query(f"INSERT INTO {name} VALUES (1, 'a')")
        await query(f"INSERT INTO {name} VALUES (2, 'b'), (3, 'c')")
        await query(f"INSERT INTO {name} VALUES (4, 'd'), (5, 'e')")
        events = await take(changes, 5)
        assert [e.new_data["id"] for e in events] == [1, 2, 3, 4, 5]
        await changes.ack(events[2])  # the whole second transaction
        await changes.ack(events[3])  # part of the third: it must be replayed whole
        assert changes.confirmed_lsn == events[3].lsn
    # Reopen: the third transaction is replayed from its start, nothing before it.
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        await query(f"INSERT INTO {name} VALUES (6, 'f')")
        events = await take(changes, 3)
        assert [e.new_data["id"] for e in events] == [4, 5, 6]
    # With auto_ack the body ending without an error counts the event it held
    # (6) as processed, as in every resumable stream: only 7 comes next.
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        await query(f"INSERT INTO {name} VALUES (7, 'g')")
        events = await take(changes, 1)
        assert [e.new_data["id"] for e in events] == [7]

    # A body that raises leaves the event it held (8) unprocessed: it comes back.
    async def fail_while_holding_8() -> None:
        async with open_change_stream(
            pg_engine, slot=slot, publication=publication, tables=[name]
        ) as changes:
            await query(f"INSERT INTO {name} VALUES (8, 'h')")
            events = await take(changes, 1)
            assert [e.new_data["id"] for e in events] == [8]
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        await fail_while_holding_8()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        events = await take(changes, 1)
        assert [e.new_data["id"] for e in events] == [8]


async def test_ack_rejects_foreign_events(pg_engine: Engine, table: Any, cdc_names: Any) -> None:
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        with pytest.raises(ConfigurationError, match="needs an event read from a change stream"):
            await changes.ack(trio_pgevents.Notification("c", "p", 1, "s"))


async def test_reconnect_replays_with_gap(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], auto_ack=False
    ) as changes:
        await query(f"INSERT INTO {name} VALUES (1, 'a')")
        [event] = await take(changes, 1)
        old_pid = changes.backend_pid
        assert old_pid is not None
        await query("SELECT pg_terminate_backend(%s)", (old_pid,))
        await query(f"INSERT INTO {name} VALUES (2, 'b')")
        gap, replayed, fresh = await take(changes, 3)
        assert isinstance(gap, StreamGap)
        assert gap.replayed is True
        # Not acknowledged: the slot replays it after the reconnect.
        assert replayed.new_data == event.new_data == {"id": 1, "name": "a"}
        # The same change: equal and hashing alike, unlike a different change.
        assert replayed == event
        assert hash(replayed) == hash(event)
        assert fresh != event
        assert len({event, replayed, fresh}) == 2
        assert fresh.new_data == {"id": 2, "name": "b"}
        assert changes.reconnects == 1
        assert changes.backend_pid != old_pid
    assert "lost replication connection" in caplog.text


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"reconnect": False}, trio_pgevents.ConnectionLostError),
        ({"on_gap": "raise"}, trio_pgevents.StreamGapError),
    ],
)
async def test_connection_loss_policies(
    pg_engine: Engine,
    query: Query,
    table: Any,
    cdc_names: Any,
    options: dict[str, Any],
    error: type[Exception],
) -> None:
    name = await table()
    slot, publication = cdc_names()

    async def consume_until_failure() -> None:
        async with open_change_stream(
            pg_engine, slot=slot, publication=publication, tables=[name], **options
        ) as changes:
            await query("SELECT pg_terminate_backend(%s)", (changes.backend_pid,))
            async for _ in changes:
                pass

    with trio.fail_after(30), pytest.raises(error, match="lost"):
        await consume_until_failure()
    # The slot was released (and is dropped by the fixture).
    status = await trio.to_thread.run_sync(change_stream_status, pg_engine, slot)
    assert status.exists


async def test_status_updates_keep_a_backpressured_stream_alive(
    pg_url: str, query: Query, table: Any, cdc_names: Any
) -> None:
    # The server drops a replication client it has not heard from for
    # wal_sender_timeout (1s here). A consumer that stops reading for 3s
    # (backpressure: the stream stops reading its socket) must not lose the
    # connection: status updates go out regardless.
    url = sqlalchemy.make_url(pg_url).update_query_dict({"options": "-c wal_sender_timeout=1000"})
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    name = await table("id int PRIMARY KEY, t text")
    slot, publication = cdc_names()
    try:
        async with open_change_stream(
            engine,
            slot=slot,
            publication=publication,
            tables=[name],
            max_buffer_size=100,
            status_interval=0.2,
        ) as changes:
            await query(f"INSERT INTO {name} SELECT g, repeat('x', 500) FROM generate_series(1, 20000) AS g")
            first = await changes.receive()
            await trio.sleep(3)  # a slow consumer (not waiting for a condition)
            events = [first, *await take(changes, 19999, timeout=60)]
            assert not any(isinstance(e, StreamGap) for e in events)
            assert [e.new_data["id"] for e in events] == list(range(1, 20001))
            assert changes.reconnects == 0
    finally:
        engine.dispose()


async def test_status_reports_lag_and_warns(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any, caplog: pytest.LogCaptureFixture
) -> None:
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], status_interval=0.2
    ) as changes:
        await query(f"INSERT INTO {name} VALUES (1, 'a')")
        await query(f"INSERT INTO {name} VALUES (2, 'b')")
        await take(changes, 2)  # moving to event 2 acknowledges event 1
        status = await trio.to_thread.run_sync(change_stream_status, pg_engine, slot)
        assert status.exists
        assert status.active
        assert status.active_pid == changes.backend_pid
        assert status.plugin == "pgoutput"
        # The acknowledged position reaches the server within a status tick.
        with trio.fail_after(10):
            while (
                status := await trio.to_thread.run_sync(change_stream_status, pg_engine, slot)
            ).confirmed_flush_lsn != changes.confirmed_lsn:
                await trio.sleep(0.05)
    before = await trio.to_thread.run_sync(change_stream_status, pg_engine, slot)
    assert before.lag_bytes is not None
    assert before.retained_bytes is not None
    # Nobody consumes now: the slot falls behind by the WAL written since.
    await query(f"INSERT INTO {name} SELECT g, repeat('x', 100) FROM generate_series(10, 2009) AS g")
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    after = await trio.to_thread.run_sync(
        lambda: change_stream_status(pg_engine, slot, lag_warning_bytes=100_000)
    )
    assert not after.active
    assert after.active_pid is None
    assert after.lag_bytes is not None
    assert after.lag_bytes >= before.lag_bytes + 200_000
    assert after.confirmed_flush_lsn == before.confirmed_flush_lsn
    assert after.warning is not None
    assert "behind" in after.warning
    assert slot in after.warning
    assert after.warning in caplog.text
    quiet = await trio.to_thread.run_sync(change_stream_status, pg_engine, slot)
    assert quiet.warning is None  # default threshold is 1 GiB
    missing = await trio.to_thread.run_sync(change_stream_status, pg_engine, "no_such_slot")
    assert not missing.exists
    assert missing.lag_bytes is None


async def test_drop_removes_slot_and_publication(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        with pytest.raises(ReplicationError, match="in use"):
            await trio.to_thread.run_sync(drop_change_stream, pg_engine, slot, publication)
        assert changes.connected
    await trio.to_thread.run_sync(drop_change_stream, pg_engine, slot, publication)
    assert await query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == []
    assert await query("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)) == []
    # Idempotent.
    await trio.to_thread.run_sync(drop_change_stream, pg_engine, slot, publication)


# ---------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------


async def test_slot_in_use_is_a_clear_error(pg_engine: Engine, table: Any, cdc_names: Any) -> None:
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]):
        with pytest.raises(ReplicationError, match=f"replication slot '{slot}' is in use"):
            async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]):
                pass


async def test_bad_arguments(pg_engine: Engine, query: Query, table: Any, cdc_names: Any) -> None:
    name = await table()
    slot, publication = cdc_names()
    with pytest.raises(ConfigurationError, match="not a valid replication slot name"):
        async with open_change_stream(pg_engine, slot="Bad-Name", publication=publication):
            pass
    with pytest.raises(ConfigurationError, match="does not exist"):
        async with open_change_stream(
            pg_engine, slot=slot, publication=publication, tables=["no_such_table"]
        ):
            pass
    with pytest.raises(ConfigurationError, match="status_interval"):
        async with open_change_stream(pg_engine, slot=slot, publication=publication, status_interval=0):
            pass
    bad_lingers: list[Any] = [-0.1, 1.5, "0.01", True, float("nan")]
    for bad_linger in bad_lingers:
        with pytest.raises(ConfigurationError, match="linger"):
            async with open_change_stream(pg_engine, slot=slot, publication=publication, linger=bad_linger):
                pass
    with pytest.raises(ConfigurationError, match="sequence of table names"):
        async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=name):
            pass
    # A table without a key would make the user's UPDATE/DELETE fail once published.
    keyless = await table("a int, b text")
    with pytest.raises(ConfigurationError, match="no primary key"):
        async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[keyless]):
            pass
    with pytest.raises(ReplicationError, match="does not exist"):
        async with open_change_stream(
            pg_engine, slot=slot, publication=publication, tables=[name], create=False
        ):
            pass
    # Nothing half done: no publication or slot was left by the failures above.
    assert await query("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)) == []
    assert await query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == []
    # With REPLICA IDENTITY FULL it can be published, and old rows are complete.
    await trio.to_thread.run_sync(lambda: set_replica_identity(pg_engine, keyless, full=True))
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[keyless]) as changes:
        await query(f"INSERT INTO {keyless} VALUES (1, 'x'); UPDATE {keyless} SET b = 'y'")
        _, update = await take(changes, 2)
        assert (update.old_data, update.new_data) == ({"a": 1, "b": "x"}, {"a": 1, "b": "y"})
    # An existing publication for other tables is not silently reused.
    with pytest.raises(ReplicationError, match="exists for"):
        async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]):
            pass
    with pytest.raises(ConfigurationError, match="does not exist"):
        await trio.to_thread.run_sync(lambda: set_replica_identity(pg_engine, "no_such_table"))


async def test_role_without_replication(
    pg_engine: Engine, pg_url: str, query: Query, table: Any, cdc_names: Any, unique: Callable[[str], str]
) -> None:
    name = await table()
    slot, publication = cdc_names()
    role = unique("cdc_role")
    await query(f"CREATE ROLE {role} LOGIN PASSWORD 'secret-pw' NOREPLICATION")
    try:
        url = sqlalchemy.make_url(pg_url).set(username=role, password="secret-pw")
        engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        try:
            with pytest.raises(ReplicationError, match="lacks the REPLICATION attribute") as info:
                async with open_change_stream(engine, slot=slot, publication=publication, tables=[name]):
                    pass
            assert "secret-pw" not in str(info.value)
        finally:
            engine.dispose()
    finally:
        await query(f"DROP ROLE {role}")


async def test_wal_level_replica_is_a_clear_error() -> None:
    server = EmbeddedPostgres(settings={"wal_level": "replica"})
    await trio.to_thread.run_sync(server.start)
    try:
        engine = sqlalchemy.create_engine(server.url, poolclass=NullPool)
        try:
            with pytest.raises(ReplicationError) as info:
                async with open_change_stream(engine, slot="never_made", publication="never_made"):
                    pass
        finally:
            engine.dispose()
        message = str(info.value)
        assert "wal_level is 'replica'" in message
        assert "wal_level = logical" in message
        assert "restart" in message
        rows = await trio.to_thread.run_sync(run_sql, server.dsn, "SELECT count(*) FROM pg_publication")
        assert rows == [(0,)]  # nothing half done
    finally:
        await trio.to_thread.run_sync(server.cleanup)


async def test_txid_is_the_full_transaction_id() -> None:
    # The trigger path's txid is txid_current() (epoch << 32 | xid); the WAL
    # carries only the 32-bit xid. A server whose epoch is 5 tells them apart.
    server = EmbeddedPostgres()
    await trio.to_thread.run_sync(server.start)
    try:
        await trio.to_thread.run_sync(server.stop)
        await trio.to_thread.run_sync(server._run, "pg_resetwal", "-e", "5", str(server.data_dir))
        await trio.to_thread.run_sync(server.start)
        engine = sqlalchemy.create_engine(server.url, poolclass=NullPool)
        try:
            await trio.to_thread.run_sync(run_sql, server.dsn, "CREATE TABLE t (id int PRIMARY KEY)")
            async with open_change_stream(
                engine, slot="epoch_slot", publication="epoch_pub", tables=["t"]
            ) as changes:
                rows = await trio.to_thread.run_sync(
                    run_sql, server.dsn, "INSERT INTO t VALUES (1) RETURNING txid_current()"
                )
                (change,) = await take(changes, 1)
        finally:
            await trio.to_thread.run_sync(drop_change_stream, engine, "epoch_slot", "epoch_pub")
            engine.dispose()
        assert rows[0][0] >> 32 == 5
        assert change.txid == rows[0][0]
    finally:
        await trio.to_thread.run_sync(server.cleanup)


async def test_widen_xid_across_wraparound() -> None:
    epoch = 7 << 32
    assert widen_xid(100, epoch + 90) == epoch + 100
    assert widen_xid(80, epoch + 90) == epoch + 80
    # Just before and just after a wraparound of the 32-bit counter.
    assert widen_xid(0xFFFFFFF0, epoch + 5) == epoch - 0x10
    assert widen_xid(5, epoch - 0x10) == epoch + 5
    # The farthest in each direction that is still unambiguous.
    assert widen_xid((90 + 0x7FFFFFFF) & 0xFFFFFFFF, epoch + 90) == epoch + 90 + 0x7FFFFFFF
    assert widen_xid((90 - 0x80000000) & 0xFFFFFFFF, epoch + 90) == epoch + 90 - 0x80000000


async def test_failed_slot_creation_leaves_no_publication() -> None:
    # Only one slot allowed, and it is taken: creating ours fails after the
    # publication was created, which must then be dropped again.
    server = EmbeddedPostgres(settings={"max_replication_slots": "1"})
    await trio.to_thread.run_sync(server.start)
    try:
        await trio.to_thread.run_sync(
            run_sql, server.dsn, "SELECT pg_create_logical_replication_slot('taken', 'pgoutput')"
        )
        await trio.to_thread.run_sync(run_sql, server.dsn, "CREATE TABLE t (id int PRIMARY KEY)")
        engine = sqlalchemy.create_engine(server.url, poolclass=NullPool)
        try:
            with pytest.raises(ReplicationError, match="could not create replication slot 'mine'"):
                async with open_change_stream(engine, slot="mine", publication="mine_pub", tables=["t"]):
                    pass
        finally:
            engine.dispose()
        rows = await trio.to_thread.run_sync(run_sql, server.dsn, "SELECT pubname FROM pg_publication")
        assert rows == []
    finally:
        await trio.to_thread.run_sync(server.cleanup)


# ---------------------------------------------------------------------------
# kill -9 and resume: at-least-once, nothing lost
# ---------------------------------------------------------------------------


def ids_in(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line.split()[0]) for line in path.read_text().splitlines() if line]


async def test_kill_and_resume_loses_nothing(
    pg_engine: Engine, pg_url: str, query: Query, table: Any, cdc_names: Any, tmp_path: Path
) -> None:
    name = await table()
    slot, publication = cdc_names()
    # Create the slot before any write, so every write is captured.
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]):
        pass
    total = 4000
    # 400 transactions of 10 rows while nobody consumes.
    for start in range(0, total // 2, 10):
        await query(f"INSERT INTO {name} SELECT g, 'r' FROM generate_series({start}, {start + 9}) AS g")
    output = tmp_path / "seen.txt"
    script = str(Path(__file__).with_name("cdc_consumer.py"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}

    def consumer(stop_id: int, delay: float) -> list[str]:
        return [
            sys.executable,
            script,
            pg_url,
            slot,
            publication,
            name,
            str(output),
            str(stop_id),
            str(delay),
        ]

    initial = await trio.to_thread.run_sync(change_stream_status, pg_engine, slot)
    # A slow consumer, killed with SIGKILL in the middle of the stream, once it
    # has confirmed some progress to the server (so resuming is not replaying all).
    process = await trio.lowlevel.open_process(consumer(total - 1, 0.002), env=env)
    try:
        with trio.fail_after(60):
            while True:
                assert process.poll() is None, "consumer exited early"
                status = await trio.to_thread.run_sync(change_stream_status, pg_engine, slot)
                if len(ids_in(output)) >= 300 and status.confirmed_flush_lsn != initial.confirmed_flush_lsn:
                    break
                await trio.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    seen_first = ids_in(output)
    assert 300 <= len(seen_first) < total // 2, "the kill must land mid-stream"
    # More writes while the consumer is dead.
    for start in range(total // 2, total, 10):
        await query(f"INSERT INTO {name} SELECT g, 'r' FROM generate_series({start}, {start + 9}) AS g")
    process = await trio.lowlevel.open_process(consumer(total - 1, 0.0), env=env)
    with trio.fail_after(120):
        returncode = await process.wait()
    assert returncode == 0
    seen = ids_in(output)
    assert set(seen) == set(range(total)), f"lost: {sorted(set(range(total)) - set(seen))[:20]}"
    second_run = seen[len(seen_first) :]
    # The restart resumed at or before where the killed consumer was, in order.
    assert second_run[0] <= seen_first[-1] + 1
    assert second_run == sorted(second_run)
    # At-least-once, not at-least-everything: only the unconfirmed tail repeats.
    repeats = len(seen) - total
    assert 0 <= repeats < len(seen_first)
    status = await trio.to_thread.run_sync(change_stream_status, pg_engine, slot)
    assert not status.active
