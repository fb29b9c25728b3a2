"""Calling user callbacks for a stream of events: the engine of ``trio-pgevents worker``.

:func:`dispatch_events` reads any async iterator of events (a LISTEN stream, or
the durable consumer's stream) and calls the callback :class:`CallbackRouter`
picks for each, with the payload in pg_events' shape by default
(:mod:`.pgevents_shape`). Plain functions run in a worker thread
(``trio.to_thread``; pg_events called them on its main thread), so a slow
callback does not stall the loop; ``async def`` functions run directly.
A ``trio.CapacityLimiter`` bounds how many run at once (``concurrency=1``, the
default, calls them one after another, in event order). A callback that raises
is logged with its event (its repr cut short: a payload may be ~8 KB);
dispatching goes on. No event can stop dispatching: a payload that is not a
valid event reaches the dispatcher as a plain Notification (see ``_decode``)
and is skipped unless it is on one of pg_events' own channels.

Stopping is graceful: :meth:`Dispatcher.stop` stops *reading*, the callbacks
already running are given ``shutdown_timeout`` seconds to finish, then the
stragglers are cancelled (a thread that is still running is abandoned).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import trio

from .. import Event, Notification, Overflow, RowChange, SchemaChange, StreamGap
from .._errors import ConfigurationError
from .._secrets import get_logger
from .._threads import call_callback
from .pgevents_shape import pg_events_payload

__all__ = [
    "CALLBACK_ARGS",
    "CallbackArg",
    "CallbackRouter",
    "Dispatcher",
    "DispatchStatistics",
    "LEGACY_DATA_CHANNELS",
    "LEGACY_SCHEMA_CHANNELS",
    "dispatch_events",
]

logger = get_logger("trio_pgevents.worker")

#: What a callback receives: the payload text in pg_events' shape (``json``), the
#: installer's payload text as sent (``json-full``), or the event object (``event``).
CallbackArg = Literal["json", "json-full", "event"]
CALLBACK_ARGS: tuple[CallbackArg, ...] = ("json", "json-full", "event")

#: The channels pg_events' own triggers notify on (a database built by pg_events).
LEGACY_DATA_CHANNELS = frozenset({"pgevents_data_update"})
LEGACY_SCHEMA_CHANNELS = frozenset({"pgevents_table_alter", "pgevents_table_drop"})

Callback = Callable[[Any], Any]


#: Log lines show at most this much of an event's repr (a payload may be ~8 KB).
_SHOWN = 300


def describe_event(event: Event) -> str:
    """An event's repr for a log line: cut to a few hundred characters, never raising."""
    try:
        text = repr(event)
    except Exception:  # e.g. data nested past the recursion limit
        return f"<{type(event).__name__} on channel {event.channel!r}>"
    if len(text) <= _SHOWN:
        return text
    return f"{text[:_SHOWN]}... ({len(text):,} characters)"


def describe_callback(function: Callable[..., Any]) -> str:
    """``module.qualname`` of a callback, for logs."""
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{name}"


@dataclass(frozen=True)
class CallbackRouter:
    """Chooses the callback for an event, and what it is given.

    Row changes go to ``data``, schema changes to ``schema``. Plain
    notifications on pg_events' own channels are routed by channel name.
    Other events (gaps, overflows, unknown notifications) are logged and
    skipped. A callback of ``None`` ignores those events.
    """

    data: Callback | None
    schema: Callback | None
    arg: CallbackArg = "json"

    def __post_init__(self) -> None:
        if self.arg not in CALLBACK_ARGS:
            raise ConfigurationError(
                f"callback argument must be one of {', '.join(map(repr, CALLBACK_ARGS))}, not {self.arg!r}"
            )

    def route(self, event: Event) -> Callback | None:
        """The callback for ``event``, or None to skip it (after logging why)."""
        if isinstance(event, RowChange):
            return self.data
        if isinstance(event, SchemaChange):
            return self.schema
        if isinstance(event, StreamGap):
            logger.warning(
                "connection to %s was lost for %.1fs (%s): events sent meanwhile may be missed%s",
                event.source,
                event.duration,
                event.reason,
                " (they were replayed)" if event.replayed else "",
            )
            return None
        if isinstance(event, Overflow):
            logger.warning("%d events were dropped: the callbacks fell behind", event.dropped)
            return None
        if isinstance(event, Notification):
            if event.channel in LEGACY_DATA_CHANNELS:
                return self.data
            if event.channel in LEGACY_SCHEMA_CHANNELS:
                return self.schema
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("ignoring %s: not a data or schema event", describe_event(event))
        return None

    def argument(self, event: Event) -> Any:
        """What the callback is called with for ``event``.

        ``json``: the payload text in pg_events' shape (see :mod:`.pgevents_shape`)
        for row and schema changes, as sent for anything else; ``json-full``:
        the payload text as sent; ``event``: the event object.
        """
        if self.arg == "event":
            return event
        if self.arg == "json" and isinstance(event, (RowChange, SchemaChange)):
            return pg_events_payload(event)
        return event.payload


@dataclass
class DispatchStatistics:
    """Counters of a dispatcher (read them any time)."""

    #: Events read from the iterator.
    received: int = 0
    #: Callbacks started.
    started: int = 0
    #: Callbacks that returned normally.
    succeeded: int = 0
    #: Callbacks that raised.
    failed: int = 0
    #: Callbacks cancelled (or abandoned) at shutdown.
    cancelled: int = 0
    #: Events with no callback (control events, ignored kinds).
    skipped: int = 0

    @property
    def running(self) -> int:
        """Callbacks running now."""
        return self.started - self.succeeded - self.failed - self.cancelled


class Dispatcher:
    """Reads events and runs their callbacks, with a concurrency limit.

    Args:
        router: picks each event's callback (or anything with ``route(event)``
            and ``argument(event)``).
        concurrency: how many callbacks may run at once (>= 1). While that many
            are running, reading waits (the stream's buffer absorbs the rest).
        shutdown_timeout: after :meth:`stop`, how long running callbacks may
            take to finish before they are cancelled, seconds.
        on_done: called (in the Trio thread) after each callback as
            ``on_done(event, ok)``; e.g. to acknowledge durable events.
    """

    def __init__(
        self,
        router: CallbackRouter,
        *,
        concurrency: int = 1,
        shutdown_timeout: float = 30.0,
        on_done: Callable[[Event, bool], None] | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an int >= 1, not {concurrency!r}")
        if (
            not isinstance(shutdown_timeout, (int, float))
            or math.isnan(shutdown_timeout)
            or shutdown_timeout < 0
        ):
            raise ConfigurationError(f"shutdown_timeout must be a number >= 0, not {shutdown_timeout!r}")
        self.router = router
        self.concurrency = concurrency
        self.shutdown_timeout = float(shutdown_timeout)
        self.on_done = on_done
        self.statistics = DispatchStatistics()
        self._limiter = trio.CapacityLimiter(concurrency)
        self._read_scope = trio.CancelScope()
        self._stopping = False

    def stop(self) -> None:
        """Stop reading events; running callbacks get ``shutdown_timeout`` to finish.

        Safe to call before :meth:`run` starts and more than once.
        """
        self._stopping = True
        self._read_scope.cancel()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    async def run(self, events: AsyncIterable[Event]) -> DispatchStatistics:
        """Dispatch until ``events`` ends or :meth:`stop` is called; return the counters.

        When the iterator ends, returns after every callback finished. After
        :meth:`stop`, returns once running callbacks finished or were cancelled
        at ``shutdown_timeout``.
        """
        async with trio.open_nursery() as nursery:
            with self._read_scope:
                async for event in events:
                    self.statistics.received += 1
                    callback = self.router.route(event)
                    if callback is None:
                        self.statistics.skipped += 1
                        continue
                    token = object()  # equal events must not share a limiter slot
                    await self._limiter.acquire_on_behalf_of(token)
                    self.statistics.started += 1
                    nursery.start_soon(self._call, callback, event, token)
            if self._stopping:
                running = self.statistics.running
                if running:
                    logger.info(
                        "stopping: waiting up to %gs for %d running callback(s)",
                        self.shutdown_timeout,
                        running,
                    )
                # Running callbacks keep going; cancel whatever is left at the deadline.
                nursery.cancel_scope.deadline = trio.current_time() + self.shutdown_timeout
        if self.statistics.cancelled:
            logger.warning(
                "%d callback(s) did not finish in %gs and were cancelled",
                self.statistics.cancelled,
                self.shutdown_timeout,
            )
        return self.statistics

    async def _call(self, callback: Callback, event: Event, token: object) -> None:
        ok = False
        try:
            argument = self.router.argument(event)
            await call_callback(callback, argument)  # a stuck thread is left behind at the deadline
            ok = True
            self.statistics.succeeded += 1
        except trio.Cancelled:
            self.statistics.cancelled += 1
            logger.warning(
                "callback %s cancelled at shutdown for %s", describe_callback(callback), describe_event(event)
            )
            raise
        except Exception:
            self.statistics.failed += 1
            logger.exception("callback %s raised for %s", describe_callback(callback), describe_event(event))
        finally:
            self._limiter.release_on_behalf_of(token)
            if self.on_done is not None:
                try:
                    self.on_done(event, ok)
                except Exception:
                    logger.exception("on_done hook raised for %s", describe_event(event))


async def dispatch_events(
    events: AsyncIterable[Event],
    router: CallbackRouter,
    *,
    concurrency: int = 1,
    shutdown_timeout: float = 30.0,
) -> DispatchStatistics:
    """Run callbacks for every event until ``events`` ends (convenience wrapper).

    For a stoppable worker, build a :class:`Dispatcher` and call its ``stop()``.
    """
    dispatcher = Dispatcher(router, concurrency=concurrency, shutdown_timeout=shutdown_timeout)
    return await dispatcher.run(events)
