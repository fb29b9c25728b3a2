"""Errors and logs a user can act on (issue 18, point 6).

Every connection the library opens is named in ``pg_stat_activity``
(``application_name``) unless the application named it; every log line is
one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy
import trio
from sqlalchemy.engine import Engine

from trio_pgevents import Installer, open_durable_stream, open_event_stream
from trio_pgevents._connection import APPLICATION_NAME
from trio_pgevents._secrets import get_logger

from .conftest import Outbox, Query, library_logs


async def application_of(query: Query, pid: int | None) -> str:
    assert pid is not None
    [(name,)] = await query("SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,))
    return str(name)


async def test_a_stream_opened_from_a_url_names_its_connection(pg_url: str, query: Query) -> None:
    async with open_event_stream(pg_url, ["named"]) as stream:
        pid = stream.statistics().sources[0].backend_pid
        assert await application_of(query, pid) == APPLICATION_NAME == "trio_pgevents"


async def test_the_library_names_connections_it_opens_on_the_applications_engine(
    pg_url: str, query: Query
) -> None:
    engine = sqlalchemy.create_engine(pg_url)
    try:
        async with open_event_stream(engine, ["named"]) as stream:
            pid = stream.statistics().sources[0].backend_pid
            assert await application_of(query, pid) == "trio_pgevents"

            def own_connection() -> str:  # the application's own connections stay as they were
                with engine.connect() as connection:
                    value = connection.exec_driver_sql("SHOW application_name").scalar()
                    connection.invalidate()  # a new one next time, not the stream's
                return str(value)

            assert await trio.to_thread.run_sync(own_connection) == ""
    finally:
        engine.dispose()


@pytest.mark.parametrize("where", ["url", "connect_args"])
async def test_a_name_the_application_gives_is_kept(
    pg_url: str, query: Query, unique: Callable[[str], str], where: str
) -> None:
    name = unique("app")
    url = sqlalchemy.make_url(pg_url)
    if where == "url":
        engine = sqlalchemy.create_engine(url.update_query_dict({"application_name": name}))
    else:
        engine = sqlalchemy.create_engine(url, connect_args={"application_name": name})
    try:
        async with open_event_stream(engine, ["named"]) as stream:
            assert await application_of(query, stream.statistics().sources[0].backend_pid) == name
    finally:
        engine.dispose()


def pooled_names(engine: Engine) -> set[str]:
    """The application_name of every idle connection in ``engine``'s pool."""
    names: set[str] = set()
    proxies = [engine.raw_connection() for _ in range(engine.pool.checkedin())]  # type: ignore[attr-defined]
    for proxy in proxies:
        cursor = proxy.cursor()
        cursor.execute("SHOW application_name")
        names.add(cursor.fetchone()[0])  # type: ignore[index]
        cursor.close()
        proxy.close()
    return names


async def test_durable_streams_and_the_installer_name_their_connections(outbox: Outbox) -> None:
    engine = sqlalchemy.create_engine(outbox.url, pool_size=10)
    try:
        async with open_durable_stream(engine, "namer", **outbox.opts()) as events:
            await outbox.ainsert(1)
            with trio.fail_after(30):
                await events.receive()
        assert await trio.to_thread.run_sync(pooled_names, engine) == {"trio_pgevents"}
    finally:
        engine.dispose()
    engine = sqlalchemy.create_engine(outbox.url)
    try:
        installer = Installer(engine, schema=outbox.schema, channel=outbox.channel)
        assert (await installer.aio.status()).ok
        assert await trio.to_thread.run_sync(pooled_names, engine) == {"trio_pgevents"}
    finally:
        engine.dispose()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    with library_logs(handler):
        yield handler


def test_a_multi_line_message_is_logged_as_one_line(lines: Lines) -> None:
    logger = get_logger("trio_pgevents.test_lines")
    driver_error = "server closed the connection unexpectedly\n\tThis probably means the server terminated\n"
    logger.warning("reconnect to %s failed: %s", "db", driver_error)
    logger.info("a\r\nb\n\n  c")
    assert lines.lines == [
        "WARNING trio_pgevents.test_lines: reconnect to db failed: server closed the connection "
        "unexpectedly This probably means the server terminated",
        "INFO trio_pgevents.test_lines: a b c",
    ]
