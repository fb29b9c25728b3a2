"""Administering durable mode's outbox: retention, and the registered consumers.

Each method works whatever is installed: without the outbox tables there is
nothing to delete, list or drop. None takes the installer's advisory lock
(they change rows, not objects).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from psycopg2 import sql

from .._errors import ConfigurationError
from .._names import check_text
from .base import Cursor, InstallerBase
from .catalog import durable_exists
from .reports import ConsumerInfo, ConsumerMember
from .sql import SqlBuilder

__all__ = ["OutboxOps"]

T = TypeVar("T")

#: Per consumer: events after its position and the age of the oldest (seconds), and its dead letters.
_LAG_AND_DEAD_LETTERS = """
  CROSS JOIN LATERAL (
      SELECT count(*),
             coalesce(greatest(0, extract(epoch FROM clock_timestamp() - min(e.created_at))), 0)::float8
        FROM {S}.events e WHERE (e.txid, e.id) > (c.last_txid, c.last_id)) AS lag(events, seconds)
  CROSS JOIN LATERAL (
      SELECT count(*) FROM {S}.dead_letters d WHERE d.consumer = c.name) AS dead(letters)
"""

#: Every consumer (or the one named): position, mode, lag, dead letters, and its live
#: members as parallel arrays (id, expiry, the partitions each holds as "0,3,5").
_LIST_CONSUMERS = (
    """SELECT c.name, c.last_txid::text, c.last_id, c.created_at, c.updated_at,
              lag.events, lag.seconds, dead.letters, c.grouped, c.partitions,
              live.members, live.expires, live.parts
         FROM {S}.consumers c"""
    + _LAG_AND_DEAD_LETTERS
    + """
  CROSS JOIN LATERAL (
      SELECT coalesce(array_agg(m.member ORDER BY m.member), ARRAY[]::text[]),
             coalesce(array_agg(m.expires_at ORDER BY m.member), ARRAY[]::timestamptz[]),
             coalesce(array_agg(held.parts ORDER BY m.member), ARRAY[]::text[])
        FROM {S}.consumer_members m
        CROSS JOIN LATERAL (
            SELECT coalesce(string_agg(p.part::text, ',' ORDER BY p.part), '')
              FROM {S}.consumer_parts p
             WHERE p.consumer = c.name AND p.holder = m.member AND p.expires_at > now()) AS held(parts)
       WHERE m.consumer = c.name AND m.expires_at > now()) AS live(members, expires, parts)
 WHERE %(name)s::text IS NULL OR c.name = %(name)s::text
 ORDER BY c.name"""
)

#: The same on 0.1.0's tables (not upgraded yet: ``status`` says OUTDATED): no leases, no members.
_LIST_CONSUMERS_0_1 = (
    """SELECT c.name, c.last_txid::text, c.last_id, c.created_at, c.updated_at,
              lag.events, lag.seconds, dead.letters, false, 1, ARRAY[]::text[], ARRAY[]::timestamptz[],
              ARRAY[]::text[]
         FROM {S}.consumers c"""
    + _LAG_AND_DEAD_LETTERS
    + """
 WHERE %(name)s::text IS NULL OR c.name = %(name)s::text
 ORDER BY c.name"""
)


class OutboxOps(InstallerBase):
    """``delete_acknowledged``, ``list_consumers``, ``drop_consumer`` (a mixin)."""

    def _on_outbox(self, what: str, absent: T, work: Callable[[Cursor, SqlBuilder], T]) -> T:
        """Run ``work`` in one transaction if the outbox tables exist, else return ``absent``."""

        def guarded(cur: Cursor, b: SqlBuilder) -> T:
            return work(cur, b) if durable_exists(cur, b.schema) else absent

        return self._run(what, guarded, lock=False)

    def delete_acknowledged(self, batch_size: int = 10000) -> int:
        """Delete outbox events that every registered consumer has acknowledged.

        An event goes once ``(txid, id)`` is at or before the position of the
        consumer furthest behind. Batches of ``batch_size`` rows, each in its
        own short transaction. With no consumer registered nothing is deleted
        (a consumer registered later must still see the events).

        Returns:
            How many events were deleted.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be an int >= 1, not {batch_size!r}")

        def one_batch(cur: Cursor, b: SqlBuilder) -> int:
            cur.execute(
                sql.SQL(
                    """WITH slowest AS (
                           SELECT last_txid, last_id FROM {S}.consumers ORDER BY last_txid, last_id LIMIT 1),
                       doomed AS (
                           SELECT e.id FROM {S}.events e, slowest s
                            WHERE (e.txid, e.id) <= (s.last_txid, s.last_id)
                            ORDER BY e.txid, e.id LIMIT %s)
                       DELETE FROM {S}.events e USING doomed WHERE e.id = doomed.id"""
                ).format(S=b.S),
                (batch_size,),
            )
            return int(cur.rowcount)

        total = 0
        while True:
            deleted = self._on_outbox("delete_acknowledged", 0, one_batch)
            total += deleted
            if deleted < batch_size:
                return total

    def list_consumers(self, name: str | None = None) -> list[ConsumerInfo]:
        """The registered durable consumers: positions, members, lag and dead letters.

        One query, whatever the number of consumers (``status`` runs it). Lag
        counts the events after each consumer's position (the slowest
        partition's), and the age of the oldest of them.

        Args:
            name: only this consumer (an empty list when it is not registered);
                ``None`` (default): every one, by name.
        """
        if name is not None:
            check_text("name", name)

        def work(cur: Cursor, b: SqlBuilder) -> list[ConsumerInfo]:
            leases = _has_lease_tables(cur, b.schema)
            cur.execute(
                sql.SQL(_LIST_CONSUMERS if leases else _LIST_CONSUMERS_0_1).format(S=b.S), {"name": name}
            )
            return [_consumer_info(row) for row in cur.fetchall()]

        return self._on_outbox("list_consumers", [], work)

    def drop_consumer(self, name: str) -> bool:
        """Forget a durable consumer (retention stops waiting for it).

        Its dead letters are kept. Returns True if it existed.
        """

        def work(cur: Cursor, b: SqlBuilder) -> bool:
            cur.execute(sql.SQL("DELETE FROM {S}.consumers WHERE name = %s").format(S=b.S), (name,))
            return bool(cur.rowcount)

        return self._on_outbox("drop_consumer", False, work)


def _has_lease_tables(cur: Cursor, schema: str) -> bool:
    """Whether the outbox has its lease tables (an install by 0.1.0 not upgraded yet has not)."""
    cur.execute(
        "SELECT pg_catalog.to_regclass(%s) IS NOT NULL AND pg_catalog.to_regclass(%s) IS NOT NULL",
        tuple(
            sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table)).as_string(cur)
            for table in ("consumer_members", "consumer_parts")
        ),
    )
    row = cur.fetchone()
    return bool(row and row[0])


def _consumer_info(row: tuple[Any, ...]) -> ConsumerInfo:
    """A row of ``_LIST_CONSUMERS`` as a :class:`ConsumerInfo` (active members first)."""
    name, txid, last_id, created, updated, events, seconds, dead, grouped, partitions, *live = row
    members = [
        ConsumerMember(member, bool(parts), tuple(int(p) for p in parts.split(",") if p), expires)
        for member, expires, parts in zip(*live, strict=True)
    ]
    members.sort(key=lambda m: (not m.active, m.member))
    return ConsumerInfo(
        name,
        int(txid),
        int(last_id),
        created,
        updated,
        pending=int(events),
        mode="group" if grouped else "exclusive",
        partitions=int(partitions),
        members=tuple(members),
        lag_events=int(events),
        lag_seconds=float(seconds),
        dead_letters=int(dead),
    )
