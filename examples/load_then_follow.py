"""Load a table, then follow its changes: an in-memory copy that misses nothing (the LISTEN path).

    python examples/load_then_follow.py          # embedded Postgres, writers running throughout
    python examples/load_then_follow.py URL      # your server (makes, then drops, its own table)

Loading a table and then listening for its changes has a race: a change
committed after the SELECT read its rows but before LISTEN took effect is in
neither. The recipe closes it by doing the two the other way round:

1. open the event stream first: when ``open_event_stream`` returns, LISTEN
   is in effect, so every change committed from then on arrives as an event;
2. then SELECT the table: it holds every change committed before the SELECT
   began (so everything committed before LISTEN, too);
3. apply the events in the order they arrive (NOTIFY delivers them in commit
   order): INSERT and UPDATE store ``new_data`` under its key (an UPDATE that
   changed the key removes the old one first), DELETE removes the key,
   TRUNCATE empties the table. Events for changes the SELECT already saw are
   applied again; since they come in commit order, the last one wins and the
   copy ends up exactly as the table is;
4. a ``StreamGap`` (the connection was lost: events may be missing) or an
   ``Overflow`` (events were dropped): load again (step 2) -- the stream is
   already listening again when it delivers the gap;
5. a ``RowChange`` whose payload was ``truncated`` (a row too big for NOTIFY):
   read that row again by its key.

The demo runs four writers (insert, update, delete) before, during and after
the load, then checks that the copy equals ``SELECT *``.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import threading
import time
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extras
import sqlalchemy
import trio
from psycopg2 import sql

from trio_pgevents import (
    Installer,
    Overflow,
    RowChange,
    StreamGap,
    decode_trigger_payload,
    open_event_stream,
)
from trio_pgevents.testing import EmbeddedPostgres

Rows = dict[Any, dict[str, Any]]


# ---- the recipe ----------------------------------------------------------------------------------


def load(dsn: str, table: str, key: str, where: Any = None) -> Rows:
    """SELECT the table (or the rows ``where`` picks), keyed by ``key`` (blocking: run it in a thread)."""
    statement = sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))
    params: tuple[Any, ...] = ()
    if where is not None:
        statement = sql.SQL("{} WHERE {} = %s").format(statement, sql.Identifier(key))
        params = (where,)
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
            cursor.execute(statement, params)
            return {row[key]: dict(row) for row in cursor.fetchall()}
    finally:
        conn.close()


async def apply(rows: Rows, change: RowChange, dsn: str, table: str, key: str) -> None:
    """Step 3 (and 5): apply one change to the copy."""
    if change.truncated and change.method in ("INSERT", "UPDATE"):
        # The payload lost its row: read it again (the newest version is what we want anyway).
        old_key = (change.old_data or {}).get(key)
        new_key = (change.new_data or {}).get(key, old_key)
        if old_key is not None and old_key != new_key:
            rows.pop(old_key, None)
        rows.pop(new_key, None)
        rows.update(await trio.to_thread.run_sync(load, dsn, table, key, new_key))
    elif change.method in ("INSERT", "UPDATE") and change.new_data is not None:
        if change.old_data is not None and change.old_data.get(key) != change.new_data[key]:
            rows.pop(change.old_data[key], None)  # the key changed
        rows[change.new_data[key]] = change.new_data
    elif change.method == "DELETE" and change.old_data is not None:
        rows.pop(change.old_data[key], None)
    elif change.method == "TRUNCATE":
        rows.clear()


async def follow(
    url: str,
    dsn: str,
    table: str,
    channel: str,
    *,
    key: str = "id",
    until: Any = None,
    before_load: Any = None,
) -> Rows:
    """Keep a copy of ``table``: LISTEN first, then load, then apply events (until ``until(change)``).

    ``before_load`` (an async callable) runs between the two, to show that
    changes committed there are not lost.
    """
    decoders = {channel: decode_trigger_payload}
    async with open_event_stream(url, [channel], decoders=decoders) as events:  # 1. LISTEN first
        if before_load is not None:
            await before_load()
        rows = await trio.to_thread.run_sync(load, dsn, table, key)  # 2. then load
        print(f"loaded {len(rows)} rows", flush=True)
        async for event in events:  # 3. then apply, in commit order
            if isinstance(event, (StreamGap, Overflow)):  # 4. events may be missing: load again
                rows = await trio.to_thread.run_sync(load, dsn, table, key)
                continue
            if not isinstance(event, RowChange) or event.table_name != table:
                continue
            await apply(rows, event, dsn, table, key)
            if until is not None and until(event):
                break
    return rows


# ---- the demo: writers throughout, then compare --------------------------------------------------


class Writers:
    """Four writers inserting, updating and deleting rows while the copy is made and followed."""

    def __init__(self, dsn: str, table: str, initial: int) -> None:
        self.dsn, self.table, self.initial = dsn, table, initial
        self.stop = threading.Event()
        self.ops = 0
        self._waiting: list[tuple[int, trio.Event]] = []
        self._token = trio.lowlevel.current_trio_token()

    def _wrote(self) -> None:
        """In Trio: one more change was committed."""
        self.ops += 1
        for target, reached in list(self._waiting):
            if self.ops >= target:
                reached.set()
                self._waiting.remove((target, reached))

    def write(self, number: int) -> None:
        rng = random.Random(number)
        next_id = 1_000_000 * (number + 1)
        table = sql.Identifier(self.table)
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                while not self.stop.is_set():
                    pick, some = rng.random(), rng.randint(1, self.initial)
                    if pick < 0.35:
                        next_id += 1
                        statement = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(table)
                        cursor.execute(statement, (next_id, f"w{number}", Decimal(rng.randint(1, 999)) / 100))
                    elif pick < 0.8:
                        statement = sql.SQL("UPDATE {} SET price = price + 1 WHERE id = %s").format(table)
                        cursor.execute(statement, (some,))
                    else:
                        cursor.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), (some,))
                    self._token.run_sync_soon(self._wrote)
                    time.sleep(0.001)  # a steady load, not a flood
        finally:
            conn.close()

    async def more(self, count: int) -> None:
        """Wait until the writers have made ``count`` more changes."""
        reached = trio.Event()
        self._waiting.append((self.ops + count, reached))
        with trio.fail_after(60):
            await reached.wait()


async def demo(url: str, dsn: str, *, table: str, schema: str, channel: str, initial: int = 2000) -> bool:
    """Writers throughout; the copy made by :func:`follow` must equal ``SELECT *``. True if it does."""
    setup = psycopg2.connect(dsn)
    setup.autocommit = True
    with setup.cursor() as cursor:
        cursor.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, name text NOT NULL, price numeric(10, 2))").format(
                sql.Identifier(table)
            )
        )
        cursor.execute(
            sql.SQL("INSERT INTO {} SELECT g, 'row ' || g, g / 100.0 FROM generate_series(1, %s) g").format(
                sql.Identifier(table)
            ),
            (initial,),
        )
    setup.close()
    installer = Installer(url, schema=schema, channel=channel)
    await trio.to_thread.run_sync(installer.watch_table, table)
    writers = Writers(dsn, table, initial)
    sentinel = -1

    async def write_then_finish() -> None:
        async with trio.open_nursery() as writing:
            for number in range(4):
                writing.start_soon(trio.to_thread.run_sync, writers.write, number)
        # Every writer has returned: the sentinel's event comes after all of theirs.
        await trio.to_thread.run_sync(insert_sentinel, dsn, table, sentinel)

    async def stop_writers_later() -> None:
        await writers.more(300)  # ...and after it
        writers.stop.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_then_finish)
            try:
                await writers.more(100)  # before LISTEN...

                async def between() -> None:
                    await writers.more(100)  # ...between LISTEN and the load...
                    nursery.start_soon(stop_writers_later)

                rows = await follow(
                    url,
                    dsn,
                    table,
                    channel,
                    before_load=between,
                    until=lambda change: (change.new_data or {}).get("id") == sentinel,
                )
            finally:
                writers.stop.set()
        expected = await trio.to_thread.run_sync(load, dsn, table, "id")
    finally:
        await trio.to_thread.run_sync(installer.uninstall)
    same = rows == expected
    print(f"writers made {writers.ops} changes throughout", flush=True)
    print(f"the copy {'equals' if same else 'DIFFERS FROM'} SELECT *: {len(rows)} rows", flush=True)
    return same


def insert_sentinel(dsn: str, table: str, sentinel: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(
            sql.SQL("INSERT INTO {} VALUES (%s, 'done', 0)").format(sql.Identifier(table)), (sentinel,)
        )
    conn.close()


def main() -> None:
    if len(sys.argv) > 1:
        url = sys.argv[1]
        dsn = sqlalchemy.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        table = f"lf_items_{os.getpid()}"
        try:
            ok = trio.run(functools.partial(demo, url, dsn, table=table, schema=table, channel=table))
        finally:
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            conn.close()
    else:
        with EmbeddedPostgres() as server:
            run = functools.partial(
                demo, server.url, server.dsn, table="items", schema="pgevents", channel="pgevents"
            )
            ok = trio.run(run)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
