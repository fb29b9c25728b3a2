"""The tutorial's program (docs/tutorial.md): a table's changes as a Trio stream.

    python examples/tutorial.py

Starts an embedded server (``pip install 'trio-pgevents[embedded]'``), creates
a table, installs the triggers that turn its changes into events, then
follows them while a background task places, pays and cancels an order.
"""

from __future__ import annotations

import sqlalchemy
import trio

from trio_pgevents import Installer, RowChange, StreamGap, open_event_stream
from trio_pgevents.testing import EmbeddedPostgres


def set_up(engine: sqlalchemy.Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric)")
    installer = Installer(engine)  # library schema "pgevents", channel "pgevents"
    installer.install()  # the trigger function (idempotent: run it at every deploy)
    installer.watch_table("orders")  # AFTER INSERT/UPDATE/DELETE and TRUNCATE triggers


async def place_orders(engine: sqlalchemy.Engine) -> None:
    def write() -> None:
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO orders VALUES (1, 'new', 19.90)")
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE orders SET status = 'paid' WHERE id = 1")
        with engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM orders WHERE id = 1")

    await trio.to_thread.run_sync(write)  # blocking database calls: in a thread


async def follow(engine: sqlalchemy.Engine) -> None:
    async with open_event_stream(engine, ["pgevents"]) as events, trio.open_nursery() as nursery:
        nursery.start_soon(place_orders, engine)  # LISTEN is done: nothing written now is missed
        async for event in events:
            if isinstance(event, RowChange):
                print(event.method, event.table_name, event.old_data, "->", event.new_data)
                if event.method == "DELETE":
                    break
            elif isinstance(event, StreamGap):
                print("reconnected; changes may have been missed since", event.disconnected_at)


def main() -> None:
    with EmbeddedPostgres() as server:  # a throw-away server in a temporary directory
        engine = sqlalchemy.create_engine(server.url)  # postgresql+psycopg2://...
        set_up(engine)
        trio.run(follow, engine)
        engine.dispose()


if __name__ == "__main__":
    main()
