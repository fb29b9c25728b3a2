"""Shared helpers; the database fixtures come from trio_pgevents' pytest plugin."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import pytest
import trio
from psycopg2 import sql
from sqlalchemy.engine import Engine

from trio_pgevents import Event, Installer, RowChange, drop_change_stream
from trio_pgevents._consumer import BufferedStream

Query = Callable[..., Awaitable[list[tuple[Any, ...]]]]
#: A change stream's (slot, publication).
Names = tuple[str, str]

_counter = itertools.count()


async def drain(stream: BufferedStream, count: int, timeout: float) -> int:
    """Read ``stream.batches()`` until ``count`` or more events arrived, within ``timeout`` s: how many."""
    received = 0
    with trio.fail_after(timeout):
        async for batch in stream.batches():
            received += len(batch)
            if received >= count:
                break
    return received


async def take(
    stream: BufferedStream, count: int, timeout: float = 30, *, only: type | tuple[type, ...] = object
) -> list[Any]:
    """The next ``count`` events (of the types ``only``; others are passed over), within ``timeout`` s."""
    events: list[Any] = []
    with trio.fail_after(timeout):
        while len(events) < count:
            event = await stream.receive()
            if isinstance(event, only):
                events.append(event)
    return events


async def read_with_cancellations(stream: BufferedStream, count: int, timeout: float) -> list[Event]:
    """Read ``count`` events while cancelling reads in every way a consumer can.

    Before each event: a ``receive()`` and a ``batches()`` step under a scope
    that is already cancelled (each must raise ``Cancelled`` having taken
    nothing). Between them, the everyday "gather until a deadline, then
    flush" loop: ``receive()`` under ``move_on_after`` with a deadline short
    enough to fire in the middle of reads. Returns the events in the order
    they were taken; a lost event shows as a missing one.
    """
    got: list[Event] = []
    batches = stream.batches()
    with trio.fail_after(timeout):
        while len(got) < count:
            for step in (stream.receive, batches.__anext__):
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await step()
                assert scope.cancelled_caught, "a cancelled read returned instead of raising"
            got.append(await stream.receive())
            with trio.move_on_after(0.0005):
                while len(got) < count:
                    got.append(await stream.receive())
            if len(got) < count:
                got.extend(await batches.__anext__())
    return got


async def take_rows(stream: BufferedStream, count: int, timeout: float = 20) -> list[RowChange]:
    """The next ``count`` row events of ``stream`` (other events are skipped)."""
    got: list[RowChange] = []
    with trio.fail_after(timeout):
        while len(got) < count:
            event = await stream.receive()
            if isinstance(event, RowChange):
                got.append(event)
    return got


@contextlib.contextmanager
def library_logs(handler: logging.Handler) -> Iterator[None]:
    """Send every trio_pgevents log record (DEBUG and up) to ``handler`` while inside."""
    logger = logging.getLogger("trio_pgevents")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """unique("orders") -> a name no other test (or earlier run) uses."""

    def make(prefix: str) -> str:
        return f"{prefix}_{os.getpid()}_{next(_counter)}"

    return make


def run_sql(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one autocommit statement; return its rows (or [])."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        conn.close()


@pytest.fixture
def query(pg_dsn: str) -> Query:
    """``await query(sql, params)``: run SQL on a fresh connection in a thread."""

    async def run(statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        return await trio.to_thread.run_sync(run_sql, pg_dsn, statement, params)

    return run


@pytest.fixture
async def cdc_names(pg_engine: Engine, unique: Callable[[str], str]) -> AsyncIterator[Callable[..., Names]]:
    """``slot, publication = cdc_names(suffix="")``; every one made is dropped at teardown.

    Dropped through ``pg_engine`` (not through a test's proxy): a forgotten
    slot holds WAL forever, so none is left behind.
    """
    made: list[Names] = []

    def make(suffix: str = "") -> Names:
        names = (unique("cdc_slot"), unique("cdc_pub") + suffix)
        made.append(names)
        return names

    yield make
    for slot, publication in made:
        await trio.to_thread.run_sync(drop_change_stream, pg_engine, slot, publication)


@pytest.fixture
def make_installer(pg_url: str, unique: Callable[[str], str]) -> Iterator[Callable[..., Installer]]:
    """``make_installer(**kw)``: an Installer on its own schema and channel, uninstalled at teardown."""
    made: list[Installer] = []

    def make(**kwargs: Any) -> Installer:
        kwargs.setdefault("schema", unique("pgev"))
        kwargs.setdefault("channel", unique("ch"))
        installer = Installer(kwargs.pop("engine", pg_url), **kwargs)
        made.append(installer)
        return installer

    yield make
    for installer in made:
        installer.uninstall()


@dataclass
class Outbox:
    """A schema with the durable tables and one durable-watched table ``t``."""

    url: str
    dsn: str
    schema: str
    channel: str
    table: str

    def opts(self, **options: Any) -> dict[str, Any]:
        return {"schema": self.schema, "channel": self.channel, "poll_interval": 0.5, **options}

    def insert(self, *values: int) -> None:
        """One transaction inserting ``values`` (one row each)."""
        statement = sql.SQL("INSERT INTO {} (n) SELECT unnest(%s::int[])").format(sql.Identifier(self.table))
        conn = psycopg2.connect(self.dsn)
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(statement, (list(values),))
        finally:
            conn.close()

    async def ainsert(self, *values: int) -> None:
        await trio.to_thread.run_sync(self.insert, *values)

    def count(self, what: str = "events") -> int:
        rows = run_sql(
            self.dsn,
            sql.SQL("SELECT count(*) FROM {}.{}").format(  # type: ignore[arg-type]
                sql.Identifier(self.schema), sql.Identifier(what)
            ),
        )
        return int(rows[0][0])


@pytest.fixture
def outbox(pg_url: str, pg_dsn: str, unique: Callable[[str], str]) -> Iterator[Outbox]:
    schema, channel, table = unique("dur"), unique("durch"), unique("t")
    run_sql(
        pg_dsn,
        sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, n int NOT NULL)").format(  # type: ignore[arg-type]
            sql.Identifier(table)
        ),
    )
    installer = Installer(pg_url, schema=schema, channel=channel)
    installer.install(durable=True)
    installer.watch_table(table, durable=True)
    yield Outbox(pg_url, pg_dsn, schema, channel, table)
    # Its writer role is cluster-wide: leave nothing behind on a shared server.
    installer.uninstall()
