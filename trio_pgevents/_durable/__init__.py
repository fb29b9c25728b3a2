"""Durable delivery: named consumers reading the outbox table, with acknowledgements.

- :mod:`.outbox`: the SQL of the outbox tables, positions, rows to events;
- :mod:`.reader`: the reader's connection (bounded, abandonable queries; reconnects);
- :mod:`.follower`: reading every committed row in order, woken by NOTIFY or by time;
- :mod:`.own_rows`: a group member's read (only its own partitions' rows);
- :mod:`.stream`: :class:`DurableStream` and :func:`open_durable_stream`;
- :mod:`.worker`: :class:`DurableWorker` (callbacks, retries, dead letters);
- :mod:`.leases`, :mod:`.ownership`, :mod:`.ledger`, :mod:`.partition`: who reads what
  (exclusive consumers and groups), and each partition's positions;
- :mod:`.statistics`: :class:`DurableStatistics`.
"""

from .outbox import OutboxNotification as OutboxNotification
from .outbox import OutboxSql as OutboxSql
from .outbox import Position as Position
from .stream import DurableStatistics as DurableStatistics
from .stream import DurableStream as DurableStream
from .stream import open_durable_stream as open_durable_stream
from .worker import DurableWorker as DurableWorker
from .worker import DurableWorkerStatistics as DurableWorkerStatistics

__all__ = [
    "DurableStatistics",
    "DurableStream",
    "DurableWorker",
    "DurableWorkerStatistics",
    "OutboxNotification",
    "OutboxSql",
    "Position",
    "open_durable_stream",
]
