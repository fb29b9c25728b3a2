"""Throughput: notifications/s received, each payload read, by five clients.

A separate producer process sends ``SELECT pg_notify(ch, g::text) FROM
generate_series(...)`` in transactions of 100k while the client LISTENs but
does not run (the producer is awaited with a blocking call, so the event
loop -- and any listener task on it -- is held); then the clock starts and
the client receives them all, counting events and reading every payload's
length. The producer (server-side ``pg_notify`` runs at ~0.2-0.4 M/s here)
therefore never limits the figure: it is the client's own rate. Clients:

- ``raw loop``: psycopg2 + ``trio.lowlevel.wait_readable`` + ``poll()`` +
  swap ``conn.notifies`` (the limit of this stack; the baseline);
- ``trio_pgevents async for`` and ``trio_pgevents batches()``;
- ``asyncpg add_listener`` (asyncio; a callback per notification);
- ``psycopg 3 notifies()`` (``AsyncConnection``, asyncio).

Repetitions are interleaved (each round runs every client once, in a
rotated order) so that drift on a shared machine hits all clients alike.

Two more rows give the ceilings of the two trio_pgevents figures: the raw
loop's CPU per event (this run's median) plus what handing out one event
object per notification costs at the least, timed in this process (see
:func:`event_costs`). No client that delivers an event object per
notification -- what the :class:`~trio_pgevents.Event` contract asks -- can
beat those ratios, however little else it does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg2
import sqlalchemy
import trio
from psycopg2 import sql
from psycopg2.extensions import Notify

from trio_pgevents import open_event_stream
from trio_pgevents._consumer import NotifyBatch

from ._common import BenchContext, Clock, Figures, Producer, Result, median, unique_name, with_ratio

__all__ = ["CLIENTS", "ceiling_results", "event_costs", "run", "measure"]

PER_TRANSACTION = 100_000


async def _raw_loop(uri: str, channel: str, count: int, producer: Producer) -> Figures:
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        fd = conn.fileno()
        producer.run("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
        clock = Clock()
        got = 0
        length = 0
        wait_readable = trio.lowlevel.wait_readable
        while got < count:
            await wait_readable(fd)
            conn.poll()
            notifies = conn.notifies
            if not notifies:
                continue
            conn.notifies = []
            for note in notifies:
                length += len(note.payload)
            got += len(notifies)
        return clock.stop(count)
    finally:
        conn.close()


async def _stream_for(uri: str, channel: str, count: int, producer: Producer) -> Figures:
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(uri).set(drivername="postgresql+psycopg2"))
    try:
        async with open_event_stream(engine, [channel]) as events:
            producer.run("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
            clock = Clock()
            got = 0
            length = 0
            async for event in events:
                length += len(event.payload)
                got += 1
                if got == count:
                    break
            return clock.stop(count)
    finally:
        engine.dispose()


async def _stream_batches(uri: str, channel: str, count: int, producer: Producer) -> Figures:
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(uri).set(drivername="postgresql+psycopg2"))
    try:
        async with open_event_stream(engine, [channel]) as events:
            producer.run("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
            clock = Clock()
            got = 0
            length = 0
            async for batch in events.batches():
                for event in batch:
                    length += len(event.payload)
                got += len(batch)
                if got >= count:
                    break
            return clock.stop(count)
    finally:
        engine.dispose()


async def _asyncpg(uri: str, channel: str, count: int, producer: Producer) -> Figures:
    import asyncpg

    conn = await asyncpg.connect(uri)
    try:
        done: asyncio.Future[Figures] = asyncio.get_running_loop().create_future()
        state = [0, 0]  # events, payload bytes

        def callback(connection: object, pid: int, ch: str, payload: str) -> None:
            state[0] += 1
            state[1] += len(payload)
            if state[0] == count:
                done.set_result(clock.stop(count))

        await conn.add_listener(channel, callback)
        producer.run("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
        clock = Clock()
        return await done
    finally:
        await conn.close()


async def _psycopg3(uri: str, channel: str, count: int, producer: Producer) -> Figures:
    import psycopg
    from psycopg import sql as sql3

    conn = await psycopg.AsyncConnection.connect(uri, autocommit=True)
    try:
        await conn.execute(sql3.SQL("LISTEN {}").format(sql3.Identifier(channel)))
        producer.run("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
        clock = Clock()
        got = 0
        length = 0
        async for note in conn.notifies():
            length += len(note.payload)
            got += 1
            if got == count:
                break
        return clock.stop(count)
    finally:
        await conn.close()


ClientFn = Callable[[str, str, int, Producer], Awaitable[Figures]]

#: name -> (event loop, client coroutine)
CLIENTS: dict[str, tuple[str, ClientFn]] = {
    "raw loop (psycopg2+trio)": ("trio", _raw_loop),
    "trio_pgevents async for": ("trio", _stream_for),
    "trio_pgevents batches()": ("trio", _stream_batches),
    "asyncpg add_listener": ("asyncio", _asyncpg),
    "psycopg 3 notifies()": ("asyncio", _psycopg3),
}
#: Per client name, one figure per repetition.
Samples = dict[str, list[float]]

RAW = "raw loop (psycopg2+trio)"
STREAM_FOR = "trio_pgevents async for"
STREAM_BATCHES = "trio_pgevents batches()"
ASYNCPG = "asyncpg add_listener"
PSYCOPG3 = "psycopg 3 notifies()"


def measure(uri: str, producer: Producer, client: str, count: int) -> Figures:
    """One run of ``client`` receiving ``count`` notifications: events/s."""
    loop, fn = CLIENTS[client]
    channel = unique_name("bench_tp")
    if loop == "trio":
        return trio.run(fn, uri, channel, count, producer)
    return asyncio.run(fn(uri, channel, count, producer))  # type: ignore[arg-type]


#: One run of a client: (server URI, producer, client name, notifications) -> figures.
Measure = Callable[[str, Producer, str, int], Figures]


def measure_clients(
    ctx: BenchContext, bench: str, measure_one: Measure, count: int
) -> tuple[Samples, Samples]:
    """Every client ``ctx.reps`` times (rounds rotated, after a warm-up): events/s and CPU ns per event."""
    names = list(CLIENTS)
    rates: Samples = {name: [] for name in names}
    cpu: Samples = {name: [] for name in names}
    with Producer(ctx.server.uri) as producer:
        # Warm-up (imports, server caches), not counted.
        measure_one(ctx.server.uri, producer, RAW, min(count, 50_000))
        for rep in range(ctx.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                figures = measure_one(ctx.server.uri, producer, name, count)
                rates[name].append(figures.rate)
                cpu[name].append(figures.cpu_ns)
                ctx.log(
                    f"{bench} rep {rep + 1}/{ctx.reps}: {name}: {figures.rate:,.0f} ev/s, "
                    f"{figures.cpu_ns:,.0f} ns CPU/event"
                )
    return rates, cpu


def client_results(bench: str, rates: Samples, note: str) -> dict[str, Result]:
    """Each client's events/s; every client but the raw loop with its ratio to it (and its target)."""
    results = {name: Result(bench, name, median(v), "ev/s", v, note=note) for name, v in rates.items()}
    raw = results[RAW]
    with_ratio(results[STREAM_FOR], raw, target=0.75)
    with_ratio(results[STREAM_BATCHES], raw, target=0.9)
    with_ratio(results[ASYNCPG], raw)
    with_ratio(results[PSYCOPG3], raw)
    return results


def cpu_results(bench: str, cpu: Samples) -> list[Result]:
    """Each client's CPU per event; its ratio is the raw loop's cost over its own (a speed ratio)."""
    raw_cpu = median(cpu[RAW])
    out = []
    for name, samples in cpu.items():
        value = median(samples)
        row = Result(bench, f"CPU per event: {name}", value, "ns", samples)
        if name != RAW:
            row.baseline = f"CPU per event: {RAW} (speed ratio: its cost / this cost)"
            row.ratio = raw_cpu / value if value else float("nan")
        out.append(row)
    return out


class _Handout:
    """The least an async iterator can do per item: hand out the next element of a list."""

    def __init__(self, items: list[object]) -> None:
        self._next = iter(items)

    def __aiter__(self) -> _Handout:
        return self

    async def __anext__(self) -> object:
        for item in self._next:
            return item
        raise StopAsyncIteration


async def _step_ns(items: list[object], rounds: int, reps: int) -> float:
    """ns per item of ``async for`` over :class:`_Handout`, beyond a plain ``for`` (best of ``rounds``)."""
    best = float("inf")
    for _ in range(rounds + 1):
        started = time.perf_counter_ns()
        for _ in range(reps):
            async for _item in _Handout(items):
                pass
        stepped = time.perf_counter_ns()
        for _ in range(reps):
            for _item in items:
                pass
        plain = time.perf_counter_ns() - stepped
        best = min(best, (stepped - started - plain) / (reps * len(items)))
    return best


def event_costs(*, rounds: int = 7, reps: int = 1000, size: int = 256) -> tuple[float, float]:
    """What one event object per notification costs at the least: (build, step), ns per event.

    ``build``: turning psycopg2 ``Notify`` objects into :class:`Notification`
    events, by the stream's own code (``NotifyBatch.notifications``: one
    tuple subclass each, the cheapest immutable object -- see ``_events``),
    on batches of ``size``. ``step``: one step of ``async for`` over an
    iterator that does nothing but hand out a list's items. Best of
    ``rounds`` runs of ``reps`` batches each (the least either can cost here).
    """
    notifies = [Notify(4242, "bench_tp_channel", str(i)) for i in range(size)]
    best = float("inf")
    for _ in range(rounds + 1):  # the first round warms up, and is usually the slowest
        started = time.perf_counter_ns()
        for _ in range(reps):
            NotifyBatch(notifies, "postgresql://bench@localhost/db", None).notifications()
        best = min(best, (time.perf_counter_ns() - started) / (reps * size))
    items: list[object] = list(range(size))
    step = trio.run(_step_ns, items, rounds, reps)
    return best, step


def ceiling_results(bench: str, cpu: Samples, build_ns: float, step_ns: float) -> list[Result]:
    """The best ratios ``batches()`` and ``async for`` could reach, given the raw loop's CPU per event.

    ``batches()`` must at least build each event (``build_ns``); ``async for``
    also takes one iterator step per event (``step_ns``). As CPU per event,
    with the speed ratio (raw loop's cost / this cost) of the other CPU rows.
    """
    raw_cpu = median(cpu[RAW])
    out = []
    for name, added, target in (
        (STREAM_BATCHES, build_ns, 0.9),
        (STREAM_FOR, build_ns + step_ns, 0.75),
    ):
        row = Result(
            bench,
            f"ceiling of {name}: raw loop + {added:.0f} ns per event",
            raw_cpu + added,
            "ns",
            note=(
                f"the raw loop's CPU per event plus the least one event object per notification "
                f"costs (build {build_ns:.0f} ns"
                + (f", async-for step {step_ns:.0f} ns" if name == STREAM_FOR else "")
                + f"): the best speed ratio any such client reaches (target of {name}: >= {target:g}x)"
            ),
        )
        row.baseline = f"CPU per event: {RAW} (speed ratio: its cost / this cost)"
        row.ratio = raw_cpu / row.value
        row.extra = {"build_ns": build_ns, "step_ns": step_ns, "target_reachable": row.ratio >= target}
        out.append(row)
    return out


def run(ctx: BenchContext) -> list[Result]:
    """Measure every client ``ctx.reps`` times; ratios to the raw loop and asyncpg.

    Besides events/s (wall clock), each client's CPU time per event is
    reported: on a shared machine it is the steadier figure.
    """
    count = ctx.scale(300_000, 100_000)
    rates, cpu = measure_clients(ctx, "throughput", measure, count)
    note = f"{count:,} notifications sent (transactions of {PER_TRANSACTION:,}) before the clock starts"
    results = client_results("throughput", rates, note)
    vs_apg = Result("throughput", f"{STREAM_FOR} vs asyncpg", results[STREAM_FOR].value, "ev/s")
    vs_apg.samples = results[STREAM_FOR].samples
    with_ratio(vs_apg, results[ASYNCPG], target=1.2)
    ceilings = ceiling_results("throughput", cpu, *event_costs())
    return [*results.values(), vs_apg, *cpu_results("throughput", cpu), *ceilings]
