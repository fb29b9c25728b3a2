"""A cache kept in sync with a table, reloaded after a gap.

    python examples/cache_sync.py

Runs on an embedded server of its own (``pip install 'trio-pgevents[embedded]'``).
The order of the steps is what makes it correct:

1. open the stream first: when the body starts, LISTEN is done, so every
   change committed from then on will be delivered;
2. then load the table: a change committed before the load is in it, one
   committed after is delivered, one in between is in both -- applying it
   twice is harmless, because events are applied by key;
3. after a ``StreamGap`` (the connection dropped and came back) reload:
   changes committed while nobody listened were not delivered.

To show step 3 the example terminates the stream's own backend halfway.
"""

from __future__ import annotations

from typing import Any

import psycopg2
import sqlalchemy
import trio

from trio_pgevents import Installer, RowChange, StreamGap, open_event_stream
from trio_pgevents.testing import EmbeddedPostgres

Cache = dict[int, str]


def load(engine: sqlalchemy.Engine) -> Cache:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT id, name FROM products")
        return {int(id_): str(name) for id_, name in rows}


def apply(cache: Cache, change: RowChange) -> None:
    """Apply one change to the cache, by primary key (safe to apply twice)."""
    if change.method in ("INSERT", "UPDATE") and change.new_data is not None:
        cache[change.new_data["id"]] = change.new_data["name"]
    elif change.method == "DELETE" and change.old_data is not None:
        cache.pop(change.old_data["id"], None)
    elif change.method == "TRUNCATE":
        cache.clear()


def sql(dsn: str, statement: str, params: Any = None) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(statement, params)
    finally:
        conn.close()


async def write(dsn: str, statement: str, params: Any = None) -> None:
    await trio.to_thread.run_sync(sql, dsn, statement, params)


async def keep_in_sync(engine: sqlalchemy.Engine, dsn: str) -> None:
    async with open_event_stream(engine, ["pgevents"]) as events:  # 1. listen
        cache = await trio.to_thread.run_sync(load, engine)  # 2. load
        print(f"loaded {len(cache)} products")
        await write(dsn, "INSERT INTO products VALUES (3, 'lamp')")
        await write(dsn, "UPDATE products SET name = 'big chair' WHERE id = 2")
        await write(dsn, "DELETE FROM products WHERE id = 1")
        async for event in events:
            if isinstance(event, StreamGap):  # 3. reload
                cache = await trio.to_thread.run_sync(load, engine)
                print(f"gap: reloaded {len(cache)} products")
                await write(dsn, "INSERT INTO products VALUES (99, 'the end')")
            elif isinstance(event, RowChange):
                apply(cache, event)
                print(f"{event.method} {event.new_data or event.old_data}")
                if event.method == "DELETE":  # break the connection, change a row meanwhile
                    pid = events.statistics().sources[0].backend_pid
                    await write(dsn, "SELECT pg_terminate_backend(%s)", (pid,))
                    await write(dsn, "INSERT INTO products VALUES (4, 'desk')")
                elif event.new_data and event.new_data["id"] == 99:
                    break
        table = await trio.to_thread.run_sync(load, engine)
        print(f"cache == table: {cache == table} ({sorted(cache.values())})")


def main() -> None:
    with EmbeddedPostgres() as server:
        sql(server.dsn, "CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL)")
        sql(server.dsn, "INSERT INTO products VALUES (1, 'table'), (2, 'chair')")
        engine = sqlalchemy.create_engine(server.url)
        Installer(engine).install()  # schema "pgevents", channel "pgevents"
        Installer(engine).watch_table("products")
        trio.run(keep_in_sync, engine, server.dsn)
        engine.dispose()


if __name__ == "__main__":
    main()
