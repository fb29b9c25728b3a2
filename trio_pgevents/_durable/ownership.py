"""Holding a durable consumer's partitions: joining, the lease loop, fenced stores, leaving.

:class:`Ownership` ties the lease statements (:mod:`.leases`) to the
positions of this member (:mod:`.ledger`) and to the reader (:mod:`.follower`):

- every ``tick`` (a quarter of ``lease_timeout``, at most a second, or at
  once when another member NOTIFYs that it released leases) it stores what
  was processed, renews its leases and takes its fair share;
- a partition gained is read from its stored position (the reader rewinds);
- a partition lost (its lease could not be renewed) is dropped at once: its
  undelivered events are withdrawn, and acknowledging one delivered earlier
  raises :class:`~trio_pgevents.LeaseLostError`;
- a partition held beyond the fair share is handed back: no more of its
  events are delivered, those waiting are withdrawn, and once the delivered
  ones are processed (or half a lease has passed) its position is stored and
  the lease released.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from .._buffer import EventBuffer
from .._errors import LeaseLostError, TrioPgEventsError
from .._options import StreamOptions
from .._secrets import get_logger
from .._source import DB_ERRORS
from .follower import LEASE_WAKE, OutboxFollower
from .leases import LeaseSql, LeaseTick, Membership, member_id
from .ledger import Ledger
from .outbox import OutboxSql, Position
from .partition import Partitioner
from .reader import OutboxConnection

__all__ = ["Ownership", "assemble_ownership"]

logger = get_logger("trio_pgevents")

_MAX_BIGINT = 2**63 - 1
#: How often a draining member checks whether the delivered events were processed (seconds).
_DRAIN_CHECK = 0.02


class Ownership:
    """The partitions one durable stream holds, and how it keeps them.

    Args:
        db: the reader's connection (leases are renewed on it).
        statements: the schema's lease SQL.
        membership: this member's lease state.
        ledger: this member's positions.
        follower: the reader (rewound when a partition is gained).
        withdraw: takes the undelivered events of some partitions out of the
            stream, and returns their sequence numbers.
        options: ``lease_timeout``, ``group``, ``partitions``, ``start``.
        wake_channel: where a release is announced.
    """

    def __init__(
        self,
        db: OutboxConnection,
        statements: LeaseSql,
        membership: Membership,
        ledger: Ledger,
        follower: OutboxFollower,
        withdraw: Callable[[set[int]], set[int]],
        options: StreamOptions,
        wake_channel: str,
    ) -> None:
        self._db = db
        self._sql = statements
        self.membership = membership
        self._ledger = self.ledger = ledger
        self._follower = self.follower = follower
        self._withdraw = withdraw
        self._options = options
        self._wake_channel = wake_channel
        self.tick_interval = max(0.05, min(1.0, options.lease_timeout / 4))
        #: Leases taken, lost or handed back since the stream opened.
        self.lease_changes = 0
        #: The last position stored of every partition ever held (for statistics once none is).
        self.last_stored: Position = (0, 0)
        self._joined = False

    @property
    def consumer(self) -> str:
        """The consumer's name."""
        return self.membership.consumer

    # ---- joining and leaving ---------------------------------------------------------

    async def join(self, first_position_sql: Any) -> None:
        """Register (or check) the consumer, join its members, take a first share."""
        options, membership = self._options, self.membership
        partitions = options.partitions if options.group else 1

        def work(cursor: Any) -> LeaseTick:
            if options.start == "latest":
                # Skip everything already finished; transactions still running are delivered.
                cursor.execute(first_position_sql)
                start: Position = (int(cursor.fetchone()[0]) - 1, _MAX_BIGINT)
            else:
                start = (0, 0)
            membership.join(cursor, partitions, options.group, start)
            return membership.tick(cursor)

        self._apply(await self._db.run(work))
        self._joined = True

    async def leave(self) -> None:
        """Store what was processed, release every lease, say so (closing; one transaction)."""
        if not self._joined:
            await trio.lowlevel.checkpoint()
            return
        positions = self._ledger.to_store()
        channel = self._wake_channel

        def work(cursor: Any) -> set[int]:
            lost = self._store_on(cursor, positions)
            self.membership.leave(cursor)
            cursor.execute("SELECT pg_catalog.pg_notify(%s, %s)", (channel, LEASE_WAKE))
            return lost

        lost = await self._db.run(work, reconnect=False)
        self._ledger.mark_stored({p: pos for p, pos in positions.items() if p not in lost})
        self._note_stored()

    # ---- storing -------------------------------------------------------------------

    def _store_on(self, cursor: Any, positions: dict[int, Position]) -> set[int]:
        """Store ``positions`` (fenced); return the partitions whose lease is gone."""
        statements, name, member = self._sql, self.membership.consumer, self.membership.member
        # One partition in all: the consumer's position is stored in the same round trip.
        sole = self.membership.partitions == 1
        lost: set[int] = set()
        for part, (txid, event_id) in positions.items():
            params = (str(txid), event_id, name, part, member, str(txid), event_id)
            if sole:
                statements.prepared_store_sole.execute(cursor, (*params, name))
                stored = int(cursor.fetchone()[0])
            else:
                statements.prepared_store.execute(cursor, params)
                stored = cursor.rowcount
            if stored == 0:
                cursor.execute(statements.holds, (member, name, part))
                row = cursor.fetchone()
                if row is None or not row[0]:
                    lost.add(part)
        if not sole and len(lost) < len(positions):
            cursor.execute(statements.summarise, (name, name))
        return lost

    async def store(self, *, reconnect: bool = True) -> None:
        """Store what was processed in every partition held.

        Raises:
            LeaseLostError: a partition's lease was gone (it is dropped; the rest are stored).
        """
        positions = self._ledger.to_store()
        if not positions:
            await trio.lowlevel.checkpoint()
            return
        lost = await self._db.run(lambda cursor: self._store_on(cursor, positions), reconnect=reconnect)
        self._ledger.mark_stored({p: pos for p, pos in positions.items() if p not in lost})
        self._note_stored()
        if lost:
            self._lose(lost)
            raise LeaseLostError(
                f"durable consumer {self.consumer!r} lost the lease of partition(s) {sorted(lost)}: "
                "their events go to the member holding them now"
            )

    def store_in_transaction(self, cursor: Any, part: int, position: Position) -> None:
        """Store one partition's position on the caller's cursor (its transaction), fenced.

        Raises :class:`LeaseLostError` when the lease is gone, and when the
        position is already stored (the event was processed: a delivery of it
        from before a lease was lost and taken again): either way the caller's
        transaction must roll back.
        """
        statements, name, member = self._sql, self.membership.consumer, self.membership.member
        txid, event_id = position
        cursor.execute(statements.store, (str(txid), event_id, name, part, member, str(txid), event_id))
        if cursor.rowcount == 0:
            cursor.execute(statements.holds, (member, name, part))
            row = cursor.fetchone()
            held = row is not None and bool(row[0])
            raise LeaseLostError(
                f"durable consumer {self.consumer!r}: "
                + (
                    f"event {position} of partition {part} was already processed: roll back"
                    if held
                    else f"no longer holds partition {part}: roll back; the member holding it "
                    "now processes the event"
                )
            )
        cursor.execute(statements.summarise, (name, name))

    def _note_stored(self) -> None:
        if self._ledger.stored:
            self.last_stored = min(self._ledger.stored.values())

    # ---- the lease loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Renew, rebalance and store, every ``tick_interval`` (or when woken); forever."""
        follower = self._follower
        while True:
            with trio.move_on_after(self.tick_interval):
                await follower.lease_wake.wait()
            follower.lease_wake = trio.Event()
            positions = self._ledger.to_store()

            def work(cursor: Any, positions: dict[int, Position] = positions) -> tuple[set[int], LeaseTick]:
                lost = self._store_on(cursor, positions)
                return lost, self.membership.tick(cursor)

            try:
                lost, tick = await self._db.run(work)
            except (TrioPgEventsError, *DB_ERRORS) as exc:
                logger.warning("durable consumer %r could not renew its leases: %s", self.consumer, exc)
                continue
            self._ledger.mark_stored({p: pos for p, pos in positions.items() if p not in lost})
            ahead = {
                p: pos for p, pos in tick.stored.items() if pos > self._ledger.stored.get(p, pos)
            }  # stored by ack_in_transaction: those events are processed
            if ahead:
                self._ledger.confirm_stored(ahead)
            self._note_stored()
            tick.lost |= lost
            surplus = self._apply(tick)
            # Held in the database but not read here (a hand-back that failed): give them up too.
            surplus |= self.membership.held - self._ledger.held
            if surplus:
                await self._hand_back(surplus)

    def _apply(self, tick: LeaseTick) -> set[int]:
        """Act on what a tick changed; return the surplus to hand back."""
        if tick.lost:
            self._lose(tick.lost)
        if tick.gained:
            start = self._ledger.gain(tick.gained)
            assert start is not None
            self._follower.rewind(start)
            self.lease_changes += 1
            logger.info(
                "durable consumer %r (%s) took partition(s) %s",
                self.consumer,
                self.membership.member,
                sorted(tick.gained),
            )
            self._note_stored()
        return tick.surplus - tick.lost

    def _lose(self, parts: set[int]) -> None:
        held = parts & self._ledger.held
        if not held:
            return
        self._withdraw(held)
        self._ledger.forget(held)
        self.membership.held -= held
        self.lease_changes += 1
        logger.warning(
            "durable consumer %r (%s) lost the lease of partition(s) %s: another member holds them now",
            self.consumer,
            self.membership.member,
            sorted(held),
        )

    async def _hand_back(self, parts: set[int]) -> None:
        """Stop delivering ``parts``, let what was delivered be processed, store, release."""
        ledger = self._ledger
        ledger.stop_reading(parts)
        ledger.forget_seqs(self._withdraw(parts))
        with trio.move_on_after(self._options.lease_timeout / 2):
            while ledger.has_pending(parts):  # noqa: ASYNC110 - the ledger is plain state, no events
                await trio.sleep(_DRAIN_CHECK)
        positions = {p: pos for p, pos in ledger.to_store().items() if p in parts}
        channel, membership = self._wake_channel, self.membership

        def work(cursor: Any) -> None:
            self._store_on(cursor, positions)
            membership.release(cursor, parts)
            cursor.execute("SELECT pg_catalog.pg_notify(%s, %s)", (channel, LEASE_WAKE))

        try:
            await self._db.run(work)
        except (TrioPgEventsError, *DB_ERRORS) as exc:
            logger.warning("durable consumer %r could not hand partitions back: %s", self.consumer, exc)
        ledger.forget(parts)
        self.lease_changes += 1
        logger.info(
            "durable consumer %r (%s) handed partition(s) %s back",
            self.consumer,
            membership.member,
            sorted(parts),
        )


def assemble_ownership(
    db: OutboxConnection,
    statements: OutboxSql,
    buffer: EventBuffer,
    options: StreamOptions,
    consumer: str,
    source: str,
    withdraw: Callable[[set[int]], set[int]],
    wake_channel: str,
) -> Ownership:
    """A stream's reader, positions and leases, wired together (see :class:`Ownership`)."""
    ledger = Ledger()
    partitioner = Partitioner(options.partitions if options.group else 1)
    follower = OutboxFollower(db, statements, buffer, options, consumer, source, ledger, partitioner)
    membership = Membership(LeaseSql(options.schema), consumer, member_id(), options.lease_timeout)
    return Ownership(db, membership.statements, membership, ledger, follower, withdraw, options, wake_channel)
