"""Change streams with ``snapshot=True``: the rows first (READ), then every change after (issue 16.5)."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest
import trio
from sqlalchemy.engine import Engine

from trio_pgevents import (
    ConfigurationError,
    RowChange,
    change_stream_status,
    open_change_stream,
)

from .conftest import Query, take

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def table(query: Query, unique: Callable[[str], str]) -> Callable[..., Any]:
    """``name = await table("cols")``: create a table in public."""

    async def make(columns: str = "id int PRIMARY KEY, v int NOT NULL, note text") -> str:
        name = unique("snap_t")
        await query(f"CREATE TABLE public.{name} ({columns})")
        return name

    return make


def apply(rows: dict[Any, dict[str, Any]], method: str, old: Any, new: Any, key: str = "id") -> None:
    """Apply a change to ``rows`` (a table keyed by primary key), strictly.

    Every change must fit the state before it: a READ or INSERT of a row that
    is there already, an UPDATE or DELETE of one that is not, means a change
    was missed or delivered twice.
    """
    if method in ("READ", "INSERT"):
        assert new[key] not in rows, f"{method} of a row already there (doubled): {new}"
        rows[new[key]] = new
    elif method == "UPDATE":
        assert old[key] in rows, f"UPDATE of a missing row (missed): {old}"
        del rows[old[key]]
        rows[new[key]] = new
    elif method == "DELETE":
        assert old[key] in rows, f"DELETE of a missing row (missed or doubled): {old}"
        del rows[old[key]]
    else:
        raise AssertionError(f"unexpected method {method!r}")


class Writers:
    """``count`` writers inserting, updating and deleting rows of ``table`` (ids 1..initial and their own)."""

    def __init__(self, dsn: str, table: str, initial: int, count: int = 4) -> None:
        self.dsn, self.table, self.initial, self.count = dsn, table, initial, count
        self.stop = threading.Event()
        self.ops = [0] * count
        self.finished = trio.Event()
        self._running = count

    @property
    def total(self) -> int:
        return sum(self.ops)

    def _write(self, number: int) -> None:
        rng = random.Random(number)
        mine = [1_000_000 * (number + 1)]
        conn = psycopg2.connect(self.dsn)
        t = self.table
        try:
            while not self.stop.is_set():
                pick = rng.random()
                some = rng.randint(1, self.initial) if rng.random() < 0.7 else rng.choice(mine)
                try:
                    with conn.cursor() as cursor:
                        if pick < 0.3:
                            mine.append(mine[-1] + 1)
                            cursor.execute(f"INSERT INTO {t} VALUES (%s, %s, 'w')", (mine[-1], number))
                        elif pick < 0.7:
                            cursor.execute(f"UPDATE {t} SET v = v + 1, note = 'u' WHERE id = %s", (some,))
                        elif pick < 0.85:
                            cursor.execute(f"DELETE FROM {t} WHERE id = %s", (some,))
                        else:  # a transaction of several changes
                            mine.append(mine[-1] + 1)
                            cursor.execute(f"INSERT INTO {t} VALUES (%s, 0, 'tx')", (mine[-1],))
                            cursor.execute(f"UPDATE {t} SET v = v - 1 WHERE id = %s", (mine[-1],))
                            cursor.execute(f"DELETE FROM {t} WHERE id = %s", (some,))
                    conn.commit()
                except (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure):
                    conn.rollback()
                self.ops[number] += 1
                time.sleep(0.001)  # a steady load, not a flood, on a busy 2-core machine
        finally:
            conn.close()

    async def run(self, number: int) -> None:
        try:
            await trio.to_thread.run_sync(self._write, number)
        finally:
            self._running -= 1
            if not self._running:
                self.finished.set()

    def start(self, nursery: trio.Nursery) -> None:
        for number in range(self.count):
            nursery.start_soon(self.run, number)

    async def wait_for(self, ops: int, timeout: float = 60) -> None:
        """Until the writers have made ``ops`` more changes (they write throughout)."""
        target = self.total + ops
        with trio.fail_after(timeout):
            while self.total < target:
                await trio.sleep(0.01)

    async def stop_all(self) -> None:
        self.stop.set()
        with trio.fail_after(30):
            await self.finished.wait()


def select_all(dsn: str, name: str, key: str = "id") -> dict[Any, dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
            cursor.execute(f"SELECT * FROM {name}")
            return {row[key]: dict(row) for row in cursor.fetchall()}
    finally:
        conn.close()


async def slot_exists(query: Query, slot: str) -> bool:
    return bool(await query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)))


# ---------------------------------------------------------------------------
# the basics
# ---------------------------------------------------------------------------


async def test_rows_first_then_changes(pg_engine: Engine, query: Query, table: Any, cdc_names: Any) -> None:
    name = await table()
    other = await table()
    await query(f"INSERT INTO {name} SELECT g, g * 10, 'n' || g FROM generate_series(1, 25) g")
    await query(f"INSERT INTO {other} VALUES (7, 70, NULL)")
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name, other], snapshot=True
    ) as changes:
        assert changes.snapshot_lsn is not None
        assert not changes.snapshot_done
        reads = await take(changes, 26)
        assert changes.snapshot_done  # the last READ event was handed out
        assert changes.statistics().snapshot_rows == 26
        assert changes.statistics().snapshot_done
        await query(f"UPDATE {name} SET v = -1 WHERE id = 3")
        (update,) = await take(changes, 1)
    assert {e.method for e in reads} == {"READ"}
    assert all(e.lsn == changes.snapshot_lsn and e.old_data is None and e.txid is None for e in reads)
    by_table = {(e.table_name, e.new_data["id"]): e.new_data for e in reads}
    assert by_table[(name, 5)] == {"id": 5, "v": 50, "note": "n5"}
    assert by_table[(other, 7)] == {"id": 7, "v": 70, "note": None}
    assert len(by_table) == 26
    assert update.method == "UPDATE"
    assert update.new_data == {"id": 3, "v": -1, "note": "n3"}
    # READ events are distinct events; their payload is the usual JSON.
    assert len(set(reads)) == 26
    assert json.loads(reads[0].payload)["method"] == "READ"


async def test_existing_finished_slot_takes_no_snapshot(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    name = await table()
    await query(f"INSERT INTO {name} SELECT g, g, 'x' FROM generate_series(1, 10) g")
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True
    ) as changes:
        assert len(await take(changes, 10)) == 10
    # The publication's comment carries no marker any more.
    (comment,) = await query(
        "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s", (publication,)
    )
    assert comment == (None,)
    await query(f"INSERT INTO {name} VALUES (11, 11, 'after')")
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True, status_interval=60
    ) as changes:
        assert changes.snapshot_lsn is None
        assert changes.snapshot_done
        # At once: a change sent with the answer to START_REPLICATION sits in libpq's
        # buffer, which no readable socket announces (it used to wait for a keepalive).
        (change,) = await take(changes, 1, timeout=15)
        assert change.method == "INSERT"
        assert change.new_data["id"] == 11
        assert changes.statistics().snapshot_rows == 0


async def test_empty_tables_snapshot(pg_engine: Engine, query: Query, table: Any, cdc_names: Any) -> None:
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True
    ) as changes:
        assert changes.snapshot_lsn is not None
        with trio.fail_after(30):
            while not changes.snapshot_done:
                await trio.sleep(0.01)
        await query(f"INSERT INTO {name} VALUES (1, 1, 'a')")
        (change,) = await take(changes, 1)
        assert change.method == "INSERT"
    # Finished: a restart takes no snapshot.
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True
    ) as changes:
        assert changes.snapshot_lsn is None


async def test_snapshot_needs_backpressure(pg_engine: Engine, cdc_names: Any) -> None:
    slot, publication = cdc_names()
    with pytest.raises(ConfigurationError, match="snapshot=True needs overflow='backpressure'"):
        async with open_change_stream(
            pg_engine, slot=slot, publication=publication, snapshot=True, overflow="drop-oldest"
        ):
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="snapshot must be True or False"):
        async with open_change_stream(
            pg_engine,
            slot=slot,
            publication=publication,
            snapshot="yes",  # type: ignore[arg-type]
        ):
            pass  # pragma: no cover


# ---------------------------------------------------------------------------
# the boundary: 5,000 rows, 4 writers throughout
# ---------------------------------------------------------------------------


async def test_snapshot_then_stream_with_writers_throughout(
    pg_engine: Engine, pg_dsn: str, query: Query, table: Any, cdc_names: Any
) -> None:
    initial = 5000
    name = await table()
    done = await table("id int PRIMARY KEY")
    await query(f"INSERT INTO {name} SELECT g, g, 'init' FROM generate_series(1, {initial}) g")
    slot, publication = cdc_names()
    writers = Writers(pg_dsn, name, initial)
    rows: dict[Any, dict[str, Any]] = {}
    reads = streamed = 0
    async with trio.open_nursery() as nursery:
        writers.start(nursery)
        try:
            await writers.wait_for(100)  # writing before the slot exists...
            async with open_change_stream(
                pg_engine,
                slot=slot,
                publication=publication,
                tables=[name, done],
                snapshot=True,
                max_buffer_size=256,  # the snapshot is read as the consumer goes
            ) as changes:
                assert changes.snapshot_lsn is not None
                with trio.fail_after(240):
                    async for change in changes:
                        assert isinstance(change, RowChange), change
                        if change.table_name == done:
                            break
                        if change.method == "READ":
                            assert streamed == 0, "a READ event after a change"
                            reads += 1
                            if reads % 1000 == 1:
                                await writers.wait_for(50)  # ...while the snapshot is read...
                        else:
                            streamed += 1
                        apply(rows, change.method, change.old_data, change.new_data)
                        if changes.snapshot_done and not writers.stop.is_set() and streamed >= 300:
                            await writers.stop_all()  # ...and after it
                            await query(f"INSERT INTO {done} VALUES (1)")
        finally:
            writers.stop.set()
    assert initial // 2 < reads < initial * 2
    assert writers.total > 300
    assert rows == await trio.to_thread.run_sync(select_all, pg_dsn, name)


# ---------------------------------------------------------------------------
# values: typed as the change stream types them
# ---------------------------------------------------------------------------

TYPED_COLUMNS = """
    id int PRIMARY KEY, i2 int2, i8 int8, num numeric(20, 6), f4 float4, f8 float8, ok bool,
    t text, vc varchar(10), ch char(3), js json, jb jsonb, tstz timestamptz, ts timestamp,
    d date, tm time, u uuid, b bytea, ints int[], texts text[], nums numeric[], pos {domain},
    poss {domain}[], inf timestamptz, iv interval, ip inet, nothing text
"""
TYPED_VALUES = """
    32767, 9007199254740993, 12345678901234.123456, 1.5, 0.1, true, 'tëxt', 'v', 'ab',
    '{"a": [1, 2.5]}', '{"b": null}', '2024-05-06 07:08:09.123456+02', '2024-05-06 07:08:09',
    '2024-02-29', '23:59:59.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', '{1,NULL,3}',
    '{"a b","c,d",NULL}', '{1.10,2}', 5, '{1,2}', 'infinity', '1 day 02:00:00', '10.0.0.1/8', NULL
"""


async def test_read_values_are_typed_like_the_change_stream(
    pg_engine: Engine, pg_dsn: str, query: Query, table: Any, cdc_names: Any, unique: Callable[[str], str]
) -> None:
    domain = unique("posint")
    await query(f"CREATE DOMAIN {domain} AS int CHECK (VALUE > 0)")
    name = await table(TYPED_COLUMNS.format(domain=domain))
    await query(f"INSERT INTO {name} VALUES (1, {TYPED_VALUES})")
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True
    ) as changes:
        (read,) = await take(changes, 1)
        await query(f"INSERT INTO {name} VALUES (2, {TYPED_VALUES})")
        (insert,) = await take(changes, 1)
    assert read.method == "READ"
    assert insert.method == "INSERT"
    read_row, insert_row = dict(read.new_data), dict(insert.new_data)
    assert read_row.pop("id") == 1
    assert insert_row.pop("id") == 2
    # The same values, of the same types, as the change stream's own.
    assert read_row == insert_row
    assert {k: type(v) for k, v in read_row.items()} == {k: type(v) for k, v in insert_row.items()}
    assert read_row["num"] == Decimal("12345678901234.123456")
    assert read_row["tstz"] == datetime(2024, 5, 6, 5, 8, 9, 123456, tzinfo=UTC)
    assert read_row["u"] == UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert read_row["b"] == b"\x00\xff\x10"
    assert read_row["poss"] == [1, 2]
    assert read_row["pos"] == 5
    assert read_row["inf"] == "infinity"
    assert read_row["nothing"] is None
    # And equal to what psycopg2 reads, where psycopg2 types a value the same way.
    conn = psycopg2.connect(pg_dsn)
    try:
        psycopg2.extras.register_uuid(conn_or_curs=conn)  # type: ignore[no-untyped-call]
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
            cursor.execute(f"SELECT * FROM {name} WHERE id = 1")
            selected = dict(cursor.fetchone() or {})
    finally:
        conn.close()
    selected["b"] = bytes(selected["b"])
    for column in ("inf", "iv", "ip", "poss"):  # psycopg2 types these its own way (or not)
        del selected[column], read_row[column]
    selected.pop("id")
    assert read_row == selected


# ---------------------------------------------------------------------------
# an unfinished snapshot is taken again; a finished one never
# ---------------------------------------------------------------------------


async def test_stream_closed_during_the_snapshot_takes_it_again(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    name = await table()
    await query(f"INSERT INTO {name} SELECT g, g, 'x' FROM generate_series(1, 3000) g")
    slot, publication = cdc_names()
    await query(f"CREATE PUBLICATION {publication} FOR TABLE {name}")
    await query(f"COMMENT ON PUBLICATION {publication} IS 'mine'")
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True, max_buffer_size=100
    ) as changes:
        first_lsn = changes.snapshot_lsn
        (comment,) = await query(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s",
            (publication,),
        )
        assert comment[0].splitlines() == [
            "mine",
            f"trio_pgevents: the snapshot of slot {slot} is not finished",
        ]
        await take(changes, 150)
    # Stopped half way: the slot is dropped and made again, with a new snapshot.
    await query(f"DELETE FROM {name} WHERE id <= 1000")
    rows: dict[Any, dict[str, Any]] = {}
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True
    ) as changes:
        assert changes.snapshot_lsn is not None
        assert changes.snapshot_lsn != first_lsn
        for change in await take(changes, 2000):
            apply(rows, change.method, change.old_data, change.new_data)
        assert changes.snapshot_done
    assert sorted(rows) == list(range(1001, 3001))
    # Finished: the user's comment is as it was, and a restart streams on.
    (comment,) = await query(
        "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s", (publication,)
    )
    assert comment == ("mine",)
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True
    ) as changes:
        assert changes.snapshot_lsn is None


async def test_slot_made_without_snapshot_streams_on(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    name = await table()
    await query(f"INSERT INTO {name} VALUES (1, 1, 'before')")
    slot, publication = cdc_names()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]):
        pass
    await query(f"INSERT INTO {name} VALUES (2, 2, 'after')")
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True
    ) as changes:
        assert changes.snapshot_lsn is None
        (change,) = await take(changes, 1)
        assert change.method == "INSERT"
        assert change.new_data["id"] == 2


# ---------------------------------------------------------------------------
# kill -9 during the snapshot, restart: nothing missed
# ---------------------------------------------------------------------------


def replay(path: Path) -> tuple[dict[Any, dict[str, Any]], list[str], int]:
    """The table as the consumer's log describes it: (rows, the snapshots' LSNs, READ lines)."""
    rows: dict[Any, dict[str, Any]] = {}
    snapshots: list[str] = []
    reads = 0
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if "snapshot" in entry:
            snapshots.append(entry["snapshot"])
            rows.clear()  # a new snapshot: start again from an empty table
            continue
        reads += entry["m"] == "READ"
        apply(rows, entry["m"], entry["old"], entry["new"])
    return rows, snapshots, reads


def read_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_text().count('"m": "READ"')


async def test_kill_during_the_snapshot_then_restart_misses_nothing(
    pg_url: str, pg_dsn: str, query: Query, table: Any, cdc_names: Any, tmp_path: Path
) -> None:
    initial = 3000
    name = await table()
    done = await table("id int PRIMARY KEY")
    await query(f"INSERT INTO {name} SELECT g, g, 'init' FROM generate_series(1, {initial}) g")
    slot, publication = cdc_names()
    output = tmp_path / "log.jsonl"
    script = str(Path(__file__).with_name("snapshot_consumer.py"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def consumer(delay: float) -> list[str]:
        return [sys.executable, script, pg_url, slot, publication, name, done, str(output), str(delay)]

    writers = Writers(pg_dsn, name, initial)
    async with trio.open_nursery() as nursery:
        writers.start(nursery)
        try:
            # A slow consumer, killed with SIGKILL half way through the snapshot.
            process = await trio.lowlevel.open_process(consumer(0.003), env=env)
            try:
                with trio.fail_after(120):
                    while read_lines(output) < 300:
                        assert process.poll() is None, "consumer exited early"
                        await trio.sleep(0.02)
            finally:
                process.send_signal(signal.SIGKILL)
                await process.wait()
            assert read_lines(output) < initial // 2, "the kill must land in the snapshot"
            await writers.wait_for(100)  # writes while nobody consumes
            process = await trio.lowlevel.open_process(consumer(0.0), env=env)
            try:
                with trio.fail_after(120):
                    while read_lines(output) < initial // 2 + 300:
                        assert process.poll() is None, "consumer exited early"
                        await trio.sleep(0.02)
                await writers.wait_for(200)  # writes after the second snapshot
                await writers.stop_all()
                await query(f"INSERT INTO {done} VALUES (1)")
                with trio.fail_after(120):
                    assert await process.wait() == 0
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        finally:
            writers.stop.set()
    rows, snapshots, reads = await trio.to_thread.run_sync(replay, output)
    assert len(set(snapshots)) == len(snapshots) == 2, snapshots
    assert reads > initial // 2
    assert rows == await trio.to_thread.run_sync(select_all, pg_dsn, name)
    status = await trio.to_thread.run_sync(change_stream_status, pg_url, slot)
    assert status.exists
    assert not status.active
    # The second snapshot was processed: it is recorded as finished.
    (comment,) = await query(
        "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s", (publication,)
    )
    assert comment == (None,)


async def test_changes_waiting_at_start_arrive_at_once(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    # The server sends waiting changes with its answer to START_REPLICATION; libpq may
    # read them into its buffer with that answer, where no readable socket announces
    # them: the stream must read before it first waits (it used to sit until a keepalive).
    name = await table()
    slot, publication = cdc_names()
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[name]):
        pass
    for number in range(8):
        await query(f"INSERT INTO {name} VALUES ({number}, 0, NULL)")
        started = trio.current_time()
        async with open_change_stream(
            pg_engine, slot=slot, publication=publication, tables=[name], status_interval=60
        ) as changes:
            (change,) = await take(changes, 1, timeout=30)
        assert change.new_data["id"] == number
        assert trio.current_time() - started < 5


async def test_without_auto_ack_the_last_read_event_must_be_acknowledged(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    name = await table()
    await query(f"INSERT INTO {name} SELECT g, g, 'x' FROM generate_series(1, 50) g")
    slot, publication = cdc_names()
    options: dict[str, Any] = {"tables": [name], "snapshot": True, "auto_ack": False}
    async with open_change_stream(pg_engine, slot=slot, publication=publication, **options) as changes:
        first = changes.snapshot_lsn
        reads = await take(changes, 50)
        assert changes.snapshot_done  # all handed out...
        await changes.ack(reads[10])  # ...but only some acknowledged
    async with open_change_stream(pg_engine, slot=slot, publication=publication, **options) as changes:
        assert changes.snapshot_lsn not in (None, first)  # taken again
        reads = await take(changes, 50)
        await changes.ack(reads[-1])
    async with open_change_stream(pg_engine, slot=slot, publication=publication, **options) as changes:
        assert changes.snapshot_lsn is None


async def test_snapshot_reads_what_the_publication_publishes(
    pg_engine: Engine, query: Query, table: Any, cdc_names: Any
) -> None:
    # A column list and a row filter (PostgreSQL 15+): the snapshot reads the rows and
    # columns the publication sends, as its changes will. (An existing publication must
    # have the filters the stream asks for.)
    name = await table()
    await query(f"INSERT INTO {name} SELECT g, g, 'x' FROM generate_series(1, 20) g")
    slot, publication = cdc_names()
    await query(f"CREATE PUBLICATION {publication} FOR TABLE {name} (id, v) WHERE (id > 15)")
    async with open_change_stream(
        pg_engine,
        slot=slot,
        publication=publication,
        tables=[name],
        columns=["id", "v"],
        where="id > 15",
        snapshot=True,
    ) as changes:
        reads = await take(changes, 5)
        await query(f"INSERT INTO {name} VALUES (21, 21, 'y')")
        (insert,) = await take(changes, 1)
    assert sorted(e.new_data["id"] for e in reads) == [16, 17, 18, 19, 20]
    assert reads[0].new_data.keys() == insert.new_data.keys() == {"id", "v"}
