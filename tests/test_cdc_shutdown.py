"""A slow change-stream consumer and ``pg_ctl stop -m fast``.

On a fast shutdown each walsender sends what is left and then waits until
its client has confirmed all it sent (``WalSndDone`` in PostgreSQL's
walsender.c): the client's *flush* position if it reports a valid one, else
its *write* position. A consumer still working on an event has not
acknowledged it, and the stream must never confirm (flush) a change that was
not acknowledged -- so the stream reports what it has *received* as the
write position, in a status update whose flush position is invalid (which
confirms nothing: the slot moves only on a valid flush position).

These tests run their own server (:func:`server`), since they stop it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from trio_pgevents import ChangeStream, RowChange, StreamGap, open_change_stream
from trio_pgevents._cdc.pgoutput import parse_lsn
from trio_pgevents.testing import EmbeddedPostgres

from .conftest import run_sql

_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """This module's own server: the tests stop it."""
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture
def running(server: EmbeddedPostgres) -> EmbeddedPostgres:
    """The module's server, started if a test left it stopped."""
    if not server.is_running():
        server.start()
    return server


@pytest.fixture
def engine(running: EmbeddedPostgres) -> Iterator[Engine]:
    engine = sqlalchemy.create_engine(running.url, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


async def sql(server: EmbeddedPostgres, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(run_sql, server.dsn, statement, params)


async def stop_in_background(server: EmbeddedPostgres, nursery: trio.Nursery) -> trio.Event:
    """Start ``pg_ctl stop -m fast``; the returned event is set when it returned."""
    stopped = trio.Event()

    async def stop() -> None:
        await trio.to_thread.run_sync(server.stop, "fast")
        stopped.set()

    nursery.start_soon(stop)
    return stopped


async def next_row(changes: ChangeStream) -> RowChange:
    """The next row change (skipping gap events)."""
    while True:
        event = await changes.receive()
        if isinstance(event, RowChange):
            return event
        assert isinstance(event, StreamGap)


async def test_fast_shutdown_does_not_wait_for_a_consumer_holding_an_event(
    running: EmbeddedPostgres, engine: Engine
) -> None:
    table, slot, publication = name("hold_t"), name("hold_slot"), name("hold_pub")
    await sql(running, f"CREATE TABLE {table} (id int PRIMARY KEY)")
    async with (
        trio.open_nursery() as nursery,
        open_change_stream(
            engine, slot=slot, publication=publication, tables=[table], backoff_max=0.2
        ) as changes,
    ):
        await sql(running, f"INSERT INTO {table} VALUES (1)")
        await sql(running, f"INSERT INTO {table} VALUES (2)")
        with trio.fail_after(30):
            held = await next_row(changes)
        assert held.new_data == {"id": 1}
        before = await sql(running, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots")
        # The consumer works on row 1 and does not ask for the next event
        # while the server stops (it gives up after 20 s, so a stream that
        # holds the shutdown up fails this test instead of hanging it).
        started = trio.current_time()
        stopped = await stop_in_background(running, nursery)
        with trio.move_on_after(20):
            await stopped.wait()
        took = trio.current_time() - started
        assert took < 10, f"pg_ctl stop -m fast waited {took:.1f}s for the consumer"
        # Nothing was acknowledged, so nothing was confirmed: row 1 comes back.
        with trio.fail_after(30):
            await stopped.wait()
        await trio.to_thread.run_sync(running.start)
        after = await sql(running, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots")
        assert parse_lsn(after[0][0]) >= parse_lsn(before[0][0])
        assert parse_lsn(after[0][0]) < parse_lsn(str(held.lsn))
        with trio.fail_after(30):
            # Row 2 may still be buffered from before the shutdown; then the gap.
            while not isinstance(await changes.receive(), StreamGap):
                pass
            replayed = await next_row(changes)
            following = await next_row(changes)
        assert replayed == held
        assert following.new_data == {"id": 2}
        assert changes.reconnects >= 1


async def test_fast_shutdown_waits_while_a_full_buffer_holds_the_stream_back(
    running: EmbeddedPostgres, engine: Engine
) -> None:
    # Documents the limit of the fix above. With a backlog larger than the
    # stream's buffer plus the socket buffers, the stream stops reading its
    # socket (backpressure), so the walsender cannot even send the rest: it
    # waits with unsent data (WalSndDone needs none pending) and, before
    # that, cannot switch to its stopping state, which the shutdown checkpoint
    # waits for. wal_sender_timeout does not end it either, because status
    # updates keep going out (they must: that is what keeps a backpressured
    # stream connected). Reading everything into memory would break the
    # buffer's bound. What ends the wait: the consumer reading on, or the
    # stream being closed.
    table, slot, publication = name("full_t"), name("full_slot"), name("full_pub")
    await sql(running, f"CREATE TABLE {table} (id int PRIMARY KEY, pad text)")
    async with trio.open_nursery() as nursery:
        close_timeout = 0.5
        async with open_change_stream(
            engine,
            slot=slot,
            publication=publication,
            tables=[table],
            max_buffer_size=100,
            close_timeout=close_timeout,
            reconnect=False,
        ) as changes:
            # ~20 MB of changes: far more than the buffer and socket buffers hold.
            await sql(
                running,
                f"INSERT INTO {table} SELECT g, repeat('x', 200) FROM generate_series(1, 100000) AS g",
            )
            with trio.fail_after(30):
                first = await next_row(changes)
            assert first.new_data is not None
            assert first.new_data["id"] == 1
            stopped = await stop_in_background(running, nursery)
            # An observation window, not a wait for a condition: the shutdown
            # does not complete while the consumer holds the stream back.
            with trio.move_on_after(3):
                await stopped.wait()
            assert not stopped.is_set(), "the server stopped although the stream held unsent WAL back"
            closing = trio.current_time()
        # Closing the stream ends the wait.
        with trio.fail_after(close_timeout + 15):
            await stopped.wait()
        assert trio.current_time() - closing < close_timeout + 15
