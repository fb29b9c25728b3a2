"""trio_pgevents: PostgreSQL changes as a Trio-native async stream of events.

::

    async with open_event_stream(engine, ["orders"]) as events:
        async for event in events:
            ...

Every public name is importable from here (``__all__``); the modules are
private. Test helpers (the embedded server, the pytest plugin) are in
:mod:`trio_pgevents.testing`.
"""

from typing import TYPE_CHECKING

from ._cdc import ChangeStream as ChangeStream
from ._cdc import ChangeStreamStatistics as ChangeStreamStatistics
from ._cdc import ChangeStreamStatus as ChangeStreamStatus
from ._cdc import change_stream_status as change_stream_status
from ._cdc import drop_change_stream as drop_change_stream
from ._cdc import open_change_stream as open_change_stream
from ._cdc import set_replica_identity as set_replica_identity
from ._connection import KeepaliveSettings as KeepaliveSettings
from ._decode import decode_trigger_payload as decode_trigger_payload
from ._durable import DurableStatistics as DurableStatistics
from ._durable import DurableStream as DurableStream
from ._durable import DurableWorker as DurableWorker
from ._durable import DurableWorkerStatistics as DurableWorkerStatistics
from ._durable import OutboxNotification as OutboxNotification
from ._durable import open_durable_stream as open_durable_stream
from ._errors import ConfigurationError as ConfigurationError
from ._errors import ConnectError as ConnectError
from ._errors import ConnectionLostError as ConnectionLostError
from ._errors import InstallError as InstallError
from ._errors import InsufficientPrivilegeError as InsufficientPrivilegeError
from ._errors import InvalidChannelError as InvalidChannelError
from ._errors import LeaseLostError as LeaseLostError
from ._errors import PayloadError as PayloadError
from ._errors import ReplicationError as ReplicationError
from ._errors import StreamClosedError as StreamClosedError
from ._errors import StreamGapError as StreamGapError
from ._errors import StreamOverflowError as StreamOverflowError
from ._errors import TrioPgEventsError as TrioPgEventsError
from ._events import AnyEvent as AnyEvent
from ._events import Event as Event
from ._events import Method as Method
from ._events import Notification as Notification
from ._events import Overflow as Overflow
from ._events import RowChange as RowChange
from ._events import SchemaChange as SchemaChange
from ._events import ServerText as ServerText
from ._events import StreamGap as StreamGap
from ._installer import AsyncInstaller as AsyncInstaller
from ._installer import ConsumerInfo as ConsumerInfo
from ._installer import ConsumerMember as ConsumerMember
from ._installer import InstallAction as InstallAction
from ._installer import Installer as Installer
from ._installer import InstallReport as InstallReport
from ._installer import InstallStatus as InstallStatus
from ._installer import TableStatus as TableStatus
from ._listen import EventStream as EventStream
from ._listen import StreamStatistics as StreamStatistics
from ._listen import connect_event_stream as connect_event_stream
from ._listen import open_event_stream as open_event_stream
from ._options import StreamOptions as StreamOptions
from ._source import SourceStatistics as SourceStatistics

__version__ = "0.1.0"

__all__ = [
    "AnyEvent",
    "AsyncInstaller",
    "ChangeStream",
    "ChangeStreamStatistics",
    "ChangeStreamStatus",
    "ConfigurationError",
    "ConnectError",
    "ConnectionLostError",
    "ConsumerInfo",
    "ConsumerMember",
    "DurableStatistics",
    "DurableStream",
    "DurableWorker",
    "DurableWorkerStatistics",
    "Event",
    "EventStream",
    "InstallAction",
    "InstallError",
    "InstallReport",
    "InstallStatus",
    "Installer",
    "InsufficientPrivilegeError",
    "InvalidChannelError",
    "KeepaliveSettings",
    "LeaseLostError",
    "Method",
    "Notification",
    "OutboxNotification",
    "Overflow",
    "PayloadError",
    "ReplicationError",
    "RowChange",
    "SchemaChange",
    "ServerText",
    "SourceStatistics",
    "StreamClosedError",
    "StreamGap",
    "StreamGapError",
    "StreamOptions",
    "StreamOverflowError",
    "StreamStatistics",
    "TableStatus",
    "TrioPgEventsError",
    "change_stream_status",
    "connect_event_stream",
    "decode_trigger_payload",
    "drop_change_stream",
    "open_change_stream",
    "open_durable_stream",
    "open_event_stream",
    "set_replica_identity",
]


if not TYPE_CHECKING:  # type checkers see no module __getattr__: a mistyped name stays an error

    def __getattr__(name: str) -> object:
        # Moved names still import, with a warning (PEP 562).
        if name == "EmbeddedPostgres":
            import warnings

            from .testing import EmbeddedPostgres

            warnings.warn(
                "trio_pgevents.EmbeddedPostgres moved: import it from trio_pgevents.testing",
                DeprecationWarning,
                stacklevel=2,
            )
            return EmbeddedPostgres
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
