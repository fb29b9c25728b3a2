"""``worker --metrics-port``: the worker's figures for Prometheus, read when scraped.

:class:`WorkerFigures` gathers what a worker can tell: its callback counters
(``DurableWorkerStatistics`` or the dispatcher's), its stream's
``statistics()`` and, for a durable consumer, the consumer's lag from the
database (``Installer.list_consumers(name)``: the same figures as ``status``).
The HTTP server (prometheus_client's, in its own thread: :mod:`.prometheus`)
asks for them at scrape time; :meth:`WorkerFigures.read` hands the request to
the Trio thread, so every figure is read where it is written and nothing
blocks the event loop. prometheus_client is optional (the ``metrics`` extra):
it is imported only when ``--metrics-port`` is given.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trio

from .. import ConsumerInfo, TrioPgEventsError
from .._secrets import get_logger
from .exits import EXIT_FAILURE, EXIT_USAGE, ExitStatus

__all__ = ["Figure", "WorkerFigures", "require_prometheus", "serving_metrics"]

logger = get_logger("trio_pgevents.cli")

#: Every metric's name starts with this.
PREFIX = "trio_pgevents_"
#: A scrape reads the consumer's lag from the database at most this often (seconds)...
LAG_MAX_AGE = 1.0
#: ...and waits this long for it (seconds); a lag that could not be read is left out.
LAG_TIMEOUT = 5.0


@dataclass(frozen=True)
class Figure:
    """One metric's value now: ``PREFIX + name``, a counter (``_total`` is added) or a gauge."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    value: float


class WorkerFigures:
    """What a running worker exposes; :meth:`read` may be called from any thread.

    Args:
        worker_statistics: returns the worker's counters now (``received``,
            ``succeeded``, ``failed``; a durable worker's also ``retried`` and
            ``dead_lettered``).
        consumer: the durable consumer's name (its metrics carry it as the
            ``consumer`` label), or None for the LISTEN worker.
    """

    def __init__(self, worker_statistics: Callable[[], Any], consumer: str | None = None) -> None:
        self._worker_statistics = worker_statistics
        self.consumer = consumer
        self._stream: Any = None
        self._lag_source: Callable[[], Awaitable[list[ConsumerInfo]]] | None = None
        self._lag: ConsumerInfo | None = None
        self._lag_read_at = -math.inf
        self._lag_lock = trio.Lock()
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def labels(self) -> dict[str, str]:
        """The labels of every metric: the consumer's name, for a durable worker."""
        return {} if self.consumer is None else {"consumer": self.consumer}

    def attach(
        self, stream: Any, lag_source: Callable[[], Awaitable[list[ConsumerInfo]]] | None = None
    ) -> None:
        """The stream is open: read its ``statistics()`` from now on, and the lag from ``lag_source()``."""
        self._stream = stream
        self._lag_source = lag_source

    def bind(self) -> None:
        """Called in the Trio thread: :meth:`read` hands its work to this run of Trio."""
        self._token = trio.lowlevel.current_trio_token()

    def read(self) -> list[Figure]:
        """Every figure now (from the HTTP server's thread; empty once the worker has stopped)."""
        if self._token is None:
            return []
        try:
            return trio.from_thread.run(self._read, trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled):
            return []

    async def _read(self) -> list[Figure]:
        await self._refresh_lag()
        return self.figures()

    async def _refresh_lag(self) -> None:
        """Read the consumer's lag, unless a scrape did less than ``LAG_MAX_AGE`` s ago."""
        source = self._lag_source
        if source is None:
            return
        async with self._lag_lock:  # scrapes at once share one query
            if trio.current_time() - self._lag_read_at < LAG_MAX_AGE:
                return
            self._lag = None  # unless read now: a stale lag would look like a healthy one
            with trio.move_on_after(LAG_TIMEOUT) as scope:
                try:
                    found = await source()
                except (TrioPgEventsError, OSError) as exc:
                    logger.warning("metrics: could not read the lag of consumer %r: %s", self.consumer, exc)
                    return
                self._lag = found[0] if found else None
                self._lag_read_at = trio.current_time()
            if scope.cancelled_caught:
                logger.warning(
                    "metrics: reading the lag of consumer %r took over %gs", self.consumer, LAG_TIMEOUT
                )

    def figures(self) -> list[Figure]:
        """The figures now (in the Trio thread; no I/O)."""
        worker = self._worker_statistics()
        durable = self.consumer is not None
        out = [
            Figure("events_received", "counter", "Events the worker read from its stream.", worker.received),
            Figure("events_processed", "counter", "Events whose callback returned.", worker.succeeded),
            Figure("callback_failures", "counter", "Callback calls that raised.", worker.failed),
        ]
        if durable:
            out += [
                Figure("retries", "counter", "Callback calls made again after a failure.", worker.retried),
                Figure(
                    "dead_letters",
                    "counter",
                    "Events this worker moved to the dead-letter table.",
                    worker.dead_lettered,
                ),
            ]
        if self._stream is not None:
            out += _stream_figures(self._stream.statistics(), durable)
        if self._lag is not None:
            out += [
                Figure(
                    "consumer_lag_seconds",
                    "gauge",
                    "Age of the consumer's oldest unacknowledged event, seconds (0: none).",
                    self._lag.lag_seconds,
                ),
                Figure(
                    "consumer_lag_events",
                    "gauge",
                    "Events in the outbox after the consumer's position.",
                    self._lag.lag_events,
                ),
            ]
        return out


def _stream_figures(stats: Any, durable: bool) -> list[Figure]:
    out = [
        Figure("reconnects", "counter", "Connections of the stream lost and restored.", stats.reconnects),
        Figure("connected", "gauge", "1 while every connection of the stream is up.", int(stats.connected)),
    ]
    if durable:
        out += [
            Figure(
                "lease_changes",
                "counter",
                "Partition leases taken, lost or handed back.",
                stats.lease_changes,
            ),
            Figure(
                "active",
                "gauge",
                "1 while this worker holds a partition (0: it stands by).",
                int(stats.active),
            ),
            Figure("partitions_held", "gauge", "Partitions this worker holds.", len(stats.partitions_held)),
        ]
    return out


def require_prometheus() -> None:
    """Fail with one clear line (exit 2) when prometheus_client is not installed."""
    try:
        importlib.import_module("prometheus_client")
    except ImportError as exc:
        raise ExitStatus(
            EXIT_USAGE,
            f"worker: --metrics-port needs the prometheus_client package ({exc}): "
            "pip install 'trio-pgevents[metrics]'",
        ) from None


@asynccontextmanager
async def serving_metrics(figures: WorkerFigures, host: str, port: int) -> AsyncIterator[None]:
    """Serve ``figures`` at ``http://host:port/metrics`` while the body runs (a thread of its own).

    Raises:
        ExitStatus: (1) the address cannot be listened on.
    """
    from .prometheus import MetricsServer  # only with --metrics-port: the package is optional

    figures.bind()
    try:
        server = MetricsServer(figures.read, figures.labels, host, port)
    except OSError as exc:
        raise ExitStatus(
            EXIT_FAILURE, f"worker: cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    logger.info("serving Prometheus metrics at %s", server.url)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.close)
