"""Shared machinery of the benchmarks: the server, the producer process, results.

The server is an :class:`~trio_pgevents.EmbeddedPostgres` by default, or the
one named by ``--dsn`` / ``$TRIO_PGEVENTS_BENCH_DSN``. Notifications are sent
by a *separate process* (:class:`Producer`), so neither its Python work nor
its GIL takes time from the client being measured, and every client (Trio or
asyncio) is fed the same way.

Every figure is the median of several repetitions taken in the same run, and
every ratio is against a baseline measured in the same run: on a shared
machine absolute numbers drift, ratios much less so.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psycopg2
import psycopg2.extensions
import sqlalchemy
from psycopg2 import sql

from trio_pgevents.testing import EmbeddedPostgres

__all__ = [
    "BenchContext",
    "Clock",
    "Figures",
    "Producer",
    "Result",
    "Server",
    "Split",
    "children_of",
    "cpu_seconds",
    "format_table",
    "log_to_stderr",
    "median",
    "open_server",
    "percentile",
    "pgbench_tps",
    "print_results",
    "rss_bytes",
]


# ---- results ------------------------------------------------------------------------------------


@dataclass
class Result:
    """One line of the table: a figure (median of ``samples``) and its ratio to a baseline.

    Attributes:
        bench: the benchmark's name (``throughput``, ``latency``, ...).
        case: what was measured (client and variant).
        value: the median of ``samples``.
        unit: unit of ``value`` (``ev/s``, ``ms``, ``MB``, ``tps``).
        samples: every repetition's figure.
        baseline: the case ``ratio`` is relative to, if any.
        ratio: ``value / baseline's value`` (medians of the same run).
        target: the goal, as text (e.g. ``>= 0.6``), applying to ``ratio`` (or ``value``).
        met: whether the target is met (None: no target).
        note: anything a reader must know to interpret the figure.
        extra: further figures (JSON only).
    """

    bench: str
    case: str
    value: float
    unit: str
    samples: list[float] = field(default_factory=list)
    baseline: str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (``pct`` in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return float(ordered[rank - 1])


def with_ratio(
    result: Result,
    base: Result,
    *,
    target: float | None = None,
    higher_is_better: bool = True,
) -> Result:
    """Set ``result.ratio`` against ``base`` and check ``target`` on it."""
    result.baseline = base.case
    result.ratio = result.value / base.value if base.value else float("nan")
    if target is not None:
        if higher_is_better:
            result.target = f">= {target:g}x"
            result.met = result.ratio >= target
        else:
            result.target = f"<= {target:g}x"
            result.met = result.ratio <= target
    return result


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; else peak RSS)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Figures(NamedTuple):
    """What one timed run gives: wall-clock rate and this process's CPU cost."""

    #: events per second of wall-clock time.
    rate: float
    #: CPU time of this process (all threads) per event, in nanoseconds.
    cpu_ns: float


class Clock:
    """Wall clock and process CPU time, started on creation."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.perf_counter()

    def stop(self, events: int) -> Figures:
        """Figures for ``events`` handled since the clock started."""
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        return Figures(events / wall, cpu / events * 1e9)


# ---- the server ---------------------------------------------------------------------------------


@dataclass
class Server:
    """Where the benchmarks connect.

    Attributes:
        uri: a libpq URI (``postgresql://user@host:port/db``), usable by psycopg2,
            psycopg 3, asyncpg and pgbench alike.
        description: the URI with the password hidden, and the server version.
        embedded: the embedded server, when it is one.
    """

    uri: str
    description: str
    embedded: EmbeddedPostgres | None = None

    @property
    def sa_url(self) -> str:
        """The SQLAlchemy URL (psycopg2 driver)."""
        return str(
            sqlalchemy.make_url(self.uri)
            .set(drivername="postgresql+psycopg2")
            .render_as_string(hide_password=False)
        )

    def connect(self) -> Any:
        """A new autocommit psycopg2 connection."""
        conn = psycopg2.connect(self.uri)
        conn.autocommit = True
        return conn

    def execute(self, statement: str | sql.Composable, params: Sequence[Any] | None = None) -> list[Any]:
        """Run one statement on a fresh connection; rows if it returned any."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()


def _as_uri(dsn: str) -> str:
    """Accept a libpq URI, a SQLAlchemy URL or a ``key=value`` DSN; return a libpq URI."""
    if "://" in dsn:
        url = sqlalchemy.make_url(dsn)
    else:
        parts = psycopg2.extensions.parse_dsn(dsn)
        url = sqlalchemy.URL.create(
            "postgresql",
            username=parts.get("user"),
            password=parts.get("password"),
            host=parts.get("host"),
            port=int(parts["port"]) if "port" in parts else None,
            database=parts.get("dbname"),
        )
    return str(url.set(drivername="postgresql").render_as_string(hide_password=False))


@contextlib.contextmanager
def open_server(dsn: str | None, settings: Mapping[str, str] | None = None) -> Iterator[Server]:
    """The server to benchmark: ``dsn`` if given, else a fresh embedded one with ``settings``."""
    if dsn:
        uri = _as_uri(dsn)
        server = Server(uri, "")
        server.description = _describe(server, "external")
        yield server
        return
    embedded = EmbeddedPostgres(settings=settings)
    try:
        embedded.start()
        uri = f"postgresql://{embedded.user}@{embedded.host}:{embedded.port}/{embedded.database}"
        server = Server(uri, "", embedded)
        kind = "embedded " + ", ".join(f"{k}={v}" for k, v in sorted((settings or {}).items()))
        server.description = _describe(server, kind.strip().rstrip(","))
        yield server
    finally:
        embedded.cleanup()


def _describe(server: Server, kind: str) -> str:
    version = server.execute("SHOW server_version")[0][0]
    fsync = server.execute("SHOW fsync")[0][0]
    hidden = sqlalchemy.make_url(server.uri).render_as_string(hide_password=True)
    return f"{hidden} (PostgreSQL {version}, {kind}, fsync={fsync})"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


# ---- the context every benchmark receives ------------------------------------------------------


@dataclass
class BenchContext:
    """What a benchmark module's ``run(ctx)`` gets.

    Attributes:
        server: the shared server (embedded or ``--dsn``).
        dsn: the ``--dsn`` given, or None (embedded): a benchmark that needs a
            differently configured server starts its own only when this is None.
        quick: a fast, rougher run (fewer events and repetitions).
        reps: repetitions per figure (the median is reported).
        log: prints a progress line (to stderr).
    """

    server: Server
    dsn: str | None
    quick: bool
    reps: int
    log: Callable[[str], None]

    def scale(self, full: int, quick: int) -> int:
        """``quick`` in a quick run, else ``full``."""
        return quick if self.quick else full


_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def pgbench_tps(
    uri: str, script: Path, seconds: int, *, clients: int = 16, threads: int = 2, cpus: set[int] | None = None
) -> float:
    """Run the wheel's pgbench with ``script`` (optionally pinned to ``cpus``); return its TPS.

    The TPS is pgbench's figure without the initial connection time.
    """
    from trio_pgevents.testing import postgres_bin_dir

    command = [str(postgres_bin_dir() / "pgbench"), "-n", "-c", str(clients), "-j", str(threads)]
    command += ["-T", str(seconds), "-f", str(script), uri]
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=seconds + 120, preexec_fn=pin
    )
    match = _TPS.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed ({result.returncode}): {result.stdout}\n{result.stderr}")
    return float(match.group(1))


def unique_name(prefix: str) -> str:
    """A fresh identifier-safe name (channels, tables)."""
    return f"{prefix}_{os.getpid()}_{random.randrange(16**8):08x}"


# ---- the producer process -----------------------------------------------------------------------


class Producer:
    """A separate process that sends notifications (or writes rows) on command.

    Commands are sent without waiting (:meth:`start`); :meth:`wait` returns the
    producer's own report (``{"seconds": ...}``). Use as a context manager.
    """

    def __init__(self, uri: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_producer_main, args=(uri, child), daemon=True)
        self._process.start()
        child.close()
        self._pending = False
        reply = self._conn.recv()
        if reply[0] != "ready":
            raise RuntimeError(f"producer failed to start: {reply[1]}")

    def start(self, command: str, **kwargs: Any) -> None:
        """Start ``command`` (see ``_producer_main``) and return at once."""
        if self._pending:
            self.wait()
        self._conn.send((command, kwargs))
        self._pending = True

    def wait(self, timeout: float = 300) -> dict[str, Any]:
        """Wait for the running command to finish; its report."""
        if not self._pending:
            return {}
        if not self._conn.poll(timeout):
            raise TimeoutError("producer did not finish in time")
        self._pending = False
        status, report = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"producer failed: {report}")
        return dict(report)

    def run(self, command: str, **kwargs: Any) -> dict[str, Any]:
        """Run ``command`` and wait for it."""
        self.start(command, **kwargs)
        return self.wait()

    def close(self) -> None:
        """Stop the process."""
        with contextlib.suppress(OSError, EOFError, TimeoutError, RuntimeError):
            self.wait(timeout=60)
        with contextlib.suppress(OSError):
            self._conn.send(("exit", {}))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _producer_main(uri: str, pipe: multiprocessing.connection.Connection) -> None:
    try:
        conn = psycopg2.connect(uri)
        conn.autocommit = True
    except Exception as exc:
        pipe.send(("error", repr(exc)))
        return
    pipe.send(("ready", None))
    commands: dict[str, Callable[..., dict[str, Any]]] = {
        "notify": lambda **kw: _notify_series(conn, **kw),
        "paced": lambda **kw: _paced(uri, **kw),
        "sql": lambda **kw: _run_sql(conn, **kw),
    }
    while True:
        try:
            command, kwargs = pipe.recv()
        except EOFError:
            break
        if command == "exit":
            break
        started = time.perf_counter()
        try:
            report = commands[command](**kwargs)
        except Exception as exc:
            pipe.send(("error", repr(exc)))
            continue
        report["seconds"] = time.perf_counter() - started
        pipe.send(("ok", report))
    conn.close()


def _notify_series(
    conn: Any, channel: str, count: int, per_transaction: int = 100_000, payload_size: int = 0
) -> dict[str, Any]:
    """``count`` notifications in transactions of ``per_transaction`` (payloads 1..count)."""
    text: sql.Composable
    if payload_size:
        text = sql.SQL("lpad(g::text, {}, 'x')").format(sql.Literal(payload_size))
    else:
        text = sql.SQL("g::text")
    statement = sql.SQL("SELECT count(pg_notify(%s, {})) FROM generate_series(%s, %s) g").format(text)
    with conn.cursor() as cur:
        for start in range(1, count + 1, per_transaction):
            cur.execute(statement, (channel, start, min(count, start + per_transaction - 1)))
    return {}


def _run_sql(conn: Any, statements: list[str | sql.Composable]) -> dict[str, Any]:
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    return {}


def _paced(uri: str, channel: str, producers: int, per_producer: int, interval: float) -> dict[str, Any]:
    """``producers`` threads, each sending ``per_producer`` single NOTIFY transactions.

    Each payload is the server's ``clock_timestamp()`` (epoch seconds) taken
    by the statement that NOTIFYs, in autocommit: the commit follows at once,
    so receive time minus payload is the commit-to-receive latency (plus the
    statement's own few microseconds), on the machine's one clock.
    Sends are spaced by a random pause averaging ``interval`` seconds.
    """
    statement = "SELECT pg_notify(%s, extract(epoch from clock_timestamp())::text)"
    barrier = threading.Barrier(producers)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            conn = psycopg2.connect(uri)
            conn.autocommit = True
            rng = random.Random()
            try:
                with conn.cursor() as cur:
                    barrier.wait()
                    for _ in range(per_producer):
                        cur.execute(statement, (channel,))
                        time.sleep(rng.uniform(0, 2 * interval))
            finally:
                conn.close()
        except BaseException as exc:  # reported to the parent
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=one) for _ in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return {}


# ---- reporting ----------------------------------------------------------------------------------


def log_to_stderr(message: str) -> None:
    """A progress line on stderr, with the time (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _fmt_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def format_table(results: list[Result]) -> str:
    """The results as one aligned text table."""
    header = ["benchmark", "case", "median", "unit", "ratio", "vs", "target", "ok"]
    rows = [header]
    for r in results:
        rows.append(
            [
                r.bench,
                r.case,
                _fmt_value(r.value, r.unit),
                r.unit,
                "" if r.ratio is None else f"{r.ratio:.2f}x",
                r.baseline or "",
                r.target or "",
                "" if r.met is None else ("yes" if r.met else "NO"),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 4}
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(" | ".join(cells).rstrip())
        if index == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def print_results(results: list[Result]) -> None:
    """A standalone benchmark's table (``python -m benchmarks.NAME``), then each case's note."""
    print(format_table(results))
    for result in results:
        if result.note:
            print(f"  {result.case}: {result.note}")


# ---- CPU placement --------------------------------------------------------------------------------


class Split:
    """CPU placement for the "spare core" case: writers on one CPU, the stream on another.

    Pins the postmaster and every process it has started (backends started
    later inherit it) to ``writers``; :meth:`pin_stream` moves a walsender
    to ``stream``, and :meth:`stream_thread` pins the calling thread there.
    """

    def __init__(self, server: Server, writers: set[int], stream: set[int]) -> None:
        self.writers = writers
        self.stream = stream
        assert server.embedded is not None
        postmaster = int((server.embedded.data_dir / "postmaster.pid").read_text().split()[0])
        for pid in [postmaster, *children_of(postmaster)]:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, writers)

    def pin_stream(self, walsender: int | None) -> None:
        """Move the walsender serving the stream to the stream's CPU."""
        if walsender is not None:
            os.sched_setaffinity(walsender, self.stream)

    @contextlib.contextmanager
    def stream_thread(self) -> Iterator[None]:
        """Run the calling thread (the stream's Trio loop) on the stream's CPU meanwhile."""
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.stream)
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)

    @staticmethod
    def possible(ctx: BenchContext) -> bool:
        """Only on an embedded server (we pin its processes), on Linux, with 2+ CPUs."""
        return ctx.dsn is None and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2

    @staticmethod
    def halves() -> tuple[set[int], set[int]]:
        """The first CPU (for the writers) and the second (for the client)."""
        cpus = sorted(os.sched_getaffinity(0))
        return {cpus[0]}, {cpus[1]}

    @contextlib.contextmanager
    def client_process(self) -> Iterator[None]:
        """Run every thread of this process (those started later too) on the client's CPU meanwhile."""
        before = os.sched_getaffinity(0)
        tasks = [int(task.name) for task in Path("/proc/self/task").iterdir()]
        for task in tasks:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(task, self.stream)
        try:
            yield
        finally:
            for task in [int(task.name) for task in Path("/proc/self/task").iterdir()]:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(task, before)


def children_of(parent: int) -> list[int]:
    """Pids of ``parent``'s child processes (Linux /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            children.append(int(entry.name))
    return children


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) used so far by a local process, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
