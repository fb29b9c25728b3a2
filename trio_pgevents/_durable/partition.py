"""Which partition of a consumer group an event belongs to: its table and primary key.

The partition is derived when the event is read, never written: writers pay
nothing for groups. The key is the table and the values of its primary key
columns (from the new row, or the old one for a DELETE), so the changes of
one row always land in the same partition and stay in order. A table with no
primary key (and TRUNCATE, and an outbox row that is no row event) is keyed
by its table alone (its changes stay in order, in one partition). An UPDATE
that changes a row's key moves the row's later events to the new key's
partition.

The hash is CRC-32 of the key's values as sent (their text, joined by NUL):
the same in every process and Python version, unlike ``hash()``, and
independent of whether a process could read the column types.
"""

from __future__ import annotations

import zlib
from typing import Any

from .._events import Event, RowChange

__all__ = ["Partitioner"]

Table = tuple[str, str]

#: Params: schemas (text[]), tables (text[]). Each table's primary key columns, in key order.
KEY_COLUMNS = (
    "SELECT t.s, t.r, pg_catalog.array_agg(a.attname::pg_catalog.text "
    "ORDER BY pg_catalog.array_position(i.indkey::pg_catalog.int2[], a.attnum)) "
    "FROM ROWS FROM (pg_catalog.unnest(%s::pg_catalog.text[]), "
    "pg_catalog.unnest(%s::pg_catalog.text[])) AS t(s, r) "
    "JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) t.s "
    "JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid "
    "AND c.relname OPERATOR(pg_catalog.=) t.r "
    "JOIN pg_catalog.pg_index i ON i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid "
    "AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey::pg_catalog.int2[]) "
    "GROUP BY t.s, t.r"
)


class Partitioner:
    """Maps events to ``partitions`` partitions; learns primary keys as tables appear."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._keys: dict[Table, tuple[str, ...]] = {}

    def unknown_tables(self, events: list[Event]) -> list[Table]:
        """Tables of ``events`` whose key columns are not known yet."""
        if self.partitions == 1:
            return []
        unknown = {
            (event.table_schema, event.table_name)
            for event in events
            if type(event) is RowChange and (event.table_schema, event.table_name) not in self._keys
        }
        return sorted(unknown)

    def learn(self, cursor: Any, tables: list[Table]) -> None:
        """Read the key columns of ``tables`` (on ``cursor``; blocking). A keyless table: ()."""
        cursor.execute(KEY_COLUMNS, ([s for s, _ in tables], [t for _, t in tables]))
        found = {(s, t): tuple(columns) for s, t, columns in cursor.fetchall()}
        for table in tables:
            self._keys[table] = found.get(table, ())

    def part_of(self, event: Event) -> int:
        """The partition of ``event``."""
        if self.partitions == 1:
            return 0
        if type(event) is not RowChange:
            return 0  # an outbox row that is no row event: all in one place, in order
        table = (event.table_schema, event.table_name)
        columns = self._keys.get(table, ())
        # The values as sent, never as typed: typing depends on whether this process could
        # read the column types, and every member must put an event in the same partition.
        data = event.data
        row = data.get("old_data" if event.method == "DELETE" else "new_data")
        parts = [table[0], table[1]]
        if columns and type(row) is dict and all(column in row for column in columns):
            parts += [str(row[column]) for column in columns]
        text = "\x00".join(parts)
        return zlib.crc32(text.encode("utf-8", "surrogatepass")) % self.partitions
