"""Listen to a channel and print what arrives.

    python examples/listen.py                      # embedded Postgres, sends its own NOTIFYs
    python examples/listen.py postgresql://u@h/db  # your server: NOTIFY demo, 'hi' from psql

With no URL it starts an embedded server (``pip install 'trio-pgevents[embedded]'``),
sends a few notifications from a background task, prints them and exits.
"""

from __future__ import annotations

import sys

import psycopg2
import trio

from trio_pgevents import open_event_stream
from trio_pgevents.testing import EmbeddedPostgres


async def send_some(dsn: str, count: int) -> None:
    def work() -> None:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn, conn.cursor() as cursor:
            for number in range(1, count + 1):
                cursor.execute("SELECT pg_notify('demo', %s)", (f"hello #{number}",))
        conn.close()

    await trio.to_thread.run_sync(work)


async def listen(url: str, dsn: str | None, count: int) -> None:
    async with open_event_stream(url, ["demo"]) as events, trio.open_nursery() as nursery:
        if dsn is not None:
            nursery.start_soon(send_some, dsn, count)
        else:
            print("listening on channel 'demo'; try: NOTIFY demo, 'hi'", flush=True)
        received = 0
        async for event in events:
            print(f"{event.channel}: {event.payload}  (backend pid {event.pid})", flush=True)
            received += 1
            if dsn is not None and received == count:
                break


def main() -> None:
    if len(sys.argv) > 1:
        try:
            trio.run(listen, sys.argv[1], None, 0)
        except KeyboardInterrupt:
            # The stream has already closed: UNLISTENed, connection returned.
            print("interrupted; connection closed")
        return
    with EmbeddedPostgres() as server:
        trio.run(listen, server.url, server.dsn, 5)


if __name__ == "__main__":
    main()
