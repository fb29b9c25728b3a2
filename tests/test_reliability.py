"""Fault suite (issue 6): reconnects, gaps, dead peers, overflow, shutdown under fault.

Every case runs against a real Postgres -- a server of this module's own
(:func:`server`), because some cases stop and restart it -- and is bounded
by ``trio.fail_after``.

What "sent while connected" means here (the notifications that must arrive):
a producer on its own connection commits numbered notifications, one per
transaction. Before each commit it reads the stream's ``statistics()``: the
number is *required* when the listener reported itself connected (LISTEN
done) on connection *epoch* ``e`` (= reconnect count) and the fault injector
had not yet broken epoch ``e``. The injector breaks a connection only at a
quiet point: it pauses the producer between transactions, waits until the
consumer has received the last number required of the current connection
(if it never does, that is a loss while connected and the test fails),
marks the epoch dead, then terminates the backend / stops the server /
silences the proxy, and lets the producer go on at once. A backend that is
terminated may drop what it had not sent yet, so the quiet point is what
makes the definition sound: no required notification is in flight when a
connection is broken. The producer keeps sending during
the outage and the reconnect; those numbers are not required, but if they
arrive they must still be in order.

Checks: one gap event per fault; received numbers strictly increasing;
every required number of epoch ``e`` arrived, after the ``e``-th gap event
and before the next one (so gaps are delivered where they happened).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from trio_pgevents import (
    ConnectError,
    ConnectionLostError,
    EventStream,
    Notification,
    Overflow,
    StreamGap,
    StreamGapError,
    StreamOverflowError,
    TrioPgEventsError,
    open_event_stream,
)
from trio_pgevents.testing import EmbeddedPostgres

from .conftest import library_logs
from .tcp_proxy import TcpProxy

# ---------------------------------------------------------------------------
# The harness (also used by ``python -m benchmarks.faults``)
# ---------------------------------------------------------------------------


def run_sql(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """One autocommit statement on a fresh connection; its rows (or [])."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        conn.close()


async def sql_async(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """:func:`run_sql` in a worker thread."""
    return await trio.to_thread.run_sync(run_sql, dsn, statement, params)


async def backends_named(dsn: str, application_name: str) -> int:
    """How many server backends have this ``application_name``."""
    rows = await sql_async(
        dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    )
    return int(rows[0][0])


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` every 2 ms until true; the seconds it took. Fails after ``timeout``."""
    start = trio.current_time()
    try:
        with trio.fail_after(timeout):
            while not condition():
                await trio.sleep(0.002)
    except trio.TooSlowError:
        raise AssertionError(f"not within {timeout}s: {what}") from None
    return trio.current_time() - start


def listener_state(stream: EventStream) -> tuple[bool, int]:
    """(connected, epoch) of the stream's only source; epoch = reconnects so far."""
    source = stream.statistics().sources[0]
    return source.connected, source.reconnects


@dataclass
class FaultFigures:
    """What one fault cost, in seconds."""

    kind: str
    #: From the fault (terminate returned / stop began) to the gap's ``disconnected_at``.
    detect: float
    #: From the server being reachable again (for a fault without an outage:
    #: from the fault) to the stream listening again.
    reconnect: float


@dataclass
class NumberedRun:
    """A producer of numbered notifications, a consumer, and a fault injector."""

    stream: EventStream
    dsn: str
    channel: str
    total: int
    committed: list[int] = field(default_factory=list)
    required: dict[int, list[int]] = field(default_factory=dict)  # epoch -> numbers
    received: list[int] = field(default_factory=list)
    gaps: list[tuple[int, StreamGap]] = field(default_factory=list)  # (index in received, gap)
    dead_epochs: set[int] = field(default_factory=set)
    figures: list[FaultFigures] = field(default_factory=list)
    uncertain: int = 0
    next_number: int = 0  # the number being sent now
    done: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._pause = trio.Lock()

    async def produce(self) -> None:
        """Commit ``total`` numbered notifications, one per transaction, riding out outages."""
        conn: Any = None
        try:
            number = 0
            while number < self.total:  # total may be lowered while running
                number += 1
                self.next_number = number
                async with self._pause:
                    connected, epoch = listener_state(self.stream)
                    must_arrive = connected and epoch not in self.dead_epochs
                    while conn is None:
                        try:
                            conn = await trio.to_thread.run_sync(self._connect)
                        except psycopg2.OperationalError:
                            await trio.sleep(0.02)  # server down: retry pace, not a wait
                    try:
                        await trio.to_thread.run_sync(self._send, conn, number)
                    except psycopg2.Error:
                        # Outcome unknown (the server went away mid-commit): not
                        # required; if it arrives it must still be in order.
                        self.uncertain += 1
                        conn.close()
                        conn = None
                        continue
                    self.committed.append(number)
                    if must_arrive:
                        self.required.setdefault(epoch, []).append(number)
                await trio.lowlevel.checkpoint()  # let the injector take the pause lock
        finally:
            if conn is not None:
                conn.close()
            self.done.set()

    def _connect(self) -> Any:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        return conn

    def _send(self, conn: Any, number: int) -> None:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", (self.channel, str(number)))

    async def consume(self) -> None:
        """Record numbers and gap events in the order the stream delivers them."""
        async for event in self.stream:
            if isinstance(event, StreamGap):
                self.gaps.append((len(self.received), event))
            elif isinstance(event, Notification) and event.channel == self.channel:
                self.received.append(int(event.payload))

    async def committed_at_least(self, count: int, timeout: float = 60) -> None:
        """Wait until the producer has committed ``count`` numbers."""
        await wait_for(lambda: len(self.committed) >= count, timeout, f"{count} numbers committed")

    async def fault(
        self,
        kind: str,
        break_it: Callable[[], Awaitable[None]],
        heal: Callable[[], Awaitable[None]] | None = None,
        outage: float = 0.0,
    ) -> FaultFigures:
        """Break the listening connection at a quiet point; measure detection and reconnect."""
        async with self._pause:
            connected, epoch = listener_state(self.stream)
            assert connected, "the listener should be connected before a fault"
            # The quiet point: every number this connection must deliver has
            # arrived (numbers sent while it was down need not).
            last = max(self.required.get(epoch, [0]))
            await wait_for(
                lambda: (bool(self.received) and self.received[-1] >= last) or last == 0,
                10,
                f"number {last} (committed while connected) to arrive",
            )
            self.dead_epochs.add(epoch)
            gaps_before = len(self.gaps)
            fault_wall = datetime.now(UTC)
            # Without a heal step the server stays reachable: reconnect time
            # counts from the fault itself.
            reachable = trio.current_time()
            await break_it()
        # The producer goes on during the outage.
        if heal is not None:
            await trio.sleep(outage)  # the outage itself, not a wait for a condition
            async with trio.open_nursery() as nursery:
                nursery.start_soon(heal)
                reachable = await self._reachable_since()
        await wait_for(
            lambda: listener_state(self.stream) == (True, epoch + 1), 10, f"reconnect after {kind}"
        )
        reconnect = trio.current_time() - reachable
        await wait_for(lambda: len(self.gaps) > gaps_before, 5, f"gap event after {kind}")
        gap = self.gaps[gaps_before][1]
        detect = (gap.disconnected_at - fault_wall).total_seconds()
        figures = FaultFigures(kind, detect, reconnect)
        self.figures.append(figures)
        return figures

    async def _reachable_since(self) -> float:
        """Try to connect every 10 ms; the earliest time the server may have been reachable.

        That is the end of the last failed attempt: conservative, so the
        reconnect time measured from it is never understated.
        """
        last_failure = trio.current_time()
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._connect)
            except psycopg2.OperationalError:
                last_failure = trio.current_time()
                await trio.sleep(0.01)  # retry pace
                continue
            conn.close()
            return last_failure

    async def finish(self, timeout: float = 30) -> None:
        """Wait for the producer, then for the last required number to arrive."""
        with trio.fail_after(timeout):
            await self.done.wait()
        last_required = max((numbers[-1] for numbers in self.required.values()), default=0)
        await wait_for(
            lambda: (bool(self.received) and self.received[-1] >= last_required) or last_required == 0,
            timeout,
            f"last required number {last_required}",
        )

    def lost_while_connected(self) -> list[int]:
        """Required numbers missing from the segment of their connection."""
        bounds = [0, *(index for index, _ in self.gaps), len(self.received)]
        lost: list[int] = []
        for epoch, numbers in self.required.items():
            if epoch + 1 >= len(bounds):
                lost.extend(numbers)
                continue
            segment = set(self.received[bounds[epoch] : bounds[epoch + 1]])
            lost.extend(n for n in numbers if n not in segment)
        return sorted(lost)

    def check(self, faults: int) -> None:
        """The assertions every numbered run must pass."""
        assert len(self.gaps) == faults, [gap for _, gap in self.gaps]
        assert all(b > a for a, b in itertools.pairwise(self.received)), "numbers out of order or repeated"
        assert self.lost_while_connected() == []
        assert self.required_count > 0

    @property
    def required_count(self) -> int:
        """How many numbers had to arrive."""
        return sum(len(numbers) for numbers in self.required.values())


async def terminate_backend(dsn: str, stream: EventStream) -> None:
    """``pg_terminate_backend`` on the stream's listening backend (and wait for it to die)."""
    pid = stream.statistics().sources[0].backend_pid
    assert pid is not None
    [(ok,)] = await sql_async(dsn, "SELECT pg_terminate_backend(%s, 5000)", (pid,))
    assert ok


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """This module's own server: tests here stop and restart it."""
    with EmbeddedPostgres() as pg:
        yield pg


@pytest.fixture
def running(server: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """The module's server, guaranteed running before and after the test."""
    if not server.is_running():
        server.start()
    yield server
    if not server.is_running():
        server.start()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A channel / application name unique to this test."""
    return f"rel_{request.node.name[:40]}_{os.getpid()}".replace("[", "_").replace("]", "_")


#: Upper bound on detecting a fault and on reconnecting, in these tests. The
#: figures the docs give (docs/reliability.md: well under 1 s) come from ``benchmarks/faults.py``;
#: a test must pass on a busy machine, so it only checks a bound that a broken
#: backoff (delays growing past ``backoff_max``) or a missed fault could not meet.
RECONNECT_BOUND = 5.0

#: Seconds a busy 2-core machine may add to a bound the code guarantees (a
#: close within ``close_timeout``, a connect within ``connect_timeout``...): the
#: same margin as the other fault tests. A hang, or a bound broken by seconds, still fails.
MARGIN = 2.0


def engine_for(url: str, application_name: str, **kwargs: Any) -> Engine:
    """An engine whose backends can be found by ``application_name``."""
    return sqlalchemy.create_engine(url, connect_args={"application_name": application_name}, **kwargs)


class Records(logging.Handler):
    """Collects trio_pgevents log records (to see a failed reconnect attempt)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def log_records() -> Iterator[Records]:
    """trio_pgevents log messages emitted during the test."""
    handler = Records()
    with library_logs(handler):
        yield handler


# ---------------------------------------------------------------------------
# Connection faults under load
# ---------------------------------------------------------------------------


async def test_terminate_backend_five_times_under_10000_notifications(
    running: EmbeddedPostgres, name: str
) -> None:
    engine = engine_for(running.url, name)  # default QueuePool: broken ones must be invalidated
    try:
        with trio.fail_after(120):
            async with open_event_stream(engine, [name]) as stream, trio.open_nursery() as nursery:
                run = NumberedRun(stream, running.dsn, name, total=10_000)
                nursery.start_soon(run.consume)
                nursery.start_soon(run.produce)
                for i in range(5):
                    await run.committed_at_least(1000 + i * 1700)
                    figures = await run.fault("terminate", lambda: terminate_backend(running.dsn, stream))
                    assert figures.reconnect < RECONNECT_BOUND, figures
                    assert figures.detect < RECONNECT_BOUND, figures
                await run.finish()
                nursery.cancel_scope.cancel()
        run.check(faults=5)
        assert run.required_count > 5000, run.required_count  # most were sent while connected
        assert stream.statistics().reconnects == 5
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]  # every connection came back
        assert all("terminat" in gap.reason for _, gap in run.gaps), [g.reason for _, g in run.gaps]
    finally:
        engine.dispose()


async def test_server_stopped_for_3s_then_started(running: EmbeddedPostgres, name: str) -> None:
    engine = engine_for(running.url, name)
    try:
        with trio.fail_after(120):
            async with (
                open_event_stream(engine, [name]) as stream,  # default backoff
                trio.open_nursery() as nursery,
            ):
                # No fixed total: on a busy machine the producer could commit a
                # fixed number before the listener is back. It runs until 100
                # numbers were committed on the new connection, then stops.
                run = NumberedRun(stream, running.dsn, name, total=10**9)
                nursery.start_soon(run.consume)
                nursery.start_soon(run.produce)
                await run.committed_at_least(1000)
                figures = await run.fault(
                    "server stop 3s",
                    lambda: trio.to_thread.run_sync(running.stop),
                    heal=lambda: trio.to_thread.run_sync(running.start),
                    outage=3.0,
                )
                # The 1 s figure is measured by benchmarks/faults.py; here only a
                # bound no broken backoff could meet, on a busy machine too.
                assert figures.reconnect < RECONNECT_BOUND, figures
                await wait_for(lambda: len(run.required.get(1, ())) >= 100, 60, "100 numbers after restart")
                run.total = run.next_number
                await run.finish()
                nursery.cancel_scope.cancel()
        run.check(faults=1)
        [(_, gap)] = run.gaps
        assert gap.duration >= 3.0
        assert len(run.required[1]) >= 100  # numbers sent after the restart arrived
    finally:
        engine.dispose()


async def test_silently_dead_peer_is_found_by_the_probe(running: EmbeddedPostgres, name: str) -> None:
    probe_interval, probe_timeout = 0.5, 0.5
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(running.host, running.port)
        port = await nursery.start(proxy.run)
        url = f"postgresql+psycopg2://{running.user}@127.0.0.1:{port}/{running.database}"
        engine = engine_for(url, name, poolclass=NullPool)
        with trio.fail_after(30):
            async with open_event_stream(
                engine,
                [name],
                probe_interval=probe_interval,
                probe_timeout=probe_timeout,
                connect_timeout=1.0,
                backoff_max=0.2,
            ) as stream:
                await sql_async(running.dsn, "SELECT pg_notify(%s, 'before')", (name,))
                assert (await stream.receive()).payload == "before"
                proxy.pause()
                detect = await wait_for(
                    lambda: not stream.statistics().sources[0].connected,
                    probe_interval + probe_timeout + MARGIN,
                    "half-open connection detected",
                )
                # It shut its socket down itself; the silent peer had no part in it.
                await wait_for(
                    lambda: proxy.clients_closed >= 1, 2 + MARGIN, "dead connection closed by the listener"
                )
                # While the peer stays silent, reconnect attempts hang and are abandoned.
                await wait_for(lambda: proxy.accepted >= 3, 5, "reconnect attempts")
                assert not stream.statistics().sources[0].connected
                proxy.resume()
                reconnect = await wait_for(
                    lambda: stream.statistics().sources[0].connected,
                    1.0 + MARGIN,
                    "reconnected through the proxy",
                )
                gap = await stream.receive()
                assert isinstance(gap, StreamGap)
                assert "probe" in gap.reason
                await sql_async(running.dsn, "SELECT pg_notify(%s, 'after')", (name,))
                assert (await stream.receive()).payload == "after"
        assert detect <= probe_interval + probe_timeout + MARGIN
        assert reconnect < 1.0 + MARGIN  # backoff_max=0.2
        # Abandoned attempts completed once the proxy forwarded again, and were closed.
        await wait_for(lambda: proxy.open_connections == 0, 5, "every proxied connection closed")
        with trio.fail_after(5):
            while await backends_named(running.dsn, name):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    engine.dispose()


async def test_dropped_tcp_connection_reconnects(running: EmbeddedPostgres, name: str) -> None:
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(running.host, running.port)
        port = await nursery.start(proxy.run)
        url = f"postgresql+psycopg2://{running.user}@127.0.0.1:{port}/{running.database}"
        engine = engine_for(url, name, poolclass=NullPool)
        with trio.fail_after(20):
            async with open_event_stream(engine, [name]) as stream:
                proxy.drop_all()
                gap = await stream.receive()
                assert isinstance(gap, StreamGap)
                await sql_async(running.dsn, "SELECT pg_notify(%s, 'after')", (name,))
                assert (await stream.receive()).payload == "after"
        nursery.cancel_scope.cancel()
    engine.dispose()


# ---------------------------------------------------------------------------
# Gap and reconnect options
# ---------------------------------------------------------------------------


async def test_on_gap_raise(running: EmbeddedPostgres, name: str) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)

    async def body() -> None:
        async with open_event_stream(engine, [name], on_gap="raise") as stream:
            await terminate_backend(running.dsn, stream)
            await stream.receive()

    with trio.fail_after(10), pytest.raises(StreamGapError) as info:
        await body()
    assert isinstance(info.value.gap, StreamGap)
    assert info.value.gap.duration >= 0
    engine.dispose()


async def test_reconnect_off_raises_connection_lost(running: EmbeddedPostgres, name: str) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)

    async def body() -> None:
        async with open_event_stream(engine, [name], reconnect=False) as stream:
            await terminate_backend(running.dsn, stream)
            await stream.receive()

    with trio.fail_after(10), pytest.raises(ConnectionLostError, match="terminat"):
        await body()
    engine.dispose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_reconnect_attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.02}, "3 attempt"),
        ({"reconnect_timeout": 0.5, "backoff_max": 0.1}, "could not reconnect"),
    ],
    ids=["max_reconnect_attempts", "reconnect_timeout"],
)
async def test_reconnect_gives_up_when_the_server_stays_down(
    running: EmbeddedPostgres, name: str, options: dict[str, float], message: str
) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)

    async def body() -> None:
        async with open_event_stream(engine, [name], **options) as stream:  # type: ignore[arg-type]
            await trio.to_thread.run_sync(running.stop)
            await stream.receive()

    try:
        with trio.fail_after(30), pytest.raises(ConnectionLostError, match=message):
            await body()
    finally:
        engine.dispose()


async def test_listen_while_disconnected_is_listened_after_reconnect(
    running: EmbeddedPostgres, name: str
) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)
    other = name + "_2"
    try:
        with trio.fail_after(30):
            async with open_event_stream(engine, [name], backoff_initial=0.2) as stream:
                await trio.to_thread.run_sync(running.stop)
                await wait_for(lambda: not stream.statistics().connected, 5, "disconnect seen")
                await stream.listen(other)  # while down: remembered, LISTENed on reconnect
                await trio.to_thread.run_sync(running.start)
                gap = await stream.receive()
                assert isinstance(gap, StreamGap)
                await sql_async(running.dsn, "SELECT pg_notify(%s, 'x')", (other,))
                event = await stream.receive()
                assert (event.channel, event.payload) == (other, "x")
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# Slow consumers and overflow policies
# ---------------------------------------------------------------------------

FLOOD = 20_000
BOUND = 500


async def flood(dsn: str, channel: str, count: int = FLOOD) -> None:
    """``count`` numbered notifications in transactions of 1000."""
    for start in range(1, count + 1, 1000):
        await sql_async(
            dsn,
            "SELECT pg_notify(%s, g::text) FROM generate_series(%s, %s) g",
            (channel, start, min(start + 999, count)),
        )


async def slow_consume(stream: EventStream, until: Callable[[list[Any]], bool]) -> tuple[list[Any], int, int]:
    """Read batch by batch, 2 ms per batch; (events, largest batch, most buffered seen)."""
    events: list[Any] = []
    largest = most_buffered = 0
    async for batch in stream.batches():
        largest = max(largest, len(batch))
        most_buffered = max(most_buffered, stream.statistics().buffered)
        events.extend(batch)
        if until(events):
            break
        await trio.sleep(0.002)  # the slowness being tested
    return events, largest, most_buffered


async def test_slow_consumer_backpressure_bounds_memory(running: EmbeddedPostgres, name: str) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)
    most_buffered = 0
    with trio.fail_after(60):
        async with (
            open_event_stream(engine, [name], max_buffer_size=BOUND) as stream,
            trio.open_nursery() as nursery,
        ):

            async def sample() -> None:
                nonlocal most_buffered
                while True:
                    most_buffered = max(most_buffered, stream.statistics().buffered)
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(sample)
            await flood(running.dsn, name)
            # The consumer has not read anything: the buffer is full and the
            # listener has stopped reading; the rest waits in the server's queue.
            await wait_for(lambda: stream.statistics().buffered >= BOUND, 10, "buffer full")
            events, largest, seen = await slow_consume(stream, lambda ev: len(ev) >= FLOOD)
            nursery.cancel_scope.cancel()
    numbers = [int(e.payload) for e in events]
    assert numbers == list(range(1, FLOOD + 1))
    assert not any(isinstance(e, Overflow) for e in events)
    assert max(most_buffered, seen) <= BOUND + largest, (most_buffered, seen, largest)
    assert stream.statistics().dropped == 0
    engine.dispose()


async def test_slow_consumer_drop_oldest_reports_exact_count(running: EmbeddedPostgres, name: str) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)
    with trio.fail_after(60):
        async with open_event_stream(engine, [name], max_buffer_size=BOUND, overflow="drop-oldest") as stream:
            await flood(running.dsn, name)
            await wait_for(
                lambda: stream.statistics().events_received == FLOOD, 20, "all read by the listener"
            )
            assert stream.statistics().buffered <= BOUND
            events, largest, seen = await slow_consume(
                stream,
                lambda ev: bool(ev) and isinstance(ev[-1], Notification) and ev[-1].payload == str(FLOOD),
            )
            dropped_total = stream.statistics().dropped
    assert seen <= BOUND + largest
    overflows = [e for e in events if isinstance(e, Overflow)]
    numbers = [int(e.payload) for e in events if isinstance(e, Notification)]
    assert overflows, "nothing was dropped: the test did not overflow"
    dropped = sum(o.dropped for o in overflows)
    assert dropped == dropped_total
    assert dropped + len(numbers) == FLOOD
    assert all(b > a for a, b in itertools.pairwise(numbers))
    assert FLOOD - len(numbers) == dropped  # exactly the missing ones were reported
    assert numbers[-BOUND:] == list(range(FLOOD - BOUND + 1, FLOOD + 1))  # the newest were kept
    engine.dispose()


async def test_slow_consumer_raise_policy(running: EmbeddedPostgres, name: str) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)

    async def body() -> None:
        async with open_event_stream(engine, [name], max_buffer_size=BOUND, overflow="raise"):
            await flood(running.dsn, name)
            await trio.sleep_forever()  # the stream fails underneath us

    with trio.fail_after(30), pytest.raises(StreamOverflowError, match="max_buffer_size=500"):
        await body()
    with trio.fail_after(5):
        while await backends_named(running.dsn, name):
            await trio.sleep(0.02)
    engine.dispose()


# ---------------------------------------------------------------------------
# Shutdown under fault, and the first connect
# ---------------------------------------------------------------------------


async def test_cancel_during_backoff_returns_within_1s(
    running: EmbeddedPostgres, name: str, log_records: Records
) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)
    try:
        with trio.fail_after(30):
            with trio.CancelScope() as scope:
                async with open_event_stream(engine, [name], backoff_initial=30, backoff_max=30) as stream:
                    await trio.to_thread.run_sync(running.stop)
                    await wait_for(
                        lambda: any("reconnect" in m and "failed" in m for m in log_records.messages),
                        10,
                        "a failed reconnect attempt (now sleeping in backoff)",
                    )
                    assert not stream.statistics().connected
                    started = trio.current_time()
                    scope.cancel()
                    await stream.receive()
            assert trio.current_time() - started < 1.0 + MARGIN
        await trio.to_thread.run_sync(running.start)
        assert await backends_named(running.dsn, name) == 0
    finally:
        engine.dispose()


async def test_initial_connect_when_server_is_down(running: EmbeddedPostgres) -> None:
    with socket_bound() as port:  # a port nothing answers on
        engine = sqlalchemy.create_engine(
            f"postgresql+psycopg2://postgres:pw-s3cret@127.0.0.1:{port}/postgres"
        )
        started = trio.current_time()
        with trio.fail_after(10), pytest.raises(ConnectError) as info:
            async with open_event_stream(engine, ["x"]):
                pass  # pragma: no cover
    assert trio.current_time() - started < 5
    message = str(info.value)
    assert "pw-s3cret" not in message
    assert "could not connect" in message
    assert f"127.0.0.1:{port}" in message
    assert "\n" not in message
    assert isinstance(info.value, TrioPgEventsError)
    engine.dispose()


class socket_bound:
    """A TCP port on 127.0.0.1 that is bound but never listens (connect is refused)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def test_initial_connect_to_silent_peer_times_out(running: EmbeddedPostgres, name: str) -> None:
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(running.host, running.port)
        port = await nursery.start(proxy.run)
        proxy.pause()
        engine = engine_for(
            f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", name, poolclass=NullPool
        )
        started = trio.current_time()
        with trio.fail_after(10), pytest.raises(ConnectError, match=r"connect_timeout=0\.5s"):
            async with open_event_stream(engine, [name], connect_timeout=0.5):
                pass  # pragma: no cover
        assert trio.current_time() - started < 0.5 + 1.0 + MARGIN  # connect_timeout=0.5
        # The abandoned thread does not hang on: libpq's own connect_timeout
        # (2 s, its minimum) ends it while the peer is still silent.
        await wait_for(lambda: proxy.clients_closed == 1, 4 + MARGIN, "abandoned connect gave up by itself")
        proxy.resume()
        await wait_for(lambda: proxy.accepted == 1 and proxy.open_connections == 0, 5, "attempt closed")
        with trio.fail_after(5):
            while await backends_named(running.dsn, name):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    engine.dispose()


async def test_cancel_during_connect_leaks_no_connection(running: EmbeddedPostgres, name: str) -> None:
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(running.host, running.port)
        port = await nursery.start(proxy.run)
        proxy.pause()
        engine = engine_for(
            f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", name, poolclass=NullPool
        )
        with trio.fail_after(10), trio.CancelScope() as scope:

            async def cancel_once_connecting() -> None:
                await wait_for(lambda: proxy.accepted == 1, 5, "connect in flight")
                scope.cancel()

            nursery.start_soon(cancel_once_connecting)
            async with open_event_stream(engine, [name], connect_timeout=30):
                pass  # pragma: no cover
        started = trio.current_time()
        assert scope.cancelled_caught
        assert trio.current_time() - started < 1.0 + MARGIN
        proxy.resume()  # the thread's connection now completes: it must be closed, not leaked
        await wait_for(lambda: proxy.open_connections == 0, 5, "late connection closed")
        with trio.fail_after(5):
            while await backends_named(running.dsn, name):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    engine.dispose()


async def test_cancel_during_probe_returns_promptly_and_closes(running: EmbeddedPostgres, name: str) -> None:
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(running.host, running.port)
        port = await nursery.start(proxy.run)
        engine = engine_for(
            f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", name, poolclass=NullPool
        )
        with trio.fail_after(10), trio.CancelScope() as scope:
            async with open_event_stream(engine, [name], probe_interval=0.05, probe_timeout=60) as stream:
                assert await backends_named(running.dsn, name) == 1
                proxy.pause()
                listener = stream._listeners[0]
                await wait_for(lambda: listener._command_running, 5, "probe in flight")
                started = trio.current_time()
                scope.cancel()
                await trio.sleep_forever()
        assert trio.current_time() - started < 1.0 + MARGIN
        await wait_for(
            lambda: proxy.clients_closed == 1, 2 + MARGIN, "connection closed while the peer is silent"
        )
        proxy.resume()
        await wait_for(lambda: proxy.open_connections == 0, 5, "listening connection closed")
        with trio.fail_after(5):
            while await backends_named(running.dsn, name):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    engine.dispose()


async def test_statistics_report_health(running: EmbeddedPostgres, name: str) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)
    with trio.fail_after(10):
        async with open_event_stream(engine, [name], probe_interval=0.05) as stream:
            await wait_for(lambda: stream.statistics().sources[0].queue_usage is not None, 5, "probe ran")
            await sql_async(running.dsn, "SELECT pg_notify(%s, 'x')", (name,))
            await stream.receive()
            before = time.time()
            source = stream.statistics().sources[0]
            assert source.connected
            assert source.reconnects == 0
            assert source.last_gap is None
            assert source.last_event_at is not None
            assert source.last_event_at <= before
            assert source.queue_usage == 0.0
            await terminate_backend(running.dsn, stream)
            gap = await stream.receive()
            source = stream.statistics().sources[0]
            assert source.connected
            assert source.reconnects == 1
            assert source.last_gap == gap
    engine.dispose()


async def test_close_while_peer_is_silent_is_bounded_and_leaks_nothing(
    running: EmbeddedPostgres, name: str
) -> None:
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(running.host, running.port)
        port = await nursery.start(proxy.run)
        engine = engine_for(
            f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", name, poolclass=NullPool
        )
        with trio.fail_after(10):
            async with open_event_stream(engine, [name], close_timeout=0.3):
                assert await backends_named(running.dsn, name) == 1
                proxy.pause()  # UNLISTEN on close gets no answer
                started = trio.current_time()
            closing = trio.current_time() - started
        assert closing < 1.0
        await wait_for(
            lambda: proxy.clients_closed == 1, 2 + MARGIN, "connection closed while the peer is silent"
        )
        proxy.resume()
        await wait_for(lambda: proxy.open_connections == 0, 5, "listening connection closed")
        with trio.fail_after(5):
            while await backends_named(running.dsn, name):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    engine.dispose()


async def test_queue_usage_is_read_and_warned_about(
    running: EmbeddedPostgres, name: str, log_records: Records
) -> None:
    engine = engine_for(running.url, name, poolclass=NullPool)
    with trio.fail_after(30):
        # A stalled stream (never read, backpressure) keeps notifications in the
        # server's queue; a second stream's probe sees the queue filling.
        async with (
            open_event_stream(engine, [name], max_buffer_size=10),
            open_event_stream(
                engine, [name + "_watch"], probe_interval=0.05, queue_usage_warning=1e-9
            ) as watch,
        ):
            for _ in range(20):  # 80 MB: more than the socket buffers hold
                await sql_async(
                    running.dsn,
                    "SELECT pg_notify(%s, g::text || repeat('x', 4000)) FROM generate_series(1, 1000) g",
                    (name,),
                )

            def usage() -> float:
                return watch.statistics().sources[0].queue_usage or 0.0

            await wait_for(lambda: usage() > 0, 10, "queue usage above 0")
            await wait_for(
                lambda: any("notification queue" in m and "full" in m for m in log_records.messages),
                5,
                "queue usage warning logged",
            )
    engine.dispose()


async def test_exhausted_pool_is_a_connect_error_not_a_raw_driver_error(
    running: EmbeddedPostgres, name: str
) -> None:
    engine = engine_for(running.url, name, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        with trio.fail_after(10):
            async with open_event_stream(engine, [name]):
                with pytest.raises(ConnectError, match="QueuePool limit"):
                    async with open_event_stream(engine, [name]):
                        pass  # pragma: no cover
    finally:
        engine.dispose()


async def test_listen_to_a_peer_gone_silent_mid_connect_is_abandoned(
    running: EmbeddedPostgres, name: str
) -> None:
    async with trio.open_nursery() as nursery:
        # The startup handshake completes, then the peer goes silent when LISTEN is sent.
        proxy = TcpProxy(running.host, running.port, pause_on=b"LISTEN")
        port = await nursery.start(proxy.run)
        engine = engine_for(
            f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", name, poolclass=NullPool
        )
        started = trio.current_time()
        with trio.fail_after(10), pytest.raises(ConnectError, match=r"connect_timeout=0\.5s"):
            async with open_event_stream(engine, [name], connect_timeout=0.5):
                pass  # pragma: no cover
        assert trio.current_time() - started < 0.5 + 1.0 + MARGIN  # connect_timeout=0.5
        assert not proxy.forwarding  # it really hung on LISTEN
        # The abandoned thread's socket was shut down: its connection is closed
        # while the peer is still silent (the thread does not hang on).
        await wait_for(lambda: proxy.clients_closed == 1, 2 + MARGIN, "abandoned connection closed")
        proxy.resume()
        await wait_for(lambda: proxy.open_connections == 0, 5, "proxied connection ended")
        with trio.fail_after(5):
            while await backends_named(running.dsn, name):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    engine.dispose()


async def test_one_source_reconnects_while_the_other_keeps_flowing(
    running: EmbeddedPostgres, name: str
) -> None:
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(running.host, running.port)
        port = await nursery.start(proxy.run)
        direct = engine_for(running.url, name, poolclass=NullPool)
        proxied = engine_for(
            f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres", name, poolclass=NullPool
        )
        with trio.fail_after(20):
            async with open_event_stream([direct, proxied], [name]) as stream:
                proxied_source = stream.sources[1]
                proxy.drop_all()
                gap = await stream.receive()
                assert isinstance(gap, StreamGap)
                assert gap.source == proxied_source
                assert stream.statistics().sources[0].reconnects == 0
                await sql_async(running.dsn, "SELECT pg_notify(%s, 'both')", (name,))
                events = [await stream.receive(), await stream.receive()]
                assert sorted(e.source for e in events) == sorted(stream.sources)
        nursery.cancel_scope.cancel()
    direct.dispose()
    proxied.dispose()
