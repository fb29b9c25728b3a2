"""Change data capture: every committed row change, read from the WAL (logical replication).

- :mod:`.admin`: slot names, status and lag, dropping, replica identity;
- :mod:`.prepare`: checks and creates the publication and the slot;
- :mod:`.pgoutput`: the decoder of the pgoutput protocol (no I/O);
- :mod:`.replication`: the replication connection (a reconnecting source);
- :mod:`.stream`: :class:`ChangeStream` and :func:`open_change_stream`.
"""

from .admin import DEFAULT_LAG_WARNING_BYTES as DEFAULT_LAG_WARNING_BYTES
from .admin import ChangeStreamStatus as ChangeStreamStatus
from .admin import change_stream_status as change_stream_status
from .admin import drop_change_stream as drop_change_stream
from .admin import read_slot_statuses as read_slot_statuses
from .admin import set_replica_identity as set_replica_identity
from .stream import ChangeStream as ChangeStream
from .stream import ChangeStreamStatistics as ChangeStreamStatistics
from .stream import open_change_stream as open_change_stream

__all__ = [
    "ChangeStream",
    "ChangeStreamStatistics",
    "ChangeStreamStatus",
    "DEFAULT_LAG_WARNING_BYTES",
    "change_stream_status",
    "drop_change_stream",
    "open_change_stream",
    "read_slot_statuses",
    "set_replica_identity",
]
