"""Durable delivery: named consumers reading the outbox table, with acknowledgements.

LISTEN/NOTIFY forgets whatever is sent while nobody listens. A table watched
with ``Installer.watch_table(..., durable=True)`` writes every change into
``<schema>.events`` in the same transaction as the change, and sends one
wake-up NOTIFY per transaction on ``<channel>.durable``. A
:class:`DurableStream` reads that table from its consumer's stored position
(:mod:`.follower` says how reading stays correct when commit order is not id
order).

Delivery is at-least-once: the position is stored after events are
processed (the model every resumable stream shares:
:mod:`trio_pgevents._positions`), so a consumer that crashes after
processing an event but before its position reached the database gets that
event again when it restarts; ``ack_in_transaction`` makes it exactly-once.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Unpack

import trio
from sqlalchemy.engine import Engine

from .._buffer import EventBuffer
from .._connection import as_engine, describe_source, validate_channel
from .._errors import ConfigurationError, ConnectError, ConnectionLostError, TrioPgEventsError
from .._events import Event
from .._listen import EventStream, start_event_stream
from .._names import check_text
from .._nursery import open_unwrapping_nursery
from .._options import DurableStreamOptions, StreamOptions
from .._positions import ResumableStream, closed_after_body
from .._secrets import get_logger
from .._source import DB_ERRORS, SourceStatistics, StreamHealth
from .follower import OutboxFollower
from .outbox import OutboxSql, Position, position_of, stored_payload
from .reader import OutboxConnection
from .worker import DurableWorker, DurableWorkerStatistics, Handler

__all__ = ["DurableStatistics", "DurableStream", "open_durable_stream"]

logger = get_logger("trio_pgevents")


@dataclass(frozen=True)
class DurableStatistics(StreamHealth):
    """Counters of a durable stream (``stream.statistics()``)."""

    #: The consumer's name.
    consumer: str
    #: The position of the last event read from the table.
    read_position: Position
    #: The position stored in ``<schema>.consumers`` (what a restart resumes after).
    stored_position: Position
    #: The position acknowledged in memory, stored soon (equal to or after stored).
    acked_position: Position
    #: Events read from the table since the stream opened.
    events_received: int
    #: Reads of the table (one query each) since the stream opened.
    reads: int
    #: Position UPDATEs since the stream opened.
    position_stores: int
    #: Events moved to the dead-letter table since the stream opened.
    dead_lettered: int
    #: Retention rounds run by this stream (``retention_interval``).
    retention_runs: int
    #: Events deleted by this stream's retention rounds.
    retention_deleted: int
    #: Events waiting in the buffer now.
    buffered: int
    #: Bytes of payload waiting in the buffer now (bounded by ``max_buffer_bytes``).
    buffered_bytes: int
    #: Health of the reader's connection, then of the wake-up listener's.
    sources: tuple[SourceStatistics, ...]


class DurableStream(ResumableStream[Position]):
    """Every event of the outbox table, in commit-safe order, from a stored position.

    Iterate with ``async for`` (or ``receive()``, ``batches()``) like an
    :class:`EventStream`. Data events are :class:`RowChange` objects whose
    ``id`` and ``txid`` are set; an outbox row that is not one is an
    :class:`OutboxNotification`. A :class:`StreamGap` with ``replayed=True``
    says the wake-up connection was lost and the table was re-read: nothing
    was lost. Made by :func:`open_durable_stream`.

    Acknowledging: with ``auto_ack=True`` an event counts as processed when the
    next one is asked for (``async for``, ``receive()``, or the next batch of
    ``batches()``), and when the ``async with`` body ends without an error.
    Positions are stored every ``ack_every`` events or ``ack_interval``
    seconds, and on close. With ``auto_ack=False`` call :meth:`ack`.
    """

    def __init__(self, engine: Engine, consumer: str, options: StreamOptions) -> None:
        self.source = describe_source(engine)
        super().__init__(
            EventBuffer(options.max_buffer_size, "backpressure", max_bytes=options.max_buffer_bytes),
            start=(0, 0),
            options=options,
            kind="a durable stream",
        )
        self.engine = engine
        self.consumer = consumer
        self.schema = options.schema
        self.channel = options.channel
        self.wake_channel = validate_channel(options.channel + ".durable")
        self._options = options
        self._sql = OutboxSql(options.schema)
        self._db = OutboxConnection(engine, options, f"durable consumer {consumer!r}")
        self._follower = OutboxFollower(self._db, self._sql, self._buffer, options, consumer, self.source)
        self._wake_stream: EventStream | None = None
        self._scope = trio.CancelScope()
        self._finished = trio.Event()
        self._dead_lettered = 0
        self._retention_runs = 0
        self._retention_deleted = 0

    # ---- lifecycle -----------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the reader's connection and every task of the stream."""
        try:
            with self._scope:
                try:
                    await self._db.connect()
                    self._set_stored(await self._follower.register())
                except (*DB_ERRORS, ConnectionLostError) as exc:
                    raise ConnectError(
                        f"could not open durable consumer {self.consumer!r} on {self.source}: "
                        f"{self._db.describe(exc)}"
                    ) from exc
                async with trio.open_nursery() as nursery:
                    # LISTEN before the first read: a commit between them still wakes us.
                    # Wake-ups are hints: losing some is harmless (drop-oldest).
                    wake_options = dataclasses.replace(
                        self._options, on_gap="event", decoders={}, overflow="drop-oldest"
                    )
                    self._wake_stream = await start_event_stream(
                        nursery, [self.engine], [self.wake_channel], wake_options
                    )
                    nursery.start_soon(self._follower.pump_wakeups, self._wake_stream)
                    nursery.start_soon(self._follower.run)
                    nursery.start_soon(self._flush_loop)
                    if self._options.retention_interval is not None:
                        nursery.start_soon(self._retention_loop, self._options.retention_interval)
                    task_status.started()
        finally:
            await self._close_within_timeout()

    async def _close_within_timeout(self) -> None:
        # Within close_timeout whatever the server does: the wake-up stream closes
        # while the acknowledged position is stored; what did not finish is cut off
        # and the connection discarded (the position stored last time still holds:
        # at-least-once).
        with trio.CancelScope(shield=True):
            stored = False

            async def close_wake_stream() -> None:
                if self._wake_stream is not None:
                    await self._wake_stream.aclose()

            async def store() -> None:
                nonlocal stored
                try:
                    await self.flush()
                except (TrioPgEventsError, *DB_ERRORS) as exc:
                    logger.warning(
                        "durable consumer %r could not store its position at close (events after "
                        "%s will be delivered again): %s",
                        self.consumer,
                        self._stored,
                        exc,
                    )
                else:
                    stored = True

            with trio.move_on_after(self._options.close_timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(close_wake_stream)
                    nursery.start_soon(store)
            self._db.close()
            await self._db.release(broken=not stored)
            self._buffer.close()
            self._finished.set()

    async def _shut_down(self) -> None:
        self._scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(2 * self._options.close_timeout + 1):
            await self._finished.wait()

    # ---- acknowledging ---------------------------------------------------------

    def _position(self, event: Event) -> Position | None:
        return position_of(event)

    async def _store(self, position: Position) -> None:
        params = (str(position[0]), position[1], self.consumer, str(position[0]), position[1])
        store_sql = self._sql.store

        def work(cursor: Any) -> None:
            cursor.execute(store_sql, params)

        await self._db.run(work, reconnect=not self._closing)

    def ack_in_transaction(self, cursor: Any, event: Event) -> None:
        """Store ``event`` as processed inside the caller's own transaction (exactly-once).

        Runs the position UPDATE on ``cursor`` (a psycopg2 cursor on the same
        database, inside the transaction that applies the event's effect) and
        does not commit. If that transaction commits, effect and position are
        stored together: after a crash the event is neither lost nor repeated.
        If it rolls back, neither is. Blocking: call it where the transaction
        runs (e.g. in ``trio.to_thread.run_sync``). Open the stream with
        ``auto_ack=False``; the stream never moves a stored position backwards.

        Raises:
            ConfigurationError: ``event`` did not come from a durable stream.
        """
        position = position_of(event)
        if position is None:
            raise ConfigurationError(
                f"ack_in_transaction() needs an event read from a durable stream, not {event!r}"
            )
        txid = str(position[0])
        cursor.execute(self._sql.store, (txid, position[1], self.consumer, txid, position[1]))

    # ---- failures and retention --------------------------------------------------

    async def dead_letter(self, event: Event, error: BaseException | str, attempts: int) -> None:
        """Move ``event`` to ``<schema>.dead_letters`` with the error text, then ack it.

        The consumer goes on past the event; it is kept (with ``attempts`` and
        the error text) for a person or a repair job to look at.
        """
        position = position_of(event)
        if position is None:
            raise ConfigurationError(
                f"dead_letter() needs an event read from a durable stream, not {event!r}"
            )
        if isinstance(error, BaseException):
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
        else:
            text = str(error)
        params = (
            self.consumer,
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
        self._dead_lettered += 1
        logger.error(
            "durable consumer %r moved event %d to the dead letters (%d attempt(s)): %s",
            self.consumer,
            position[1],
            attempts,
            text,
        )
        await self.ack(event)

    async def process(
        self,
        handler: Handler,
        *,
        max_attempts: int = 5,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
    ) -> DurableWorkerStatistics:
        """Call ``handler(event)`` for every data event, until the stream ends.

        A shortcut for ``DurableWorker(handler, ...).run(stream)``; see
        :class:`DurableWorker` (retries, dead letters). The stream must have
        been opened with ``auto_ack=False``.
        """
        worker = DurableWorker(
            handler, max_attempts=max_attempts, backoff_initial=backoff_initial, backoff_max=backoff_max
        )
        return await worker.run(self)

    async def _retention_loop(self, interval: float) -> None:
        batch_size, delete_sql = self._options.retention_batch_size, self._sql.delete_acknowledged

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
                logger.warning("retention on %s failed (will retry): %s", self.source, exc)
                continue
            self._retention_runs += 1
            self._retention_deleted += deleted
            if deleted:
                logger.info("retention deleted %d acknowledged event(s) on %s", deleted, self.source)

    # ---- introspection -------------------------------------------------------------

    @property
    def position(self) -> Position:
        """The position stored in the database: a restart resumes after it."""
        return self._stored

    def statistics(self) -> DurableStatistics:
        """Counters of the stream (cheap; no I/O)."""
        wake = self._wake_stream
        sources = (self._db.statistics(), *(wake.statistics().sources if wake is not None else ()))
        return DurableStatistics(
            consumer=self.consumer,
            read_position=self._follower.position,
            events_received=self._follower.events_read,
            reads=self._follower.reads,
            dead_lettered=self._dead_lettered,
            retention_runs=self._retention_runs,
            retention_deleted=self._retention_deleted,
            buffered=len(self._buffer) + len(self._batch) - self._pos,
            buffered_bytes=self._buffer.bytes,
            sources=sources,
            **self._position_figures(),
        )

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return (
            f"<DurableStream {state} consumer={self.consumer!r} schema={self.schema!r} "
            f"position={self._stored!r} source={self.source!r}>"
        )


@asynccontextmanager
async def open_durable_stream(
    engine: Engine | str, consumer: str, **options: Unpack[DurableStreamOptions]
) -> AsyncIterator[DurableStream]:
    """Read the durable events table as the named ``consumer``; yield a :class:`DurableStream`.

    ``async with open_durable_stream(engine, "billing") as events:`` — the
    consumer is registered (if new), the wake-up channel is LISTENed to, and
    reading starts after the consumer's stored position. Delivery is
    at-least-once: after a crash, events processed after the last stored
    position are delivered again (at most ``ack_every`` of them, or one with
    ``ack_every=1``, plus whatever ``ack_interval`` had not stored yet).

    Args:
        engine: a SQLAlchemy ``Engine`` using psycopg2, or a ``postgresql://`` URL.
        consumer: the consumer's name; its position is kept in ``<schema>.consumers``.
        **options: see :class:`~trio_pgevents.StreamOptions` (the same name
            means the same, with the same default, in every opener):
            ``schema``, ``channel`` (the installer's; wake-ups arrive on
            ``<channel>.durable``), ``batch_size``, ``auto_ack``, ``ack_every``,
            ``ack_interval``, ``poll_interval`` (the bound on delivery delay when
            a wake-up cannot help), ``start`` (where a *new* consumer starts),
            ``retention_interval``, ``retention_batch_size``,
            ``max_buffer_size``, ``max_buffer_bytes``, ``query_timeout``, and
            for the reader's connection and the wake-up listener: ``reconnect``,
            ``backoff_initial``, ``backoff_max``, ``max_reconnect_attempts``,
            ``reconnect_timeout``, ``keepalive``, ``close_timeout``,
            ``connect_timeout``, ``probe_interval``, ``probe_timeout``.

    Raises:
        ConfigurationError: a bad argument or option (before anything
            connects), or the durable tables are missing.
        ConnectError: the database could not be reached at open.
    """
    parsed = StreamOptions.parse("open_durable_stream", options)
    check_text("consumer", consumer)
    if not consumer.strip():
        raise ConfigurationError(f"consumer must not be blank, not {consumer!r}")
    stream = DurableStream(as_engine(engine), consumer, parsed)
    async with open_unwrapping_nursery() as nursery:
        await nursery.start(stream._run)
        async with closed_after_body(stream):
            yield stream
