"""The outbox's upkeep: dead letters, and deleting what every consumer acknowledged."""

from __future__ import annotations

import traceback
from typing import Any

import trio

from .._errors import TrioPgEventsError
from .._events import Event
from .._options import StreamOptions
from .._secrets import get_logger
from .._source import DB_ERRORS
from .outbox import OutboxSql, Position, stored_payload
from .reader import OutboxConnection

__all__ = ["Upkeep"]

logger = get_logger("trio_pgevents")


class Upkeep:
    """A durable stream's dead-letter writes and retention rounds, with their counters."""

    def __init__(
        self, db: OutboxConnection, statements: OutboxSql, consumer: str, options: StreamOptions
    ) -> None:
        self._db = db
        self._sql = statements
        self._consumer = consumer
        self._options = options
        #: Events moved to the dead letters, retention rounds run, events deleted by them.
        self.dead_lettered = 0
        self.retention_runs = 0
        self.retention_deleted = 0

    async def dead_letter(
        self, event: Event, position: Position, error: BaseException | str, attempts: int
    ) -> str:
        """Write ``event`` to ``<schema>.dead_letters`` with the error; return the error's text."""
        if isinstance(error, BaseException):
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
        else:
            text = str(error)
        params = (
            self._consumer,
            position[1],
            str(position[0]),
            event.channel,
            stored_payload(event.payload),
            text,
            attempts,
        )
        dead_sql = self._sql.dead_letter

        def work(cursor: Any) -> None:
            cursor.execute(dead_sql, params)

        await self._db.run(work)
        self.dead_lettered += 1
        return text

    async def retention_loop(self, interval: float) -> None:
        """Every ``interval`` seconds, delete the events every consumer acknowledged."""
        batch_size, delete_sql = self._options.retention_batch_size, self._sql.delete_acknowledged
        source = self._db.source

        def one_batch(cursor: Any) -> int:
            cursor.execute(delete_sql, (batch_size,))
            return int(cursor.rowcount)

        while True:
            await trio.sleep(interval)
            deleted = 0
            try:
                while True:
                    count = await self._db.run(one_batch)
                    deleted += count
                    if count < batch_size:
                        break
            except (TrioPgEventsError, *DB_ERRORS) as exc:
                logger.warning("retention on %s failed (will retry): %s", source, exc)
                continue
            self.retention_runs += 1
            self.retention_deleted += deleted
            if deleted:
                logger.info("retention deleted %d acknowledged event(s) on %s", deleted, source)
