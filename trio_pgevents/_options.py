"""The options of every stream: one model, named defaults, one validator.

``open_event_stream``, ``open_durable_stream`` and ``open_change_stream`` take
their options as keywords (typed by the ``*Options`` TypedDicts below) and
turn them into one :class:`StreamOptions` with :meth:`StreamOptions.parse`,
before anything connects. A name means the same thing, with the same
default, in every opener that takes it; a bad value raises the same
:class:`ConfigurationError` naming the option; an option an opener does not
take (``linger`` for a LISTEN stream) is an error naming both.

The defaults are named once, here (``DEFAULT_*``), and used by every opener,
the installer and the command line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypedDict, get_args

from ._buffer import OverflowPolicy
from ._connection import KeepaliveSettings
from ._decode import Decoder, decode_trigger_payload
from ._errors import ConfigurationError
from ._names import check_channel, check_identifier

__all__ = [
    "ChangeStreamOptions",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DECODERS",
    "DEFAULT_KEEPALIVE",
    "DurableStreamOptions",
    "EventStreamOptions",
    "GapPolicy",
    "StartPolicy",
    "StreamOptions",
]

GapPolicy = Literal["event", "raise"]
StartPolicy = Literal["earliest", "latest"]

# ---- named defaults -----------------------------------------------------------------------------

#: Events that may wait for the consumer.
DEFAULT_MAX_BUFFER_SIZE = 16384
#: First delay between reconnect attempts (seconds); doubles, jittered, up to...
DEFAULT_BACKOFF_INITIAL = 0.05
#: ...this: reconnecting within ~1 s of the server coming back.
DEFAULT_BACKOFF_MAX = 0.5
#: Bound on one connect attempt (every opener, the installer, the CLI), seconds.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Bound on leaving ``async with``, whatever the server does, seconds.
DEFAULT_CLOSE_TIMEOUT = 1.0
#: TCP keepalive and user timeout of every connection (``keepalive=None``: off).
DEFAULT_KEEPALIVE = KeepaliveSettings()
#: Liveness probe of an idle LISTEN connection, and its time limit, seconds.
DEFAULT_PROBE_INTERVAL = 10.0
DEFAULT_PROBE_TIMEOUT = 5.0
#: Warn when the server's notification queue is fuller than this fraction.
DEFAULT_QUEUE_USAGE_WARNING = 0.5
#: Channels whose payloads are decoded by default: the installer's default channel.
DEFAULT_DECODERS: Mapping[str, Decoder] = {"pgevents": decode_trigger_payload}
#: Acknowledged positions are stored after this many events, or...
DEFAULT_ACK_EVERY = 1000
#: ...at least this often (seconds).
DEFAULT_ACK_INTERVAL = 1.0
#: Durable mode: rows per read, read at least this often (seconds), read-ahead in bytes,
#: and the time limit of one query (seconds).
DEFAULT_BATCH_SIZE = 1000
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_MAX_BUFFER_BYTES = 64 << 20
DEFAULT_QUERY_TIMEOUT = 30.0
DEFAULT_RETENTION_BATCH_SIZE = 10000
DEFAULT_LEASE_TIMEOUT = 10.0
DEFAULT_PARTITIONS = 16
#: A member of a durable consumer group reads the outbox at most this often (seconds): every
#: member reads on every wake-up, and without it a group of N cost the server N times the
#: queries of one consumer (benchmarks/durable_groups.py: writers' TPS with a group of 4
#: reading vs one consumer, shared CPUs, median of 3 per run: 0.94x at 20 ms in one run,
#: 0.94-1.01x at 50 ms in four).
DEFAULT_GROUP_READ_INTERVAL = 0.05
#: The most partitions a consumer group may have.
MAX_PARTITIONS = 1024
#: Change streams: a status update at least this often (seconds), and how long to let a
#: trickle of changes gather before reading again (seconds, at most MAX_LINGER).
DEFAULT_STATUS_INTERVAL = 10.0
DEFAULT_LINGER = 0.005
MAX_LINGER = 1.0


# ---- what each opener takes (typed keywords) -------------------------------------------------------


class _Connecting(TypedDict, total=False):
    max_buffer_size: int
    reconnect: bool
    backoff_initial: float
    backoff_max: float
    max_reconnect_attempts: int | None
    reconnect_timeout: float | None
    keepalive: KeepaliveSettings | None
    close_timeout: float
    connect_timeout: float


class _Gaps(TypedDict, total=False):
    overflow: OverflowPolicy
    on_gap: GapPolicy


class _Probing(TypedDict, total=False):
    probe_interval: float
    probe_timeout: float


class _Acknowledging(TypedDict, total=False):
    auto_ack: bool
    ack_every: int
    ack_interval: float


class EventStreamOptions(_Connecting, _Gaps, _Probing, total=False):
    """The options of :func:`~trio_pgevents.open_event_stream` (see :class:`StreamOptions`)."""

    queue_usage_warning: float
    decoders: Mapping[str, Decoder]


class DurableStreamOptions(_Connecting, _Probing, _Acknowledging, total=False):
    """The options of :func:`~trio_pgevents.open_durable_stream` (see :class:`StreamOptions`)."""

    schema: str
    channel: str
    batch_size: int
    poll_interval: float
    start: StartPolicy
    retention_interval: float | None
    retention_batch_size: int
    max_buffer_bytes: int
    query_timeout: float
    lease_timeout: float
    group: bool
    partitions: int
    min_read_interval: float | None


class ChangeStreamOptions(_Connecting, _Gaps, _Acknowledging, total=False):
    """The options of :func:`~trio_pgevents.open_change_stream` (see :class:`StreamOptions`)."""

    status_interval: float
    linger: float
    snapshot: bool
    query_timeout: float


#: Which options each opener takes (from the TypedDicts above: one list, no copy).
_TAKES: dict[str, frozenset[str]] = {
    "open_event_stream": EventStreamOptions.__optional_keys__,
    "open_durable_stream": DurableStreamOptions.__optional_keys__,
    "open_change_stream": ChangeStreamOptions.__optional_keys__,
}


# ---- the one model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOptions:
    """Every option of every stream, validated in one place.

    Attributes:
        max_buffer_size: events that may wait for the consumer (>= 1).
        overflow: when the buffer is full: ``"backpressure"`` (stop reading;
            the server queues), ``"drop-oldest"`` (discard the oldest, deliver
            an ``Overflow`` with the count), ``"raise"`` (``StreamOverflowError``).
        on_gap: after a reconnect, deliver a ``StreamGap`` (``"event"``) or
            raise ``StreamGapError`` (``"raise"``).
        reconnect: reconnect after a lost connection (else ``ConnectionLostError``).
        backoff_initial: first delay between reconnect attempts, seconds.
        backoff_max: largest delay between attempts (jittered), seconds.
        max_reconnect_attempts: give up after this many attempts (None: never).
        reconnect_timeout: give up after this long disconnected (None: never);
            no attempt outlasts it.
        keepalive: TCP keepalive settings of every connection; None turns them off.
        close_timeout: leaving ``async with`` takes at most this (and a
            moment), whatever the server does, seconds.
        connect_timeout: bound on one connect attempt, seconds.
        probe_interval: LISTEN connections: a liveness probe (which also reads
            ``pg_notification_queue_usage()``) this often when idle, seconds.
        probe_timeout: a probe with no answer in this time means the
            connection is dead (half-open), seconds.
        queue_usage_warning: log a warning when the server's notification
            queue is fuller than this fraction (0..1].
        decoders: channel -> decoder for typed events (default: the
            installer's ``"pgevents"`` channel into RowChange/SchemaChange).
        auto_ack: durable and change streams: an event counts as processed
            when the next one is asked for (False: call ``ack()``).
        ack_every: store (confirm) the acknowledged position after this many events.
        ack_interval: ...and at least this often, seconds.
        schema, channel: durable: the installer's schema and channel.
        batch_size: durable: most rows read per query.
        poll_interval: durable: read the outbox at least this often, seconds.
        start: durable: where a *new* consumer starts, ``"earliest"`` or ``"latest"``.
        retention_interval: durable: delete what every consumer acknowledged
            this often, seconds (None: never).
        retention_batch_size: durable: rows deleted per retention statement.
        max_buffer_bytes: durable: bytes of payload read ahead of the consumer.
        query_timeout: durable, and a change stream's snapshot: a query with no
            answer in this time means the connection is dead, seconds.
        lease_timeout: durable: a member that stops renewing its leases loses
            them after this long (another member takes over), seconds.
        group: durable: members opened with the same consumer name share its
            partitions (False: exclusive, one active member, the others stand by).
        partitions: durable groups: how many partitions (1..1024; fixed when
            the group is created).
        min_read_interval: durable: the shortest time between two reads of the
            outbox, seconds (0..1); rows written meanwhile are read together.
            None: 0 for an exclusive consumer, 0.05 for a group member.
        status_interval: change streams: a status update to the server at
            least this often, seconds.
        linger: change streams: after a small read, let further changes gather
            this long before reading again (0..1 s; 0: off).
        snapshot: change streams: when the slot is created, deliver every row
            of the published tables first (``RowChange`` with method
            ``"READ"``), then the changes committed after. Needs
            ``overflow="backpressure"``.
    """

    max_buffer_size: int = DEFAULT_MAX_BUFFER_SIZE
    overflow: OverflowPolicy = "backpressure"
    on_gap: GapPolicy = "event"
    reconnect: bool = True
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    max_reconnect_attempts: int | None = None
    reconnect_timeout: float | None = None
    keepalive: KeepaliveSettings | None = DEFAULT_KEEPALIVE
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    queue_usage_warning: float = DEFAULT_QUEUE_USAGE_WARNING
    decoders: Mapping[str, Decoder] = field(default_factory=lambda: dict(DEFAULT_DECODERS))
    auto_ack: bool = True
    ack_every: int = DEFAULT_ACK_EVERY
    ack_interval: float = DEFAULT_ACK_INTERVAL
    schema: str = "pgevents"
    channel: str = "pgevents"
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_interval: float = DEFAULT_POLL_INTERVAL
    start: StartPolicy = "earliest"
    retention_interval: float | None = None
    retention_batch_size: int = DEFAULT_RETENTION_BATCH_SIZE
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES
    query_timeout: float = DEFAULT_QUERY_TIMEOUT
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    group: bool = False
    partitions: int = DEFAULT_PARTITIONS
    min_read_interval: float | None = None
    status_interval: float = DEFAULT_STATUS_INTERVAL
    linger: float = DEFAULT_LINGER
    snapshot: bool = False

    @classmethod
    def parse(cls, opener: str, given: Mapping[str, Any]) -> StreamOptions:
        """The options ``opener`` was given, checked (:class:`ConfigurationError` names what is wrong)."""
        takes = _TAKES[opener]
        for name in given:
            if name not in takes:
                known = "an option of another stream" if name in _FIELDS else "no option"
                raise ConfigurationError(
                    f"{opener}() got {name!r}: {known} (it takes {', '.join(sorted(takes))})"
                )
        return cls(**given)

    def __post_init__(self) -> None:
        for name in _COUNTS:
            check_int_at_least_1(name, getattr(self, name))
        _choice("overflow", self.overflow, get_args(OverflowPolicy))
        _choice("on_gap", self.on_gap, get_args(GapPolicy))
        _choice("start", self.start, get_args(StartPolicy))
        for name in ("reconnect", "auto_ack", "group", "snapshot"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"{name} must be True or False, not {getattr(self, name)!r}")
        for name in (
            "backoff_initial",
            "backoff_max",
            "close_timeout",
            "connect_timeout",
            "probe_interval",
            "probe_timeout",
            "ack_interval",
            "poll_interval",
            "query_timeout",
            "lease_timeout",
            "status_interval",
        ):
            check_positive(name, getattr(self, name))
        check_positive("reconnect_timeout", self.reconnect_timeout, allow_none=True)
        check_positive("retention_interval", self.retention_interval, allow_none=True)
        if self.max_reconnect_attempts is not None:
            check_int_at_least_1("max_reconnect_attempts", self.max_reconnect_attempts)
        check_number_in("queue_usage_warning", self.queue_usage_warning, 0.0, 1.0, low_open=True)
        check_number_in("linger", self.linger, 0.0, MAX_LINGER)
        if self.min_read_interval is not None:
            check_number_in("min_read_interval", self.min_read_interval, 0.0, MAX_LINGER)
        if self.snapshot and self.overflow != "backpressure":
            raise ConfigurationError(
                f"snapshot=True needs overflow='backpressure', not {self.overflow!r}: "
                "a snapshot that drops rows is no snapshot"
            )
        check_int_at_least_1("partitions", self.partitions)
        if self.partitions > MAX_PARTITIONS:
            raise ConfigurationError(f"partitions must be at most {MAX_PARTITIONS}, not {self.partitions!r}")
        if self.keepalive is not None and not isinstance(self.keepalive, KeepaliveSettings):
            raise ConfigurationError(f"keepalive must be KeepaliveSettings or None, not {self.keepalive!r}")
        if not isinstance(self.decoders, Mapping):
            raise ConfigurationError(
                f"decoders must be a mapping of channel name to decoder, not {type(self.decoders).__name__}"
            )
        check_identifier("schema", self.schema)
        check_identifier("channel", self.channel)
        check_channel(self.channel + ".durable")  # the durable stream's wake-up channel
        for channel, decoder in self.decoders.items():
            if not isinstance(channel, str):
                raise ConfigurationError(f"decoders keys must be channel names, not {channel!r}")
            if not callable(decoder):
                raise ConfigurationError(f"decoders[{channel!r}] must be callable, not {decoder!r}")


_FIELDS = frozenset(f.name for f in fields(StreamOptions))
#: The options that count something (ints >= 1).
_COUNTS = ("max_buffer_size", "ack_every", "batch_size", "retention_batch_size", "max_buffer_bytes")


def check_positive(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or math.isnan(value)
        or not 0 < value < math.inf
    ):
        raise ConfigurationError(f"{name} must be a positive number, not {value!r}")


def check_int_at_least_1(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an int >= 1, not {value!r}")


def _choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ConfigurationError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def check_number_in(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and (low < value if low_open else low <= value)
        and value <= high
    )
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigurationError(f"{name} must be in {bracket}{low:g}, {high:g}], not {value!r}")
