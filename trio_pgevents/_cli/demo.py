"""``trio-pgevents demo``: the whole library in one command, nothing to set up.

Starts an embedded Postgres in a temporary directory, installs the trigger
function and DDL event triggers, creates a small table (its CREATE TABLE is
the first event), writes rows from a background task while listening, prints
each event as it arrives, then a summary (events, events/s, latency p50/p99)
and cleans everything up.

Latency is measured from the row's write (``clock_timestamp()`` stored in the
row by the server) to the event's arrival in the Trio task. Server and client
are on the same machine, so the clocks agree.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

import psycopg2
import trio

from .. import (
    Event,
    Installer,
    Overflow,
    RowChange,
    SchemaChange,
    StreamGap,
    open_event_stream,
)
from ..testing import EmbeddedPostgres
from .defaults import DEFAULT_CHANNEL
from .exits import EXIT_FAILURE, EXIT_OK, print_error

__all__ = ["DemoOptions", "DemoResult", "run_demo", "run_embedded_demo"]

TABLE = "demo_orders"
CHANNEL = DEFAULT_CHANNEL  # the installer's
ITEMS = ("teapot", "kettle", "mug", "saucer", "spoon", "tray", "cosy", "strainer")

_CREATE_TABLE = f"""
CREATE TABLE public.{TABLE} (
    id serial PRIMARY KEY,
    item text NOT NULL,
    qty integer NOT NULL,
    written_at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
)
"""
_INSERT = f"INSERT INTO public.{TABLE} (item, qty) VALUES (%s, %s)"
_UPDATE = (
    f"UPDATE public.{TABLE} SET qty = qty + 1, "
    "written_at = extract(epoch FROM clock_timestamp()) WHERE id = %s"
)
_DELETE = f"DELETE FROM public.{TABLE} WHERE id = %s"
_BURST = (
    f"INSERT INTO public.{TABLE} (item, qty) "
    "SELECT 'burst', n FROM generate_series(1, %s) AS n"  # one transaction, many events
)


@dataclass(frozen=True)
class DemoOptions:
    """What the demo does (command-line options of ``demo``)."""

    #: Rows inserted one by one (every 4th is then updated, every 8th deleted).
    rows: int = 120
    #: Statements per second in the paced phase.
    rate: float = 80.0
    #: Rows inserted in one transaction at the end (0: none), to show throughput.
    burst: int = 5000
    #: Give up waiting for events after this long, seconds.
    timeout: float = 40.0


@dataclass
class DemoResult:
    """What the demo measured."""

    events: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    paced_seconds: float = 0.0
    paced_events: int = 0
    burst_events: int = 0
    burst_seconds: float = 0.0
    complete: bool = False


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


class _Printer:
    """Prints events readably; ANSI colour only on a terminal (and not with $NO_COLOR)."""

    COLOURS: ClassVar[dict[str, str]] = {
        "INSERT": "32",
        "UPDATE": "33",
        "DELETE": "31",
        "DDL": "36",
        "INFO": "1",
        "DIM": "2",
    }

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.colour = out.isatty() and "NO_COLOR" not in os.environ

    def paint(self, text: str, kind: str) -> str:
        code = self.COLOURS.get(kind)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def info(self, text: str) -> None:
        self.line(self.paint(text, "INFO"))

    def event(self, event: Event, latency: float | None) -> None:
        if isinstance(event, RowChange):
            row = event.new_data or event.old_data or {}
            fields = " ".join(f"{k}={v}" for k, v in row.items() if k != "written_at")
            ms = f"{latency * 1000:6.1f} ms" if latency is not None else " " * 9
            tag = self.paint(f"{event.method:<6}", event.method)
            self.line(
                f"  {tag}  {event.table_schema}.{event.table_name}  {fields:<36} {self.paint(ms, 'DIM')}"
            )
        elif isinstance(event, SchemaChange):
            tag = self.paint("DDL   ", "DDL")
            self.line(f"  {tag}  {event.command_tag} {event.object_identity}")
        elif isinstance(event, (StreamGap, Overflow)):
            self.line(f"  {event!r}")


def _writer(dsn: str, options: DemoOptions) -> None:
    """The background writer (runs in a thread): paced single-row writes, then a burst."""
    conn = psycopg2.connect(dsn, application_name="trio-pgevents-demo-writer")
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            interval = 1.0 / options.rate
            next_at = time.monotonic()
            for n in range(1, options.rows + 1):
                statements: list[tuple[str, tuple[Any, ...]]] = [
                    (_INSERT, (ITEMS[n % len(ITEMS)], n % 5 + 1))
                ]
                if n % 4 == 0:
                    statements.append((_UPDATE, (n - 1,)))
                if n % 8 == 0:
                    statements.append((_DELETE, (n - 2,)))
                for statement, params in statements:
                    # Pacing a demo writer, not waiting for a condition: a plain sleep is right.
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += interval
                    cursor.execute(statement, params)
            if options.burst:
                cursor.execute(_BURST, (options.burst,))
    finally:
        conn.close()


def paced_event_count(options: DemoOptions) -> int:
    """How many data events the paced phase produces."""
    rows = options.rows
    return rows + rows // 4 + rows // 8


async def run_demo(url: str, dsn: str, options: DemoOptions, out: TextIO) -> DemoResult:
    """Run the demo against a server (normally the embedded one)."""
    printer = _Printer(out)
    result = DemoResult()
    installer = Installer(url)
    await installer.aio.install(ddl=True)
    expected_paced = paced_event_count(options)
    expected = expected_paced + options.burst
    async with open_event_stream(url, [CHANNEL]) as stream, trio.open_nursery() as nursery:
        printer.info(f"listening on {CHANNEL!r}; creating table {TABLE} and writing {options.rows} rows...")

        def create_and_watch() -> None:
            conn = psycopg2.connect(dsn, application_name="trio-pgevents-demo-setup")
            conn.autocommit = True
            try:
                with conn.cursor() as cursor:
                    cursor.execute(_CREATE_TABLE)
            finally:
                conn.close()

        await trio.to_thread.run_sync(create_and_watch)
        await installer.aio.watch_table(TABLE)
        started = time.monotonic()
        nursery.start_soon(trio.to_thread.run_sync, _writer, dsn, options)
        burst_started: float | None = None
        with trio.move_on_after(options.timeout):
            async for batch in stream.batches():
                now_wall = time.time()
                for event in batch:
                    if isinstance(event, SchemaChange):
                        result.by_kind["DDL"] += 1
                        printer.event(event, None)
                        continue
                    if not isinstance(event, RowChange) or event.table_name != TABLE:
                        printer.event(event, None)
                        continue
                    result.events += 1
                    result.by_kind[event.method] += 1
                    if result.events <= expected_paced:
                        # Latency of the paced writes only: a burst row waits for its whole transaction.
                        latency = None
                        if event.new_data is not None and "written_at" in event.new_data:
                            latency = max(0.0, now_wall - float(event.new_data["written_at"]))
                            result.latencies.append(latency)
                        printer.event(event, latency)
                        if result.events == expected_paced:
                            result.paced_seconds = time.monotonic() - started
                            result.paced_events = result.events
                            if options.burst:
                                printer.info(f"burst: {options.burst} rows in one transaction...")
                    else:
                        if burst_started is None:
                            burst_started = time.monotonic()
                            first_burst_written = event.new_data.get("written_at") if event.new_data else None
                            if isinstance(first_burst_written, (int, float)):
                                # Count from the burst's write, not from its first arrival.
                                burst_started -= max(0.0, now_wall - float(first_burst_written))
                        result.burst_events += 1
                if result.events >= expected:
                    break
        if burst_started is not None:
            result.burst_seconds = time.monotonic() - burst_started
        result.complete = result.events >= expected
        nursery.cancel_scope.cancel()
    return result


def print_summary(result: DemoResult, options: DemoOptions, out: TextIO) -> None:
    """The closing summary: events, events/s, latency percentiles."""
    printer = _Printer(out)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(result.by_kind.items()))
    printer.line()
    printer.info("summary")
    printer.line(f"  events     {result.events + result.by_kind['DDL']} ({kinds})")
    if result.paced_seconds:
        printer.line(
            f"  paced      {result.paced_events} events in {result.paced_seconds:.2f} s "
            f"= {result.paced_events / result.paced_seconds:.0f} events/s "
            f"(writer paced at {options.rate:g}/s)"
        )
    if result.burst_events and result.burst_seconds > 0:
        printer.line(
            f"  burst      {result.burst_events} events in {result.burst_seconds:.3f} s "
            f"= {result.burst_events / result.burst_seconds:.0f} events/s"
        )
    if result.latencies:
        p50 = _percentile(result.latencies, 0.50) * 1000
        p99 = _percentile(result.latencies, 0.99) * 1000
        printer.line(
            f"  latency    p50 {p50:.1f} ms, p99 {p99:.1f} ms (row written -> event in the Trio task)"
        )


@contextlib.contextmanager
def embedded_server(out: TextIO) -> Iterator[EmbeddedPostgres]:
    """An embedded server for the demo, always cleaned up."""
    printer = _Printer(out)
    printer.info("starting an embedded PostgreSQL in a temporary directory...")
    server = EmbeddedPostgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
        printer.info("embedded PostgreSQL stopped and its directory removed")


def run_embedded_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the whole demo on an embedded server; returns the exit status (0 when every event arrived)."""
    stream = out if out is not None else sys.stdout
    with embedded_server(stream) as server:
        url = f"{server.url}?application_name=trio-pgevents-demo"
        result = trio.run(run_demo, url, server.dsn, options, stream)
    print_summary(result, options, stream)
    if not result.complete:
        expected = paced_event_count(options) + options.burst
        message = f"only {result.events} of {expected} events arrived in {options.timeout:g} s"
        return print_error(message, EXIT_FAILURE)
    return EXIT_OK
