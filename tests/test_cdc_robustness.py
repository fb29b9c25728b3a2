"""Change streams that keep going: bad values, prompt acks, odd names, cancelled reads.

Real Postgres (the plugin's embedded server, ``wal_level=logical``). Every
slot and publication a test makes is dropped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from trio_pgevents import (
    RowChange,
    ServerText,
    change_stream_status,
    drop_change_stream,
    open_change_stream,
)
from trio_pgevents._cdc.pgoutput import parse_lsn

from .conftest import Query, read_with_cancellations, run_sql, take

# ---------------------------------------------------------------------------
# 1. one bad value does not stop the stream
# ---------------------------------------------------------------------------


async def test_json_too_deep_for_python_is_server_text_and_the_stream_goes_on(
    pg_engine: Engine, query: Query, unique: Callable[[str], str], cdc_names: Any
) -> None:
    # json.loads raises RecursionError at ~1000 levels; Postgres stores 5,000.
    name = unique("cdcr_deep")
    await query(f"CREATE TABLE {name} (id int PRIMARY KEY, doc jsonb, note text)")
    await query(f"ALTER TABLE {name} REPLICA IDENTITY FULL")  # old rows carry the value too
    slot, publication = cdc_names()
    deep = "[" * 5000 + "]" * 5000
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        await query(f"INSERT INTO {name} VALUES (1, %s, 'a')", (deep,))
        await query(f"UPDATE {name} SET note = 'b' WHERE id = 1")
        await query(f"INSERT INTO {name} VALUES (2, '{{\"ok\": [1]}}', 'c')")
        insert, update, later = await take(changes, 3)
    assert isinstance(insert, RowChange)
    assert insert.method == "INSERT"
    assert insert.new_data is not None
    value = insert.new_data["doc"]
    assert isinstance(value, ServerText)
    assert value == deep  # the server's text form, whole
    assert "RecursionError" in value.reason
    assert "'doc'" in value.reason
    # The other columns of the row are converted as usual.
    assert insert.new_data["id"] == 1
    assert insert.new_data["note"] == "a"
    assert update.method == "UPDATE"
    assert update.old_data["doc"] == deep
    assert isinstance(update.old_data["doc"], ServerText)
    assert update.new_data["doc"] == deep
    assert update.new_data["note"] == "b"
    # Later changes arrive, converted normally.
    assert later.new_data == {"id": 2, "doc": {"ok": [1]}, "note": "c"}


@pytest.fixture
def sql_ascii_db(pg_url: str, pg_dsn: str, unique: Callable[[str], str]) -> Iterator[tuple[Engine, str]]:
    """A database with encoding SQL_ASCII (any bytes go): (engine, libpq dsn)."""
    name = unique("cdcr_ascii")
    run_sql(
        pg_dsn,
        f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    url = sqlalchemy.make_url(pg_url).set(database=name)
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    dsn = psycopg2.extensions.make_dsn(pg_dsn, dbname=name)
    try:
        yield engine, dsn
    finally:
        engine.dispose()
        run_sql(pg_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run_bytes(dsn: str, statement: bytes) -> None:
    """Run raw bytes as SQL: no client-side encoding gets in the way."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


async def test_bytes_not_in_the_database_encoding_are_escaped_server_text(
    sql_ascii_db: tuple[Engine, str], unique: Callable[[str], str]
) -> None:
    engine, dsn = sql_ascii_db
    slot, publication = unique("cdcr_slot"), unique("cdcr_pub")
    # A table and a column whose names are not ASCII, values that are not either.
    await trio.to_thread.run_sync(
        run_bytes, dsn, b'CREATE TABLE "caf\xe9" (id int PRIMARY KEY, "n\xe9" text, doc json)'
    )
    try:
        async with open_change_stream(engine, slot=slot, publication=publication) as changes:
            await trio.to_thread.run_sync(
                run_bytes, dsn, b'INSERT INTO "caf\xe9" VALUES (1, \'d\xe9j\xe0\', \'{"k": "\xe9"}\')'
            )
            await trio.to_thread.run_sync(
                run_bytes, dsn, b"INSERT INTO \"caf\xe9\" VALUES (2, 'plain', '{\"k\": 1}')"
            )
            first, second = await take(changes, 2)
    finally:
        await trio.to_thread.run_sync(drop_change_stream, engine, slot, publication)
    assert isinstance(first, RowChange)
    assert first.table_name == "caf\\xe9"
    assert isinstance(first.data["table_name"], ServerText)
    assert first.new_data is not None
    assert set(first.new_data) == {"id", "n\\xe9", "doc"}
    text = first.new_data["n\\xe9"]
    assert isinstance(text, ServerText)
    assert text == "d\\xe9j\\xe0"  # decode(..., "backslashreplace")
    assert "encoding" in text.reason
    doc = first.new_data["doc"]
    assert isinstance(doc, ServerText)
    assert doc == '{"k": "\\xe9"}'
    assert first.new_data["id"] == 1
    # The next change arrives, its plain values converted as usual.
    assert second.new_data == {"id": 2, "n\\xe9": "plain", "doc": {"k": 1}}
    assert type(second.new_data["n\\xe9"]) is str


# ---------------------------------------------------------------------------
# 2. an acknowledged position reaches the server within about a second
# ---------------------------------------------------------------------------


async def test_ack_reaches_the_server_promptly_while_the_stream_reads_on(
    pg_engine: Engine, query: Query, unique: Callable[[str], str], cdc_names: Any
) -> None:
    name = unique("cdcr_ack")
    await query(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], auto_ack=False
    ) as changes:  # status_interval left at its default, 10 s
        await query(f"INSERT INTO {name} VALUES (1)")
        [first] = await take(changes, 1)
        await changes.ack(first)
        acked = changes.confirmed_lsn
        assert acked is not None
        acked_at = trio.current_time()
        # The stream reads another change right after the ack.
        await query(f"INSERT INTO {name} VALUES (2)")
        [second] = await take(changes, 1)
        assert second.new_data == {"id": 2}
        with trio.fail_after(max(0.1, 2 - (trio.current_time() - acked_at))):
            while True:
                status = await trio.to_thread.run_sync(change_stream_status, pg_engine, slot)
                assert status.confirmed_flush_lsn is not None
                if parse_lsn(status.confirmed_flush_lsn) >= parse_lsn(acked):
                    break
                await trio.sleep(0.02)
        # Only what was acknowledged: the second change is not confirmed.
        assert parse_lsn(status.confirmed_flush_lsn) < parse_lsn(str(second.lsn))


# ---------------------------------------------------------------------------
# 4. publication names outside ASCII
# ---------------------------------------------------------------------------


async def test_non_ascii_publication_name_delivers_changes(
    pg_engine: Engine, query: Query, unique: Callable[[str], str], cdc_names: Any
) -> None:
    name = unique("cdcr_pubname")
    await query(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    slot, publication = cdc_names('_é "q"')  # non-ASCII, a space and quotes
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        await query(f"INSERT INTO {name} VALUES (1)")
        [event] = await take(changes, 1, timeout=10)
    assert event.new_data == {"id": 1}
    rows = await query("SELECT pubname FROM pg_publication WHERE pubname = %s", (publication,))
    assert rows == [(publication,)]


# ---------------------------------------------------------------------------
# 6. cancelled reads take nothing; auto-ack acknowledges only what was handed out
# ---------------------------------------------------------------------------


async def test_cancelled_reads_lose_nothing_and_auto_ack_only_what_was_handed_out(
    pg_engine: Engine, query: Query, unique: Callable[[str], str], cdc_names: Any
) -> None:
    name = unique("cdcr_cancel")
    await query(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    slot, publication = cdc_names()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]):
        pass  # the slot exists before the writes
    # 3,000 transactions of one row: every acknowledgement is a whole transaction.
    await query(f"DO $$ BEGIN FOR i IN 1..3000 LOOP INSERT INTO {name} VALUES (i); COMMIT; END LOOP; END $$")
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        got = await read_with_cancellations(changes, 3000, timeout=120)
        await query(f"INSERT INTO {name} VALUES (3001)")
        # Asking for the next event acknowledges row 3000 (auto-ack), but a
        # cancelled ask takes nothing: row 3001 is neither handed out nor
        # acknowledged, whether or not it had arrived yet.
        with trio.CancelScope() as scope:
            scope.cancel()
            await changes.receive()
        assert scope.cancelled_caught
    ids = [e.new_data["id"] for e in got if isinstance(e, RowChange) and e.new_data]
    assert len(got) == 3000
    assert ids == list(range(1, 3001))
    # Confirmed exactly up to row 3000: a new stream starts with row 3001.
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]) as changes:
        await query(f"INSERT INTO {name} VALUES (3002)")
        replayed = await take(changes, 2)
    assert [e.new_data["id"] for e in replayed] == [3001, 3002]
