"""The durable stream and the installer never hang on a server that accepts TCP and never answers.

The server is the plugin's embedded Postgres reached through ``TcpProxy``,
whose ``pause()`` makes it silent (connections accepted, bytes held, no
answer). Bounds asserted are the option under test plus a margin a busy
2-core machine meets; every case is itself bounded by ``trio.fail_after``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy
import trio
from psycopg2 import sql
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from trio_pgevents import ConnectError, ConnectionLostError, Installer, InstallError, open_durable_stream

from .conftest import run_sql
from .tcp_proxy import TcpProxy

#: What a busy machine may add to a bound (scheduling, thread start, a query).
MARGIN = 2.0


@pytest.fixture
def outbox(pg_url: str, pg_dsn: str, unique: Callable[[str], str]) -> Iterator[tuple[str, str, str]]:
    """(schema, channel, table): a durable-watched table; uninstalled after (directly, not proxied)."""
    schema, channel, table = unique("hang"), unique("hangch"), unique("hang_t")
    run_sql(pg_dsn, sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, n int)").format(sql.Identifier(table)))  # type: ignore[arg-type]
    installer = Installer(pg_url, schema=schema, channel=channel)
    installer.watch_table(table, durable=True)
    yield schema, channel, table
    installer.uninstall()


async def start_proxy(nursery: trio.Nursery, pg_url: str) -> tuple[TcpProxy, Engine]:
    url = sqlalchemy.make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    port = await nursery.start(proxy.run)
    return proxy, sqlalchemy.create_engine(url.set(host="127.0.0.1", port=port), poolclass=NullPool)


def durable_options(outbox: tuple[str, str, str], **options: Any) -> dict[str, Any]:
    schema, channel, _ = outbox
    return {"schema": schema, "channel": channel, **options}


async def test_opening_a_durable_stream_honours_move_on_after(pg_url: str, outbox: Any) -> None:
    async with trio.open_nursery() as nursery:
        proxy, engine = await start_proxy(nursery, pg_url)
        proxy.pause()
        started = trio.current_time()
        with trio.fail_after(1 + MARGIN + 5), trio.move_on_after(1):
            async with open_durable_stream(engine, "c", **durable_options(outbox)):
                pytest.fail("opened against a silent server")
        assert trio.current_time() - started < 1 + MARGIN
        nursery.cancel_scope.cancel()


async def test_opening_a_durable_stream_fails_after_connect_timeout(pg_url: str, outbox: Any) -> None:
    async with trio.open_nursery() as nursery:
        proxy, engine = await start_proxy(nursery, pg_url)
        proxy.pause()
        started = trio.current_time()
        with trio.fail_after(1 + MARGIN + 5), pytest.raises(ConnectError, match=r"connect_timeout=1s"):
            async with open_durable_stream(engine, "c", **durable_options(outbox, connect_timeout=1)):
                pass
        assert trio.current_time() - started < 1 + MARGIN
        nursery.cancel_scope.cancel()


async def test_a_durable_stream_whose_server_goes_silent_closes_within_close_timeout(
    pg_url: str, pg_dsn: str, outbox: Any
) -> None:
    _, _, table = outbox
    async with trio.open_nursery() as nursery:
        proxy, engine = await start_proxy(nursery, pg_url)
        with trio.fail_after(30):
            async with open_durable_stream(
                engine, "c", **durable_options(outbox, poll_interval=0.05, close_timeout=1.0)
            ) as events:
                run_sql(pg_dsn, sql.SQL("INSERT INTO {} (n) VALUES (1)").format(sql.Identifier(table)))  # type: ignore[arg-type]
                await events.receive()
                proxy.pause()  # the reader polls every 50 ms: a query is in flight soon
                await trio.sleep(0.3)  # let it get stuck (the behaviour under test, not a wait)
                leaving = trio.current_time()
            assert trio.current_time() - leaving < 1.0 + MARGIN
        nursery.cancel_scope.cancel()


async def test_a_silent_server_ends_reconnecting_after_reconnect_timeout(pg_url: str, outbox: Any) -> None:
    async with trio.open_nursery() as nursery:
        proxy, engine = await start_proxy(nursery, pg_url)
        options = durable_options(
            outbox, poll_interval=0.05, query_timeout=0.5, reconnect_timeout=1.0, close_timeout=1.0
        )

        async def consume() -> None:
            async with open_durable_stream(engine, "c", **options) as events:
                proxy.pause()
                async for _ in events:
                    pass

        started = trio.current_time()
        with trio.fail_after(30), pytest.raises(ConnectionLostError, match="could not reconnect"):
            await consume()
        # A query's limit, reconnecting until reconnect_timeout (each attempt cut to it), closing.
        assert trio.current_time() - started < 0.5 + 1.0 + 1.0 + MARGIN
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("operation", ["status", "install", "watch_table"])
@pytest.mark.parametrize("silent_from", ["connect", "transaction"])
async def test_async_installer_calls_honour_cancellation(
    pg_url: str, outbox: Any, operation: str, silent_from: str
) -> None:
    schema, channel, table = outbox
    async with trio.open_nursery() as nursery:
        url = sqlalchemy.make_url(pg_url)
        # "transaction": the server goes silent once the installer's transaction has begun.
        proxy = TcpProxy(
            url.host or "127.0.0.1",
            url.port or 5432,
            pause_on=b"SET LOCAL search_path" if silent_from == "transaction" else None,
        )
        port = await nursery.start(proxy.run)
        engine = sqlalchemy.create_engine(url.set(host="127.0.0.1", port=port), poolclass=NullPool)
        installer = Installer(engine, schema=schema, channel=channel, connect_timeout=2)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "status": lambda: installer.aio.status(),
            "install": lambda: installer.aio.install(durable=True),
            "watch_table": lambda: installer.aio.watch_table(table, durable=True),
        }
        call = calls[operation]
        if silent_from == "connect":
            proxy.pause()
        started = trio.current_time()
        with trio.fail_after(1 + MARGIN + 5), trio.move_on_after(1):
            await call()
        assert trio.current_time() - started < 1 + MARGIN
        # The thread given up on ends: at once (its socket is shut down) once connected,
        # within connect_timeout while still connecting.
        with trio.fail_after(2 + MARGIN):
            while proxy.clients_closed < 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


def test_installer_connect_timeout(pg_url: str) -> None:
    # A port that accepts TCP and never answers, blocking-style: the sync API is bounded too.
    async def main() -> float:
        async with trio.open_nursery() as nursery:
            proxy, engine = await start_proxy(nursery, pg_url)
            proxy.pause()
            installer = Installer(engine, connect_timeout=1)
            started = trio.current_time()
            with pytest.raises(InstallError, match="cannot connect"):
                await trio.to_thread.run_sync(installer.status)
            nursery.cancel_scope.cancel()
            return trio.current_time() - started

    # libpq's connect_timeout counts whole seconds, at least 2.
    assert trio.run(main) < 2 + MARGIN
