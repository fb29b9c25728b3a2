"""Durable delivery: named consumers reading the outbox table, with acknowledgements.

LISTEN/NOTIFY forgets whatever is sent while nobody listens. A table watched
with ``Installer.watch_table(..., durable=True)`` writes every change into
``<schema>.events`` in the same transaction as the change, and sends one
wake-up NOTIFY per transaction on ``<channel>.durable``. A
:class:`DurableStream` reads that table from its consumer's stored position.

How reading stays correct when commit order is not id order (PgQ's idea):
the events table is read in ``(txid, id)`` order and only rows whose
transaction id is below the reading snapshot's ``xmin`` are read. Every
transaction below ``xmin`` has finished (committed or rolled back), so no
row can ever appear *behind* the read position later: a transaction that took
a low id but commits late has a txid at or above ``xmin`` until it commits,
and is read then.

Delivery is at-least-once: the position is stored after events are
processed, so a consumer that crashes after processing an event but before
its position reached the database gets that event again when it restarts.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import random
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import psycopg2
import psycopg2.errors
import sqlalchemy.exc
import trio
from psycopg2 import sql
from sqlalchemy.engine import Engine

from . import _connection as conn_mod
from ._backoff import Attempts, Backoff
from ._buffer import EventBuffer
from ._connection import as_engine, describe_source, validate_channel
from ._consumer import BufferedStream
from ._decode import SET_ASIDE
from ._errors import (
    ConfigurationError,
    ConnectError,
    ConnectionLostError,
    StreamClosedError,
    TrioPgEventsError,
)
from ._events import Event, Notification, RowChange, StreamGap
from ._installer import Installer
from ._names import check_identifier, check_text
from ._nursery import open_unwrapping_nursery
from ._options import StreamOptions
from ._secrets import get_logger, redactor_for
from ._stream import EventStream, connect_event_stream
from ._threads import CallTimeout, Handoff, run_abandonable

__all__ = [
    "DurableStatistics",
    "DurableStream",
    "DurableWorker",
    "DurableWorkerStatistics",
    "Position",
    "open_durable_stream",
]

logger = get_logger("trio_pgevents")

_DB_ERRORS = (psycopg2.Error, sqlalchemy.exc.DBAPIError, sqlalchemy.exc.InterfaceError, OSError)
#: Errors after which the connection cannot be used again.
_CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
_MAX_BIGINT = 2**63 - 1
_new = tuple.__new__

#: How long a cancelled query may still finish before its connection is given up (seconds).
_QUERY_GRACE = 0.25
#: Default ``max_buffer_bytes`` of :func:`open_durable_stream`.
DEFAULT_MAX_BUFFER_BYTES = 64 << 20
#: Default ``query_timeout`` of :func:`open_durable_stream` (seconds).
DEFAULT_QUERY_TIMEOUT = 30.0

#: A position in the events table: ``(txid, id)``; events after it are unread.
Position = tuple[int, int]

StartPolicy = Literal["earliest", "latest"]
Handler = Callable[[RowChange], Awaitable[object] | object]

# Options of the wake-up EventStream that a durable stream must control itself.
_FIXED_STREAM_OPTIONS = ("on_gap", "decoders", "overflow")


def _positive(what: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == math.inf:
        raise ConfigurationError(f"{what} must be a positive number, not {value!r}")


def _positive_int(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be an int >= 1, not {value!r}")
    return value


def _position_of(event: object) -> Position | None:
    """The outbox position of an event a durable stream delivered (None for others)."""
    attributes = getattr(event, "__dict__", None)
    if attributes is None:
        return None
    position: Position | None = attributes.get("_position")
    return position


class OutboxNotification(Notification):
    """An outbox row that is not a change event (written by hand, or in another format).

    It keeps its position, so acknowledging it moves the consumer past it;
    :class:`DurableWorker` moves it to the dead letters rather than skipping it.
    """


@dataclass(frozen=True)
class DurableStatistics:
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
    events_read: int
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
    buffered_bytes: int = 0


class DurableStream(BufferedStream):
    """Every event of the outbox table, in commit-safe order, from a stored position.

    Iterate with ``async for`` (or ``receive()``, ``batches()``) like an
    :class:`EventStream`. Data events are :class:`RowChange` objects whose
    ``id`` and ``txid`` are set. A :class:`StreamGap` with ``replayed=True``
    says the wake-up connection was lost and the table was re-read: nothing was
    lost. Made by :func:`open_durable_stream`.

    Acknowledging: with ``auto_ack=True`` an event counts as processed when the
    next one is asked for (``async for``, ``receive()``, or the next batch of
    ``batches()``), and when the ``async with`` body ends without an error.
    Positions are stored every ``ack_every`` events or ``ack_interval``
    seconds, and on close. With ``auto_ack=False`` call :meth:`ack`.
    """

    def __init__(
        self,
        engine: Engine,
        consumer: str,
        *,
        schema: str,
        channel: str,
        batch_size: int,
        auto_ack: bool,
        ack_every: int,
        ack_interval: float,
        poll_interval: float,
        start: StartPolicy,
        retention_interval: float | None,
        retention_batch_size: int,
        max_buffer_size: int,
        max_buffer_bytes: int,
        query_timeout: float,
        stream_options: dict[str, Any],
    ) -> None:
        super().__init__(EventBuffer(max_buffer_size, "backpressure", max_bytes=max_buffer_bytes))
        # One read takes at most a quarter of the buffer's bytes (and always one row).
        self._read_budget = max(1, max_buffer_bytes // 4)
        self.engine = engine
        self.consumer = consumer
        self.schema = schema
        self.channel = channel
        self.wake_channel = validate_channel(channel + ".durable")
        self.source = describe_source(engine)
        self._redactor = redactor_for(engine)
        self._batch_size = batch_size
        self._auto_ack = auto_ack
        self._ack_every = ack_every
        self._ack_interval = ack_interval
        self._poll_interval = poll_interval
        self._start_policy = start
        self._retention_interval = retention_interval
        self._retention_batch_size = retention_batch_size
        # The wake-up stream's options, which the reader's own connection follows too.
        self._stream_options = stream_options
        self._options = StreamOptions(**stream_options)
        self._backoff = Backoff(self._options.backoff_initial, self._options.backoff_max)
        self._query_timeout = query_timeout

        ident = sql.Identifier
        # Every function, operator and type is schema-qualified: the reader runs no
        # code another role put on this connection's search_path.
        self._sql_read = sql.SQL(
            # xid8 is read as text (psycopg2 has no type for it). The payload comes as
            # text with "id" and "txid" added. At most %s rows, and no more bytes than
            # the read budget (counted as stored, without reading the values: always at
            # least one row), so a few huge rows cannot fill the process's memory. "upto"
            # (bytes up to and with the row) tells a batch the budget cut from the end.
            "SELECT r.id, r.txid::pg_catalog.text, r.channel, "
            "((CASE WHEN pg_catalog.jsonb_typeof(r.payload) OPERATOR(pg_catalog.=) 'object' THEN r.payload "
            "ELSE pg_catalog.jsonb_build_object('value', r.payload) END) OPERATOR(pg_catalog.||) "
            "pg_catalog.jsonb_build_object('id', r.id, 'txid', "
            "r.txid::pg_catalog.text::pg_catalog.numeric))::pg_catalog.text, r.upto, "
            + _ROW_EVENT_CHECK
            + " "
            # The LIMIT is innermost: a window function of the same level would see every
            # unread row (a sort of the whole backlog per read).
            "FROM (SELECT l.*, pg_catalog.sum(pg_catalog.pg_column_size(l.payload)) "
            "OVER (ORDER BY l.txid, l.id ROWS UNBOUNDED PRECEDING) AS upto "
            "FROM (SELECT e.id, e.txid, e.channel, e.payload FROM {}.{} AS e "
            "WHERE (e.txid, e.id) OPERATOR(pg_catalog.>) (%s::pg_catalog.xid8, %s::pg_catalog.int8) "
            "AND e.txid OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()) "
            "ORDER BY e.txid, e.id LIMIT %s) AS l) AS r "
            "WHERE r.upto OPERATOR(pg_catalog.-) pg_catalog.pg_column_size(r.payload) "
            "OPERATOR(pg_catalog.<) %s::pg_catalog.int8 "
            "ORDER BY r.txid, r.id"
        ).format(ident(schema), ident("events"))
        self._sql_store = sql.SQL(
            "UPDATE {}.{} SET last_txid = %s::pg_catalog.xid8, last_id = %s, updated_at = pg_catalog.now() "
            "WHERE name OPERATOR(pg_catalog.=) %s::pg_catalog.text "
            "AND (last_txid, last_id) OPERATOR(pg_catalog.<) (%s::pg_catalog.xid8, %s::pg_catalog.int8)"
        ).format(ident(schema), ident("consumers"))
        self._sql_register = sql.SQL(
            "INSERT INTO {}.{} (name, last_txid, last_id) VALUES (%s, %s::pg_catalog.xid8, %s) "
            "ON CONFLICT (name) DO NOTHING"
        ).format(ident(schema), ident("consumers"))
        self._sql_position = sql.SQL(
            "SELECT last_txid::pg_catalog.text, last_id FROM {}.{} "
            "WHERE name OPERATOR(pg_catalog.=) %s::pg_catalog.text"
        ).format(ident(schema), ident("consumers"))
        self._sql_dead = sql.SQL(
            "INSERT INTO {}.{} (consumer, event_id, txid, channel, payload, error, attempts) "
            "VALUES (%s, %s, %s::pg_catalog.xid8, %s, %s::pg_catalog.jsonb, %s, %s) "
            "ON CONFLICT (consumer, event_id) DO UPDATE SET error = EXCLUDED.error, "
            "attempts = EXCLUDED.attempts, failed_at = pg_catalog.now()"
        ).format(ident(schema), ident("dead_letters"))

        self._proxy: Any = None
        self._db_lock = trio.Lock()
        self._wake = trio.Event()
        self._flush_now = trio.Event()
        self._pending_gaps: list[StreamGap] = []
        self._read_pos: Position = (0, 0)
        self._stored_pos: Position = (0, 0)
        self._acked_pos: Position = (0, 0)
        self._unstored = 0
        self._last_store = 0.0
        self._handed: Position | None = None  # last data event handed to the consumer
        self._handed_count = 0  # events handed out since the last one was marked processed
        self._wake_stream: EventStream | None = None
        self._scope = trio.CancelScope()
        self._finished = trio.Event()
        self._closed = False
        self._events_read = 0
        self._reads = 0
        self._stores = 0
        self._dead_lettered = 0
        self._retention_runs = 0
        self._retention_deleted = 0

    # ---- lifecycle -----------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the database connection and every task of the stream."""
        try:
            with self._scope:
                try:
                    await self._connect(self._options.connect_timeout)
                    await self._register()
                except (*_DB_ERRORS, ConnectionLostError) as exc:
                    raise ConnectError(
                        f"could not open durable consumer {self.consumer!r} on {self.source}: "
                        f"{self._redactor.describe(exc)}"
                    ) from exc
                async with trio.open_nursery() as nursery:
                    # LISTEN before the first read: a commit between them still wakes us.
                    self._wake_stream = await connect_event_stream(
                        nursery,
                        self.engine,
                        [self.wake_channel],
                        on_gap="event",
                        decoders={},
                        overflow="drop-oldest",  # wake-ups are hints: losing some is harmless
                        **self._stream_options,
                    )
                    nursery.start_soon(self._pump_wakeups, self._wake_stream)
                    nursery.start_soon(self._read_loop)
                    nursery.start_soon(self._flush_loop)
                    if self._retention_interval is not None:
                        nursery.start_soon(self._retention_loop, self._retention_interval)
                    task_status.started()
        finally:
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
                        await self._store_acked(reconnect=False)
                    except (TrioPgEventsError, *_DB_ERRORS) as exc:
                        logger.warning(
                            "durable consumer %r could not store its position at close (events after "
                            "%s will be delivered again): %s",
                            self.consumer,
                            self._stored_pos,
                            exc,
                        )
                    else:
                        stored = True

                with trio.move_on_after(self._options.close_timeout):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(close_wake_stream)
                        nursery.start_soon(store)
                await self._release(broken=not stored)
                self._buffer.close()
                self._finished.set()

    async def aclose(self, *, processed: bool = True) -> None:
        """Store the acknowledged position, stop reading, return the connection.

        Args:
            processed: with ``auto_ack``, whether the last event handed out was
                processed (``open_durable_stream`` passes False when its body
                raised, so that event is delivered again next time).

        Idempotent; returns within ``close_timeout`` (and a moment), even when
        cancelled or when the server does not answer.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._auto_ack and processed:
            self._mark_processed()
        self._buffer.close()
        self._scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(2 * self._options.close_timeout + 1):
            await self._finished.wait()

    async def _connect(self, limit: float) -> None:
        """Take a connection from the engine (autocommit, keepalive), within ``limit`` seconds."""
        engine, keepalive = self.engine, self._options.keepalive
        handoff = Handoff(close=lambda proxy: conn_mod.release(proxy, broken=True))

        def work() -> Any:
            return handoff.deliver(conn_mod.checkout(engine, (), keepalive, handoff, limit))

        self._proxy = await run_abandonable(
            work, timeout=limit, handoff=handoff, what=f"connect (connect_timeout={limit:g}s)"
        )

    async def _release(self, *, broken: bool) -> None:
        """Give the connection back (or discard it), within ``close_timeout``; never raises."""
        proxy, self._proxy = self._proxy, None
        if proxy is None:
            return
        handoff = Handoff()
        with contextlib.suppress(Exception):
            handoff.attach(proxy.dbapi_connection.fileno())
        with trio.CancelScope(shield=True), contextlib.suppress(CallTimeout):
            # Past the limit the socket is shut down, and release() discards it.
            await run_abandonable(
                functools.partial(conn_mod.release, proxy, broken=broken),
                timeout=self._options.close_timeout,
                handoff=handoff,
            )

    async def _query(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(cursor)`` on the connection in a thread, within ``query_timeout``."""
        conn = self._proxy.dbapi_connection
        handoff = Handoff()
        handoff.attach(conn.fileno())

        def work() -> Any:
            with conn.cursor() as cursor:
                return fn(cursor)

        return await run_abandonable(
            work,
            timeout=self._query_timeout,
            handoff=handoff,
            what=f"durable reader query (query_timeout={self._query_timeout:g}s)",
            # Cancelled mid-query (closing, a caller's deadline): let a healthy server
            # answer, so the connection stays usable (the position can still be stored).
            grace=min(_QUERY_GRACE, self._options.close_timeout),
        )

    async def _db(self, fn: Callable[[Any], Any], *, reconnect: bool = True) -> Any:
        """Run ``fn(cursor)`` on the stream's connection, reconnecting on loss.

        Reconnecting follows the stream's options: ``reconnect``, backoff,
        ``max_reconnect_attempts``, ``reconnect_timeout``; each attempt is
        bounded by ``connect_timeout``.

        Raises:
            ConnectionLostError: the connection is gone and may not (or could not) be restored.
            StreamClosedError: the stream is closed.
        """
        options = self._options
        attempts: Attempts | None = None
        async with self._db_lock:
            while True:
                if self._finished.is_set():
                    raise StreamClosedError(f"durable stream of consumer {self.consumer!r} is closed")
                if self._proxy is None and not reconnect:
                    raise ConnectionLostError(f"no connection to {self.source}")
                try:
                    if self._proxy is None:
                        limit = options.connect_timeout
                        if attempts is not None:
                            limit = attempts.limit(trio.current_time(), limit)
                        await self._connect(limit)
                    return await self._query(fn)
                except _DB_ERRORS as exc:
                    if not isinstance(exc, psycopg2.Error) or isinstance(exc, _CONNECTION_ERRORS):
                        await self._release(broken=True)
                    elif self._proxy is not None:
                        detail = self._redactor.describe(exc)
                        raise TrioPgEventsError(
                            f"durable consumer {self.consumer!r} on {self.source}: {detail}"
                        ) from exc
                    if not (reconnect and options.reconnect):
                        raise ConnectionLostError(
                            f"lost connection to {self.source}: {self._redactor.describe(exc)}"
                        ) from exc
                    if attempts is None:
                        attempts = self._backoff.attempts(
                            now=trio.current_time(),
                            max_attempts=options.max_reconnect_attempts,
                            timeout=options.reconnect_timeout,
                        )
                        logger.warning(
                            "durable consumer %r lost its connection to %s: %s",
                            self.consumer,
                            self.source,
                            self._redactor.describe(exc),
                        )
                    delay = attempts.failed(trio.current_time())
                    if delay is None:
                        raise ConnectionLostError(
                            f"lost connection to {self.source} and could not reconnect after "
                            f"{attempts.failures} attempt(s): {self._redactor.describe(exc)}"
                        ) from exc
                    logger.info(
                        "durable reader: attempt %d to reach %s failed: %s",
                        attempts.failures,
                        self.source,
                        self._redactor.describe(exc),
                    )
                    await trio.sleep(delay)

    async def _register(self) -> None:
        start = self._start_policy

        def work(cursor: Any) -> Position:
            if start == "latest":
                # Skip everything already finished; transactions still running are delivered.
                cursor.execute(
                    "SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::pg_catalog.text"
                )
                xmin = int(cursor.fetchone()[0])
                initial: Position = (xmin - 1, _MAX_BIGINT)
            else:
                initial = (0, 0)
            try:
                cursor.execute(self._sql_register, (self.consumer, str(initial[0]), initial[1]))
            except psycopg2.errors.UndefinedTable as exc:
                raise ConfigurationError(
                    f"schema {self.schema!r} has no durable tables on {self.source}: run "
                    f"Installer(engine, schema={self.schema!r}).install(durable=True) first"
                ) from exc
            cursor.execute(self._sql_position, (self.consumer,))
            row = cursor.fetchone()
            return (int(row[0]), int(row[1]))

        position = await self._db(work)
        self._read_pos = self._stored_pos = self._acked_pos = position
        self._last_store = trio.current_time()

    # ---- reading ---------------------------------------------------------------

    async def _pump_wakeups(self, wake: EventStream) -> None:
        async for batch in wake.batches():
            for event in batch:
                if isinstance(event, StreamGap):
                    self._pending_gaps.append(event)
            self._wake.set()

    async def _read_loop(self) -> None:
        # After any activity (a wake-up, rows read) the table is read again after
        # 10 ms, 20 ms, 40 ms, ... up to poll_interval. That catches what a
        # wake-up cannot announce: a transaction whose rows are not below xmin
        # yet when the wake-up is read (an older one still running), and a
        # writer that skipped its NOTIFY because another transaction was
        # notifying at the same moment (the installer lets only one at a time
        # take the server's NOTIFY lock; see the README's durable section).
        first = 0.01
        fast = first
        while True:
            woken = self._wake.is_set()
            self._wake = trio.Event()  # reset before reading: a wake-up during the read is kept
            gaps, self._pending_gaps = self._pending_gaps, []
            read_before = self._events_read
            await self._catch_up()
            for gap in gaps:
                # The table was re-read after the reconnect: nothing was lost.
                self._buffer.put_control(
                    StreamGap(gap.source, gap.disconnected_at, gap.reconnected_at, gap.reason, True)
                )
            if woken or self._events_read > read_before:
                fast = first
            delay = min(fast, self._poll_interval)
            fast = min(fast * 2, self._poll_interval)
            with trio.move_on_after(delay):
                await self._wake.wait()

    async def _catch_up(self) -> None:
        """Read until the table has nothing more below xmin (one query per ``batch_size`` rows)."""
        limit = self._batch_size
        budget = self._read_budget
        read_sql = self._sql_read
        source = self.source

        while True:
            txid, event_id = self._read_pos

            def work(cursor: Any, txid: int = txid, event_id: int = event_id) -> list[Any]:
                cursor.execute(read_sql, (str(txid), event_id, limit, budget))
                return list(cursor.fetchall())

            rows: list[Any] = await self._db(work)
            self._reads += 1
            if not rows:
                return
            batch = [_make_event(row, source) for row in rows]
            last = rows[-1]
            self._read_pos = (int(last[1]), int(last[0]))
            self._events_read += len(batch)
            await self._buffer.put(batch, sum(len(row[3]) for row in rows))
            if len(rows) < limit and int(last[4]) < budget:
                return  # everything there was read (not cut by the limit, nor by the budget)

    # ---- acknowledging ---------------------------------------------------------

    def _mark_processed(self) -> None:
        handed = self._handed
        if handed is not None and handed > self._acked_pos:
            self._acked_pos = handed
            self._unstored += self._handed_count
        self._handed = None
        self._handed_count = 0

    async def _after_processed(self) -> None:
        # A read that is cancelled takes nothing, and acknowledges nothing more either.
        await trio.lowlevel.checkpoint_if_cancelled()
        self._mark_processed()
        if self._unstored >= self._ack_every and not self._closed:
            if self._ack_every == 1:
                # Per-event acknowledgement: stored before the next event is handed out.
                await self._store_acked()
            else:
                # Stored by the flush task, while the consumer goes on with the next events.
                self._flush_now.set()
                await trio.lowlevel.checkpoint()

    async def __anext__(self) -> Event:
        if self._auto_ack:
            await self._after_processed()
        event = await super().__anext__()
        self._handed = _position_of(event) or self._handed
        self._handed_count += 1
        return event

    async def receive(self) -> Event:
        """Wait for the next event (with ``auto_ack``, the previous one counts as processed)."""
        if self._auto_ack:
            await self._after_processed()
        event = await super().receive()
        self._handed = _position_of(event) or self._handed
        self._handed_count += 1
        return event

    def receive_nowait(self) -> Event:
        """The next buffered event, or raise ``trio.WouldBlock`` (acks stored in the background)."""
        if self._auto_ack:
            self._mark_processed()
        event = super().receive_nowait()
        self._handed = _position_of(event) or self._handed
        self._handed_count += 1
        return event

    async def _next_batch(self) -> list[Event]:
        if self._auto_ack:
            await self._after_processed()
        batch = await super()._next_batch()
        self._handed_count += len(batch)
        for event in reversed(batch):
            position = _position_of(event)
            if position is not None:
                self._handed = position
                break
        return batch

    async def ack(self, event: Event, *, flush: bool = True) -> None:
        """Acknowledge ``event`` and every event before it.

        Args:
            event: an event this stream delivered.
            flush: store the position now (default). False: store it with the
                next ``ack_every``/``ack_interval`` round or at close (cheaper
                per event; after a crash, those events come again).

        Raises:
            ConfigurationError: ``event`` did not come from a durable stream.
        """
        position = _position_of(event)
        if position is None:
            if isinstance(event, StreamGap):
                await trio.lowlevel.checkpoint()
                return  # control events have no position
            raise ConfigurationError(f"ack() needs an event read from a durable stream, not {event!r}")
        if position > self._acked_pos:
            self._acked_pos = position
            self._unstored += 1
        if flush or self._unstored >= self._ack_every:
            await self._store_acked()
        else:
            await trio.lowlevel.checkpoint()

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
        position = _position_of(event)
        if position is None:
            raise ConfigurationError(
                f"ack_in_transaction() needs an event read from a durable stream, not {event!r}"
            )
        txid = str(position[0])
        cursor.execute(self._sql_store, (txid, position[1], self.consumer, txid, position[1]))

    async def flush(self) -> None:
        """Store the acknowledged position now (normally done every ``ack_every``/``ack_interval``)."""
        await self._store_acked()

    async def _store_acked(self, *, reconnect: bool = True) -> None:
        position = self._acked_pos
        if position <= self._stored_pos:
            self._unstored = 0
            await trio.lowlevel.checkpoint()
            return
        params = (str(position[0]), position[1], self.consumer, str(position[0]), position[1])
        store_sql = self._sql_store

        def work(cursor: Any) -> None:
            cursor.execute(store_sql, params)

        await self._db(work, reconnect=reconnect)
        self._stores += 1
        self._stored_pos = max(self._stored_pos, position)
        if self._acked_pos == position:
            self._unstored = 0
        self._last_store = trio.current_time()

    async def _flush_loop(self) -> None:
        while True:
            with trio.move_on_after(self._ack_interval):
                await self._flush_now.wait()
            self._flush_now = trio.Event()
            if self._acked_pos > self._stored_pos:
                await self._store_acked()

    # ---- failures and retention --------------------------------------------------

    async def dead_letter(self, event: Event, error: BaseException | str, attempts: int) -> None:
        """Move ``event`` to ``<schema>.dead_letters`` with the error text, then ack it.

        The consumer goes on past the event; it is kept (with ``attempts`` and
        the error text) for a person or a repair job to look at.
        """
        position = _position_of(event)
        if position is None:
            raise ConfigurationError(
                f"dead_letter() needs an event read from a durable stream, not {event!r}"
            )
        if isinstance(error, BaseException):
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
        else:
            text = str(error)
        payload = _stored_payload(event.payload)
        params = (self.consumer, position[1], str(position[0]), event.channel, payload, text, attempts)
        dead_sql = self._sql_dead

        def work(cursor: Any) -> None:
            cursor.execute(dead_sql, params)

        await self._db(work)
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
        installer = Installer(self.engine, schema=self.schema, channel=self.channel)
        batch_size = self._retention_batch_size
        while True:
            await trio.sleep(interval)
            try:
                deleted = await trio.to_thread.run_sync(installer.delete_acknowledged, batch_size)
            except (TrioPgEventsError, *_DB_ERRORS) as exc:
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
        return self._stored_pos

    def statistics(self) -> DurableStatistics:
        """Counters of the stream (cheap; no I/O)."""
        return DurableStatistics(
            consumer=self.consumer,
            read_position=self._read_pos,
            stored_position=self._stored_pos,
            acked_position=self._acked_pos,
            events_read=self._events_read,
            reads=self._reads,
            position_stores=self._stores,
            dead_lettered=self._dead_lettered,
            retention_runs=self._retention_runs,
            retention_deleted=self._retention_deleted,
            buffered=len(self._buffer) + len(self._batch) - self._pos,
            buffered_bytes=self._buffer.bytes,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<DurableStream {state} consumer={self.consumer!r} schema={self.schema!r} "
            f"position={self._stored_pos!r} source={self.source!r}>"
        )


@dataclass
class DurableWorkerStatistics:
    """Counters of a :class:`DurableWorker` (read them any time)."""

    #: Events read from the stream (control events included).
    received: int = 0
    #: Events whose callback returned (then acknowledged).
    succeeded: int = 0
    #: Callback calls that raised (each retry counts).
    failed: int = 0
    #: Events moved to the dead-letter table after ``max_attempts`` failures.
    dead_lettered: int = 0
    #: Callbacks cancelled at shutdown (their events stay unacknowledged).
    cancelled: int = 0
    #: Events with no callback (acknowledged and passed over).
    skipped: int = 0


class _SingleHandler:
    """Adapts one ``handler(event)`` to the router interface the worker uses."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def route(self, event: Event) -> Handler | None:
        return self._handler if isinstance(event, RowChange) else None

    def argument(self, event: Event) -> Any:
        return event


def _stored_payload(text: str) -> str:
    """The payload as the outbox stored it: the reader's text without the ``id``/``txid`` it added."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return json.dumps({"unparsed_payload": text})
    if isinstance(data, dict):
        data.pop("id", None)
        data.pop("txid", None)
    return json.dumps(data)


def _is_async(function: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - the bound method is wanted
    return call is not None and inspect.iscoroutinefunction(call)


class DurableWorker:
    """Calls a callback for each durable event, one at a time, in order; never loses one.

    An event is acknowledged only after its callback returned. A callback
    that raises leaves the event unacknowledged; it is called again after a
    jittered exponential backoff (``backoff_initial`` doubling up to
    ``backoff_max``). After ``max_attempts`` failures the event goes to
    ``<schema>.dead_letters`` with the error text, is acknowledged, and the
    worker moves on. Plain functions run in a worker thread; ``async def``
    callbacks run in the Trio loop.

    Args:
        handler: ``handler(event)`` for every :class:`RowChange`; or a router
            object with ``route(event) -> callback | None`` and
            ``argument(event) -> what the callback gets`` (as the CLI's
            ``CallbackRouter``).
        max_attempts: calls per event before it is dead-lettered (>= 1).
        backoff_initial: first delay before a retry, seconds.
        backoff_max: largest delay before a retry, seconds.
        shutdown_timeout: after :meth:`stop`, how long a running callback may
            take to finish; then it is cancelled and its event stays unacknowledged.
    """

    def __init__(
        self,
        handler: Any,
        *,
        max_attempts: int = 5,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        shutdown_timeout: float = 30.0,
    ) -> None:
        _positive_int("max_attempts", max_attempts)
        _positive("backoff_initial", backoff_initial)
        _positive("backoff_max", backoff_max)
        if (
            isinstance(shutdown_timeout, bool)
            or not isinstance(shutdown_timeout, (int, float))
            or not (shutdown_timeout >= 0)
        ):
            raise ConfigurationError(f"shutdown_timeout must be a number >= 0, not {shutdown_timeout!r}")
        if hasattr(handler, "route") and hasattr(handler, "argument"):
            self.router: Any = handler
        elif callable(handler):
            self.router = _SingleHandler(handler)
        else:
            raise ConfigurationError(f"handler must be callable or a router, not {handler!r}")
        self.max_attempts = max_attempts
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.shutdown_timeout = float(shutdown_timeout)
        self.statistics = DurableWorkerStatistics()
        self._scope = trio.CancelScope()
        self._busy = False
        self._stopping = False

    def stop(self) -> None:
        """Stop after the running callback (bounded by ``shutdown_timeout``); safe to repeat."""
        self._stopping = True
        if self._busy:
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + self.shutdown_timeout)
        else:
            self._scope.cancel()

    async def run(self, stream: DurableStream) -> DurableWorkerStatistics:
        """Process ``stream`` until it ends or :meth:`stop` is called; return the counters."""
        if stream._auto_ack:
            raise ConfigurationError(
                "a DurableWorker acknowledges itself: open the stream with auto_ack=False"
            )
        stats = self.statistics
        with self._scope:
            while not self._stopping:
                try:
                    event = await stream.receive()
                except StreamClosedError:
                    break
                stats.received += 1
                if isinstance(event, OutboxNotification):
                    # Not a change this worker understands: keep it for a person, never drop it.
                    await stream.dead_letter(event, "not a row or schema change event", 0)
                    stats.dead_lettered += 1
                    continue
                callback = self.router.route(event)
                if callback is None:
                    stats.skipped += 1
                    await stream.ack(event, flush=False)
                    continue
                self._busy = True
                try:
                    done = await self._handle(stream, callback, event)
                finally:
                    self._busy = False
                if not done:
                    break  # stopping during a retry: the event stays unacknowledged
                await stream.ack(event, flush=False)
        return stats

    async def _handle(self, stream: DurableStream, callback: Any, event: Event) -> bool:
        """Call until success or dead letter (True), or give up because stopping (False)."""
        stats = self.statistics
        argument = self.router.argument(event)
        delay = self.backoff_initial
        for attempt in range(1, self.max_attempts + 1):
            try:
                if _is_async(callback):
                    await callback(argument)
                else:
                    await trio.to_thread.run_sync(callback, argument, abandon_on_cancel=True)
                stats.succeeded += 1
                return True
            except trio.Cancelled:
                stats.cancelled += 1
                logger.warning("durable consumer %r: callback cancelled at shutdown", stream.consumer)
                raise
            except Exception as exc:
                stats.failed += 1
                if attempt == self.max_attempts:
                    await stream.dead_letter(event, exc, attempt)
                    stats.dead_lettered += 1
                    return True
                logger.warning(
                    "durable consumer %r: callback failed on event %s (attempt %d/%d), retrying: %s",
                    stream.consumer,
                    _position_of(event),
                    attempt,
                    self.max_attempts,
                    exc,
                )
            if self._stopping:
                return False
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max)
        return False  # pragma: no cover - the loop always returns


def _typed(key: str, *types: str) -> str:
    """SQL: the payload's ``key`` is absent or of one of these jsonb types (qualified throughout)."""
    kinds = ", ".join(f"'{t}'" for t in (*types, "null"))
    return (
        f"coalesce(pg_catalog.jsonb_typeof(r.payload OPERATOR(pg_catalog.->) '{key}'), 'null') "
        f"OPERATOR(pg_catalog.=) ANY (ARRAY[{kinds}])"
    )


#: SQL: the row is a row event of the trigger's format (kind, table, method, row data). The
#: server checks it (in C, per row), so the reader parses nothing up front: the payload is
#: parsed on first field access (the other fields read as their empty values if a row
#: written by hand gave them the wrong type). The type comes from the top-level "kind" the
#: trigger wrote, never from row data.
_ROW_EVENT_CHECK = (
    "coalesce(pg_catalog.jsonb_typeof(r.payload) OPERATOR(pg_catalog.=) 'object' "
    "AND r.payload OPERATOR(pg_catalog.->>) 'kind' OPERATOR(pg_catalog.=) 'row' "
    "AND pg_catalog.jsonb_typeof(r.payload OPERATOR(pg_catalog.->) 'table_name') "
    "OPERATOR(pg_catalog.=) 'string' "
    "AND r.payload OPERATOR(pg_catalog.->>) 'method' OPERATOR(pg_catalog.=) "
    "ANY (ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AND "
    + " AND ".join([_typed("old_data", "object"), _typed("new_data", "object")])
    + ", false)"
)


def _make_event(row: tuple[Any, ...], source: str) -> Event:
    event_id, txid_text, channel, payload, _, is_row_event = row
    event: Event
    if is_row_event:
        event = _new(RowChange, (channel, payload, 0, source))
    else:
        # A row written by hand, or another format: set aside (and logged, at a limited
        # rate), never mistaken for a change. It keeps its position: acknowledged like any
        # event, moved to the dead letters by DurableWorker.
        SET_ASIDE.note(channel, payload, "an outbox row that is not a row event of the trigger's format")
        event = _new(OutboxNotification, (channel, payload, 0, source))
    # Known without parsing the payload: acknowledging needs it for every event.
    event.__dict__["_position"] = (int(txid_text), event_id)
    return event


@asynccontextmanager
async def open_durable_stream(
    engine: Engine | str,
    consumer: str,
    *,
    schema: str = "pgevents",
    channel: str = "pgevents",
    batch_size: int = 1000,
    auto_ack: bool = True,
    ack_every: int = 1000,
    ack_interval: float = 1.0,
    poll_interval: float = 1.0,
    start: StartPolicy = "earliest",
    retention_interval: float | None = None,
    retention_batch_size: int = 10000,
    max_buffer_size: int | None = None,
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
    query_timeout: float = DEFAULT_QUERY_TIMEOUT,
    **stream_options: Any,
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
        schema: the installer's schema (where ``events`` and ``consumers`` live).
        channel: the installer's channel; wake-ups arrive on ``<channel>.durable``.
        batch_size: most rows read per query.
        auto_ack: acknowledge an event when the next one is asked for (see
            :class:`DurableStream`); False: call :meth:`DurableStream.ack`.
        ack_every: with ``auto_ack``, store the position after this many
            processed events (1: before every next event is handed out).
        ack_interval: store an acknowledged position at least this often, seconds.
        poll_interval: read the table at least this often, even without
            wake-ups, seconds: the bound on delivery delay when a wake-up
            cannot help (a writer that skipped its NOTIFY while a long
            transaction was notifying; rows written without the trigger).
        start: where a *new* consumer starts: ``"earliest"`` (every retained
            event) or ``"latest"`` (only transactions that finish from now on).
            An existing consumer always resumes from its stored position.
        retention_interval: every this many seconds, delete events that every
            registered consumer acknowledged (``Installer.delete_acknowledged``);
            None (default): never, leave it to ``trio-pgevents`` or a cron job.
        retention_batch_size: rows deleted per retention statement.
        max_buffer_size: events read ahead of the consumer (default: 2 x batch_size).
        max_buffer_bytes: bytes of payload read ahead of the consumer (default
            64 MiB): a stuck consumer with huge rows holds at most about this
            much (one read takes at most a quarter of it, and at least one row).
        query_timeout: a query of the reader (a read, a position store) with
            no answer in this time means the connection is dead: it is
            dropped and the reader reconnects, seconds.
        **stream_options: options of the wake-up :func:`open_event_stream`
            (``reconnect``, ``backoff_initial``, ``backoff_max``,
            ``probe_interval``, ``keepalive``, ``close_timeout``, ...); the
            reader's own reconnects use the same backoff.

    Raises:
        ConfigurationError: a bad argument, or the durable tables are missing.
        ConnectError: the database could not be reached at open.
    """
    engine = as_engine(engine)
    check_text("consumer", consumer)
    if not consumer.strip():
        raise ConfigurationError(f"consumer must not be blank, not {consumer!r}")
    check_identifier("schema", schema)
    check_identifier("channel", channel)
    validate_channel(channel + ".durable")
    _positive_int("batch_size", batch_size)
    _positive_int("ack_every", ack_every)
    _positive("ack_interval", ack_interval)
    _positive("poll_interval", poll_interval)
    _positive("retention_interval", retention_interval, allow_none=True)
    _positive_int("retention_batch_size", retention_batch_size)
    if start not in ("earliest", "latest"):
        raise ConfigurationError(f"start must be 'earliest' or 'latest', not {start!r}")
    if not isinstance(auto_ack, bool):
        raise ConfigurationError(f"auto_ack must be True or False, not {auto_ack!r}")
    buffer_size = _positive_int(
        "max_buffer_size", 2 * batch_size if max_buffer_size is None else max_buffer_size
    )
    _positive("query_timeout", query_timeout)
    for name in _FIXED_STREAM_OPTIONS:
        if name in stream_options:
            raise ConfigurationError(f"option {name!r} is fixed by a durable stream and cannot be given")
    try:
        StreamOptions(**stream_options)  # every option checked before anything connects
    except TypeError as exc:
        raise ConfigurationError(f"unknown option: {exc}") from exc
    stream = DurableStream(
        engine,
        consumer,
        schema=schema,
        channel=channel,
        batch_size=batch_size,
        auto_ack=auto_ack,
        ack_every=ack_every,
        ack_interval=ack_interval,
        poll_interval=poll_interval,
        start=start,
        retention_interval=retention_interval,
        retention_batch_size=retention_batch_size,
        max_buffer_size=buffer_size,
        max_buffer_bytes=_positive_int("max_buffer_bytes", max_buffer_bytes),
        query_timeout=query_timeout,
        stream_options=dict(stream_options),
    )
    async with open_unwrapping_nursery() as nursery:
        await nursery.start(stream._run)
        processed = True
        try:
            yield stream
        except BaseException:
            processed = False
            raise
        finally:
            await stream.aclose(processed=processed)
