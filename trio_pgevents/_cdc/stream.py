"""Change data capture: every committed row change, read from the WAL.

A publication names the tables, a logical replication slot (plugin
``pgoutput``) remembers how far the consumer got, and a psycopg2
``LogicalReplicationConnection`` streams the changes. Writers pay nothing
extra (no trigger, no NOTIFY lock); the server keeps WAL until the consumer
confirms it, so nothing is lost while the consumer is away — and a forgotten
slot keeps WAL forever (see :func:`change_stream_status`).

The hot loop mirrors the LISTEN stream: ``wait_readable(fd)`` ->
``read_message()`` until ``None`` -> decode -> one buffer put per batch.
Connecting, DDL and queries run in worker threads.

Acknowledgement follows the model every resumable stream shares
(:mod:`trio_pgevents._positions`): the WAL position of an acknowledged event
is confirmed to the server (the flush LSN). A restarted stream resumes after
the last acknowledged *transaction*; a transaction acknowledged only in part
is replayed whole. Delivery is at-least-once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Unpack

import trio
from sqlalchemy.engine import Engine

from .. import _connection as conn_mod
from .._buffer import EventBuffer
from .._errors import ConfigurationError
from .._events import Event
from .._names import check_identifier, check_slot_name
from .._nursery import open_unwrapping_nursery
from .._options import ChangeStreamOptions, StreamOptions
from .._positions import ResumableStream, closed_after_body
from .._source import SourceStatistics, StreamHealth
from .admin import split_table
from .pgoutput import ack_position, format_lsn
from .prepare import prepare
from .publication import PublicationFilters
from .replication import Replicator
from .snapshot import InitialSnapshot, plan_snapshot

__all__ = ["ChangeStream", "ChangeStreamStatistics", "open_change_stream"]


@dataclass(frozen=True)
class ChangeStreamStatistics(StreamHealth):
    """A snapshot of a change stream's counters (``stream.statistics()``)."""

    #: The replication slot.
    slot: str
    #: Events read from the slot since the stream opened (in the buffer, or handed out).
    events_received: int
    #: Events waiting in the buffer now.
    buffered: int
    #: The WAL position acknowledged so far, and the one confirmed to the server.
    acked_position: int
    stored_position: int
    #: Confirmations sent since the stream opened.
    position_stores: int
    #: One entry: the replication connection's health.
    sources: tuple[SourceStatistics, ...]
    #: ``snapshot=True``: rows of the initial snapshot read so far (0 without one).
    snapshot_rows: int = 0
    #: False while READ events of the initial snapshot remain to be handed out (see ``snapshot_done``).
    snapshot_done: bool = True


class ChangeStream(ResumableStream[int]):
    """An async stream of :class:`RowChange` events read from a replication slot.

    ``async for change in stream``, ``await stream.receive()``,
    ``stream.receive_nowait()`` and ``stream.batches()`` work as on an
    :class:`EventStream`. Events arrive in commit order; a transaction's
    changes are consecutive. After a reconnect a :class:`StreamGap` with
    ``replayed=True`` arrives, followed by the changes from the last
    confirmed position (some may be repeats).

    Acknowledging is the same as for a durable stream: with ``auto_ack=True``
    an event counts as processed when the consumer asks for the next one;
    with ``auto_ack=False`` call :meth:`ack`. Acknowledged positions are
    confirmed to the server (after ``ack_every`` events, at least every
    ``ack_interval`` seconds, at once with ``ack(event)`` or :meth:`flush`,
    and on close). Only processed positions are ever confirmed.

    With ``snapshot=True`` and a new slot, the stream begins with a ``READ``
    event for every row of the published tables (see :attr:`snapshot_lsn`
    and :attr:`snapshot_done`).

    Made by :func:`open_change_stream`.
    """

    def __init__(
        self,
        engine: Engine,
        slot: str,
        publication: str,
        options: StreamOptions,
        snapshot: InitialSnapshot | None = None,
    ) -> None:
        self.source = conn_mod.describe_source(engine)
        super().__init__(
            EventBuffer(options.max_buffer_size, options.overflow, self.source),
            start=0,
            options=options,
            kind="a change stream",
        )
        self.slot = slot
        self.publication = publication
        self._options = options
        self._snapshot = snapshot
        self._replicator = Replicator(self, engine, options, snapshot)
        self._scope: trio.CancelScope | None = None

    # ---- positions ---------------------------------------------------------------

    def _position(self, event: Event) -> int | None:
        return ack_position(event)

    async def _store(self, position: int) -> None:
        # Confirmed to the server at once (with the next status update if disconnected).
        self._replicator.confirm_now()
        if self._snapshot is not None:
            self._snapshot.note_acked(position)
        await trio.lowlevel.checkpoint()

    @property
    def confirmed_lsn(self) -> str | None:
        """The acknowledged WAL position (``X/Y``), confirmed to the server, if any."""
        position = self.acked_position
        return format_lsn(position) if position else None

    # ---- the initial snapshot -------------------------------------------------------

    @property
    def snapshot_lsn(self) -> str | None:
        """The WAL position (``X/Y``) of the snapshot this stream takes, or None if it takes none.

        Known as soon as the stream is open. Not None means the stream starts
        with a ``READ`` event for every row (each with this ``lsn``), then the
        changes committed after: state kept from an earlier attempt should be
        discarded (an unfinished snapshot is taken again, with a new LSN).
        """
        snapshot = self._snapshot
        return None if snapshot is None else snapshot.lsn_text

    @property
    def snapshot_done(self) -> bool:
        """True once every READ event of the snapshot has been handed out (always True without one).

        It turns True as the last READ event is handed to the consumer: checked
        after handling an event, it says the whole snapshot has been applied.
        With no rows at all, it turns True when the snapshot has been read.
        """
        snapshot = self._snapshot
        if snapshot is None or (snapshot.read and snapshot.rows == 0):
            return True
        handed = self._handed if self._handed is not None else 0
        return snapshot.lsn > 0 and max(handed, self._acked) >= snapshot.lsn

    # ---- health --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the replication connection is up."""
        return self._replicator.connected

    @property
    def reconnects(self) -> int:
        """How many times the connection was lost and restored."""
        return self._replicator.reconnects

    @property
    def backend_pid(self) -> int | None:
        """Process id of the server's walsender for this stream."""
        return self._replicator.backend_pid

    def statistics(self) -> ChangeStreamStatistics:
        """Counters and health of the stream (cheap; no I/O)."""
        return ChangeStreamStatistics(
            slot=self.slot,
            events_received=self._buffer.events_in,
            buffered=len(self._buffer) + len(self._batch) - self._pos,
            sources=(self._replicator.statistics(),),
            snapshot_rows=0 if self._snapshot is None else self._snapshot.rows,
            snapshot_done=self.snapshot_done,
            **self._position_figures(),
        )

    # ---- lifecycle ------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        self._scope = trio.CancelScope()
        await nursery.start(self._run, self._scope)

    async def _run(self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._replicator.run)
                nursery.start_soon(self._flush_loop)
                task_status.started()

    async def _shut_down(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(self._options.close_timeout + 1):
                await self._replicator.finished.wait()

    def __repr__(self) -> str:
        return f"ChangeStream(slot={self.slot!r}, publication={self.publication!r}, source={self.source!r})"


@asynccontextmanager
async def open_change_stream(
    engine: Engine | str,
    *,
    slot: str,
    publication: str,
    tables: Sequence[str] | None = None,
    create: bool = True,
    operations: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    where: str | None = None,
    **options: Unpack[ChangeStreamOptions],
) -> AsyncIterator[ChangeStream]:
    """Stream every committed row change of ``tables`` from a logical replication slot.

    ``async with open_change_stream(engine, slot="orders_cdc", publication="orders_pub",
    tables=["orders"]) as changes: async for change in changes: ...`` yields the
    same :class:`RowChange` objects as the trigger path (``channel`` is the slot
    name, ``pid`` 0), plus ``lsn`` (commit LSN), ``txid`` and ``commit_time``.
    See :mod:`trio_pgevents._cdc.pgoutput` for how column values are typed.

    The publication (``CREATE PUBLICATION ... FOR TABLE`` / ``FOR ALL TABLES``)
    and the slot (plugin ``pgoutput``) are created if missing. They outlive the
    stream — that is how a restarted stream resumes — so drop them with
    :func:`drop_change_stream` when they are no longer wanted.

    Args:
        engine: SQLAlchemy engine (psycopg2) or URL; the role needs the
            REPLICATION attribute and the server ``wal_level = logical``.
        slot: replication slot name (lower-case letters, digits, ``_``).
        publication: publication name.
        tables: ``"name"`` or ``"schema.name"`` entries; ``None`` (default)
            publishes all tables (needs a superuser). Tables need a primary
            key or ``REPLICA IDENTITY FULL`` (:func:`set_replica_identity`).
        create: create a missing publication/slot (else :class:`ReplicationError`).
        operations: publish only these, among ``"INSERT"``, ``"UPDATE"``,
            ``"DELETE"``, ``"TRUNCATE"`` (``WITH (publish = ...)``); default all.
            Without UPDATE and DELETE, tables need no replica identity.
        columns: publish only these columns of every table (a column list,
            PostgreSQL 15+): events carry only them. Every UPDATE is still
            published (unlike the installer's ``columns``). While UPDATE or
            DELETE are published the list must include the replica identity.
        where: publish only rows for which this condition on the table's
            columns is true (a row filter, PostgreSQL 15+; Postgres allows
            only built-in immutable functions and operators in it). While
            UPDATE or DELETE are published it may read only replica identity
            columns. An UPDATE that moves a row out of the filter arrives as
            a DELETE, one that moves it in as an INSERT.

            The publication is made with these filters; an existing one of
            that name must have exactly them (and the same tables), else
            :class:`ReplicationError` (it is never altered).
        snapshot: (an option) ``True``: when the slot is created, first a
            ``RowChange`` with method ``"READ"`` for every row of the
            published tables, read in the snapshot the slot exports, then
            every change committed after it -- nothing missed or doubled at
            the boundary. A slot that exists already streams on without one,
            unless its snapshot was never finished (the stream stopped during
            it): then the slot is dropped and the snapshot taken again. See
            :attr:`ChangeStream.snapshot_lsn` and :attr:`ChangeStream.snapshot_done`.
        **options: see :class:`~trio_pgevents.StreamOptions` (the same name
            means the same, with the same default, in every opener):
            ``max_buffer_size``, ``overflow`` (anything but the default
            ``"backpressure"`` loses changes), ``on_gap``, ``reconnect``,
            ``backoff_initial``, ``backoff_max``, ``max_reconnect_attempts``,
            ``reconnect_timeout``, ``keepalive``, ``close_timeout``,
            ``connect_timeout``, ``auto_ack``, ``ack_every``, ``ack_interval``,
            ``status_interval``, ``linger``, ``snapshot``, ``query_timeout``
            (the snapshot's queries).

    Raises:
        ConnectError: the server could not be reached, or did not answer
            within ``connect_timeout``.
        ReplicationError: wal_level is not logical (needs a restart to change),
            the role lacks REPLICATION, the slot is in use by another
            consumer, a publication of that name exists for other tables or
            filters, or ``columns``/``where`` on a server older than 15.
        ConfigurationError: a bad argument or option (before anything
            connects), a table that does not exist or has no replica identity,
            or a filter Postgres refuses or that would make writes fail.
    """
    parsed = StreamOptions.parse("open_change_stream", options)
    check_slot_name(slot)
    check_identifier("publication", publication)
    if isinstance(tables, str):
        raise ConfigurationError("tables must be a sequence of table names, not a single str")
    table_list = None if tables is None else list(dict.fromkeys(split_table(t) for t in tables))
    if table_list is not None and not table_list:
        raise ConfigurationError("tables must name at least one table (or be None for all tables)")
    filters = PublicationFilters.parse(operations, columns, where, table_list)
    engine = conn_mod.as_engine(engine)
    timeout = parsed.connect_timeout
    slot_exists = await prepare(
        engine,
        slot,
        publication,
        table_list,
        create,
        timeout,
        filters,
        create_missing_slot=not parsed.snapshot,
    )
    snapshot = None
    if parsed.snapshot and await plan_snapshot(engine, slot, publication, slot_exists, timeout):
        snapshot = InitialSnapshot(engine, slot, publication, parsed, conn_mod.describe_source(engine))
    stream = ChangeStream(engine, slot, publication, parsed, snapshot)
    async with open_unwrapping_nursery() as nursery:
        try:
            await stream._start(nursery)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose(processed=False)
            raise
        async with closed_after_body(stream):
            yield stream
