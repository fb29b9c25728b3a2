"""The figures of a durable stream (``stream.statistics()``)."""

from __future__ import annotations

from dataclasses import dataclass

from .._source import SourceStatistics, StreamHealth
from .outbox import Position

__all__ = ["DurableStatistics"]


@dataclass(frozen=True)
class DurableStatistics(StreamHealth):
    """Counters of a durable stream (``stream.statistics()``)."""

    #: The consumer's name.
    consumer: str
    #: The position of the last event read from the table.
    read_position: Position
    #: The position stored (the earliest of the partitions held; what a restart resumes after).
    stored_position: Position
    #: The position processed, stored soon (the earliest of the partitions held).
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
    #: This stream's member id (``host:pid:random``), as ``status`` lists it.
    member: str = ""
    #: The partitions this stream holds now (empty: it stands by).
    partitions_held: tuple[int, ...] = ()
    #: Leases taken, lost or handed back since the stream opened.
    lease_changes: int = 0

    @property
    def active(self) -> bool:
        """True while this stream holds a partition (an exclusive consumer's one: it is the active member)."""
        return bool(self.partitions_held)
