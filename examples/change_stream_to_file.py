"""Every change to a table, from the write-ahead log, appended to a JSON-lines file.

    python examples/change_stream_to_file.py [FILE]

Runs on an embedded server of its own (``pip install 'trio-pgevents[embedded]'``).
A change stream (logical replication) needs no trigger: writers pay nothing,
and changes made while the consumer is away wait in the replication slot.
Each change is acknowledged when the next one is asked for, after its line
was written, so a restarted consumer continues after the last line written
(a consumer killed mid-way may write a line twice, never skip one).

The slot keeps WAL on the server until it is dropped: the example drops it
at the end (``drop_change_stream``), as you should for a stream you no longer use.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import psycopg2
import sqlalchemy
import trio

from trio_pgevents import RowChange, drop_change_stream, open_change_stream
from trio_pgevents.testing import EmbeddedPostgres

SLOT, PUBLICATION = "readings_to_file", "readings_pub"


def sql(dsn: str, statement: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


async def write_changes(engine: sqlalchemy.Engine, dsn: str, path: Path, count: int) -> None:
    async with (
        open_change_stream(engine, slot=SLOT, publication=PUBLICATION, tables=["readings"]) as changes,
        await trio.open_file(path, "a") as output,
    ):
        # The slot exists from here on: changes committed now are kept for us.
        await trio.to_thread.run_sync(sql, dsn, "INSERT INTO readings (sensor, value) VALUES ('a', 20.5)")
        await trio.to_thread.run_sync(sql, dsn, "UPDATE readings SET value = 21.25 WHERE sensor = 'a'")
        await trio.to_thread.run_sync(sql, dsn, "DELETE FROM readings WHERE sensor = 'a'")
        written = 0
        async for change in changes:
            if not isinstance(change, RowChange):
                continue  # a StreamGap: the slot replays what was not acknowledged
            line = {
                "lsn": change.lsn,
                "txid": change.txid,
                "method": change.method,
                "table": f"{change.table_schema}.{change.table_name}",
                "old": change.old_data,
                "new": change.new_data,
            }
            await output.write(json.dumps(line, default=str) + "\n")  # Decimal, datetime: as text
            written += 1
            if written == count:
                break


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "changes.jsonl"
    with EmbeddedPostgres() as server:  # wal_level=logical, as change streams need
        sql(server.dsn, "CREATE TABLE readings (sensor text PRIMARY KEY, value numeric NOT NULL)")
        engine = sqlalchemy.create_engine(server.url)
        try:
            trio.run(write_changes, engine, server.dsn, path, 3)
        finally:
            drop_change_stream(engine, SLOT, PUBLICATION)
            engine.dispose()
    print(f"wrote {path.name}:")
    for line in path.read_text().splitlines():
        change = json.loads(line)
        print(change["method"], change["table"], "old:", change["old"], "new:", change["new"])


if __name__ == "__main__":
    main()
