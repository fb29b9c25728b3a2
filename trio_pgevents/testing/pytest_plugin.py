"""pytest plugin: a real Postgres for your tests, and stream fixtures.

Registered through the ``pytest11`` entry point, so installing trio_pgevents
makes these fixtures available:

- ``pg_url`` (session): SQLAlchemy URL of the test database — an embedded
  server started once per session (the ``embedded`` extra), or the server in
  ``$TRIO_PGEVENTS_TEST_DSN`` when that is set.
- ``pg_dsn`` (session): the same as a libpq DSN, for ``psycopg2.connect``.
- ``pg_server`` (session): the :class:`EmbeddedPostgres`, or ``None`` when the
  DSN came from the environment.
- ``pg_engine`` (session): a SQLAlchemy engine for the test database.
- ``open_stream``: ``stream = await open_stream(["ch"], **options)`` opens an
  event stream in the test's nursery; closed at teardown.
- ``notify``: ``await notify("ch", "payload")`` sends a NOTIFY (in a thread).

Nothing starts until a test asks for one of these fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

import psycopg2
import pytest
import trio
from sqlalchemy.engine import Engine

from .._listen import EventStream, connect_event_stream
from ._database import SecretStr, configured_test_dsn, engine_for_url, libpq_dsn, scrub_report
from ._embedded import EmbeddedPostgres

OpenStream = Callable[..., Awaitable[EventStream]]
Notify = Callable[[str, str], Awaitable[None]]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres | None]:
    """The embedded server for this session, or None when a DSN is configured."""
    if configured_test_dsn() is not None:
        yield None
        return
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture(scope="session")
def pg_url(pg_server: EmbeddedPostgres | None) -> str:
    """SQLAlchemy URL (psycopg2) of the test database."""
    configured = configured_test_dsn()
    if configured is not None:
        return configured
    assert pg_server is not None
    return SecretStr(pg_server.url)


@pytest.fixture(scope="session")
def pg_dsn(pg_url: str) -> str:
    """libpq DSN of the test database."""
    return libpq_dsn(pg_url)


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """A SQLAlchemy engine (psycopg2, default pool) for the test database."""
    engine = engine_for_url(pg_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
async def open_stream(pg_engine: Engine) -> AsyncIterator[OpenStream]:
    """Factory: ``await open_stream(channels, engine=..., **options)``."""
    streams: list[EventStream] = []
    async with trio.open_nursery() as nursery:

        async def factory(channels: list[str], *, engine: Any = None, **options: Any) -> EventStream:
            stream = await connect_event_stream(nursery, engine or pg_engine, channels, **options)
            streams.append(stream)
            return stream

        try:
            yield factory
        finally:
            for stream in streams:
                await stream.aclose()


@pytest.fixture
def notify(pg_dsn: str) -> Iterator[Notify]:
    """``await notify(channel, payload)``: a NOTIFY from a separate connection."""
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    lock = trio.Lock()

    async def send(channel: str, payload: str = "") -> None:
        def work() -> None:
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))

        async with lock:
            await trio.to_thread.run_sync(work)

    try:
        yield send
    finally:
        conn.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """No secret of the test database in a failure report (a traceback may show one)."""
    report = yield
    if report.longrepr is not None:
        safe = scrub_report(str(report.longrepr))
        if safe is not None:
            report.longrepr = safe
    return report
