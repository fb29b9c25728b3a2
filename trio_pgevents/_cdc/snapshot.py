"""A change stream's initial snapshot: the rows that exist when its slot is created, then the changes.

With ``snapshot=True`` a change stream whose slot does not exist yet creates
it on its replication connection with ``CREATE_REPLICATION_SLOT ... (SNAPSHOT
'export')``. The server answers with the slot's *consistent point* (the WAL
position from which the slot streams) and the name of a snapshot that sees
exactly the transactions committed before that point. While the replication
connection stays idle (the snapshot lives until its next command), a second,
ordinary connection imports it (``SET TRANSACTION SNAPSHOT``) in a read-only
REPEATABLE READ transaction and reads every published table through a
server-side cursor, in batches. Each row becomes a ``RowChange`` with method
``"READ"`` (values typed as the change stream types them, ``lsn`` the
consistent point), put into the stream's buffer like any batch
(backpressure, bounded memory). Then the transaction ends and
``START_REPLICATION`` begins on the same replication connection: every
change committed after the snapshot follows, none before it. Nothing is
missed or doubled at the boundary, whatever the writers do meanwhile.

A slot whose snapshot was not processed to the end must not be streamed as if
it were: a *marker* says so. It is a line of the publication's comment
(``COMMENT ON PUBLICATION``; other lines are kept), written before the slot
is created and removed once the consumer has acknowledged the last ``READ``
event. A stream opened with ``snapshot=True`` that finds the slot *and* the
marker drops the slot, creates it again and takes a new snapshot (so the
``READ`` events of the unfinished attempt come again, with a new ``lsn``). A
slot without the marker streams on without a snapshot.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import trio
from psycopg2 import sql
from sqlalchemy.engine import Engine

from .. import _connection as conn_mod
from .._errors import ReplicationError, TrioPgEventsError
from .._events import Event
from .._options import StreamOptions
from .._secrets import get_logger, redactor_for
from .._source import DB_ERRORS
from .._threads import Handoff, run_abandonable
from .admin import IN_USE_GRACE, in_use, quote_ident, replication_dsn
from .pgoutput import format_lsn, parse_lsn
from .session import close_connection, close_quietly
from .tables import RowConverter, Table, declare, open_snapshot, read_event
from .values import DomainTypes

__all__ = ["InitialSnapshot", "plan_snapshot"]

logger = get_logger("trio_pgevents")

_new = tuple.__new__

#: The line of a publication's comment saying a slot's snapshot is not finished.
MARKER = "trio_pgevents: the snapshot of slot {} is not finished"
#: Rows per FETCH (at most the stream's max_buffer_size).
SNAPSHOT_BATCH = 1000

# ---------------------------------------------------------------------------
# the marker, and deciding whether to take a snapshot
# ---------------------------------------------------------------------------


def _comment(cursor: Any, publication: str) -> str | None:
    cursor.execute(
        "SELECT pg_catalog.obj_description(oid, 'pg_publication') FROM pg_catalog.pg_publication "
        "WHERE pubname = %s",
        (publication,),
    )
    row = cursor.fetchone()
    if row is None:
        raise ReplicationError(f"publication {publication!r} does not exist")
    comment: str | None = row[0]
    return comment


def _set_marker(cursor: Any, publication: str, slot: str, *, pending: bool) -> None:
    """Add (or remove) the slot's line in the publication's comment, keeping every other line."""
    marker = MARKER.format(slot)
    cursor.execute("BEGIN")
    try:
        # Two streams sharing a publication must not lose each other's line.
        lock = f"trio_pgevents: the comment of publication {publication}"
        cursor.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(%s))", (lock,))
        old = _comment(cursor, publication)
        lines = [line for line in (old or "").splitlines() if line != marker]
        if pending:
            lines.append(marker)
        new = "\n".join(lines) or None
        if new != old:
            statement = sql.SQL("COMMENT ON PUBLICATION {} IS %s").format(sql.Identifier(publication))
            cursor.execute(statement, (new,))
        cursor.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            cursor.execute("ROLLBACK")
        raise


def _marker_error(publication: str, exc: psycopg2.Error) -> ReplicationError:
    return ReplicationError(
        f"snapshot=True records whether the snapshot is finished in the comment of publication "
        f"{publication!r}, which only its owner may change: {' '.join(str(exc).split())}"
    )


def _drop_unfinished_slot(cursor: Any, slot: str) -> None:
    """Drop a slot whose snapshot never finished (waiting a little for a walsender that lost its client)."""
    deadline = time.monotonic() + IN_USE_GRACE
    while True:
        cursor.execute("SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cursor.fetchone()
        if row is None:
            return  # dropped meanwhile
        if row[0] is None:
            break
        if time.monotonic() >= deadline:
            raise ReplicationError(in_use(slot, f"backend pid {row[0]}"))
        time.sleep(0.05)
    try:
        cursor.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))
    except psycopg2.errors.UndefinedObject:
        pass
    except psycopg2.errors.ObjectInUse as exc:
        raise ReplicationError(in_use(slot, "another client")) from exc
    except psycopg2.Error as exc:
        if exc.pgcode is None:
            raise
        raise ReplicationError(f"could not drop replication slot {slot!r}: {exc}".strip()) from exc


def _plan(cursor: Any, slot: str, publication: str, slot_exists: bool) -> bool:
    try:
        pending = MARKER.format(slot) in (_comment(cursor, publication) or "").splitlines()
        if slot_exists and not pending:
            return False  # its snapshot was processed (or it never had one): stream on
        if slot_exists:
            logger.warning(
                "the snapshot of replication slot %r was not finished (its stream stopped during it): "
                "dropping the slot and taking the snapshot again; its READ events come again",
                slot,
            )
            _drop_unfinished_slot(cursor, slot)
        else:
            _set_marker(cursor, publication, slot, pending=True)
    except psycopg2.errors.InsufficientPrivilege as exc:
        raise _marker_error(publication, exc) from exc
    return True


async def plan_snapshot(
    engine: Engine, slot: str, publication: str, slot_exists: bool, connect_timeout: float
) -> bool:
    """Whether a stream opened with ``snapshot=True`` takes a snapshot (and creates the slot).

    Yes when the slot is missing (it gets the marker before it is created), or
    when it has the marker (its snapshot never finished: it is dropped). No for
    a slot without the marker: it streams on. Bounded by
    ``connect_timeout`` (and the grace a slot whose client just died needs).
    """
    work = functools.partial(_plan, slot=slot, publication=publication, slot_exists=slot_exists)
    try:
        decided: bool = await run_abandonable(
            functools.partial(conn_mod.run_on_connection, engine, work, connect_timeout),
            timeout=connect_timeout + IN_USE_GRACE,
            what=f"check the snapshot of slot {slot!r} (connect_timeout={connect_timeout:g}s)",
        )
    except DB_ERRORS as exc:
        raise ReplicationError(
            f"could not check the snapshot of slot {slot!r}: {redactor_for(engine).describe(exc)}"
        ) from exc
    return decided


# ---------------------------------------------------------------------------
# one stream's snapshot
# ---------------------------------------------------------------------------


def create_slot_command(slot: str, server_version: int) -> str:
    """``CREATE_REPLICATION_SLOT`` exporting its snapshot (the syntax of the server's version)."""
    if server_version >= 150000:
        return f"CREATE_REPLICATION_SLOT {quote_ident(slot)} LOGICAL pgoutput (SNAPSHOT 'export')"
    return f"CREATE_REPLICATION_SLOT {quote_ident(slot)} LOGICAL pgoutput EXPORT_SNAPSHOT"


class InitialSnapshot:
    """The snapshot one change stream takes: slot creation, the READ events, the marker.

    :meth:`create_slot` runs on the replication connection (which must then
    stay idle until :meth:`deliver` has read everything); the stream calls
    :meth:`note_acked` with every position it stores; the replication source
    runs :meth:`finish_when_processed` beside its pump and
    :meth:`finish_at_close` when it closes.
    """

    def __init__(self, engine: Engine, slot: str, publication: str, options: StreamOptions, source: str):
        self.slot = slot
        self.publication = publication
        self._engine = engine
        self._options = options
        self._source = source
        self._dsn = replication_dsn(engine)
        self._name = ""
        #: The slot's consistent point (0 until it is created), and as ``X/Y`` text.
        self.lsn = 0
        self.lsn_text: str | None = None
        #: Rows read so far; True once every row is in the buffer.
        self.rows = 0
        self.read = False
        #: Set when the consumer has processed every READ event; True once the marker is removed.
        self.processed = trio.Event()
        self.finished = False

    # ---- creating the slot ------------------------------------------------------

    async def create_slot(self, conn: Any) -> None:
        """Create the slot on replication connection ``conn``, exporting its snapshot.

        Waits for the transactions in progress to end (bounded only by
        cancellation, which shuts the socket down).
        """
        slot = self.slot
        handoff = Handoff()

        def work() -> tuple[str, str]:
            handoff.attach(conn.fileno())
            try:
                with conn.cursor() as cursor:
                    cursor.execute(create_slot_command(slot, conn.server_version))
                    row = cursor.fetchone()
            finally:
                handoff.detach()
            return str(row[1]), str(row[2])

        try:
            lsn, self._name = await run_abandonable(
                work, timeout=None, handoff=handoff, what=f"create replication slot {slot!r}"
            )
        except psycopg2.errors.DuplicateObject as exc:
            raise ReplicationError(
                f"replication slot {slot!r} was created by another client while this stream created it"
            ) from exc
        except psycopg2.Error as exc:
            if exc.pgcode is None:
                raise  # the connection broke: not the slot's fault
            raise ReplicationError(f"could not create replication slot {slot!r}: {exc}".strip()) from exc
        self.lsn = parse_lsn(lsn)
        self.lsn_text = format_lsn(self.lsn)

    # ---- reading it ------------------------------------------------------------------

    async def _call(self, conn: Any, fn: Callable[[], Any], limit: float) -> Any:
        """Run ``fn()`` (which uses ``conn``) in a thread, giving up after ``limit`` seconds."""
        handoff = Handoff()

        def work() -> Any:
            handoff.attach(conn.fileno())
            try:
                return fn()
            finally:
                handoff.detach()

        return await run_abandonable(
            work, timeout=limit, handoff=handoff, what=f"read the snapshot (query_timeout={limit:g}s)"
        )

    async def deliver(self, put: Callable[[list[Event]], Awaitable[None]]) -> None:
        """Read every published row into the stream (``put``), one batch per FETCH.

        Raises:
            ReplicationError: the snapshot could not be read to the end (the
                slot keeps its marker: reopening the stream takes it again).
        """
        options = self._options
        handoff = Handoff(close=lambda opened: close_quietly(opened[0]))

        def connect() -> tuple[Any, list[Table], DomainTypes] | None:
            return open_snapshot(self._dsn, self._name, self.publication, options, handoff)

        try:
            opened = await run_abandonable(
                connect,
                timeout=options.connect_timeout,
                handoff=handoff,
                what=f"open the snapshot (connect_timeout={options.connect_timeout:g}s)",
            )
        except DB_ERRORS as exc:
            raise self._failed(exc) from exc
        assert opened is not None
        conn, tables, domains = opened
        try:
            last = await self._read(conn, tables, domains, put)
            await self._call(conn, conn.commit, options.query_timeout)
        except DB_ERRORS as exc:
            raise self._failed(exc) from exc
        finally:
            await close_connection(conn, options.close_timeout)
        self.read = True
        if last is None:
            self.processed.set()  # nothing to process: the snapshot is done
        else:
            last.__dict__["_ack"] = self.lsn
            await put([last])

    async def _read(
        self,
        conn: Any,
        tables: Iterable[Table],
        domains: DomainTypes,
        put: Callable[[list[Event]], Awaitable[None]],
    ) -> Event | None:
        """Put every row but the last into the stream; return the last (None: no rows at all)."""
        batch_size = min(SNAPSHOT_BATCH, self._options.max_buffer_size)
        limit = self._options.query_timeout
        channel, source, lsn = self.slot, self._source, self.lsn_text or ""
        held: Event | None = None
        numbers = itertools.count()
        for index, table in enumerate(tables):
            cursor, convert = await self._call(
                conn, functools.partial(declare, conn, table, domains, index), limit
            )

            def fetch(cursor: Any = cursor, convert: RowConverter = convert, table: Table = table) -> Any:
                return [
                    read_event(channel, source, lsn, next(numbers), table, convert(values))
                    for values in cursor.fetchmany(batch_size)
                ]

            while events := await self._call(conn, fetch, limit):
                self.rows += len(events)
                if held is not None:
                    events.insert(0, held)
                held = events.pop()  # held back: the last READ event is marked when known
                if events:
                    await put(events)
            await self._call(conn, cursor.close, limit)
        return held

    def _failed(self, exc: BaseException) -> ReplicationError:
        return ReplicationError(
            f"could not read the initial snapshot of replication slot {self.slot!r}: "
            f"{redactor_for(self._engine).describe(exc)}. The slot keeps its snapshot marked "
            "unfinished: reopening the stream with snapshot=True takes the snapshot again"
        )

    # ---- finishing: the marker --------------------------------------------------

    def note_acked(self, position: int) -> None:
        """The consumer acknowledged up to ``position``: past the last READ event, the snapshot is done."""
        if self.lsn and position >= self.lsn:
            self.processed.set()

    async def finish_when_processed(self) -> None:
        """Remove the marker once the consumer has processed every READ event (runs beside the pump)."""
        await self.processed.wait()
        await self._remove_marker(self._options.connect_timeout)

    async def finish_at_close(self, acked: int, limit: float) -> None:
        """At close: remove the marker if the consumer got through the snapshot (within ``limit`` s)."""
        self.note_acked(acked)
        if self.processed.is_set():
            await self._remove_marker(limit)

    async def _remove_marker(self, limit: float) -> None:
        if self.finished:
            return
        work = functools.partial(_set_marker, publication=self.publication, slot=self.slot, pending=False)
        try:
            await run_abandonable(
                functools.partial(conn_mod.run_on_connection, self._engine, work, limit),
                timeout=limit,
                what="record the end of the snapshot",
            )
        except (*DB_ERRORS, TrioPgEventsError) as exc:
            logger.warning(
                "could not record that the snapshot of replication slot %r is finished (%s): the "
                "next stream opened with snapshot=True takes it again",
                self.slot,
                redactor_for(self._engine).describe(exc),
            )
            return
        self.finished = True
        logger.info("the snapshot of replication slot %r is finished (%d rows)", self.slot, self.rows)
