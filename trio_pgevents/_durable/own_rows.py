"""A group member's read: which unread rows are its own, then only those rows (blocking).

The server reads each unread row's table and key values out of the payload
(:meth:`~.outbox.OutboxSql.candidates`); the member computes their partitions
(:class:`~.partition.Partitioner`) and fetches the payloads of its own rows
(:attr:`~.outbox.OutboxSql.fetch`): no payload is rendered or sent for another
member's rows. Both queries run in one call on the reader's thread: a thread
hand-off costs more than either query on a small read, and every member of a
group reads on every wake-up.
"""

from __future__ import annotations

from typing import Any

from .outbox import OutboxSql, Position
from .partition import UNDECIDED, UNKNOWN, Partitioner

__all__ = ["OwnRead", "read_own_rows"]

#: Rows (as :attr:`OutboxSql.read` gives them, without "upto"), their partitions
#: (:data:`UNDECIDED`: computed from the payload), the position read up to, and whether
#: that was everything below xmin.
OwnRead = tuple[list[Any], list[int], Position, bool]


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

    At most ``limit`` unread rows are looked at, and rows of no more than
    ``budget`` stored bytes fetched (always one). Tables not seen before are
    looked up first (their key columns), then the rows read again.
    """
    while True:
        statement = statements.prepared_candidates(partitioner.width)
        statement.execute(cursor, (partitioner.key_map, str(after[0]), after[1], limit))
        candidates = cursor.fetchall()
        if not candidates:
            return None
        parts = [partitioner.part_of_candidate(*row[3:7]) for row in candidates]
        unknown = sorted(
            {(row[4], row[5]) for row, part in zip(candidates, parts, strict=True) if part == UNKNOWN}
        )
        if not unknown:
            break
        partitioner.learn(cursor, unknown)
    position, size, cut = after, 0, False
    chosen: dict[int, int] = {}  # id -> partition, in read order
    for row, part in zip(candidates, parts, strict=True):
        if part == UNDECIDED or part in wanted:
            if chosen and size >= budget:
                cut = True  # the byte budget is spent: the rest on the next read
                break
            chosen[row[0]] = part
            size += row[2]
        position = (int(row[1]), row[0])
    rows: list[Any] = []
    if chosen:
        ids = list(chosen)
        statements.prepared_fetch.execute(cursor, (ids,))
        rows = cursor.fetchall()
        if len(rows) < len(ids):
            # Deleted since (retention: every consumer had passed them): read on from there.
            got = [row[0] for row in rows]
            missing = next((i for i, (a, b) in enumerate(zip(got, ids, strict=False)) if a != b), len(got))
            index = next(i for i, row in enumerate(candidates) if row[0] == ids[missing])
            rows, cut = rows[:missing], True
            position = (int(candidates[index - 1][1]), candidates[index - 1][0]) if index else after
    return rows, [chosen[row[0]] for row in rows], position, not cut and len(candidates) < limit
