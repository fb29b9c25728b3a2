"""One connection feeding a stream, and what happens when it is lost: the reconnecting source.

Every stream reads from one or more sources: a LISTEN connection, a
replication connection. Each runs the same loop:

    connect (bounded by connect_timeout, in a thread it can give up on)
      -> pump (read until the connection is lost: raise :class:`Lost`)
      -> close it (within close_timeout, whatever the server does)
      -> reconnect, after the backoff (one :class:`~trio_pgevents._backoff.Attempts`:
         backoff_initial doubling to backoff_max, max_reconnect_attempts,
         reconnect_timeout; or ConnectionLostError with reconnect=False)
      -> deliver a :class:`StreamGap` (or raise StreamGapError with on_gap="raise")
      -> pump again

:class:`ReconnectingSource` is that loop, with the health every stream
reports (:class:`SourceStatistics`); a source supplies its pump and how it
connects and closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

from ._backoff import Backoff
from ._buffer import EventBuffer
from ._connection import DB_ERRORS
from ._errors import ConnectError, ConnectionLostError, StreamGapError
from ._events import StreamGap
from ._options import StreamOptions
from ._secrets import Redactor, get_logger

__all__ = [
    "DB_ERRORS",
    "Lost",
    "ReconnectingSource",
    "SourceHealth",
    "SourceStatistics",
    "StreamHealth",
    "reconnect",
]

logger = get_logger("trio_pgevents")


class Lost(Exception):
    """Raised by a pump: the connection is gone (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SourceStatistics:
    """Health of one source (one connection of a stream)."""

    #: The database, every secret masked.
    source: str
    #: True while the connection is up.
    connected: bool
    #: How many times the connection was lost and restored.
    reconnects: int
    #: Wall-clock time (``time.time()``) the last batch arrived, or None.
    last_event_at: float | None
    #: The most recent gap, or None.
    last_gap: StreamGap | None
    #: ``pg_notification_queue_usage()`` at the last probe (0..1), or None (LISTEN sources only).
    queue_usage: float | None
    #: Backend process id of the connection, when connected.
    backend_pid: int | None


class StreamHealth:
    """The health figures every stream's statistics share, from its sources.

    Every stream's ``statistics()`` has ``events_received``, ``buffered`` and
    ``sources`` (one :class:`SourceStatistics` per connection), and these.
    """

    sources: tuple[SourceStatistics, ...]

    @property
    def connected(self) -> bool:
        """True when every connection of the stream is up."""
        return all(s.connected for s in self.sources)

    @property
    def reconnects(self) -> int:
        """Reconnects over all the stream's connections."""
        return sum(s.reconnects for s in self.sources)

    @property
    def last_gap(self) -> StreamGap | None:
        """The most recent gap over all the stream's connections, or None."""
        gaps = [s.last_gap for s in self.sources if s.last_gap is not None]
        return max(gaps, key=lambda gap: gap.reconnected_at, default=None)


def utcnow() -> datetime:
    """Now, in UTC (gap times)."""
    return datetime.now(UTC)


class SourceHealth:
    """The health figures of one connection, kept as it runs; :meth:`statistics` snapshots them."""

    def __init__(self, source: str) -> None:
        #: The database, every secret masked.
        self.source = source
        self.connected = False
        self.reconnects = 0
        self.last_event_at: float | None = None
        self.last_gap: StreamGap | None = None
        self.queue_usage: float | None = None
        self.backend_pid: int | None = None

    def statistics(self) -> SourceStatistics:
        """The connection's health now (no I/O)."""
        return SourceStatistics(
            source=self.source,
            connected=self.connected,
            reconnects=self.reconnects,
            last_event_at=self.last_event_at,
            last_gap=self.last_gap,
            queue_usage=self.queue_usage,
            backend_pid=self.backend_pid if self.connected else None,
        )


class ReconnectingSource(SourceHealth):
    """Connect, pump, and on loss reconnect with backoff and report the gap.

    Args:
        source: the database, secrets masked (``Event.source``).
        redactor: masks the database's secrets in driver errors.
        buffer: where events (and gap events) go.
        options: the stream's options.
        replayed: what a gap says: True when the source re-reads what was
            missed (a replication slot), False when it may be lost (LISTEN).
    """

    #: Says what connecting means, in error messages ("connect and LISTEN on").
    connecting = "connect to"
    #: Names the connection in log lines and errors ("lost replication connection to").
    connection = "connection"
    #: Errors of one attempt after which another may succeed.
    retryable: tuple[type[BaseException], ...] = DB_ERRORS

    def __init__(
        self, source: str, redactor: Redactor, buffer: EventBuffer, options: StreamOptions, *, replayed: bool
    ) -> None:
        super().__init__(source)
        self._redactor = redactor
        self._buffer = buffer
        self._options = options
        self._replayed = replayed
        self.finished = trio.Event()

    # ---- what a source defines ---------------------------------------------------

    async def _connect(self, limit: float) -> None:
        """One attempt to connect (and start reading), within ``limit`` seconds.

        Raises one of :attr:`retryable` when another attempt may succeed.
        """
        raise NotImplementedError

    async def _pump(self) -> None:
        """Read into the buffer until the connection is lost (raise :class:`Lost`)."""
        raise NotImplementedError

    async def _close(self, *, broken: bool) -> None:
        """Close the connection within ``close_timeout`` (never raises)."""
        raise NotImplementedError

    async def _first_connect(self) -> None:
        """The first connection (a source may retry some errors here)."""
        await self._connect(self._options.connect_timeout)

    async def _after_connect(self) -> None:
        """Runs after every successful connect, before events flow (e.g. LISTEN what changed)."""

    def _fatal(self, exc: BaseException) -> BaseException | None:
        """An error reconnecting cannot cure (then raised as is), or None."""
        return None

    # ---- the loop -------------------------------------------------------------------

    def describe(self, exc: BaseException) -> str:
        """A driver error as one line, without any secret (even if the driver echoed one)."""
        return self._redactor.describe(exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, report started, then pump (reconnecting) until cancelled."""
        try:
            try:
                await self._first_connect()
            except DB_ERRORS as exc:
                fatal = self._fatal(exc)
                if fatal is not None:
                    raise fatal from exc
                raise ConnectError(
                    f"could not {self.connecting} {self.source}: {self.describe(exc)}"
                ) from exc
            await self._after_connect()
            task_status.started()
            while True:
                try:
                    await self._pump()
                except Lost as lost:
                    await self._recover(lost.reason, lost.__cause__)
        finally:
            await self._close(broken=False)
            self.finished.set()

    async def _recover(self, reason: str, cause: BaseException | None) -> None:
        disconnected_at = utcnow()
        self.connected = False
        logger.warning("lost %s to %s: %s", self.connection, self.source, reason)
        await self._close(broken=True)
        if not self._options.reconnect:
            raise ConnectionLostError(f"lost {self.connection} to {self.source}: {reason}") from cause
        await self._reconnect(reason)
        gap = StreamGap(self.source, disconnected_at, utcnow(), reason, self._replayed)
        self.last_gap = gap
        self.reconnects += 1
        logger.warning(
            "reconnected to %s after %.3fs%s",
            self.source,
            gap.duration,
            "; what was missed is read again" if self._replayed else "",
        )
        if self._options.on_gap == "raise":
            raise StreamGapError(
                f"connection to {self.source} was lost for {gap.duration:.3f}s; "
                + ("what was missed is read again" if self._replayed else "events may have been missed"),
                gap,
            )
        # The gap goes in before anything the new connection reads, so it is
        # delivered exactly where it happened.
        self._buffer.put_control(gap)
        await self._after_connect()

    async def _reconnect(self, reason: str) -> None:
        await reconnect(
            self._connect,
            self._options,
            source=self.source,
            reason=reason,
            describe=self.describe,
            retryable=self.retryable,
            fatal=self._fatal,
        )


async def reconnect(
    connect: Callable[[float], Awaitable[None]],
    options: StreamOptions,
    *,
    source: str,
    reason: str,
    describe: Callable[[BaseException], str],
    retryable: tuple[type[BaseException], ...] = DB_ERRORS,
    fatal: Callable[[BaseException], BaseException | None] = lambda exc: None,
) -> None:
    """Call ``connect(limit)`` until it succeeds, backing off between attempts (every stream's rule).

    Attempts are spaced by a jittered exponential backoff (``backoff_initial``
    up to ``backoff_max``); no attempt outlives ``reconnect_timeout`` (a
    silent server would hold one for all of ``connect_timeout``).

    Raises:
        ConnectionLostError: ``max_reconnect_attempts`` or ``reconnect_timeout`` ran out.
        BaseException: what ``fatal(exc)`` returns for an error no attempt can cure.
    """
    attempts = Backoff(options.backoff_initial, options.backoff_max).attempts(
        now=trio.current_time(),
        max_attempts=options.max_reconnect_attempts,
        timeout=options.reconnect_timeout,
    )
    while True:
        try:
            await connect(attempts.limit(trio.current_time(), options.connect_timeout))
            return
        except retryable as exc:
            error = fatal(exc)
            if error is not None:
                raise error from exc
            delay = attempts.failed(trio.current_time())
            if delay is None:
                raise ConnectionLostError(
                    f"lost connection to {source} ({reason}) and could not reconnect "
                    f"after {attempts.failures} attempt(s): {describe(exc)}"
                ) from exc
            logger.info("reconnect to %s failed (attempt %d): %s", source, attempts.failures, describe(exc))
        await trio.sleep(delay)
