"""The event stream: what ``open_event_stream`` gives the consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Unpack

import trio
from sqlalchemy.engine import Engine

from .._buffer import EventBuffer
from .._columns import StreamTyping
from .._connection import as_engine, validate_channel
from .._consumer import BufferedStream
from .._decode import Decoder
from .._errors import ConfigurationError
from .._nursery import open_unwrapping_nursery
from .._options import EventStreamOptions, StreamOptions
from .._source import SourceStatistics, StreamHealth
from .listener import Listener

__all__ = [
    "EventStream",
    "StreamStatistics",
    "connect_event_stream",
    "open_event_stream",
]

EngineArg = Engine | str


@dataclass(frozen=True)
class StreamStatistics(StreamHealth):
    """A snapshot of a stream's counters (``stream.statistics()``)."""

    #: Events accepted into the buffer since the stream opened.
    events_received: int
    #: Batches (one per ``poll()`` with notifications) since the stream opened.
    batches_received: int
    #: Events waiting in the buffer now.
    buffered: int
    #: The buffer's bound, in events.
    max_buffer_size: int
    #: Events discarded by ``overflow="drop-oldest"`` so far.
    dropped: int
    #: Channels listened to now.
    channels: frozenset[str]
    #: One entry per source (engine).
    sources: tuple[SourceStatistics, ...]


class EventStream(BufferedStream):
    """An async stream of events from one or more databases.

    Iterate with ``async for event in stream``; or ``await stream.receive()``,
    ``stream.receive_nowait()``, or ``async for batch in stream.batches()`` for
    the fastest path. Events from one connection arrive in the order the
    server sent them. Control events (:class:`StreamGap`,
    :class:`Overflow`) arrive in order among them.

    Made by :func:`open_event_stream` or :func:`connect_event_stream`.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        channels: Iterable[str],
        options: StreamOptions,
    ) -> None:
        self._options = options
        self._channels: dict[str, None] = dict.fromkeys(channels)  # ordered set
        super().__init__(EventBuffer(options.max_buffer_size, options.overflow))
        self._decoders: Mapping[str, Decoder] | None = None
        self._update_decoders()
        self._listeners = [
            Listener(engine, self._channels.keys(), self._buffer, options, self._current_decoders)
            for engine in engines
        ]
        self._tasks: list[tuple[trio.CancelScope, trio.Event]] = []
        self._closed = False
        # Row events are typed by their columns' types, read from each database's catalog.
        self._typing = StreamTyping(
            {listener.source: listener.engine for listener in self._listeners},
            options.connect_timeout,
        )

    # ---- lifecycle ----------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        for listener in self._listeners:
            await nursery.start(self._run_listener, listener, self._track())
            # Tracked before it is scheduled: aclose() right after this still stops it.
            nursery.start_soon(self._run_watcher, listener, self._track())

    def _track(self) -> tuple[trio.CancelScope, trio.Event]:
        """A cancel scope aclose() cancels, and an event it waits for, for one task."""
        tracked = (trio.CancelScope(), trio.Event())
        self._tasks.append(tracked)
        if self._closed:
            tracked[0].cancel()
        return tracked

    @staticmethod
    async def _run_listener(
        listener: Listener,
        tracked: tuple[trio.CancelScope, trio.Event],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        scope, done = tracked
        try:
            with scope:
                await listener.run(task_status=task_status)
        finally:
            done.set()

    @staticmethod
    async def _run_watcher(listener: Listener, tracked: tuple[trio.CancelScope, trio.Event]) -> None:
        scope, done = tracked
        try:
            with scope:
                await listener.watch_queue()
        finally:
            done.set()

    async def aclose(self) -> None:
        """Stop listening, give the connections back, end iteration.

        Idempotent. Bounded in time even when cancelled: cleanup is shielded and
        limited by ``close_timeout`` per connection. When it returns, none of
        the stream's tasks is left running.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._buffer.close()
        for scope, _ in self._tasks:
            scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(self._options.close_timeout + 1):
            for _, done in self._tasks:
                await done.wait()

    # ---- channels ------------------------------------------------------------------

    @property
    def channels(self) -> frozenset[str]:
        """The channels listened to now."""
        return frozenset(self._channels)

    async def listen(self, *channels: str) -> None:
        """LISTEN on more channels; events on them arrive once this returns."""
        new = [ch for ch in dict.fromkeys(validate_channel(c) for c in channels) if ch not in self._channels]
        if not new:
            await trio.lowlevel.checkpoint()
            return
        self._channels.update(dict.fromkeys(new))
        self._update_decoders()
        for listener in self._listeners:
            await listener.listen(new)

    async def unlisten(self, *channels: str) -> None:
        """Stop listening on channels (events already buffered are still delivered)."""
        gone = [ch for ch in dict.fromkeys(validate_channel(c) for c in channels) if ch in self._channels]
        if not gone:
            await trio.lowlevel.checkpoint()
            return
        for ch in gone:
            del self._channels[ch]
        self._update_decoders()
        for listener in self._listeners:
            await listener.unlisten(gone)

    def _update_decoders(self) -> None:
        active = {ch: d for ch, d in self._options.decoders.items() if ch in self._channels}
        self._decoders = active or None

    def _current_decoders(self) -> Mapping[str, Decoder] | None:
        return self._decoders

    # ---- introspection -------------------------------------------------------------

    def statistics(self) -> StreamStatistics:
        """Counters and health of the stream (cheap; no I/O)."""
        buffer = self._buffer
        return StreamStatistics(
            events_received=buffer.events_in,
            batches_received=buffer.batches_in,
            buffered=len(buffer) + self._undelivered,
            max_buffer_size=buffer.max_size,
            dropped=buffer.dropped_total,
            channels=self.channels,
            sources=tuple(listener.statistics() for listener in self._listeners),
        )

    @property
    def sources(self) -> tuple[str, ...]:
        """The databases this stream listens to (passwords hidden)."""
        return tuple(ls.source for ls in self._listeners)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<EventStream {state} channels={sorted(self._channels)!r} sources={list(self.sources)!r}>"


def _engines(engine: EngineArg | Sequence[EngineArg]) -> list[Engine]:
    if isinstance(engine, (Engine, str)):
        return [as_engine(engine)]
    if isinstance(engine, Sequence) and engine:
        return [as_engine(e) for e in engine]
    raise ConfigurationError(
        f"engine must be an Engine, a URL, or a non-empty sequence of them, not {engine!r}"
    )


def _channel_list(channels: Iterable[str] | str) -> list[str]:
    if isinstance(channels, str):
        raise ConfigurationError(f"channels must be a list of names, not the string {channels!r}")
    return list(dict.fromkeys(validate_channel(ch) for ch in channels))


def _make_stream(
    engine: EngineArg | Sequence[EngineArg], channels: Iterable[str], options: StreamOptions
) -> EventStream:
    return EventStream(_engines(engine), _channel_list(channels), options)


async def _start(stream: EventStream, nursery: trio.Nursery) -> None:
    try:
        await stream._start(nursery)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise


async def connect_event_stream(
    nursery: trio.Nursery,
    engine: EngineArg | Sequence[EngineArg],
    channels: Iterable[str],
    **options: Unpack[EventStreamOptions],
) -> EventStream:
    """Open a stream whose listener tasks run in ``nursery`` (the lower tier).

    Returns once every connection LISTENs. The caller must ``await
    stream.aclose()`` (or cancel the nursery) when done. Arguments are as for
    :func:`open_event_stream`. Errors of the listener tasks (e.g.
    :class:`ConnectionLostError`) propagate through ``nursery``.
    """
    stream = _make_stream(engine, channels, StreamOptions.parse("open_event_stream", options))
    await _start(stream, nursery)
    return stream


async def start_event_stream(
    nursery: trio.Nursery, engines: Sequence[Engine], channels: Iterable[str], options: StreamOptions
) -> EventStream:
    """:func:`connect_event_stream` with options already parsed (other streams' wake-up listeners)."""
    stream = EventStream(engines, _channel_list(channels), options)
    await _start(stream, nursery)
    return stream


@asynccontextmanager
async def open_event_stream(
    engine: EngineArg | Sequence[EngineArg],
    channels: Iterable[str],
    **options: Unpack[EventStreamOptions],
) -> AsyncIterator[EventStream]:
    """Listen to ``channels`` and yield an :class:`EventStream`.

    ``async with open_event_stream(engine, ["orders"]) as events:`` — the
    LISTEN has completed when the body starts, so a NOTIFY sent from then on
    is delivered. On exit the listener tasks are cancelled, every channel is
    UNLISTENed and the connections go back to the engine's pool. A single
    error (from the body or a listener) comes out as itself, not wrapped in
    an exception group.

    Args:
        engine: a SQLAlchemy ``Engine`` using psycopg2 (or a ``postgresql://``
            URL), or a sequence of them: one listening connection each, merged
            into one stream (order is kept per connection).
        channels: channel names; any name Postgres accepts (quoted for you).
        **options: see :class:`~trio_pgevents.StreamOptions` (the same name
            means the same, with the same default, in every opener):
            ``max_buffer_size``, ``overflow``, ``on_gap``, ``reconnect``,
            ``backoff_initial``, ``backoff_max``, ``max_reconnect_attempts``,
            ``reconnect_timeout``, ``keepalive``, ``close_timeout``,
            ``connect_timeout``, ``probe_interval``, ``probe_timeout``,
            ``queue_usage_warning``, ``decoders``.

    Raises:
        ConfigurationError: a bad argument or option (before anything connects).
        ConnectError: the first connection (or its LISTEN) failed.
    """
    stream = _make_stream(engine, channels, StreamOptions.parse("open_event_stream", options))
    async with open_unwrapping_nursery() as nursery:
        await _start(stream, nursery)
        try:
            yield stream
        finally:
            await stream.aclose()
