"""Which partition of a consumer group each outbox row belongs to, as the server computes it.

A group member's read (``OutboxSql.own``) computes every unread row's partition
on the server and renders only the member's own rows. Stored positions depend
on that function, so it is checked here against an independent reference
(:func:`reference_part`, the definition in ``trio_pgevents/_durable/partition.py``)
for every kind of key, and for rows of no table.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import psycopg2
import pytest

from trio_pgevents import Installer, RowChange
from trio_pgevents._durable.outbox import OutboxSql, make_events
from trio_pgevents._durable.own_rows import read_own_rows
from trio_pgevents._durable.partition import UNKNOWN, Partitioner

from .conftest import Outbox, run_sql

PARTITIONS = 16
TABLES = {
    "composite": "(a text, b numeric, c int, PRIMARY KEY (c, a, b))",
    "flags": "(f bool PRIMARY KEY, n int)",
    "arrays": "(k int[] PRIMARY KEY, n int)",
    "keyless": "(n int)",
    "uuids": "(u uuid PRIMARY KEY, d date)",
}
#: Each table's key columns in key order (what the reference needs).
KEYS = {"composite": ["c", "a", "b"], "flags": ["f"], "arrays": ["k"], "keyless": [], "uuids": ["u"]}


def reference_part(payload: str, keys: dict[str, list[str]], partitions: int) -> int:
    """The partition of an event's payload, written out from the definition."""
    data = json.loads(payload, parse_float=str, parse_int=str)  # numbers: their text as sent
    if not isinstance(data, dict) or data.get("kind") != "row" or "table_name" not in data:
        return 0
    side = "old_data" if data.get("method") == "DELETE" else "new_data"
    row, plain = data.get(side), json.loads(payload).get(side)  # plain: containers as JSON text
    schema = data.get("table_schema")
    schema = "" if schema is None else str(schema)
    values = []
    # A table of another schema ("5": a forged row) has no key here: it is keyed by its name.
    for column in keys[data["table_name"]] if schema == "public" else []:
        value = row.get(column) if isinstance(row, dict) else None
        if value is None:
            continue  # null or missing: left out
        if isinstance(value, bool):
            values.append("true" if value else "false")
        elif isinstance(value, list | dict):
            values.append(json.dumps(plain[column], ensure_ascii=False))
        else:
            values.append(str(value))
    key = "\x1f".join([schema, data["table_name"], *values])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % partitions


@pytest.fixture
def written(outbox: Outbox) -> dict[str, list[str]]:
    """Rows of every kind of key in the outbox; gives the key columns of each table name."""
    installer = Installer(outbox.url, schema=outbox.schema, channel=outbox.channel)
    names = {key: f"{outbox.table}_{key}" for key in TABLES}
    for key, columns in TABLES.items():
        run_sql(outbox.dsn, f'CREATE TABLE "{names[key]}" {columns}')
        installer.watch_table(names[key], durable=True)
    for statement in [
        f'INSERT INTO "{names["composite"]}" VALUES '
        "('é ☃ \"q\" \\', 12.50, 1), ('x', 1e20, -2), ('', 0.001, 3), (E'tab\\there', -0.5e-3, 4)",
        f'UPDATE "{names["composite"]}" SET b = 7 WHERE c = 3',
        f'DELETE FROM "{names["composite"]}" WHERE c = -2',
        f'INSERT INTO "{names["flags"]}" VALUES (true, 1), (false, 2)',
        f"INSERT INTO \"{names['arrays']}\" VALUES ('{{1,2}}', 1), ('{{3}}', 2)",
        f'INSERT INTO "{names["keyless"]}" SELECT generate_series(1, 5)',
        f'INSERT INTO "{names["uuids"]}" VALUES '
        "(gen_random_uuid(), '2024-01-02'), (gen_random_uuid(), NULL)",
        f'DELETE FROM "{names["uuids"]}"',
        f'TRUNCATE "{names["keyless"]}"',
        f'TRUNCATE "{names["composite"]}"',
        f'INSERT INTO "{outbox.table}" (n) SELECT generate_series(1, 40)',
        # Hand-written rows: no row event (x2); a row event whose schema is a number; one
        # whose key value is missing.
        f'INSERT INTO "{outbox.schema}".events (channel, payload) VALUES '
        "('c', '\"text\"'), ('c', '{\"kind\": \"row\"}'), "
        f'(\'c\', \'{{"kind": "row", "table_schema": 5, "table_name": "{outbox.table}", '
        '"method": "INSERT", "old_data": null, "new_data": {"id": 9}}\'), '
        f'(\'c\', \'{{"kind": "row", "table_schema": "public", "table_name": "{outbox.table}", '
        '"method": "INSERT", "old_data": null, "new_data": {"n": 9}}\')',
    ]:
        run_sql(outbox.dsn, statement)
    keys = {names[key]: columns for key, columns in KEYS.items()}
    keys[outbox.table] = ["id"]
    return keys


def read(
    outbox: Outbox, partitioner: Partitioner, wanted: frozenset[int], limit: int = 1000, budget: int = 1 << 30
) -> Any:
    conn = psycopg2.connect(outbox.dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            statements = OutboxSql(outbox.schema)
            return read_own_rows(cursor, statements, partitioner, wanted, (0, 0), limit, budget)
    finally:
        conn.close()


@pytest.mark.parametrize("ahead", [True, False], ids=["first-read", "tables-appear-later"])
def test_the_server_puts_every_row_in_the_partition_of_the_definition(
    outbox: Outbox, written: dict[str, list[str]], ahead: bool
) -> None:
    # A member's first read looks the tables up ahead; one that knows some tables already
    # meets the others in its read (partition -1), looks them up and reads again.
    partitioner = Partitioner(PARTITIONS)
    if not ahead:
        conn = psycopg2.connect(outbox.dsn)
        try:
            with conn.cursor() as cursor:
                partitioner.learn(cursor, [("public", outbox.table)])
        finally:
            conn.close()
    result = read(outbox, partitioner, frozenset(range(PARTITIONS)))
    assert result is not None
    rows, parts, _, everything = result
    assert everything
    assert len(rows) == len(parts) > 60  # every row: all partitions wanted
    # Tables were looked up as they appeared: all seven (the forged schema "5" too).
    assert len(json.loads(partitioner.key_map)) == 2  # schemas "public" and "5"
    assert UNKNOWN not in parts
    events, _ = make_events(rows, "s", lambda table: (True, None))  # untyped
    for event, part in zip(events, parts, strict=True):
        assert part == reference_part(event.payload, written, PARTITIONS), event.payload
    # A row's events stay in one partition; the keys spread over several.
    own = [(e, p) for e, p in zip(events, parts, strict=True) if type(e) is RowChange]
    spread = {p for e, p in own if e.table_name == outbox.table}
    assert len(spread) > 4
    composite = [e for e, _ in own if e.table_name.endswith("_composite") and e.method != "TRUNCATE"]
    assert {e.method for e in composite} == {"INSERT", "UPDATE", "DELETE"}


def test_a_member_gets_only_its_own_rows_within_its_budget(
    outbox: Outbox, written: dict[str, list[str]]
) -> None:
    everything = read(outbox, Partitioner(PARTITIONS), frozenset(range(PARTITIONS)))
    assert everything is not None
    all_rows, all_parts = everything[0], everything[1]
    last = (int(all_rows[-1][1]), all_rows[-1][0])
    wanted = frozenset(sorted(set(all_parts))[:3])
    mine = [row[0] for row, part in zip(all_rows, all_parts, strict=True) if part in wanted]
    assert 0 < len(mine) < len(all_rows)

    result = read(outbox, Partitioner(PARTITIONS), wanted)
    assert result is not None
    rows, parts, position, done = result
    assert [row[0] for row in rows] == mine
    assert set(parts) <= wanted
    assert position == last  # past every row looked at, its own or not
    assert done

    # One byte of budget: one row (always one), and the position stops at it.
    rows, parts, position, done = read(outbox, Partitioner(PARTITIONS), wanted, budget=1)
    assert [row[0] for row in rows] == mine[:1]
    assert position == (int(rows[0][1]), rows[0][0])
    assert not done

    # A limit on the rows looked at: the position is the last one looked at, own or not.
    rows, parts, position, done = read(outbox, Partitioner(PARTITIONS), wanted, limit=10)
    assert [row[0] for row in rows] == [i for i in mine if i in {r[0] for r in all_rows[:10]}]
    assert position == (int(all_rows[9][1]), all_rows[9][0])
    assert not done
