"""The replication connection of a change stream: START_REPLICATION, the pump, confirmations.

:class:`Replicator` is a :class:`~trio_pgevents._source.ReconnectingSource`:
connecting, reconnecting with backoff, gap events and health are shared
with the LISTEN stream; this module adds what is particular to a slot --
the replication protocol, the pgoutput decoder, and status updates that
confirm acknowledged positions (and only those) to the server.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import trio
from sqlalchemy.engine import Engine

from .._errors import ReplicationError
from .._events import Event
from .._options import StreamOptions
from .._secrets import get_logger, redactor_for
from .._source import DB_ERRORS, Lost, ReconnectingSource
from .admin import IN_USE_GRACE, in_use, replication_dsn
from .pgoutput import PgOutputDecoder, ack_position
from .session import (
    Fatal,
    Opened,
    Session,
    SlotInUse,
    close_connection,
    close_session,
    connect,
    readable_now,
    start_held,
)

if TYPE_CHECKING:
    from .snapshot import InitialSnapshot
    from .stream import ChangeStream

__all__ = ["Replicator"]

logger = get_logger("trio_pgevents")

#: Most events put into the buffer per batch.
_MAX_BATCH = 4096


class Replicator(ReconnectingSource):
    """Reads the slot into the stream's buffer, confirms acknowledged positions, reconnects."""

    connecting = "start replication from"
    connection = "replication connection"
    retryable = (*DB_ERRORS, ReplicationError, Fatal)

    def __init__(
        self,
        stream: ChangeStream,
        engine: Engine,
        options: StreamOptions,
        snapshot: InitialSnapshot | None = None,
    ) -> None:
        super().__init__(stream.source, redactor_for(engine), stream._buffer, options, replayed=True)
        self._stream = stream
        self._linger = options.linger
        self._dsn = replication_dsn(engine)
        self._status_interval = options.status_interval
        self._session: Session | None = None
        #: With a snapshot to take: the connection that created the slot, idle until it is read.
        self._snapshot = snapshot
        self._held: Opened | None = None
        self._sent_flush = 0
        self._last_forced = 0.0
        self._reported_write = 0
        self._seen_feedback: Any = None
        self._last_read: Event | None = None

    def _fatal(self, exc: BaseException) -> BaseException | None:
        # A slot in use right after a reconnect is the old walsender that has not noticed
        # its client is gone: worth another attempt. The rest is not.
        if isinstance(exc, Fatal):
            return ReplicationError(f"cannot stream from {self.source}: {exc}")
        if isinstance(exc, ReplicationError) and not isinstance(exc, SlotInUse):
            return exc
        return None

    async def _first_connect(self) -> None:
        if self._snapshot is not None and not self._snapshot.lsn:
            await self._create_slot_with_snapshot(self._snapshot)
            return
        # A walsender whose client has just disconnected (a stream closed or a
        # consumer killed a moment ago) holds the slot until it notices: wait
        # a little before calling the slot "in use".
        deadline = trio.current_time() + IN_USE_GRACE
        while True:
            try:
                await self._connect(self._options.connect_timeout)
                return
            except SlotInUse as exc:
                if trio.current_time() >= deadline:
                    message = in_use(self._stream.slot, "another client")
                    raise ReplicationError(f"{message} ({exc})") from exc
            await trio.sleep(0.05)

    async def _open(self, limit: float, *, start: bool) -> Opened:
        """Connect (and START_REPLICATION, if ``start``) within ``limit`` seconds."""
        stream = self._stream
        streaming = (stream.slot, stream.publication, self._status_interval) if start else None
        return await connect(self._dsn, self._options, limit, streaming)

    async def _connect(self, limit: float) -> None:
        """One attempt: connect and START_REPLICATION within ``limit`` seconds."""
        self._begin(await self._open(limit, start=True))

    def _begin(self, opened: Opened) -> None:
        """The connection streams: decode what it reads from now on."""
        conn, cursor, xid_reference, domains = opened
        stream = self._stream
        encoding = psycopg2.extensions.encodings.get(
            conn.get_parameter_status("server_encoding") or "", "utf-8"
        )
        decoder = PgOutputDecoder(stream.slot, stream.source, encoding, xid_reference, domains)
        self._session = Session(conn, cursor, decoder)
        self.backend_pid = conn.get_backend_pid()
        self.connected = True
        self._sent_flush = 0
        self._reported_write = 0
        self._seen_feedback = cursor.feedback_timestamp
        self._last_read = None
        self._last_forced = trio.current_time()

    # ---- the initial snapshot ---------------------------------------------

    async def _create_slot_with_snapshot(self, snapshot: InitialSnapshot) -> None:
        """Connect and create the slot, exporting its snapshot; the connection is held, idle."""
        opened = await self._open(self._options.connect_timeout, start=False)
        try:
            await snapshot.create_slot(opened[0])
        except BaseException:
            await close_connection(opened[0], self._options.close_timeout)
            raise
        self._held = opened
        self.backend_pid = opened[0].get_backend_pid()
        self.connected = True

    async def _stream_after_snapshot(self, snapshot: InitialSnapshot, held: Opened) -> None:
        """Read the snapshot into the buffer, then START_REPLICATION on the connection that created the slot.

        A failure while reading is final (ReplicationError: the slot keeps its
        marker); once everything is read, a lost connection is only a
        reconnect: the slot streams from the snapshot's consistent point.
        """

        async def put(batch: list[Event]) -> None:
            self.last_event_at = time.time()
            await self._buffer.put(batch)

        await snapshot.deliver(put)
        stream = self._stream
        try:
            await start_held(held, (stream.slot, stream.publication, self._status_interval), self._options)
        except (*DB_ERRORS, SlotInUse) as exc:
            raise Lost(f"could not start replication after the snapshot: {self.describe(exc)}") from exc
        self._held = None
        self._begin(held)

    # ---- closing ---------------------------------------------------------------

    async def _close(self, *, broken: bool) -> None:
        """Close the connection within ``close_timeout``, whatever the server does.

        Unless the connection is broken, the acknowledged position is
        confirmed first, so a restart resumes right after it (and a snapshot
        the consumer got through is recorded as finished, meanwhile).
        """
        session, self._session = self._session, None
        held, self._held = self._held, None
        self.connected = False
        snapshot = None if broken else self._snapshot
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                if snapshot is not None:
                    acked = self._stream.acked_position
                    nursery.start_soon(snapshot.finish_at_close, acked, self._options.close_timeout)
                if held is not None:
                    nursery.start_soon(close_connection, held[0], self._options.close_timeout)
                if session is not None:
                    # Computed now: the thread must not read the stream's state.
                    position = 0 if broken else self._confirmable()
                    await close_session(session, position, self._options.close_timeout)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The source's loop, with status updates beside it (also while the pump waits)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._status_loop)
            if self._snapshot is not None:
                nursery.start_soon(self._snapshot.finish_when_processed)
            await super().run(task_status=task_status)
            nursery.cancel_scope.cancel()

    def confirm_now(self) -> None:
        """Send the acknowledged position to the server now (if connected)."""
        session = self._session
        if session is not None:
            with contextlib.suppress(psycopg2.Error):  # the pump sees a broken connection
                self._send_status(session, force=False)

    # ---- the hot loop -----------------------------------------------------

    async def _pump(self) -> None:
        held = self._held
        if held is not None:
            assert self._snapshot is not None
            await self._stream_after_snapshot(self._snapshot, held)
        session = self._session
        assert session is not None
        conn, cursor, decoder = session.conn, session.cursor, session.decoder
        fd = session.fd
        read = cursor.read_message
        feed = decoder.feed
        put = self._buffer.put
        wait_readable = trio.lowlevel.wait_readable
        linger = self._linger
        # Read before the first wait: what the server sent right after START_REPLICATION
        # may already sit in libpq's buffer, where no readable socket would announce it.
        more = True
        while True:
            if more:
                await trio.lowlevel.checkpoint()
            else:
                await wait_readable(fd)
            batch: list[Event] = []
            more = False
            messages = 0
            try:
                while True:
                    message = read()
                    if message is None:
                        break
                    messages += 1
                    feed(message.payload, batch)
                    if len(batch) >= _MAX_BATCH:
                        more = True  # libpq may hold more: read again before waiting
                        break
                if batch:
                    self.last_event_at = time.time()
                    # Before any status update: what was read but not yet
                    # delivered must hold the confirmed position back.
                    self._last_read = batch[-1]
                if cursor.feedback_timestamp != self._seen_feedback:
                    # psycopg2 answered a keepalive (or sent its periodic
                    # update) from the reading cursor, with that cursor's own
                    # (stale or zero) positions: follow it with ours at once.
                    self._send_status(session, force=True)
            except psycopg2.Error as exc:
                raise Lost(str(exc).strip() or type(exc).__name__) from exc
            if conn.closed:
                raise Lost("connection closed")
            if batch:
                await put(batch)
            if linger and messages and not more:
                # A trickle of small transactions (one message per wake-up) costs
                # a wake-up of this task and of the consumer per message: let the
                # next messages gather for ``linger`` seconds instead. The read
                # loop drained the socket; if more arrived meanwhile (a backlog
                # being sent), read on at once, so lingering never slows a flood.
                if readable_now(fd):
                    more = True
                else:
                    await trio.sleep(linger)

    # ---- status updates ---------------------------------------------------

    def _confirmable(self) -> int:
        """The position to confirm: the acknowledged one, or the server's WAL end when that is as good.

        Only acknowledged changes are ever confirmed. When everything read on
        this connection was acknowledged and no transaction is half read, the
        WAL up to the server's last reported end holds nothing more for us
        (the server sends each transaction whole, in commit order, before
        reporting a later end), so confirming it skips nothing -- and lets an
        idle slot release WAL written to other tables.
        """
        acked = self._stream.acked_position
        session = self._session
        if session is None or session.decoder.in_transaction:
            return acked
        last = self._last_read
        if last is not None and acked < (ack_position(last) or 0):
            return acked
        wal_end: int = session.cursor.wal_end
        return max(acked, wal_end)

    def _report_received(self, session: Session) -> None:
        """Tell the server how far we *received* (write position), with no flush position.

        While we report a flush position, the server's walsender, stopping
        for a fast shutdown, waits until the flush position reaches all it
        sent (``WalSndDone`` in walsender.c) -- that is, until the consumer
        has acknowledged everything, however long it takes. Reported with an
        invalid (zero) flush position, a status update confirms nothing (the
        slot moves only on a valid flush position) and the walsender compares
        the write position instead, so it can finish once we have *read*
        everything. Sent after every confirmation and after every update
        psycopg2 sends on its own, so it is what the walsender last heard.
        """
        received: int = session.cursor.wal_end
        session.position.send_feedback(write_lsn=received, force=True)
        self._reported_write = received
        self._seen_feedback = session.cursor.feedback_timestamp

    def _send_status(self, session: Session, *, force: bool) -> None:
        """Confirm the acknowledged position if it advanced (or ``force``), then report what was received."""
        position = self._confirmable()
        received: int = session.cursor.wal_end
        if force or position > self._sent_flush:
            session.confirm.send_feedback(write_lsn=received, flush_lsn=position, force=True)
            self._sent_flush = max(self._sent_flush, position)
            self._report_received(session)
        elif received > self._reported_write or session.cursor.feedback_timestamp != self._seen_feedback:
            self._report_received(session)

    async def _status_loop(self) -> None:
        """Confirm acknowledged positions within a second; a status update every ``status_interval``.

        Runs beside the pump, so the server hears from us even while the pump
        waits for a slow consumer (backpressure) and reads nothing.
        """
        tick = min(1.0, self._status_interval)
        while True:
            await trio.sleep(tick)
            session = self._session
            if session is None:
                continue  # reconnecting
            now = trio.current_time()
            force = now - self._last_forced >= self._status_interval
            try:
                self._send_status(session, force=force)
            except psycopg2.Error:
                continue  # the pump sees the broken connection and reconnects
            if force:
                self._last_forced = now
