"""Throughput: notifications/s received, each payload read, by five clients.

A separate producer process sends ``SELECT pg_notify(ch, g::text) FROM
generate_series(...)`` in transactions of 100k; each client counts events
and reads every payload's length, timed from the first event it sees to the
last. Clients:

- ``raw loop``: psycopg2 + ``trio.lowlevel.wait_readable`` + ``poll()`` +
  swap ``conn.notifies`` (the limit of this stack; the baseline);
- ``trio_pgevents async for`` and ``trio_pgevents batches()``;
- ``asyncpg add_listener`` (asyncio; a callback per notification);
- ``psycopg 3 notifies()`` (``AsyncConnection``, asyncio).

Repetitions are interleaved (each round runs every client once, in a
rotated order) so that drift on a shared machine hits all clients alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg2
import sqlalchemy
import trio
from psycopg2 import sql

from trio_pgevents import open_event_stream

from ._common import BenchContext, Producer, Result, median, unique_name, with_ratio

__all__ = ["CLIENTS", "run", "measure"]

PER_TRANSACTION = 100_000


async def _raw_loop(uri: str, channel: str, count: int, producer: Producer) -> float:
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        fd = conn.fileno()
        producer.start("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
        got = 0
        length = 0
        first = 0.0
        wait_readable = trio.lowlevel.wait_readable
        while got < count:
            await wait_readable(fd)
            conn.poll()
            notifies = conn.notifies
            if not notifies:
                continue
            if not got:
                first = time.perf_counter()
            conn.notifies = []
            for note in notifies:
                length += len(note.payload)
            got += len(notifies)
        elapsed = time.perf_counter() - first
        producer.wait()
        return count / elapsed
    finally:
        conn.close()


async def _stream_for(uri: str, channel: str, count: int, producer: Producer) -> float:
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(uri).set(drivername="postgresql+psycopg2"))
    try:
        async with open_event_stream(engine, [channel]) as events:
            producer.start("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
            got = 0
            length = 0
            first = 0.0
            async for event in events:
                if not got:
                    first = time.perf_counter()
                length += len(event.payload)
                got += 1
                if got == count:
                    break
            elapsed = time.perf_counter() - first
            producer.wait()
        return count / elapsed
    finally:
        engine.dispose()


async def _stream_batches(uri: str, channel: str, count: int, producer: Producer) -> float:
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(uri).set(drivername="postgresql+psycopg2"))
    try:
        async with open_event_stream(engine, [channel]) as events:
            producer.start("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
            got = 0
            length = 0
            first = 0.0
            async for batch in events.batches():
                if not got:
                    first = time.perf_counter()
                for event in batch:
                    length += len(event.payload)
                got += len(batch)
                if got >= count:
                    break
            elapsed = time.perf_counter() - first
            producer.wait()
        return count / elapsed
    finally:
        engine.dispose()


async def _asyncpg(uri: str, channel: str, count: int, producer: Producer) -> float:
    import asyncpg

    conn = await asyncpg.connect(uri)
    try:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        state = [0, 0]  # events, payload bytes
        first = [0.0]

        def callback(connection: object, pid: int, ch: str, payload: str) -> None:
            if not state[0]:
                first[0] = time.perf_counter()
            state[0] += 1
            state[1] += len(payload)
            if state[0] == count:
                done.set_result(time.perf_counter())

        await conn.add_listener(channel, callback)
        producer.start("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
        end = await done
        producer.wait()
        return count / (end - first[0])
    finally:
        await conn.close()


async def _psycopg3(uri: str, channel: str, count: int, producer: Producer) -> float:
    import psycopg
    from psycopg import sql as sql3

    conn = await psycopg.AsyncConnection.connect(uri, autocommit=True)
    try:
        await conn.execute(sql3.SQL("LISTEN {}").format(sql3.Identifier(channel)))
        producer.start("notify", channel=channel, count=count, per_transaction=PER_TRANSACTION)
        got = 0
        length = 0
        first = 0.0
        async for note in conn.notifies():
            if not got:
                first = time.perf_counter()
            length += len(note.payload)
            got += 1
            if got == count:
                break
        elapsed = time.perf_counter() - first
        producer.wait()
        return count / elapsed
    finally:
        await conn.close()


ClientFn = Callable[[str, str, int, Producer], Awaitable[float]]

#: name -> (event loop, client coroutine)
CLIENTS: dict[str, tuple[str, ClientFn]] = {
    "raw loop (psycopg2+trio)": ("trio", _raw_loop),
    "trio_pgevents async for": ("trio", _stream_for),
    "trio_pgevents batches()": ("trio", _stream_batches),
    "asyncpg add_listener": ("asyncio", _asyncpg),
    "psycopg 3 notifies()": ("asyncio", _psycopg3),
}
RAW = "raw loop (psycopg2+trio)"
ASYNCPG = "asyncpg add_listener"


def measure(uri: str, producer: Producer, client: str, count: int) -> float:
    """One run of ``client`` receiving ``count`` notifications: events/s."""
    loop, fn = CLIENTS[client]
    channel = unique_name("bench_tp")
    if loop == "trio":
        return trio.run(fn, uri, channel, count, producer)
    return asyncio.run(fn(uri, channel, count, producer))  # type: ignore[arg-type]


def run(ctx: BenchContext) -> list[Result]:
    """Measure every client ``ctx.reps`` times; ratios to the raw loop and asyncpg."""
    count = ctx.scale(300_000, 100_000)
    names = list(CLIENTS)
    samples: dict[str, list[float]] = {name: [] for name in names}
    with Producer(ctx.server.uri) as producer:
        # Warm-up (imports, server caches), not counted.
        measure(ctx.server.uri, producer, RAW, min(count, 50_000))
        for rep in range(ctx.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                rate = measure(ctx.server.uri, producer, name, count)
                samples[name].append(rate)
                ctx.log(f"throughput rep {rep + 1}/{ctx.reps}: {name}: {rate:,.0f} ev/s")
    results = {
        name: Result(
            "throughput",
            name,
            median(values),
            "ev/s",
            values,
            note=f"{count:,} notifications, producer in transactions of {PER_TRANSACTION:,}",
        )
        for name, values in samples.items()
    }
    raw, apg = results[RAW], results[ASYNCPG]
    out = [raw]
    out.append(with_ratio(results["trio_pgevents async for"], raw, target=0.6))
    out.append(with_ratio(results["trio_pgevents batches()"], raw, target=0.8))
    out.append(with_ratio(results[ASYNCPG], raw))
    out.append(with_ratio(results["psycopg 3 notifies()"], raw))
    vs_apg = Result(
        "throughput",
        "trio_pgevents async for vs asyncpg",
        results["trio_pgevents async for"].value,
        "ev/s",
        results["trio_pgevents async for"].samples,
    )
    out.append(with_ratio(vs_apg, apg, target=1.2))
    return out
