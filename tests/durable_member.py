"""A durable consumer process for the scale-out tests: killed with SIGKILL and started again.

``python tests/durable_member.py URL SCHEMA CHANNEL CONSUMER EFFECTS LEASE [PARTITIONS]``

Processes each event exactly once: inserts ``(k, n, member)`` into the table
EFFECTS and stores the position in the same transaction
(``ack_in_transaction``). With PARTITIONS it joins a consumer group of that
many partitions; without, it is an exclusive consumer (the second one
started stands by). Prints ``started`` once its stream is open, then runs
until killed (or until SIGTERM, which hands its leases over at once).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import psycopg2
import trio
from psycopg2 import sql

from trio_pgevents import DurableStream, LeaseLostError, RowChange, open_durable_stream
from trio_pgevents.testing._database import libpq_dsn


async def main(
    url: str, schema: str, channel: str, consumer: str, effects: str, lease: float, parts: int
) -> None:
    conn = psycopg2.connect(libpq_dsn(url))
    insert = sql.SQL("INSERT INTO {} (k, n, member) VALUES (%s, %s, %s)").format(sql.Identifier(effects))
    member = str(os.getpid())

    def record(stream: DurableStream, event: RowChange) -> None:
        assert event.new_data is not None
        try:
            with conn, conn.cursor() as cursor:  # one transaction: the effect and the position
                cursor.execute(insert, (event.new_data["k"], event.new_data["n"], member))
                stream.ack_in_transaction(cursor, event)
        except LeaseLostError:
            pass  # rolled back: the member holding the partition now processes it

    options: dict[str, Any] = {
        "schema": schema,
        "channel": channel,
        "auto_ack": False,
        "lease_timeout": lease,
    }
    if parts:
        options |= {"group": True, "partitions": parts}
    try:
        async with open_durable_stream(url, consumer, **options) as events:
            print("started", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:

                    async def stop_on_sigterm() -> None:
                        async for _ in signals:
                            nursery.cancel_scope.cancel()

                    nursery.start_soon(stop_on_sigterm)
                    async for event in events:
                        if isinstance(event, RowChange) and event.new_data is not None:
                            await trio.to_thread.run_sync(record, events, event)
    finally:
        conn.close()


if __name__ == "__main__":
    url, schema, channel, consumer, effects, lease = sys.argv[1:7]
    partitions = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    trio.run(main, url, schema, channel, consumer, effects, float(lease), partitions)
