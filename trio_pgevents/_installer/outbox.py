"""Administering durable mode's outbox: retention, and the registered consumers.

Each method works whatever is installed: without the outbox tables there is
nothing to delete, list or drop. None takes the installer's advisory lock
(they change rows, not objects).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from psycopg2 import sql

from .._errors import ConfigurationError
from .base import Cursor, InstallerBase
from .catalog import durable_exists
from .reports import ConsumerInfo
from .sql import SqlBuilder

__all__ = ["OutboxOps"]

T = TypeVar("T")


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

    def list_consumers(self) -> list[ConsumerInfo]:
        """The registered durable consumers, with their positions and backlog."""

        def work(cur: Cursor, b: SqlBuilder) -> list[ConsumerInfo]:
            cur.execute(
                sql.SQL(
                    """SELECT c.name, c.last_txid::text, c.last_id, c.created_at, c.updated_at,
                              (SELECT count(*) FROM {S}.events e
                                WHERE (e.txid, e.id) > (c.last_txid, c.last_id))
                         FROM {S}.consumers c ORDER BY c.name"""
                ).format(S=b.S)
            )
            return [
                ConsumerInfo(name, int(txid), int(last_id), created, updated, int(pending))
                for name, txid, last_id, created, updated, pending in cur.fetchall()
            ]

        return self._on_outbox("list_consumers", [], work)

    def drop_consumer(self, name: str) -> bool:
        """Forget a durable consumer (retention stops waiting for it).

        Its dead letters are kept. Returns True if it existed.
        """

        def work(cur: Cursor, b: SqlBuilder) -> bool:
            cur.execute(sql.SQL("DELETE FROM {S}.consumers WHERE name = %s").format(S=b.S), (name,))
            return bool(cur.rowcount)

        return self._on_outbox("drop_consumer", False, work)
