"""The durable worker: one callback per event, retried, dead-lettered, never lost."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .._errors import ConfigurationError, StreamClosedError
from .._events import Event, RowChange
from .._options import check_int_at_least_1, check_number_in, check_positive
from .._secrets import get_logger
from .._threads import call_callback
from .outbox import OutboxNotification, position_of

if TYPE_CHECKING:
    from .stream import DurableStream

__all__ = ["DurableWorker", "DurableWorkerStatistics", "Handler"]

logger = get_logger("trio_pgevents")

#: A callback the worker calls with each :class:`RowChange`.
Handler = Callable[[RowChange], Awaitable[object] | object]


@dataclass
class DurableWorkerStatistics:
    """Counters of a :class:`DurableWorker` (read them any time)."""

    #: Events read from the stream (control events included).
    received: int = 0
    #: Events whose callback returned (then acknowledged).
    succeeded: int = 0
    #: Callback calls that raised (each retry counts).
    failed: int = 0
    #: Callback calls made again after a failure (after the backoff).
    retried: int = 0
    #: Events moved to the dead-letter table after ``max_attempts`` failures.
    dead_lettered: int = 0
    #: Callbacks cancelled at shutdown (their events stay unacknowledged).
    cancelled: int = 0
    #: Events with no callback (acknowledged and passed over).
    skipped: int = 0


class _SingleHandler:
    """Adapts one ``handler(event)`` to the router interface the worker uses."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def route(self, event: Event) -> Handler | None:
        return self._handler if isinstance(event, RowChange) else None

    def argument(self, event: Event) -> Any:
        return event


class DurableWorker:
    """Calls a callback for each durable event, one at a time, in order; never loses one.

    An event is acknowledged only after its callback returned. A callback
    that raises leaves the event unacknowledged; it is called again after a
    jittered exponential backoff (``backoff_initial`` doubling up to
    ``backoff_max``). After ``max_attempts`` failures the event goes to
    ``<schema>.dead_letters`` with the error text, is acknowledged, and the
    worker moves on. Plain functions run in a worker thread; ``async def``
    callbacks run in the Trio loop.

    Args:
        handler: ``handler(event)`` for every :class:`RowChange`; or a router
            object with ``route(event) -> callback | None`` and
            ``argument(event) -> what the callback gets`` (as the CLI's
            ``CallbackRouter``).
        max_attempts: calls per event before it is dead-lettered (>= 1).
        backoff_initial: first delay before a retry, seconds.
        backoff_max: largest delay before a retry, seconds.
        shutdown_timeout: after :meth:`stop`, how long a running callback may
            take to finish; then it is cancelled and its event stays unacknowledged.
    """

    def __init__(
        self,
        handler: Any,
        *,
        max_attempts: int = 5,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        shutdown_timeout: float = 30.0,
    ) -> None:
        check_int_at_least_1("max_attempts", max_attempts)
        check_positive("backoff_initial", backoff_initial)
        check_positive("backoff_max", backoff_max)
        check_number_in("shutdown_timeout", shutdown_timeout, 0, math.inf)
        if hasattr(handler, "route") and hasattr(handler, "argument"):
            self.router: Any = handler
        elif callable(handler):
            self.router = _SingleHandler(handler)
        else:
            raise ConfigurationError(f"handler must be callable or a router, not {handler!r}")
        self.max_attempts = max_attempts
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.shutdown_timeout = float(shutdown_timeout)
        self.statistics = DurableWorkerStatistics()
        self._scope = trio.CancelScope()
        self._busy = False
        self._stopping = False

    def stop(self) -> None:
        """Stop after the running callback (bounded by ``shutdown_timeout``); safe to repeat."""
        self._stopping = True
        if self._busy:
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + self.shutdown_timeout)
        else:
            self._scope.cancel()

    async def run(self, stream: DurableStream) -> DurableWorkerStatistics:
        """Process ``stream`` until it ends or :meth:`stop` is called; return the counters."""
        if stream.auto_ack:
            raise ConfigurationError(
                "a DurableWorker acknowledges itself: open the stream with auto_ack=False"
            )
        stats = self.statistics
        with self._scope:
            while not self._stopping:
                try:
                    event = await stream.receive()
                except StreamClosedError:
                    break
                stats.received += 1
                if isinstance(event, OutboxNotification):
                    # Not a change this worker understands: keep it for a person, never drop it.
                    await stream.dead_letter(event, "not a row or schema change event", 0)
                    stats.dead_lettered += 1
                    continue
                callback = self.router.route(event)
                if callback is None:
                    stats.skipped += 1
                    await stream.ack(event, flush=False)
                    continue
                self._busy = True
                try:
                    done = await self._handle(stream, callback, event)
                finally:
                    self._busy = False
                if not done:
                    break  # stopping during a retry: the event stays unacknowledged
                await stream.ack(event, flush=False)
        return stats

    async def _handle(self, stream: DurableStream, callback: Any, event: Event) -> bool:
        """Call until success or dead letter (True), or give up because stopping (False)."""
        stats = self.statistics
        argument = self.router.argument(event)
        delay = self.backoff_initial
        for attempt in range(1, self.max_attempts + 1):
            try:
                await call_callback(callback, argument)
                stats.succeeded += 1
                return True
            except trio.Cancelled:
                stats.cancelled += 1
                logger.warning("durable consumer %r: callback cancelled at shutdown", stream.consumer)
                raise
            except Exception as exc:
                stats.failed += 1
                if attempt == self.max_attempts:
                    await stream.dead_letter(event, exc, attempt)
                    stats.dead_lettered += 1
                    return True
                logger.warning(
                    "durable consumer %r: callback failed on event %s (attempt %d/%d), retrying: %s",
                    stream.consumer,
                    position_of(event),
                    attempt,
                    self.max_attempts,
                    exc,
                )
            if self._stopping:
                return False
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max)
            stats.retried += 1
        return False  # pragma: no cover - the loop always returns
