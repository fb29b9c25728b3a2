"""Durable consumers across processes killed with SIGKILL (issue 15).

Each member (``durable_member.py``) processes events exactly once: its effect
and the position commit in one transaction (``ack_in_transaction``), fenced
by the partition's lease. Writers insert and update rows of 500 keys while
members are killed and started again; at the end every change has exactly one
effect, and for every key (the primary key: a group's partition key) the
effects are in the order of the changes.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import trio
from psycopg2 import sql

from trio_pgevents import Installer

from .conftest import run_sql

LEASE = 2.0
MEMBER = Path(__file__).with_name("durable_member.py")


class Group:
    """Member processes of one consumer name, and the tables they work on."""

    def __init__(self, url: str, dsn: str, schema: str, channel: str, table: str, partitions: int) -> None:
        self.url, self.dsn, self.schema, self.channel, self.table = url, dsn, schema, channel, table
        self.effects = table + "_effects"
        self.partitions = partitions
        self.processes: list[subprocess.Popen[str]] = []
        run_sql(
            dsn,
            sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, k int, n int, member text)").format(  # type: ignore[arg-type]
                sql.Identifier(self.effects)
            ),
        )

    def start(self) -> subprocess.Popen[str]:
        args = [
            sys.executable,
            str(MEMBER),
            self.url,
            self.schema,
            self.channel,
            "members",
            self.effects,
            str(LEASE),
        ]
        if self.partitions:
            args.append(str(self.partitions))
        process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "started"
        self.processes.append(process)
        return process

    def holders(self) -> set[int]:
        """Pids of the members holding a partition now."""
        rows = run_sql(
            self.dsn,
            f'SELECT holder FROM "{self.schema}".consumer_parts WHERE consumer = %s '
            "AND holder IS NOT NULL AND expires_at > now()",
            ("members",),
        )
        return {int(holder.split(":")[1]) for (holder,) in rows}

    def held_by_live_members(self) -> int:
        """Partitions held now by a member process that is alive."""
        alive = {p.pid for p in self.processes if p.poll() is None}
        rows = run_sql(
            self.dsn,
            f'SELECT holder FROM "{self.schema}".consumer_parts WHERE consumer = %s '
            "AND holder IS NOT NULL AND expires_at > now()",
            ("members",),
        )
        return sum(1 for (holder,) in rows if int(holder.split(":")[1]) in alive)

    def kill(self, process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        self._closed(process)

    def _closed(self, process: subprocess.Popen[str]) -> None:
        if process.stdout is not None:
            process.stdout.close()
        self.processes.remove(process)

    def stop_all(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for process in list(self.processes):
            self._closed(process)

    def write(self, first: int, count: int, keys: int) -> None:
        """Changes ``first`` .. ``first + count - 1``: row ``k = n % keys`` gets ``n`` (insert, then update).

        Each statement touches a key at most once; its changes are in one transaction.
        """
        table = sql.Identifier(self.table)
        statement = sql.SQL(
            "INSERT INTO {} (k, n) SELECT mod(g, %s), g FROM generate_series(%s, %s) g "
            "ON CONFLICT (k) DO UPDATE SET n = EXCLUDED.n"
        ).format(table)
        conn = psycopg2.connect(self.dsn)
        try:
            with conn, conn.cursor() as cursor:
                for start in range(first, first + count, keys):
                    cursor.execute(statement, (keys, start, min(start + keys, first + count) - 1))
        finally:
            conn.close()

    def effects_done(self) -> int:
        return int(run_sql(self.dsn, f"SELECT count(*) FROM {self.effects}")[0][0])

    def check(self, rows: int) -> dict[str, Any]:
        total, distinct = run_sql(self.dsn, f"SELECT count(*), count(DISTINCT n) FROM {self.effects}")[0]
        assert (total, distinct) == (rows, rows), "every row processed exactly once"
        out_of_order = run_sql(
            self.dsn,
            f"SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY k ORDER BY id) AS before "
            f"FROM {self.effects}) o WHERE n < before",
        )[0][0]
        if out_of_order:
            sample = run_sql(
                self.dsn,
                f"SELECT k, string_agg(n || '@' || member, ' ' ORDER BY id) FROM {self.effects} "
                f"WHERE k = (SELECT k FROM (SELECT k, n, lag(n) OVER (PARTITION BY k ORDER BY id) AS b "
                f"FROM {self.effects}) o WHERE n < b LIMIT 1) GROUP BY k",
            )
            pytest.fail(f"{out_of_order} effects out of their key's order; e.g. key {sample}")
        members = run_sql(self.dsn, f"SELECT count(DISTINCT member) FROM {self.effects}")[0][0]
        return {"members": members}


@pytest.fixture
def group_setup(pg_url: str, pg_dsn: str, unique: Any) -> Iterator[tuple[str, str, str]]:
    schema, channel, table = unique("so"), unique("soch"), unique("so_t")
    run_sql(pg_dsn, f"CREATE TABLE {table} (k int PRIMARY KEY, n int NOT NULL)")
    installer = Installer(pg_url, schema=schema, channel=channel)
    installer.install(durable=True)
    installer.watch_table(table, durable=True)
    yield schema, channel, table
    installer.uninstall()


async def wait_done(group: Group, rows: int, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while group.effects_done() < rows:
            await trio.sleep(0.2)
        return
    parts = run_sql(
        group.dsn,
        f'SELECT part, holder, last_id, expires_at > now() FROM "{group.schema}".consumer_parts '
        "ORDER BY part",
    )
    alive = [p.pid for p in group.processes if p.poll() is None]
    pytest.fail(f"{group.effects_done()} of {rows} rows processed; partitions {parts}; members alive {alive}")


@pytest.mark.parametrize(
    ("partitions", "members", "rows", "keys"), [(0, 2, 10_000, 500), (8, 3, 20_000, 500)]
)
async def test_members_killed_at_random_process_every_row_exactly_once_in_key_order(
    pg_url: str,
    pg_dsn: str,
    group_setup: tuple[str, str, str],
    partitions: int,
    members: int,
    rows: int,
    keys: int,
) -> None:
    schema, channel, table = group_setup
    group = Group(pg_url, pg_dsn, schema, channel, table, partitions)
    rng = random.Random(15)
    try:
        for _ in range(members):
            await trio.to_thread.run_sync(group.start)
        inserted, kills = 0, 0
        takeovers: list[float] = []
        while inserted < rows:
            await trio.to_thread.run_sync(group.write, inserted, 1000, keys)
            inserted += 1000
            if inserted % 3000 == 0 and kills < 3:
                await trio.sleep(rng.uniform(0.1, 1.0))  # somewhere in the middle of the work
                holders = [p for p in group.processes if p.pid in group.holders()]
                victim = rng.choice(holders or group.processes)
                killed_at = trio.current_time()
                group.kill(victim)
                kills += 1
                starting = trio.current_time()
                await trio.to_thread.run_sync(group.start)
                # The replacement's start (seconds on a busy machine) is not the library's time.
                start_time = trio.current_time() - starting
                # Its partitions are taken over once its leases expire (plus a tick).
                with trio.fail_after(LEASE + 10 + start_time):
                    while group.held_by_live_members() < max(1, partitions):
                        await trio.sleep(0.05)
                takeovers.append(trio.current_time() - killed_at - start_time)
        assert kills == 3
        await wait_done(group, rows, timeout=60 + 3 * LEASE)
        figures = group.check(rows)
        assert figures["members"] >= 2
        print(f"\ntake-over after SIGKILL (lease {LEASE:g} s): {', '.join(f'{t:.2f}' for t in takeovers)} s")
        assert max(takeovers) <= LEASE + 2.0
    finally:
        group.stop_all()
