"""The exception tree of trio_pgevents.

Every error the library raises derives from :class:`TrioPgEventsError`, so one
``except TrioPgEventsError`` catches them all. Errors that wrap a driver error
(psycopg2, SQLAlchemy) keep the original as ``__cause__``.

::

    TrioPgEventsError
    ├── ConfigurationError        bad argument or setting (names what was wrong)
    │   └── InvalidChannelError   a channel name Postgres would reject or truncate
    ├── ConnectError              could not connect / LISTEN on first open
    ├── ConnectionLostError       connection lost and reconnecting is off or gave up
    ├── StreamGapError            a gap happened and the stream was opened with on_gap="raise"
    ├── StreamOverflowError       the buffer overflowed with overflow="raise"
    ├── StreamClosedError         receive on a closed stream (also a trio.EndOfChannel)
    ├── PayloadError              a payload is not an event of the expected format (a ValueError)
    ├── InstallError              the installer could not do what was asked
    │   └── InsufficientPrivilegeError   the role lacks a privilege (says which)
    └── ReplicationError          logical replication is not possible (says why)
"""

from __future__ import annotations

import trio

from ._secrets import scrub


class TrioPgEventsError(Exception):
    """Base class of every error raised by trio_pgevents.

    Its message never carries a password: every secret the library was given
    (URL, query string, DSN) is masked, whatever text went into it.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(scrub(a) if isinstance(a, str) else a for a in args))


class ConfigurationError(TrioPgEventsError, ValueError):
    """An argument or setting is invalid; the message names which one."""


class InvalidChannelError(ConfigurationError):
    """A channel name that Postgres would reject, or silently truncate."""


class ConnectError(TrioPgEventsError):
    """The first connection (or its LISTEN) failed when opening a stream."""


class ConnectionLostError(TrioPgEventsError):
    """The connection was lost and could not (or may not) be re-established."""


class StreamGapError(TrioPgEventsError):
    """Raised instead of delivering a gap event when ``on_gap="raise"``.

    Attributes:
        gap: the :class:`~trio_pgevents.StreamGap` describing the outage.
    """

    def __init__(self, message: str, gap: object) -> None:
        super().__init__(message)
        self.gap = gap


class StreamOverflowError(TrioPgEventsError):
    """The consumer fell behind past the buffer with ``overflow="raise"``."""


class PayloadError(TrioPgEventsError, ValueError):
    """A payload is not an event of the expected format (the message says why).

    Streams never raise it (a bad payload is delivered as a plain
    Notification); ``compat.Event.fromjson`` does.
    """


class StreamClosedError(TrioPgEventsError, trio.EndOfChannel):
    """The stream is closed: no more events will arrive."""


class LeaseLostError(TrioPgEventsError):
    """This durable stream no longer holds the lease of the event's partition.

    Another member of the consumer took it over (this one's lease expired,
    or the partitions were rebalanced): the position was not stored, and the
    event will be delivered to the new holder. Roll back whatever the event
    did in the same transaction (``ack_in_transaction`` raises it there).
    """


class InstallError(TrioPgEventsError):
    """The installer could not complete an operation (nothing was half done)."""


class InsufficientPrivilegeError(InstallError):
    """The connected role lacks a privilege the operation needs."""


class ReplicationError(TrioPgEventsError):
    """Logical replication cannot be used (wal_level, privilege, slot...)."""
