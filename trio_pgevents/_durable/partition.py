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

A member does not read another member's rows: the server reads the table
and the key values out of each unread payload (:meth:`OutboxSql.candidates`,
given the key columns learned here), the member computes the partitions
from those few texts and fetches only its own rows' payloads. The server's
text of a JSON string or number is the text Python gives the parsed value;
for any other key value (bool, array, null...) the row's payload is fetched
and parsed here, so the partition is always the one :meth:`Partitioner.part_of`
gives its event.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from .._events import Event, RowChange

__all__ = ["UNDECIDED", "UNKNOWN", "Partitioner"]

#: :meth:`Partitioner.part_of_candidate`: the row's table has not been looked up yet.
UNKNOWN = -1
#: :meth:`Partitioner.part_of_candidate`: only the row's payload can tell (a key value
#: that is no JSON string or number).
UNDECIDED = -2

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
        self._key_map = "{}"
        #: Per table learned: how many key columns, and the CRC-32 of "schema NUL table".
        self._prefixes: dict[Table, tuple[int, int]] = {}
        #: The most key columns of a table known (what the server extracts per row).
        self.width = 0

    def learn(self, cursor: Any, tables: list[Table]) -> None:
        """Read the key columns of ``tables`` (on ``cursor``; blocking). A keyless table: ()."""
        cursor.execute(KEY_COLUMNS, ([s for s, _ in tables], [t for _, t in tables]))
        found = {(s, t): tuple(columns) for s, t, columns in cursor.fetchall()}
        for table in tables:
            self._keys[table] = found.get(table, ())
        key_map: dict[str, dict[str, list[str]]] = {}
        for (schema, name), columns in self._keys.items():
            if columns:
                key_map.setdefault(schema, {})[name] = list(columns)
        self._key_map = json.dumps(key_map)
        self.width = max(map(len, self._keys.values()), default=0)
        self._prefixes = {
            (schema, name): (len(columns), zlib.crc32(f"{schema}\x00{name}".encode("utf-8", "surrogatepass")))
            for (schema, name), columns in self._keys.items()
        }

    @property
    def key_map(self) -> str:
        """The key columns known, as JSON (schema -> table -> [column, ...]) for the server."""
        return self._key_map

    def part_of_candidate(self, is_row_event: bool, schema: str, table: str, values: list[str | None]) -> int:
        """The partition of an unread row from what the server read out of it.

        ``values`` are the texts of its key values (:meth:`OutboxSql.candidates`).
        The same partition as :meth:`part_of` gives the row's event, or
        :data:`UNKNOWN` (look its table up first) or :data:`UNDECIDED` (read its payload).
        """
        if not is_row_event:
            return 0
        known = self._prefixes.get((schema, table))
        if known is None:
            return UNKNOWN
        width = known[0]
        row_values = values[:width]
        if len(row_values) < width or None in row_values:
            return UNDECIDED
        return self._hash(schema, table, row_values)  # type: ignore[arg-type]  # no None in them

    def _hash(self, schema: str, table: str, values: list[str]) -> int:
        """The partition of the key ``schema NUL table (NUL value)...``: CRC-32, modulo the count.

        The one definition of the partition function (stored positions depend on it).
        """
        known = self._prefixes.get((schema, table))
        crc = known[1] if known else zlib.crc32(f"{schema}\x00{table}".encode("utf-8", "surrogatepass"))
        if values:  # CRC-32 continues: crc32(a + b) == crc32(b, crc32(a))
            crc = zlib.crc32(("\x00" + "\x00".join(values)).encode("utf-8", "surrogatepass"), crc)
        return crc % self.partitions

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
        row = event.data.get("old_data" if event.method == "DELETE" else "new_data")
        values: list[str] = []
        if columns and type(row) is dict and all(column in row for column in columns):
            values = [str(row[column]) for column in columns]
        return self._hash(table[0], table[1], values)
