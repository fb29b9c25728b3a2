"""The replication connection of a change stream: opening it, START_REPLICATION, closing it.

Blocking parts run in worker threads (:func:`~trio_pgevents._threads.run_abandonable`);
:mod:`.replication` runs the stream over them, :mod:`.snapshot` creates a slot on one.
"""

from __future__ import annotations

import contextlib
import math
import select
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import trio

from .. import _connection as conn_mod
from .._connection import KeepaliveSettings
from .._errors import ReplicationError
from .._options import StreamOptions
from .._threads import CallTimeout, Handoff, run_abandonable, shutdown_socket
from .admin import quote_ident
from .pgoutput import PgOutputDecoder
from .values import DomainTypes, read_domain_types

__all__ = [
    "Fatal",
    "Opened",
    "Session",
    "SlotInUse",
    "close_connection",
    "close_quietly",
    "close_session",
    "connect",
    "finish_connection",
    "open_replication",
    "readable_now",
    "start_held",
    "start_replication",
    "start_replication_command",
    "with_connect_timeout",
]


class SlotInUse(ReplicationError):
    """The slot is in use (maybe by a walsender whose client just went away)."""


class Fatal(Exception):
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


def with_connect_timeout(dsn: str, timeout: float) -> str:
    """libpq's own connect_timeout for a connection (unless the URL sets one).

    It bounds how long a thread given up on can stay in ``connect()`` against a
    server that accepted TCP and never answers (before the socket is known and
    can be shut down). libpq takes whole seconds, at least 2.
    """
    if "connect_timeout" in psycopg2.extensions.parse_dsn(dsn):
        return dsn
    return str(psycopg2.extensions.make_dsn(dsn, connect_timeout=max(2, math.ceil(timeout))))


Opened = tuple[Any, Any, int | None, DomainTypes]


def open_replication(
    dsn: str, keepalive: KeepaliveSettings | None, handoff: Handoff, connect_timeout: float
) -> Opened:
    """Connect a replication connection and read what decoding needs (blocking; a worker thread).

    The socket is attached to ``handoff`` as soon as the connection exists,
    so a caller that gives up shuts it down and this thread returns.
    Returns the connection, its replication cursor, the server's next
    full (epoch-extended) transaction id, against which the stream widens
    the WAL's 32-bit xids, and the database's domains (typed as their base).
    """
    try:
        conn = psycopg2.connect(
            with_connect_timeout(dsn, connect_timeout),
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
        )
    except psycopg2.OperationalError as exc:
        if "replication" in str(exc) and ("superuser" in str(exc) or "permission" in str(exc)):
            raise Fatal(f"the role lacks the REPLICATION attribute: {exc}".strip()) from exc
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
        domains = read_domain_types(cursor)
    except BaseException:
        handoff.detach()
        close_quietly(conn)
        raise
    return conn, cursor, xid_reference, domains


def start_replication(cursor: Any, slot: str, publication: str, status_interval: float) -> None:
    """START_REPLICATION on an open replication connection (blocking; a worker thread)."""
    try:
        cursor.start_replication_expert(
            start_replication_command(slot, publication),
            decode=False,
            status_interval=max(1, round(status_interval)),
        )
    except UnicodeEncodeError as exc:
        raise Fatal(
            f"publication {publication!r} cannot be written in the connection's encoding: {exc.reason}"
        ) from exc
    except psycopg2.errors.ObjectInUse as exc:
        raise SlotInUse(f"replication slot {slot!r} is in use: {exc}".strip()) from exc
    except (psycopg2.errors.UndefinedObject, psycopg2.errors.InsufficientPrivilege) as exc:
        raise Fatal(f"cannot stream from replication slot {slot!r}: {exc}".strip()) from exc
    except psycopg2.ProgrammingError as exc:
        raise Fatal(f"cannot stream from replication slot {slot!r}: {exc}".strip()) from exc


class Session:
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


def finish_connection(conn: Any, handoff: Handoff) -> None:
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
    close_quietly(conn)


def readable_now(fd: int) -> bool:
    """Whether ``fd`` has data to read right now (a non-blocking poll)."""
    return bool(select.select([fd], [], [], 0)[0])


def close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


#: What START_REPLICATION needs: the slot, the publication, the status interval (seconds).
Streaming = tuple[str, str, float]


async def connect(dsn: str, options: StreamOptions, limit: float, streaming: Streaming | None) -> Opened:
    """Connect (and START_REPLICATION, unless ``streaming`` is None) within ``limit`` seconds."""
    handoff = Handoff(close=lambda result: close_quietly(result[0]))

    def work() -> Opened | None:
        opened = open_replication(dsn, options.keepalive, handoff, limit)
        if streaming is not None:
            try:
                start_replication(opened[1], *streaming)
            except BaseException:
                handoff.detach()
                close_quietly(opened[0])
                raise
        delivered: Opened | None = handoff.deliver(opened)
        return delivered

    result = await run_abandonable(
        work,
        timeout=limit,
        handoff=handoff,
        what=f"start replication (connect_timeout={options.connect_timeout:g}s)",
    )
    assert result is not None
    return result


async def start_held(opened: Opened, streaming: Streaming, options: StreamOptions) -> None:
    """START_REPLICATION on a connection opened earlier (within ``connect_timeout``)."""
    conn, cursor = opened[0], opened[1]
    handoff = Handoff()

    def work() -> None:
        handoff.attach(conn.fileno())
        try:
            start_replication(cursor, *streaming)
        finally:
            handoff.detach()

    await run_abandonable(work, timeout=options.connect_timeout, handoff=handoff, what="start replication")


async def close_connection(conn: Any, limit: float) -> None:
    """Close a connection that does not stream within ``limit`` s, whatever the server does (shielded)."""
    handoff = Handoff()
    with contextlib.suppress(Exception):
        handoff.attach(conn.fileno())
    with trio.CancelScope(shield=True), contextlib.suppress(CallTimeout):
        await run_abandonable(
            lambda: finish_connection(conn, handoff), timeout=limit, handoff=handoff, what="close"
        )


async def close_session(session: Session, position: int, limit: float) -> None:
    """Confirm ``position`` (unless 0), then close a streaming connection within ``limit`` seconds."""
    received = session.cursor.wal_end
    with contextlib.suppress(ValueError, OSError):
        trio.lowlevel.notify_closing(session.fd)
    handoff = Handoff()
    handoff.attach(session.fd)

    def work() -> None:
        if position:
            with contextlib.suppress(psycopg2.Error, OSError):
                session.confirm.send_feedback(write_lsn=received, flush_lsn=position, force=True)
        finish_connection(session.conn, handoff)

    with contextlib.suppress(CallTimeout):
        await run_abandonable(work, timeout=limit, handoff=handoff, what="close replication")
