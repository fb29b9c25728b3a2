"""A durable consumer for the crash test: killed with SIGKILL and started again.

``python tests/durable_crash_consumer.py URL SCHEMA CHANNEL CONSUMER OUTPUT MODE``

MODE ``ack``: appends the ``n`` column of every event to the file OUTPUT (one
line per event, ``os.write`` on an ``O_APPEND`` file: a line is either fully
there or not at all), then asks for the next event, which acknowledges the
previous one (``ack_every=1``: stored before the next event is handed out).

MODE ``tx``: inserts ``n`` into the table OUTPUT and stores the position in the
same transaction (``ack_in_transaction``): exactly-once.

Writes ``started`` (file) once the stream is open and active (the consumer is
exclusive: the killed process's lease expires after ``LEASE`` seconds), then
runs until killed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import psycopg2
import trio
from psycopg2 import sql

from trio_pgevents import DurableStream, RowChange, open_durable_stream
from trio_pgevents.testing._database import libpq_dsn

#: The consumer's lease: how long a killed process holds the name.
LEASE = 1.0


async def by_file(url: str, schema: str, channel: str, consumer: str, output: str) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        options: dict[str, Any] = {"ack_every": 1, "batch_size": 500, "lease_timeout": LEASE}
        async with open_durable_stream(url, consumer, schema=schema, channel=channel, **options) as events:
            await wait_until_active(events)
            os.write(fd, b"started\n")
            async for event in events:
                if isinstance(event, RowChange) and event.new_data is not None:
                    os.write(fd, f"{event.new_data['n']}\n".encode())
    finally:
        os.close(fd)


async def by_transaction(url: str, schema: str, channel: str, consumer: str, table: str) -> None:
    conn = psycopg2.connect(libpq_dsn(url))
    insert = sql.SQL("INSERT INTO {} (n) VALUES (%s)").format(sql.Identifier(table))
    try:

        def record(stream: DurableStream, event: RowChange) -> None:
            assert event.new_data is not None
            with conn, conn.cursor() as cursor:  # one transaction: the effect and the position
                cursor.execute(insert, (event.new_data["n"],))
                stream.ack_in_transaction(cursor, event)

        async with open_durable_stream(
            url, consumer, schema=schema, channel=channel, auto_ack=False, batch_size=500, lease_timeout=LEASE
        ) as events:
            await wait_until_active(events)
            await trio.to_thread.run_sync(record_start, conn, table)
            async for event in events:
                if isinstance(event, RowChange) and event.new_data is not None:
                    await trio.to_thread.run_sync(record, events, event)
    finally:
        conn.close()


async def wait_until_active(events: DurableStream) -> None:
    """The consumer is exclusive: a new process waits for the killed one's lease to expire."""
    while not events.statistics().active:
        await trio.sleep(0.02)


def record_start(conn: Any, table: str) -> None:
    with conn, conn.cursor() as cursor:
        cursor.execute(sql.SQL("INSERT INTO {} (n) VALUES (-1)").format(sql.Identifier(table)))


if __name__ == "__main__":
    url, schema, channel, consumer, output, mode = sys.argv[1:7]
    if mode == "tx":
        trio.run(by_transaction, url, schema, channel, consumer, output)
    else:
        trio.run(by_file, url, schema, channel, consumer, output)
