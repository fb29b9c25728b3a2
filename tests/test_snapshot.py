"""Change streams with ``snapshot=True``: the rows first (READ), then every change after (issue 16, point 5)."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
import trio
from sqlalchemy.engine import Engine

from trio_pgevents import (
    ChangeStream,
    ConfigurationError,
    RowChange,
    StreamGap,
    change_stream_status,
    open_change_stream,
)

from .conftest import Query, run_sql, take

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def table(query: Query, unique: Callable[[str], str]) -> Callable[..., Any]:
    """``name = await table("cols")``: create a table in public."""

    async def make(columns: str = "id int PRIMARY KEY, v int NOT NULL, note text") -> str:
        name = unique("snap_t")
        await query(f"CREATE TABLE public.{name} ({columns})")
        return name

    return make


def apply(rows: dict[Any, dict[str, Any]], change: RowChange, key: str = "id") -> None:
    """Apply a change to ``rows`` (a table keyed by primary key)."""
    if change.method in ("READ", "INSERT", "UPDATE"):
        assert change.new_data is not None
        if change.method == "UPDATE" and change.old_data is not None:
            rows.pop(change.old_data[key], None)
        rows[change.new_data[key]] = change.new_data
    elif change.method == "DELETE":
        assert change.old_data is not None
        rows.pop(change.old_data[key], None)
    elif change.method == "TRUNCATE":
        rows.clear()


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
    assert update.method == "UPDATE" and update.new_data == {"id": 3, "v": -1, "note": "n3"}
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
    (comment,) = await query("SELECT obj_description(oid, 'pg_publication') FROM pg_publication "
                             "WHERE pubname = %s", (publication,))
    assert comment == (None,)
    await query(f"INSERT INTO {name} VALUES (11, 11, 'after')")
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=[name], snapshot=True
    ) as changes:
        assert changes.snapshot_lsn is None and changes.snapshot_done
        (change,) = await take(changes, 1)
        assert change.method == "INSERT" and change.new_data["id"] == 11
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
            pg_engine, slot=slot, publication=publication, snapshot="yes"  # type: ignore[typeddict-item]
        ):
            pass  # pragma: no cover
