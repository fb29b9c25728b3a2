"""A change stream never hangs on a server that accepts TCP and never answers.

The server is the plugin's embedded Postgres reached through ``TcpProxy``,
whose ``pause()`` makes it silent (connections accepted, bytes held, no
answer). Every case is bounded by ``trio.fail_after``; the time limits
asserted are the option under test plus a margin a busy 2-core machine
meets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from trio_pgevents import (
    ConnectError,
    ConnectionLostError,
    RowChange,
    open_change_stream,
)

from .conftest import Query
from .tcp_proxy import TcpProxy

#: What a busy machine may add to a bound (scheduling, thread start, a query).
MARGIN = 2.0


@pytest.fixture
async def table(query: Query, unique: Callable[[str], str]) -> str:
    name = unique("cdcf_t")
    await query(f"CREATE TABLE public.{name} (id int PRIMARY KEY)")
    return name


def proxied(pg_url: str, port: int) -> Engine:
    """An engine for the test database through the proxy on ``port``."""
    url = sqlalchemy.make_url(pg_url).set(host="127.0.0.1", port=port)
    return sqlalchemy.create_engine(url, poolclass=NullPool)


async def start_proxy(nursery: trio.Nursery, pg_url: str, **kwargs: Any) -> tuple[TcpProxy, Engine]:
    url = sqlalchemy.make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432, **kwargs)
    port = await nursery.start(proxy.run)
    return proxy, proxied(pg_url, port)


async def test_connect_timeout_bounds_opening_against_a_silent_server(
    pg_url: str, table: str, cdc_names: Any
) -> None:
    slot, publication = cdc_names()
    async with trio.open_nursery() as nursery:
        proxy, engine = await start_proxy(nursery, pg_url)
        proxy.pause()
        started = trio.current_time()
        with trio.fail_after(30), pytest.raises(ConnectError, match=r"connect_timeout=1\.5s") as info:
            async with open_change_stream(
                engine, slot=slot, publication=publication, tables=[table], connect_timeout=1.5
            ):
                pass  # pragma: no cover
        assert trio.current_time() - started < 1.5 + MARGIN
        assert "127.0.0.1" in str(info.value)  # names the source
        engine.dispose()
        nursery.cancel_scope.cancel()


async def test_move_on_after_around_open_is_honoured_promptly(
    pg_url: str, table: str, cdc_names: Any
) -> None:
    # The default connect_timeout (10 s) is far away: the caller's own deadline wins.
    slot, publication = cdc_names()
    async with trio.open_nursery() as nursery:
        proxy, engine = await start_proxy(nursery, pg_url)
        proxy.pause()
        started = trio.current_time()
        with trio.fail_after(30):
            with trio.move_on_after(1) as scope:
                async with open_change_stream(engine, slot=slot, publication=publication, tables=[table]):
                    pass  # pragma: no cover
        assert scope.cancelled_caught
        assert trio.current_time() - started < 1 + MARGIN
        # The abandoned thread's socket was shut down: the proxy sees the client
        # go away while the server is still silent.
        with trio.fail_after(10):
            while proxy.clients_closed < proxy.accepted:
                await trio.sleep(0.01)
        engine.dispose()
        nursery.cancel_scope.cancel()


async def test_server_silent_at_start_replication_is_bounded_by_connect_timeout(
    pg_url: str, table: str, cdc_names: Any
) -> None:
    slot, publication = cdc_names()
    async with trio.open_nursery() as nursery:
        # Connecting and preparing work; the server goes silent at START_REPLICATION.
        proxy, engine = await start_proxy(nursery, pg_url, pause_on=b"START_REPLICATION")
        started = trio.current_time()
        with trio.fail_after(30), pytest.raises(ConnectError, match=r"connect_timeout=1\.5s"):
            async with open_change_stream(
                engine, slot=slot, publication=publication, tables=[table], connect_timeout=1.5
            ):
                pass  # pragma: no cover
        assert not proxy.forwarding  # it really hung at START_REPLICATION
        assert trio.current_time() - started < 1.5 + MARGIN + 1.5  # prepare + replication attempt
        with trio.fail_after(10):
            while proxy.clients_closed < proxy.accepted:
                await trio.sleep(0.01)
        engine.dispose()
        nursery.cancel_scope.cancel()


async def test_reconnect_timeout_ends_reconnecting_while_an_attempt_hangs(
    pg_url: str, query: Query, table: str, cdc_names: Any
) -> None:
    slot, publication = cdc_names()
    async with trio.open_nursery() as nursery:
        proxy, engine = await start_proxy(nursery, pg_url)
        lost_at = math.inf

        async def consume_until_failure() -> None:
            nonlocal lost_at
            async with open_change_stream(
                engine,
                slot=slot,
                publication=publication,
                tables=[table],
                reconnect_timeout=2,
                connect_timeout=30,  # an attempt alone would outlast reconnect_timeout
            ) as changes:
                await query(f"INSERT INTO {table} VALUES (1)")
                first = await changes.receive()
                assert isinstance(first, RowChange)
                # The connection drops; the server then accepts and never answers.
                proxy.pause()
                proxy.drop_all()
                lost_at = trio.current_time()
                async for _ in changes:
                    pass

        with trio.fail_after(60), pytest.raises(ConnectionLostError, match="could not reconnect"):
            await consume_until_failure()
        # reconnect_timeout, then leaving async with (close_timeout, default 1 s).
        assert trio.current_time() - lost_at < 2 + 1 + MARGIN
        engine.dispose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("when", ["streaming", "reconnecting"])
async def test_leaving_async_with_takes_close_timeout_whatever_the_server_does(
    pg_url: str, query: Query, table: str, cdc_names: Any, when: str
) -> None:
    slot, publication = cdc_names()
    close_timeout = 0.5
    async with trio.open_nursery() as nursery:
        proxy, engine = await start_proxy(nursery, pg_url)
        with trio.fail_after(60):
            async with open_change_stream(
                engine, slot=slot, publication=publication, tables=[table], close_timeout=close_timeout
            ) as changes:
                await query(f"INSERT INTO {table} VALUES (1)")
                assert isinstance(await changes.receive(), RowChange)
                proxy.pause()  # silent mid-stream
                if when == "reconnecting":
                    proxy.drop_all()  # ... and every reconnect attempt hangs
                    with trio.fail_after(10):
                        while changes.connected:
                            await trio.sleep(0.01)
                leaving = trio.current_time()
            assert trio.current_time() - leaving < close_timeout + MARGIN
        engine.dispose()
        nursery.cancel_scope.cancel()
