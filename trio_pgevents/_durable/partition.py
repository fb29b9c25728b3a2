"""Which partition of a consumer group an event belongs to: its table and primary key.

The partition is derived when the event is read, never written: writers pay
nothing for groups. The key is the table and the values of its primary key
columns (from the new row, or the old one for a DELETE), so the changes of
one row always land in the same partition and stay in order. A table with no
primary key (and TRUNCATE, which has no row) is keyed by its table alone
(its changes stay in order, in one partition); an outbox row that is no row
event is in partition 0. An UPDATE that changes a row's key moves the row's
later events to the new key's partition.

The server computes the partition, in the member's read
(:meth:`~.outbox.OutboxSql.own`), so a member neither receives nor parses
another member's rows. The function, on which stored positions depend:

    key  = UTF-8 of: schema US table (US value)...     (US: U+001F)
    part = (first 4 bytes of SHA-256(key), big-endian) mod partitions

with each value the payload's text of it (``->>``: a string's characters, a
number as sent); a key value that is JSON null or missing is left out
(tests/test_durable_partition.py writes the same definition out in Python).
It is computed from the payload as stored, never from typed values, so every
member puts a row in the same partition; SHA-256 gives the same result on
every server version and architecture (hash functions internal to the server
need not), and is available where FIPS rules out MD5.

What the server needs from the member is each table's key columns: learned
here, from the catalog, as tables appear in the outbox.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["UNKNOWN", "Partitioner"]

#: The partition :meth:`~.outbox.OutboxSql.own` gives a row whose table has not been looked up yet.
UNKNOWN = -1

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
    """The partition count of a group, and the key columns of the tables seen so far."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._keys: dict[Table, tuple[str, ...]] = {}
        self._key_map = "{}"
        self._learned = False
        #: The most key columns of a table known (what the server reads per row).
        self.width = 0

    def learn(self, cursor: Any, tables: list[Table]) -> None:
        """Read the key columns of ``tables`` (on ``cursor``; blocking). A keyless table: ()."""
        self._learned = True
        if not tables:
            return
        cursor.execute(KEY_COLUMNS, ([s for s, _ in tables], [t for _, t in tables]))
        found = {(s, t): tuple(columns) for s, t, columns in cursor.fetchall()}
        for table in tables:
            self._keys[table] = found.get(table, ())
        key_map: dict[str, dict[str, list[str]]] = {}
        for (schema, name), columns in self._keys.items():
            key_map.setdefault(schema, {})[name] = list(columns)
        self._key_map = json.dumps(key_map)
        self.width = max(map(len, self._keys.values()), default=0)

    @property
    def learned(self) -> bool:
        """Whether :meth:`learn` ran (even for no table)."""
        return self._learned

    @property
    def key_map(self) -> str:
        """The key columns known, as JSON (schema -> table -> [column, ...]; keyless: []) for the server."""
        return self._key_map
