"""The three streams behave as one where they share a concept (issue 14).

Every test here runs once per stream (LISTEN, durable, change): the same
bad option is the same :class:`ConfigurationError` before anything connects;
against a server that accepts TCP and never answers, opening honours
``connect_timeout`` and leaving ``async with`` honours ``close_timeout``;
``statistics()`` has the same health fields. Bounds asserted are the option
under test plus a margin a busy 2-core machine meets; every case is itself
bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from trio_pgevents import (
    ConfigurationError,
    ConnectError,
    Installer,
    SourceStatistics,
    open_change_stream,
    open_durable_stream,
    open_event_stream,
)

from .conftest import Names, Query
from .tcp_proxy import TcpProxy

#: What a busy machine may add to a bound (scheduling, thread start, a query).
MARGIN = 2.0
KINDS = ["listen", "durable", "change"]

Opener = Callable[..., AbstractAsyncContextManager[Any]]


@dataclasses.dataclass
class Setup:
    """What each stream needs on the server: a table, an outbox, a slot's names."""

    table: str
    schema: str
    channel: str
    names: Names

    def opener(self, kind: str) -> Opener:
        """``opener(engine, **options)`` opens a stream of ``kind`` on this setup."""
        if kind == "listen":
            return lambda engine, **options: open_event_stream(engine, [self.channel], **options)
        if kind == "durable":
            return lambda engine, **options: open_durable_stream(
                engine, "core", schema=self.schema, channel=self.channel, **options
            )
        slot, publication = self.names
        return lambda engine, **options: open_change_stream(
            engine, slot=slot, publication=publication, tables=[self.table], **options
        )


@pytest.fixture
async def setup(
    pg_url: str, query: Query, unique: Callable[[str], str], cdc_names: Callable[..., Names]
) -> AsyncIterator[Setup]:
    table, schema, channel = unique("core_t"), unique("core"), unique("corech")
    await query(f"CREATE TABLE public.{table} (id serial PRIMARY KEY, n int)")
    installer = Installer(pg_url, schema=schema, channel=channel)
    await installer.aio.watch_table(table, durable=True)
    yield Setup(table, schema, channel, cdc_names())
    await installer.aio.uninstall()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A URL whose server accepts TCP (the kernel's backlog) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"postgresql+psycopg2://someone:secret@127.0.0.1:{sock.getsockname()[1]}/nowhere"


async def start_proxy(nursery: trio.Nursery, pg_url: str) -> tuple[TcpProxy, Engine]:
    url = sqlalchemy.make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    port = await nursery.start(proxy.run)
    return proxy, sqlalchemy.create_engine(url.set(host="127.0.0.1", port=port), poolclass=NullPool)


#: (option, bad value): each opener must refuse it the same way before connecting.
BAD = [
    ("bogus", 1),
    ("backoff_initial", "x"),
    ("backoff_max", -1),
    ("connect_timeout", 0),
    ("close_timeout", math.nan),
    ("keepalive", "on"),
    ("max_buffer_size", 0),
    ("reconnect", "yes"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
async def test_the_same_bad_option_is_the_same_error_before_connecting(
    silent_url: str, name: str, value: Any
) -> None:
    setup = Setup("t", "s", "c", ("slot", "pub"))
    messages = set()
    for kind in KINDS:
        # Connecting to silent_url would hang: an answer within a second was not connecting.
        with trio.fail_after(1 + MARGIN), pytest.raises(ConfigurationError) as caught:
            async with setup.opener(kind)(silent_url, **{name: value}):
                pytest.fail("opened with a bad option")  # pragma: no cover
        message = str(caught.value)
        assert name in message
        # An unknown option's message names the opener and lists what it takes; the rest is the same.
        messages.add(re.sub(r"^open_\w+\(\) | \(it takes .*\)$", "", message))
    assert len(messages) == 1, messages


@pytest.mark.parametrize("kind", KINDS)
async def test_opening_against_a_silent_server_honours_connect_timeout(silent_url: str, kind: str) -> None:
    setup = Setup("t", "s", "c", ("slot", "pub"))
    started = trio.current_time()
    with trio.fail_after(1 + 2 * MARGIN), pytest.raises(ConnectError) as caught:
        async with setup.opener(kind)(silent_url, connect_timeout=1):
            pytest.fail("opened against a silent server")  # pragma: no cover
    assert trio.current_time() - started < 1 + MARGIN
    assert "secret" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_whose_server_goes_silent_closes_within_close_timeout(
    pg_url: str, query: Query, setup: Setup, kind: str
) -> None:
    async with trio.open_nursery() as nursery:
        proxy, engine = await start_proxy(nursery, pg_url)
        with trio.fail_after(30):
            async with setup.opener(kind)(engine, close_timeout=1.0) as events:
                await query(f"INSERT INTO public.{setup.table} (n) VALUES (1)")
                if kind == "listen":
                    await query("SELECT pg_notify(%s, 'x')", (setup.channel,))
                await events.receive()  # it works through the proxy...
                proxy.pause()  # ...and now the server says nothing more
                leaving = trio.current_time()
            assert trio.current_time() - leaving < 1.0 + MARGIN
        engine.dispose()
        nursery.cancel_scope.cancel()


HEALTH = {"events_received", "buffered", "sources", "connected", "reconnects", "last_gap"}


@pytest.mark.parametrize("kind", KINDS)
async def test_every_stream_has_the_same_health_figures(
    pg_url: str, query: Query, setup: Setup, kind: str
) -> None:
    with trio.fail_after(30):
        async with setup.opener(kind)(pg_url) as events:
            await query(f"INSERT INTO public.{setup.table} (n) VALUES (1)")
            if kind == "listen":
                await query("SELECT pg_notify(%s, 'x')", (setup.channel,))
            await events.receive()
            stats = events.statistics()
    assert all(hasattr(stats, name) for name in HEALTH), HEALTH - set(dir(stats))
    assert stats.events_received >= 1
    assert stats.connected is True
    assert stats.reconnects == 0
    assert stats.last_gap is None
    assert stats.sources
    assert all(isinstance(source, SourceStatistics) for source in stats.sources)
    assert all(source.backend_pid for source in stats.sources)
    assert all("127.0.0.1" in source.source for source in stats.sources)
