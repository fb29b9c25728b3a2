"""Following the outbox table: reading every row below xmin, in order, as it commits.

How reading stays correct when commit order is not id order (PgQ's idea):
the events table is read in ``(txid, id)`` order and only rows whose
transaction id is below the reading snapshot's ``xmin`` are read. Every
transaction below ``xmin`` has finished (committed or rolled back), so no
row can ever appear *behind* the read position later: a transaction that
took a low id but commits late has a txid at or above ``xmin`` until it
commits, and is read then.
"""

from __future__ import annotations

from typing import Any

import psycopg2.errors
import trio

from .._buffer import EventBuffer
from .._errors import ConfigurationError
from .._events import StreamGap
from .._listen import EventStream
from .._options import StreamOptions
from .outbox import OutboxSql, Position, make_event
from .reader import OutboxConnection

__all__ = ["OutboxFollower"]

_MAX_BIGINT = 2**63 - 1
#: After activity, read again after this long, doubling up to ``poll_interval`` (seconds).
_FIRST_REREAD = 0.01


class OutboxFollower:
    """Reads a consumer's unread outbox rows into the buffer, woken by NOTIFY or by time.

    Args:
        db: the reader's connection.
        statements: the outbox SQL of the library schema.
        buffer: where the events go (bounded in rows and bytes: reading waits).
        options: ``start``, ``batch_size``, ``max_buffer_bytes``, ``poll_interval``.
        consumer: the consumer's name.
        source: the database, secrets masked.
    """

    def __init__(
        self,
        db: OutboxConnection,
        statements: OutboxSql,
        buffer: EventBuffer,
        options: StreamOptions,
        consumer: str,
        source: str,
    ) -> None:
        self._db = db
        self._sql = statements
        self._buffer = buffer
        self._options = options
        self._consumer = consumer
        self._source = source
        # One read takes at most a quarter of the buffer's bytes (and always one row).
        self._budget = max(1, options.max_buffer_bytes // 4)
        self._wake = trio.Event()
        self._pending_gaps: list[StreamGap] = []
        #: The position of the last row read.
        self.position: Position = (0, 0)
        #: Rows read, and queries that read them, since the stream opened.
        self.events_read = 0
        self.reads = 0

    async def register(self) -> Position:
        """Register the consumer if new (at ``start``); return its stored position, read from there."""
        start, statements, consumer = self._options.start, self._sql, self._consumer
        schema = self._options.schema

        def work(cursor: Any) -> Position:
            if start == "latest":
                # Skip everything already finished; transactions still running are delivered.
                cursor.execute(statements.xmin)
                initial: Position = (int(cursor.fetchone()[0]) - 1, _MAX_BIGINT)
            else:
                initial = (0, 0)
            try:
                cursor.execute(statements.register, (consumer, str(initial[0]), initial[1]))
            except psycopg2.errors.UndefinedTable as exc:
                raise ConfigurationError(
                    f"schema {schema!r} has no durable tables on {self._source}: run "
                    f"Installer(engine, schema={schema!r}).install(durable=True) first"
                ) from exc
            cursor.execute(statements.position, (consumer,))
            row = cursor.fetchone()
            return (int(row[0]), int(row[1]))

        self.position = await self._db.run(work)
        return self.position

    async def pump_wakeups(self, wake: EventStream) -> None:
        """Turn the wake-up stream's notifications (and gaps) into reads."""
        async for batch in wake.batches():
            for event in batch:
                if isinstance(event, StreamGap):
                    self._pending_gaps.append(event)
            self._wake.set()

    async def run(self) -> None:
        """Read whenever woken, and at least every ``poll_interval``; forever."""
        # After any activity (a wake-up, rows read) the table is read again after
        # 10 ms, 20 ms, 40 ms, ... up to poll_interval. That catches what a
        # wake-up cannot announce: a transaction whose rows are not below xmin
        # yet when the wake-up is read (an older one still running), and a
        # writer that skipped its NOTIFY because another transaction was
        # notifying at the same moment (the installer lets only one at a time
        # take the server's NOTIFY lock; see the README's durable section).
        poll_interval = self._options.poll_interval
        fast = _FIRST_REREAD
        while True:
            woken = self._wake.is_set()
            self._wake = trio.Event()  # reset before reading: a wake-up during the read is kept
            gaps, self._pending_gaps = self._pending_gaps, []
            read_before = self.events_read
            await self.catch_up()
            for gap in gaps:
                # The table was re-read after the reconnect: nothing was lost.
                self._buffer.put_control(
                    StreamGap(gap.source, gap.disconnected_at, gap.reconnected_at, gap.reason, True)
                )
            if woken or self.events_read > read_before:
                fast = _FIRST_REREAD
            delay = min(fast, poll_interval)
            fast = min(fast * 2, poll_interval)
            with trio.move_on_after(delay):
                await self._wake.wait()

    async def catch_up(self) -> None:
        """Read until the table has nothing more below xmin (one query per ``batch_size`` rows)."""
        limit, budget = self._options.batch_size, self._budget
        read_sql, source = self._sql.read, self._source
        while True:
            txid, event_id = self.position

            def work(cursor: Any, txid: int = txid, event_id: int = event_id) -> list[Any]:
                cursor.execute(read_sql, (str(txid), event_id, limit, budget))
                return list(cursor.fetchall())

            rows: list[Any] = await self._db.run(work)
            self.reads += 1
            if not rows:
                return
            batch = [make_event(row, source) for row in rows]
            last = rows[-1]
            self.position = (int(last[1]), int(last[0]))
            self.events_read += len(batch)
            await self._buffer.put(batch, sum(len(row[3]) for row in rows))
            if len(rows) < limit and int(last[4]) < budget:
                return  # everything there was read (not cut by the limit, nor by the budget)
