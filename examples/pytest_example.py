"""Tests against a real Postgres with trio_pgevents' pytest plugin.

    python examples/pytest_example.py     # = pytest -o trio_mode=true examples/pytest_example.py

In your project: ``pip install 'trio-pgevents[test]'`` (pytest, pytest-trio and
the embedded server) and turn on pytest-trio's trio mode, so ``async def``
tests and fixtures run under Trio::

    # pyproject.toml
    [tool.pytest.ini_options]
    trio_mode = true

Installing trio_pgevents registers the plugin: no ``conftest.py`` needed. Its
fixtures: ``pg_url``, ``pg_dsn``, ``pg_engine`` and ``pg_server`` are
session-scoped -- one embedded server, one database, shared by every test of
the session (or the server in ``$TRIO_PGEVENTS_TEST_DSN``), so give each test
its own table, channel and installer schema. ``open_stream`` and ``notify``
are per test.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest
import sqlalchemy
import trio
from sqlalchemy.engine import Engine

from trio_pgevents import EventStream, Installer, RowChange, decode_trigger_payload, open_event_stream

_names = itertools.count()


@pytest.fixture
def name() -> str:
    """A table, channel or schema name no other test of the session uses."""
    return f"example_{next(_names)}"


async def test_a_notification_arrives(
    open_stream: Callable[..., Awaitable[EventStream]], notify: Callable[[str, str], Awaitable[None]]
) -> None:
    stream = await open_stream(["orders"])  # closed at the end of the test
    await notify("orders", "42")
    with trio.fail_after(10):  # wait for a condition under a deadline, never with a sleep
        event = await stream.receive()
    assert event.payload == "42"


async def test_an_insert_into_a_watched_table_is_a_row_change(pg_engine: Engine, name: str) -> None:
    with pg_engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE {name} (id int PRIMARY KEY, total numeric)")
    installer = Installer(pg_engine, schema=f"{name}_events", channel=name)
    await installer.aio.install()
    await installer.aio.watch_table(name)
    try:
        # Payloads are decoded into RowChange on the default channel "pgevents";
        # on a channel of your own, say so with a decoder.
        decoders = {name: decode_trigger_payload}
        async with open_event_stream(pg_engine, [name], decoders=decoders) as events:
            with pg_engine.begin() as connection:
                connection.execute(sqlalchemy.text(f"INSERT INTO {name} VALUES (1, 9.99)"))
            with trio.fail_after(10):
                change = await events.receive()
        assert isinstance(change, RowChange)
        assert (change.method, change.table_name) == ("INSERT", name)
        assert change.new_data is not None
        assert str(change.new_data["total"]) == "9.99"  # a Decimal: every digit
    finally:
        await installer.aio.uninstall()


def test_a_plain_test_can_use_the_database_too(pg_engine: Engine) -> None:
    with pg_engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW wal_level").scalar() == "logical"


if __name__ == "__main__":  # pytest in a process of its own: this one has imported the package already
    options = ["-q", "-p", "no:cacheprovider", "-o", "trio_mode=true"]
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", *options, __file__]))
