"""The command line worker with a pg_events settings module.

    python examples/cli_worker.py

Runs on an embedded server of its own (``pip install 'trio-pgevents[embedded]'``).
It runs what an operator would, against that server:

    trio-pgevents build  --settings examples/cli_worker_settings.py
    trio-pgevents worker --settings examples/cli_worker_settings.py

writes three changes to a table, prints the lines the worker's callback wrote,
then stops the worker with SIGTERM (as a service manager would): it lets the
running callbacks finish, closes its connection and exits 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import trio

from trio_pgevents.testing import EmbeddedPostgres

SETTINGS = str(Path(__file__).with_name("cli_worker_settings.py"))
CLI = [sys.executable, "-m", "trio_pgevents"]


def sql(dsn: str, statement: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


async def lines_until(stream: trio.abc.ReceiveStream, done: str, seen: list[str]) -> None:
    """Read ``stream`` line by line into ``seen`` until a line containing ``done``."""
    buffer = b""
    while not any(done in line for line in seen):
        chunk = await stream.receive_some()
        if not chunk:
            raise RuntimeError(f"the worker ended before {done!r}: {seen}")
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        seen.extend(line.decode() for line in complete)


async def run_worker(env: dict[str, str], dsn: str) -> None:
    worker = await trio.lowlevel.open_process(
        [*CLI, "worker", "--settings", SETTINGS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert worker.stdout is not None
    assert worker.stderr is not None
    log: list[str] = []
    output: list[str] = []
    try:
        with trio.fail_after(60):
            await lines_until(worker.stderr, "worker listening", log)
            sql(dsn, "INSERT INTO orders VALUES (1, 'new')")
            sql(dsn, "UPDATE orders SET status = 'paid' WHERE id = 1")
            sql(dsn, "DELETE FROM orders WHERE id = 1")
            await lines_until(worker.stdout, "DELETE", output)
            worker.send_signal(signal.SIGTERM)
            print("\n".join(output))
            print("worker exit status:", await worker.wait())
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


def main() -> None:
    with EmbeddedPostgres() as server:
        sql(server.dsn, "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)")
        env = {**os.environ, "PG_EVENTS_DATABASE_URL": server.url}  # overrides the module's URL
        built = subprocess.run(
            [*CLI, "build", "--settings", SETTINGS], env=env, capture_output=True, text=True, check=True
        )
        report = built.stdout.strip().splitlines()  # a table: one line per object, then a summary
        print("\n".join(line for line in report if "public.orders" in line))
        trio.run(run_worker, env, server.dsn)


if __name__ == "__main__":
    main()
