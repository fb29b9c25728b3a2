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

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2
import trio

from .._buffer import EventBuffer
from .._columns import ColumnCatalog, RowConverter, Table
from .._errors import TrioPgEventsError
from .._events import Event, StreamGap
from .._listen import EventStream
from .._options import DEFAULT_GROUP_READ_INTERVAL, StreamOptions
from .._secrets import get_logger
from .ledger import Ledger
from .outbox import OutboxSql, Position, make_events, type_events
from .own_rows import OwnRead, read_own_rows
from .partition import Partitioner
from .reader import OutboxConnection

__all__ = ["LEASE_WAKE", "OutboxFollower"]

#: The wake-up payload of a member that released leases (the others may take them now).
LEASE_WAKE = "lease"

_UNREAD: Position = (2**64, 2**63)

#: A read: its rows (as :attr:`OutboxSql.read` gives them: a call that returns them, or None
#: if they can no longer be had, see :func:`_fetch_later`), their partitions, the position read
#: up to, whether that was everything below xmin, and the partitions whose rows it looked for
#: (None: every row was read).
_Read = tuple[Callable[[], list[Any] | None], list[int], Position, bool, frozenset[int] | None]

#: A group member reads at most this many times ``batch_size`` rows' keys at once.
_MOST_CANDIDATES = 16

#: After activity, read again after this long, doubling up to ``poll_interval`` (seconds).
_FIRST_REREAD = 0.01
#: A stream with a ``min_read_interval`` stops listening for wake-ups after this many reads
#: in a row found rows (it reads every ``min_read_interval`` anyway), and listens again at
#: the first read that finds none.
_UNLISTEN_AFTER = 3

logger = get_logger("trio_pgevents")


class _ReadAhead:
    """The next read, under way while the current one's rows are delivered."""

    def __init__(self, after: Position) -> None:
        self.after = after
        #: Set once the read's query runs in its thread (or will not run soon).
        self.started = trio.Event()
        self._done = trio.Event()
        self._result: _Read | None = None

    async def run(self, read: Callable[[Position, trio.Event | None], Awaitable[_Read | None]]) -> None:
        try:
            self._result = await read(self.after, self.started)
        finally:
            self.started.set()
        self._done.set()

    async def result(self) -> _Read | None:
        await self._done.wait()
        return self._result


class OutboxFollower:
    """Reads a consumer's unread outbox rows into the buffer, woken by NOTIFY or by time.

    Args:
        db: the reader's connection.
        statements: the outbox SQL of the library schema.
        buffer: where the events go (bounded in rows and bytes: reading waits).
        options: ``start``, ``batch_size``, ``max_buffer_bytes``, ``poll_interval``.
        consumer: the consumer's name.
        source: the database, secrets masked.
        ledger: the positions of the partitions this member reads.
        partitioner: which partition each event belongs to.
    """

    def __init__(
        self,
        db: OutboxConnection,
        statements: OutboxSql,
        buffer: EventBuffer,
        options: StreamOptions,
        consumer: str,
        source: str,
        ledger: Ledger,
        partitioner: Partitioner,
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._partitioner = partitioner
        self._sql = statements
        self._buffer = buffer
        self._options = options
        self._consumer = consumer
        self._source = source
        # One read takes at most a quarter of the buffer's bytes (and always one row).
        self._budget = max(1, options.max_buffer_bytes // 4)
        self._wake = trio.Event()
        self._pending_gaps: list[StreamGap] = []
        self._rewind: Position | None = None
        self._columns = ColumnCatalog()
        #: Set by a NOTIFY saying a member released leases (``LEASE_WAKE``).
        self.lease_wake = trio.Event()
        #: The position of the last row read (nothing read yet: past everything, so the
        #: first partition gained rewinds it).
        self.position: Position = _UNREAD
        #: Rows read, and queries that read them, since the stream opened.
        self.events_read = 0
        self.reads = 0

    @property
    def read_position(self) -> Position:
        """The position of the last row read ((0, 0) before the first read)."""
        return (0, 0) if self.position == _UNREAD else self.position

    def rewind(self, position: Position) -> None:
        """Read again from ``position`` (a partition was gained); wakes the reader."""
        self._rewind = position if self._rewind is None else min(self._rewind, position)
        self._wake.set()

    def wake(self) -> None:
        """Read now."""
        self._wake.set()

    async def pump_wakeups(self, wake: EventStream) -> None:
        """Turn the wake-up stream's notifications (and gaps) into reads."""
        async for batch in wake.batches():
            for event in batch:
                if isinstance(event, StreamGap):
                    self._pending_gaps.append(event)
                elif event.payload == LEASE_WAKE:
                    self.lease_wake.set()
            self._wake.set()

    async def run(self, wakeups: EventStream | None = None) -> None:
        """Read whenever woken, and at least every ``poll_interval``; forever.

        ``wakeups``: the wake-up stream :meth:`pump_wakeups` follows; a stream
        with a ``min_read_interval`` stops listening to it while busy.
        """
        # After any activity (a wake-up, rows read) the table is read again after
        # 10 ms, 20 ms, 40 ms, ... up to poll_interval. That catches what a
        # wake-up cannot announce: a transaction whose rows are not below xmin
        # yet when the wake-up is read (an older one still running), and a
        # writer that skipped its NOTIFY because another transaction was
        # notifying at the same moment (the installer lets only one at a time
        # take the server's NOTIFY lock; see docs/durable.md).
        # A group member reads at most every min_read_interval: every member reads on
        # every wake-up, so without it the server's cost of reading grew with the members.
        # While each read finds rows, such a stream reads every min_read_interval whether
        # woken or not: it stops listening (every commit's NOTIFY cost the server and this
        # process per listener, and a group has one per member) until a read finds nothing.
        poll_interval, spacing = self._options.poll_interval, self._options.min_read_interval
        if spacing is None:
            spacing = DEFAULT_GROUP_READ_INTERVAL if self._partitioner.partitions > 1 else 0.0
        fast = _FIRST_REREAD
        next_read = trio.current_time()
        busy_reads, hearing = 0, True
        channels = tuple(wakeups.channels) if wakeups is not None else ()  # before any UNLISTEN
        while True:
            if spacing:
                if self._rewind is None:  # partitions just gained are read at once
                    await trio.sleep_until(next_read)
                next_read = trio.current_time() + spacing
            woken = self._wake.is_set()
            self._wake = trio.Event()  # reset before reading: a wake-up during the read is kept
            gaps, self._pending_gaps = self._pending_gaps, []
            read_before, position_before = self.events_read, self.position
            await self.catch_up()
            for gap in gaps:
                # The table was re-read after the reconnect: nothing was lost.
                self._buffer.put_control(
                    StreamGap(gap.source, gap.disconnected_at, gap.reconnected_at, gap.reason, True)
                )
            if woken or self.events_read > read_before:
                fast = _FIRST_REREAD
            if spacing and wakeups is not None:
                busy_reads = busy_reads + 1 if self.position != position_before else 0
                wanted = busy_reads < _UNLISTEN_AFTER
                hearing = await self._hear_wakeups(wakeups, channels, hearing, wanted)
            delay = min(fast, poll_interval)
            fast = min(fast * 2, poll_interval)
            with trio.move_on_after(delay):
                await self._wake.wait()

    async def _hear_wakeups(
        self, wakeups: EventStream, channels: tuple[str, ...], hearing: bool, wanted: bool
    ) -> bool:
        """LISTEN to ``channels`` on ``wakeups`` or not, as ``wanted``; return whether it does now.

        Listening again, a read follows at once: a commit made while not
        listening woke nobody. A failure leaves things as they were (wake-ups
        are hints: the table is read every ``poll_interval`` regardless).
        """
        if wanted == hearing:
            return hearing
        try:
            if wanted:
                await wakeups.listen(*channels)
                self._wake.set()
            else:
                await wakeups.unlisten(*channels)
        except TrioPgEventsError as exc:
            logger.warning("durable consumer %r: wake-ups: %s", self._consumer, exc)
            return hearing
        return wanted

    async def _make_events(self, rows: list[Any]) -> list[Event]:
        """The events of a read's rows, each row event with its table's converter.

        The tables come from the read itself (the server reads them out of the
        payload): nothing is parsed here; values are typed on first access.
        A table seen for the first time has its column types read first.
        """
        catalog = self._columns

        def converter(table: Table) -> tuple[bool, RowConverter | None]:
            return catalog.converter(table, None)

        events, missing = make_events(rows, self._source, converter)
        if missing:
            await self._db.run(functools.partial(catalog.learn, tables=missing))
            type_events(events, rows, missing, converter)
        return events

    async def catch_up(self) -> None:
        """Read until the table has nothing more below xmin (one query per ``batch_size`` rows).

        While one read's rows become events, the next read runs (the server
        and this process work at the same time); a rewind meanwhile (a
        partition gained) discards it.
        """
        ledger, partitioner = self._ledger, self._partitioner
        read = self._read_all if partitioner.partitions == 1 else self._read_own
        async with trio.open_nursery() as nursery:
            ahead: _ReadAhead | None = None
            while ledger.read_through:
                if self._rewind is not None:
                    self.position = min(self.position, self._rewind)
                    self._rewind = None
                after = self.position
                if ahead is not None and ahead.after == after:
                    result = await ahead.result()
                else:
                    if ahead is not None:
                        await ahead.result()  # read from before a rewind: the connection is free after it
                    result = await read(after, None)
                ahead = None
                if result is None:
                    return
                fetch, parts, position, everything, considered = result
                if not everything:
                    # Under way before this read's rows become events: without waiting
                    # here, the query would start only at this task's next checkpoint
                    # (after the work it was meant to overlap with).
                    ahead = _ReadAhead(position)
                    nursery.start_soon(ahead.run, read)
                    await ahead.started.wait()
                rows = fetch()
                if rows is None:
                    continue  # the connection closed since the query: read them again
                batch, size = ledger.take(await self._make_events(rows), parts, after)
                self.position = position
                ledger.read_up_to(after, position, considered)
                behind = ledger.behind(position)
                if behind is not None:
                    # A partition this read did not cover (gained meanwhile): read from there.
                    self.rewind(behind)
                self.events_read += len(batch)
                if batch:
                    await self._buffer.put(batch, size)
                if everything:
                    return  # everything there was read (not cut by the limit, nor by the budget)

    async def _read_all(self, after: Position, started: trio.Event | None) -> _Read | None:
        """One read of every unread row (an exclusive consumer's: all are its own)."""
        limit, budget, statement = self._options.batch_size, self._budget, self._sql.prepared_read

        def work(cursor: Any) -> tuple[Any, int, Any] | None:
            # The rows stay in the driver's result (a cursor of their own) until the
            # follower converts them, while the next read is under way: the connection
            # is busy only for the query. Only the last row is converted here.
            result = cursor.connection.cursor()
            try:
                statement.execute(result, (str(after[0]), after[1], limit, budget))
                count: int = result.rowcount
                if count <= 0:
                    result.close()
                    return None
                result.scroll(count - 1, mode="absolute")
                last = result.fetchone()
                result.scroll(0, mode="absolute")
            except BaseException:
                result.close()
                raise
            return result, count, last

        found = await self._db.run(work, started=started)
        self.reads += 1
        if found is None:
            return None
        result, count, last = found
        everything = count < limit and int(last[7]) < budget
        return _fetch_later(result), [0] * count, (last[1], last[0]), everything, None

    async def _read_own(self, after: Position, started: trio.Event | None) -> _Read | None:
        """One read of a group member: only the rows of the partitions it reads now (:mod:`.own_rows`).

        A partition gained later (while this read runs, or waits to be used)
        is read on the rewind its gain asks for, not here.
        """
        partitioner, ledger = self._partitioner, self._ledger
        wanted = frozenset(ledger.read_through)
        # Its own rows are about held/partitions of the rows read: look at that many more.
        share = partitioner.partitions // max(1, len(wanted))
        limit = self._options.batch_size * max(1, min(share, _MOST_CANDIDATES))
        work = functools.partial(
            read_own_rows,
            statements=self._sql,
            partitioner=partitioner,
            wanted=wanted,
            after=after,
            limit=limit,
            budget=self._budget,
        )
        result: OwnRead | None = await self._db.run(work, started=started)
        self.reads += 1
        if result is None:
            return None
        rows, parts, position, everything = result
        return (lambda: rows), parts, position, everything, wanted


def _fetch_later(cursor: Any) -> Callable[[], list[Any] | None]:
    """The rows of a query's result held by ``cursor``, converted when called (the cursor closed).

    Called on the event loop's thread while the reader's thread runs the next
    query on another cursor of the same connection (psycopg2 allows it: the
    rows are in client memory, and converting them does not use the connection).
    None if the connection was closed meanwhile (the next query failed, the
    stream is closing): psycopg2 then refuses to read the rows it holds, and
    they are read again.
    """

    def fetch() -> list[Any] | None:
        try:
            rows: list[Any] = cursor.fetchall()
        except psycopg2.InterfaceError:
            return None
        finally:
            cursor.close()
        return rows

    return fetch
