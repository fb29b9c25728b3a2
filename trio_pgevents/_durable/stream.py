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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Unpack

import psycopg2.errors
import trio
from sqlalchemy.engine import Engine

from .._buffer import EventBuffer
from .._connection import as_engine, describe_source, validate_channel
from .._errors import ConfigurationError, ConnectError, ConnectionLostError, LeaseLostError, TrioPgEventsError
from .._events import Event
from .._listen import EventStream, start_event_stream
from .._names import check_text
from .._nursery import open_unwrapping_nursery
from .._options import DurableStreamOptions, StreamOptions
from .._positions import ResumableStream, closed_after_body
from .._secrets import get_logger
from .._source import DB_ERRORS
from .outbox import OutboxSql, Position, position_of
from .ownership import assemble_ownership
from .reader import OutboxConnection
from .statistics import DurableStatistics
from .upkeep import Upkeep
from .worker import DurableWorker, DurableWorkerStatistics, Handler

__all__ = ["DurableStatistics", "DurableStream", "open_durable_stream"]

logger = get_logger("trio_pgevents")


class DurableStream(ResumableStream[int]):
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

    Owning: a consumer name is held through leases in the database
    (:mod:`.ownership`). An exclusive consumer (the default) has one active
    stream; another opened under the name stands by (``statistics().active``
    is False, it delivers nothing) until the active one closes or stops
    renewing its lease. With ``group=True`` the streams share the consumer's
    partitions, each event in one partition (its table and primary key).
    """

    def __init__(self, engine: Engine, consumer: str, options: StreamOptions) -> None:
        self.source = describe_source(engine)
        super().__init__(
            EventBuffer(options.max_buffer_size, "backpressure", max_bytes=options.max_buffer_bytes),
            start=0,
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
        self._ownership = assemble_ownership(
            self._db,
            self._sql,
            self._buffer,
            options,
            consumer,
            self.source,
            self._withdraw,
            self.wake_channel,
        )
        self._ledger, self._follower = self._ownership.ledger, self._ownership.follower
        self._wake_stream: EventStream | None = None
        self._scope = trio.CancelScope()
        self._finished = trio.Event()
        self._upkeep = Upkeep(self._db, self._sql, consumer, options)
        self._lease_lost: LeaseLostError | None = None

    # ---- lifecycle -----------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the reader's connection and every task of the stream."""
        try:
            with self._scope:
                try:
                    await self._db.connect()
                    await self._ownership.join(self._sql.xmin)
                except TrioPgEventsError as exc:
                    missing = _missing_table(exc)
                    if missing is None:
                        raise
                    raise ConfigurationError(
                        f"schema {self.schema!r} has no durable tables (or an older version of them) on "
                        f"{self.source}: run Installer(engine, schema={self.schema!r}).install(durable=True) "
                        f"first ({missing})"
                    ) from exc
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
                    nursery.start_soon(self._follower.run, self._wake_stream)
                    nursery.start_soon(self._flush_loop)
                    nursery.start_soon(self._ownership.run)
                    if self._options.retention_interval is not None:
                        nursery.start_soon(self._upkeep.retention_loop, self._options.retention_interval)
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
                    self._ledger.processed_through(self.acked_position)
                    await self._ownership.leave()  # stores what was processed, then releases
                except (TrioPgEventsError, *DB_ERRORS) as exc:
                    logger.warning(
                        "durable consumer %r could not store its position at close (events after "
                        "%s will be delivered again): %s",
                        self.consumer,
                        self._ownership.last_stored,
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

    def _position(self, event: Event) -> int | None:
        attributes = getattr(event, "__dict__", None)
        return None if attributes is None else attributes.get("_seq")

    async def _store(self, position: int) -> None:
        self._ledger.processed_through(position)
        try:
            await self._ownership.store(reconnect=not self._closing)
        except LeaseLostError as exc:  # auto_ack, a background round: the next holder redelivers
            logger.warning("%s", exc)
            self._lease_lost = exc

    async def ack(self, event: Event, *, flush: bool = True) -> None:
        """Acknowledge ``event`` and every event delivered before it.

        Args:
            event: an event this stream delivered.
            flush: store the position now (default). False: with the next
                ``ack_every``/``ack_interval`` round or at close (cheaper per
                event; after a crash, those events come again).

        Raises:
            ConfigurationError: ``event`` did not come from a durable stream.
            LeaseLostError: this stream no longer holds ``event``'s partition
                (another member has it, and delivers the event again).
            StreamClosedError: the stream is closed.
        """
        part = _part_of(event)
        if part is not None and part not in self._ledger.held and not self._closing:
            raise LeaseLostError(
                f"durable consumer {self.consumer!r} no longer holds partition {part} "
                f"(event {position_of(event)}): another member delivers it again"
            )
        self._lease_lost = None
        await super().ack(event, flush=flush)
        if self._lease_lost is not None:
            raise self._lease_lost

    def _withdraw(self, parts: set[int]) -> set[int]:
        """Take the undelivered events of ``parts`` out of the stream; their sequence numbers."""
        seqs: set[int] = set()

        def unwanted(event: Event) -> bool:
            attributes = getattr(event, "__dict__", None)
            if attributes is not None and attributes.get("_part") in parts:
                seqs.add(attributes["_seq"])
                return True
            return False

        self._withdraw_undelivered(unwanted)
        return seqs

    def ack_in_transaction(self, cursor: Any, event: Event) -> None:
        """Store ``event`` as processed inside the caller's own transaction (exactly-once).

        Runs the position UPDATE on ``cursor`` (a psycopg2 cursor on the same
        database, inside the transaction that applies the event's effect) and
        does not commit. If that transaction commits, effect and position are
        stored together: after a crash the event is neither lost nor repeated.
        If it rolls back, neither is. The UPDATE is fenced: it stores only
        while this stream holds the event's partition, and it locks the
        partition's row until the caller's transaction ends, so a member
        taking the partition over waits and then reads the position stored.
        Blocking: call it where the transaction runs (e.g. in
        ``trio.to_thread.run_sync``). Open the stream with ``auto_ack=False``;
        a stored position never moves backwards.

        Raises:
            ConfigurationError: ``event`` did not come from a durable stream.
            LeaseLostError: this stream no longer holds the event's partition:
                roll the transaction back (the event goes to the new holder).
        """
        position, part = position_of(event), _part_of(event)
        if position is None or part is None:
            raise ConfigurationError(
                f"ack_in_transaction() needs an event read from a durable stream, not {event!r}"
            )
        self._ownership.store_in_transaction(cursor, part, position)

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
        text = await self._upkeep.dead_letter(event, position, error, attempts)
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

    # ---- introspection -------------------------------------------------------------

    @property
    def position(self) -> Position:
        """The position stored in the database (the earliest of the partitions held)."""
        return self._ownership.last_stored

    def statistics(self) -> DurableStatistics:
        """Counters of the stream (cheap; no I/O)."""
        wake = self._wake_stream
        sources = (self._db.statistics(), *(wake.statistics().sources if wake is not None else ()))
        return DurableStatistics(
            consumer=self.consumer,
            read_position=self._follower.read_position,
            events_received=self._follower.events_read,
            reads=self._follower.reads,
            dead_lettered=self._upkeep.dead_lettered,
            retention_runs=self._upkeep.retention_runs,
            retention_deleted=self._upkeep.retention_deleted,
            buffered=len(self._buffer) + len(self._batch) - self._pos,
            buffered_bytes=self._buffer.bytes,
            sources=sources,
            stored_position=self._ownership.last_stored,
            acked_position=self._ledger.processed_position(self._ownership.last_stored),
            position_stores=self.position_stores,
            member=self._ownership.membership.member,
            partitions_held=tuple(sorted(self._ledger.held)),
            lease_changes=self._ownership.lease_changes,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return (
            f"<DurableStream {state} consumer={self.consumer!r} schema={self.schema!r} "
            f"position={self._ownership.last_stored!r} source={self.source!r}>"
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


def _part_of(event: object) -> int | None:
    attributes = getattr(event, "__dict__", None)
    return None if attributes is None else attributes.get("_part")


def _missing_table(exc: BaseException) -> str | None:
    """What is missing, if ``exc`` says a durable table or column does not exist (else None)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn)):
            return str(cause.diag.message_primary or cause).strip()
        cause = cause.__cause__
    return None
