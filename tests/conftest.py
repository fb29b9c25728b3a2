"""Shared helpers; the database fixtures come from trio_pgevents' pytest plugin."""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2
import pytest
import trio

from trio_pgevents._consumer import BufferedStream

Query = Callable[..., Awaitable[list[tuple[Any, ...]]]]

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
