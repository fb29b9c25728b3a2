"""A group member's read: only the unread rows of its own partitions (blocking).

The server computes each unread row's partition (:mod:`.partition`) and
renders only the member's own rows (:meth:`~.outbox.OutboxSql.own`): no
payload is rendered, sent or parsed for another member's rows, and the read
is one query, whatever the group's size.
"""

from __future__ import annotations

from typing import Any

from .outbox import OutboxSql, Position
from .partition import UNKNOWN, Partitioner

__all__ = ["OwnRead", "read_own_rows"]

#: Rows (as :attr:`OutboxSql.read` gives them, without "upto"), their partitions,
#: the position read up to, and whether that was everything below xmin.
OwnRead = tuple[list[Any], list[int], Position, bool]

# Columns of a row of OutboxSql.own after the event's.
_PART, _OWN, _UPTO, _LOOKED_AT = range(7, 11)


def read_own_rows(
    cursor: Any,
    statements: OutboxSql,
    partitioner: Partitioner,
    wanted: frozenset[int],
    after: Position,
    limit: int,
    budget: int,
) -> OwnRead | None:
    """Read the rows of partitions ``wanted`` after ``after`` (None: no unread row).

    At most ``limit`` unread rows are looked at, and own rows of no more than
    ``budget`` stored bytes read (always one). Tables not seen before are
    looked up first (their key columns), then the rows read again.
    """
    if not partitioner.learned:
        # The first read: look up the tables ahead (one cheap query) rather than in an
        # own() pass that returns every row of a table not known yet.
        statements.tables.execute(cursor, (str(after[0]), after[1], limit))
        partitioner.learn(cursor, sorted(cursor.fetchall()))
    for attempt in (1, 2):
        statement = statements.prepared_own(partitioner.width)
        params = (budget, sorted(wanted), partitioner.partitions, partitioner.key_map)
        statement.execute(cursor, (*params, str(after[0]), after[1], limit))
        found = cursor.fetchall()
        if not found:
            return None
        unknown = sorted({(row[5] or "", row[6] or "") for row in found if row[_PART] == UNKNOWN})
        if not unknown:
            break
        if attempt == 2:  # learning puts every table in the key map: cannot happen
            raise RuntimeError(f"durable read: tables still unknown after looking them up: {unknown}")
        partitioner.learn(cursor, unknown)
    rows = [row for row in found if row[_OWN]]
    last = found[-1]  # the last row looked at
    if rows and last[_UPTO] > rows[-1][_UPTO]:
        # The byte budget cut the member's rows: the rest on the next read, from the last one read.
        return rows, [row[_PART] for row in rows], (rows[-1][1], rows[-1][0]), False
    position = (last[1], last[0])
    return rows, [row[_PART] for row in rows], position, last[_LOOKED_AT] < limit
