"""The replication connection of a change stream: START_REPLICATION, the pump, confirmations.

:class:`Replicator` is a :class:`~trio_pgevents._source.ReconnectingSource`:
connecting, reconnecting with backoff, gap events and health are shared
with the LISTEN stream; this module adds what is particular to a slot --
the replication protocol, the pgoutput decoder, and status updates that
confirm acknowledged positions (and only those) to the server.
"""

from __future__ import annotations

import contextlib
import math
import select
import time
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import trio
from sqlalchemy.engine import Engine

from .. import _connection as conn_mod
from .._connection import KeepaliveSettings
from .._errors import ReplicationError
from .._events import Event
from .._options import StreamOptions
from .._secrets import get_logger, redactor_for
from .._source import DB_ERRORS, Lost, ReconnectingSource
from .._threads import CallTimeout, Handoff, run_abandonable, shutdown_socket
from .admin import IN_USE_GRACE, in_use, quote_ident, replication_dsn
from .pgoutput import PgOutputDecoder, ack_position
from .values import DOMAIN_TYPES_SQL, DomainTypes

if TYPE_CHECKING:
    from .stream import ChangeStream

__all__ = ["Replicator", "start_replication_command"]

logger = get_logger("trio_pgevents")

#: Most events put into the buffer per batch.
_MAX_BATCH = 4096


# ---------------------------------------------------------------------------
# the replication connection
# ---------------------------------------------------------------------------


class _SlotInUse(ReplicationError):
    """The slot is in use (maybe by a walsender whose client just went away)."""


class _Fatal(Exception):
    """Internal: a replication error that reconnecting cannot fix."""


def _sql_string(text: str) -> str:
    """A string literal for a replication command.

    The replication grammar takes only plain ``'...'`` literals (no ``E''``
    escapes), with a quote written twice; psycopg2's own ``start_replication``
    turns non-Latin-1 text into garbage here (it adapts the value without the
    connection), so a publication named ``pub_é`` matched nothing.
    """
    return "'" + text.replace("'", "''") + "'"


def start_replication_command(slot: str, publication: str) -> str:
    """``START_REPLICATION SLOT "s" LOGICAL 0/0 (proto_version '1', publication_names '"p"')``.

    The slot resumes from its confirmed position (``0/0``: wherever the slot
    is). The command is text: psycopg2 encodes it in the connection's client
    encoding and the server converts it, like any query.
    """
    return (
        f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL 0/0 "
        f"(proto_version '1', publication_names {_sql_string(quote_ident(publication))})"
    )


def _with_connect_timeout(dsn: str, timeout: float) -> str:
    """libpq's own connect_timeout for a connection (unless the URL sets one).

    It bounds how long a thread given up on can stay in ``connect()`` against a
    server that accepted TCP and never answers (before the socket is known and
    can be shut down). libpq takes whole seconds, at least 2.
    """
    if "connect_timeout" in psycopg2.extensions.parse_dsn(dsn):
        return dsn
    return str(psycopg2.extensions.make_dsn(dsn, connect_timeout=max(2, math.ceil(timeout))))


def _open_replication(
    dsn: str,
    slot: str,
    publication: str,
    status_interval: float,
    keepalive: KeepaliveSettings | None,
    handoff: Handoff,
    connect_timeout: float,
) -> tuple[Any, Any, int | None, DomainTypes]:
    """Connect and START_REPLICATION (blocking; runs in a worker thread).

    The socket is attached to ``handoff`` as soon as the connection exists,
    so a caller that gives up shuts it down and this thread returns.
    Returns the connection, its replication cursor, the server's next
    full (epoch-extended) transaction id, against which the stream widens
    the WAL's 32-bit xids, and the database's domains (typed as their base).
    """
    try:
        conn = psycopg2.connect(
            _with_connect_timeout(dsn, connect_timeout),
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
        )
    except psycopg2.OperationalError as exc:
        if "replication" in str(exc) and ("superuser" in str(exc) or "permission" in str(exc)):
            raise _Fatal(f"the role lacks the REPLICATION attribute: {exc}".strip()) from exc
        raise
    try:
        handoff.attach(conn.fileno())
        if keepalive is not None:
            conn_mod.set_keepalive(conn.fileno(), keepalive)
        cursor: Any = conn.cursor()
        # Assigns no transaction id (unlike txid_current()); exists on every version.
        cursor.execute("SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot())")
        row = cursor.fetchone()
        xid_reference = int(row[0]) if row else None
        cursor.execute(DOMAIN_TYPES_SQL)
        domains: DomainTypes = {
            int(oid): (int(base), bool(is_array)) for oid, base, is_array in cursor.fetchall()
        }
        try:
            cursor.start_replication_expert(
                start_replication_command(slot, publication),
                decode=False,
                status_interval=max(1, round(status_interval)),
            )
        except UnicodeEncodeError as exc:
            raise _Fatal(
                f"publication {publication!r} cannot be written in the connection's encoding: {exc.reason}"
            ) from exc
        except psycopg2.errors.ObjectInUse as exc:
            raise _SlotInUse(f"replication slot {slot!r} is in use: {exc}".strip()) from exc
        except (psycopg2.errors.UndefinedObject, psycopg2.errors.InsufficientPrivilege) as exc:
            raise _Fatal(f"cannot stream from replication slot {slot!r}: {exc}".strip()) from exc
        except psycopg2.ProgrammingError as exc:
            raise _Fatal(f"cannot stream from replication slot {slot!r}: {exc}".strip()) from exc
    except BaseException:
        handoff.detach()
        _close_quietly(conn)
        raise
    return conn, cursor, xid_reference, domains


class _Session:
    """One replication connection and the cursors that talk on it."""

    __slots__ = ("confirm", "conn", "cursor", "decoder", "fd", "position")

    def __init__(self, conn: Any, cursor: Any, decoder: PgOutputDecoder) -> None:
        self.conn = conn
        self.fd: int = conn.fileno()
        #: Reads the stream. psycopg2 answers the server's keepalives from it
        #: (with its own stored positions); we never report through it.
        self.cursor = cursor
        #: Reports the confirmed (flush) position: acknowledged changes only.
        #: A cursor of its own, so psycopg2's keepalive handling on the reading
        #: cursor (which forwards its flush position to the server's WAL end
        #: once the last message read is confirmed) never sees our positions:
        #: acknowledging part of a transaction whose rest is not read yet
        #: would otherwise confirm the whole of it.
        self.confirm = conn.cursor()
        #: Reports what was received (write position) with the flush position
        #: left invalid: see :meth:`_Replicator._report_received`.
        self.position = conn.cursor()
        self.decoder = decoder


class Replicator(ReconnectingSource):
    """Reads the slot into the stream's buffer, confirms acknowledged positions, reconnects."""

    connecting = "start replication from"
    connection = "replication connection"
    retryable = (*DB_ERRORS, ReplicationError, _Fatal)

    def __init__(self, stream: ChangeStream, engine: Engine, options: StreamOptions) -> None:
        super().__init__(stream.source, redactor_for(engine), stream._buffer, options, replayed=True)
        self._stream = stream
        self._linger = options.linger
        self._dsn = replication_dsn(engine)
        self._status_interval = options.status_interval
        self._session: _Session | None = None
        self._sent_flush = 0
        self._last_forced = 0.0
        self._reported_write = 0
        self._seen_feedback: Any = None
        self._last_read: Event | None = None

    def _fatal(self, exc: BaseException) -> BaseException | None:
        # A slot in use right after a reconnect is the old walsender that has not noticed
        # its client is gone: worth another attempt. The rest is not.
        if isinstance(exc, _Fatal):
            return ReplicationError(f"cannot stream from {self.source}: {exc}")
        if isinstance(exc, ReplicationError) and not isinstance(exc, _SlotInUse):
            return exc
        return None

    async def _first_connect(self) -> None:
        # A walsender whose client has just disconnected (a stream closed or a
        # consumer killed a moment ago) holds the slot until it notices: wait
        # a little before calling the slot "in use".
        deadline = trio.current_time() + IN_USE_GRACE
        while True:
            try:
                await self._connect(self._options.connect_timeout)
                return
            except _SlotInUse as exc:
                if trio.current_time() >= deadline:
                    message = in_use(self._stream.slot, "another client")
                    raise ReplicationError(f"{message} ({exc})") from exc
            await trio.sleep(0.05)

    async def _connect(self, limit: float) -> None:
        """One attempt: connect and START_REPLICATION within ``limit`` seconds."""
        handoff = Handoff(close=lambda result: _close_quietly(result[0]))
        stream = self._stream
        dsn, options, status_interval = self._dsn, self._options, self._status_interval
        connect_timeout = options.connect_timeout

        def work() -> tuple[Any, Any, int | None, DomainTypes] | None:
            opened = _open_replication(
                dsn, stream.slot, stream.publication, status_interval, options.keepalive, handoff, limit
            )
            delivered: tuple[Any, Any, int | None, DomainTypes] | None = handoff.deliver(opened)
            return delivered

        result = await run_abandonable(
            work,
            timeout=limit,
            handoff=handoff,
            what=f"start replication (connect_timeout={connect_timeout:g}s)",
        )
        assert result is not None
        conn, cursor, xid_reference, domains = result
        encoding = psycopg2.extensions.encodings.get(
            conn.get_parameter_status("server_encoding") or "", "utf-8"
        )
        decoder = PgOutputDecoder(stream.slot, stream.source, encoding, xid_reference, domains)
        self._session = _Session(conn, cursor, decoder)
        self.backend_pid = conn.get_backend_pid()
        self.connected = True
        self._sent_flush = 0
        self._reported_write = 0
        self._seen_feedback = cursor.feedback_timestamp
        self._last_read = None
        self._last_forced = trio.current_time()

    async def _close(self, *, broken: bool) -> None:
        """Close the connection within ``close_timeout``, whatever the server does.

        Unless the connection is broken, the acknowledged position is
        confirmed first, so a restart resumes right after it.
        """
        session, self._session = self._session, None
        self.connected = False
        if session is None:
            return
        # Computed now: the thread must not read the stream's state.
        position = 0 if broken else self._confirmable()
        received = session.cursor.wal_end
        with trio.CancelScope(shield=True):
            with contextlib.suppress(ValueError, OSError):
                trio.lowlevel.notify_closing(session.fd)
            handoff = Handoff()
            handoff.attach(session.fd)

            def work() -> None:
                if position:
                    with contextlib.suppress(psycopg2.Error, OSError):
                        session.confirm.send_feedback(write_lsn=received, flush_lsn=position, force=True)
                _finish(session.conn, handoff)

            with contextlib.suppress(CallTimeout):
                await run_abandonable(
                    work, timeout=self._options.close_timeout, handoff=handoff, what="close replication"
                )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The source's loop, with status updates beside it (also while the pump waits)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._status_loop)
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
        session = self._session
        assert session is not None
        conn, cursor, decoder = session.conn, session.cursor, session.decoder
        fd = session.fd
        read = cursor.read_message
        feed = decoder.feed
        put = self._buffer.put
        wait_readable = trio.lowlevel.wait_readable
        linger = self._linger
        more = False
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
                if _readable_now(fd):
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

    def _report_received(self, session: _Session) -> None:
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

    def _send_status(self, session: _Session, *, force: bool) -> None:
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


def _finish(conn: Any, handoff: Handoff) -> None:
    """Thread: close a replication connection without waiting on a peer that stopped reading.

    libpq's close sends a Terminate message and waits until the socket takes
    it; a peer whose receive window is full would hold the thread. Checked
    while the socket is still attached (so a caller giving up can shut it
    down): if it cannot take a byte now, shut it down first.
    """
    with contextlib.suppress(Exception):
        fd = conn.fileno()
        if not select.select([], [fd], [], 0)[1]:
            shutdown_socket(fd)
    handoff.detach()  # from here the descriptor may be closed and its number reused
    _close_quietly(conn)


def _readable_now(fd: int) -> bool:
    """Whether ``fd`` has data to read right now (a non-blocking poll)."""
    return bool(select.select([fd], [], [], 0)[0])


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()
