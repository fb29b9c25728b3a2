"""The Prometheus side of ``worker --metrics-port``: a collector and its HTTP server.

Imported only when ``--metrics-port`` is given (prometheus_client is the
optional ``metrics`` extra). The registry is private (no process or platform
collectors of prometheus_client's default one): only the worker's figures.
prometheus_client's server runs in its own daemon thread; each scrape calls
the collector there, which asks the Trio thread for the figures
(:meth:`~trio_pgevents._cli.metrics.WorkerFigures.read`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .metrics import PREFIX, Figure

__all__ = ["FigureCollector", "MetricsServer"]


class FigureCollector:
    """A prometheus_client collector of the figures ``read()`` returns at each scrape."""

    def __init__(self, read: Callable[[], list[Figure]], labels: Mapping[str, str]) -> None:
        self._read = read
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        """One metric family per figure, with the worker's labels."""
        names, values = list(self._labels), list(self._labels.values())
        for figure in self._read():
            family = CounterMetricFamily if figure.kind == "counter" else GaugeMetricFamily
            metric = family(PREFIX + figure.name, figure.help, labels=names)
            metric.add_metric(values, figure.value)
            yield metric


class MetricsServer:
    """``http://host:port/metrics`` served from a daemon thread; :meth:`close` stops it.

    Raises:
        OSError: the address cannot be listened on (in use, unknown host...).
    """

    def __init__(
        self, read: Callable[[], list[Figure]], labels: Mapping[str, str], host: str, port: int
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FigureCollector(read, labels))
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_port)
        shown = f"[{host}]" if ":" in host else host
        #: Where the metrics are (the port chosen when 0 was asked for).
        self.url = f"http://{shown}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (blocking: up to the server's poll interval) and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
