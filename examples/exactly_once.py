"""An exactly-once durable worker: the effect and the position commit together.

    python examples/exactly_once.py

Runs on an embedded server of its own (``pip install 'trio-pgevents[embedded]'``).
The table ``orders`` is watched in durable mode: every change is appended to
the outbox in the writer's transaction. The consumer ``billing`` writes one
invoice per order and, in the same transaction, stores that it processed the
event (``ack_in_transaction``). If the process dies at any point, either both
the invoice and the position were committed or neither was: no invoice is
lost, none is written twice. The example runs the consumer twice: the second
run bills only the order placed since the first.

``ack_in_transaction`` needs a psycopg2 cursor on the same database: here a
connection of the worker's own (``psycopg2.connect``); a pooled one from a
SQLAlchemy engine works too (``engine.raw_connection()``).
"""

from __future__ import annotations

from typing import Any

import psycopg2
import sqlalchemy
import trio

from trio_pgevents import DurableStream, Installer, RowChange, open_durable_stream
from trio_pgevents.testing import EmbeddedPostgres


def bill(conn: Any, events: DurableStream, event: RowChange) -> None:
    """One transaction: the invoice, and the consumer's position (blocking: run it in a thread)."""
    assert event.new_data is not None
    with conn, conn.cursor() as cursor:  # commits on success, rolls back on any error
        cursor.execute(
            "INSERT INTO invoices (order_id, amount) VALUES (%s, %s)",
            (event.new_data["id"], event.new_data["total"]),
        )
        events.ack_in_transaction(cursor, event)


async def run_billing(engine: sqlalchemy.Engine, dsn: str, last_order: int) -> int:
    """Bill the orders not billed yet, up to ``last_order``; return how many this run billed."""
    billed = 0
    conn = psycopg2.connect(dsn)
    try:
        async with open_durable_stream(engine, "billing", auto_ack=False) as events:
            async for event in events:
                if not (isinstance(event, RowChange) and event.method == "INSERT"):
                    await events.ack(event)  # gaps, other operations: nothing to bill
                    continue
                await trio.to_thread.run_sync(bill, conn, events, event)
                billed += 1
                if event.new_data and event.new_data["id"] == last_order:
                    break
    finally:
        conn.close()
    return billed


def sql(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        conn.close()


def main() -> None:
    with EmbeddedPostgres() as server:
        sql(server.dsn, "CREATE TABLE orders (id int PRIMARY KEY, total numeric(10, 2) NOT NULL)")
        sql(server.dsn, "CREATE TABLE invoices (order_id int PRIMARY KEY, amount numeric(10, 2) NOT NULL)")
        engine = sqlalchemy.create_engine(server.url)
        installer = Installer(engine)
        installer.install(durable=True)
        installer.watch_table("orders", durable=True)
        for n in range(1, 6):  # five orders, one transaction each
            sql(server.dsn, f"INSERT INTO orders VALUES ({n}, {n}9.99)")
        print("first run billed", trio.run(run_billing, engine, server.dsn, 5))
        sql(server.dsn, "INSERT INTO orders VALUES (6, 69.99)")
        # A new run starts after the last stored position: orders 1-5 are not billed again.
        print("second run billed", trio.run(run_billing, engine, server.dsn, 6))
        [(count, total)] = sql(server.dsn, "SELECT count(*), sum(amount) FROM invoices")
        print(f"invoices: {count}, total {total}")
        engine.dispose()


if __name__ == "__main__":
    main()
