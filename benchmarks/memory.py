"""Memory: RSS of a stream holding a full buffer, and RSS over 1M events.

Each measurement runs in a fresh process (so allocator state left by other
benchmarks does not blur it), reading its own resident set size:

- **full buffer**: open a stream with ``max_buffer_size`` B and do not
  consume; a producer sends 2B notifications (payloads of 100 bytes); once
  B events are buffered (the listener then stops reading: backpressure),
  RSS minus the RSS of the open, empty stream, per event and in total;
- **1M events**: a fast consumer (``async for``, reading each payload) takes
  1M notifications; RSS after the first 100k (warm) and at the end. The
  growth must be flat (target: under 5 MB).
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
from collections.abc import Callable
from typing import Any

import sqlalchemy
import trio
from psycopg2 import sql

from trio_pgevents import open_event_stream

from ._common import BenchContext, Result, Server, median, rss_bytes, unique_name

__all__ = ["run"]

MB = 1024 * 1024
PAYLOAD = 100


def _send(uri: str, channel: str, count: int, payload: int, per_transaction: int = 100_000) -> None:
    conn = Server(uri, "").connect()
    try:
        with conn.cursor() as cur:
            for start in range(1, count + 1, per_transaction):
                cur.execute(
                    sql.SQL(
                        "SELECT count(pg_notify(%s, lpad(g::text, {}, 'x'))) FROM generate_series(%s, %s) g"
                    ).format(sql.Literal(payload)),
                    (channel, start, min(count, start + per_transaction - 1)),
                )
    finally:
        conn.close()


async def _full_buffer(uri: str, size: int) -> dict[str, float]:
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(uri).set(drivername="postgresql+psycopg2"))
    channel = unique_name("bench_mem")
    try:
        async with open_event_stream(engine, [channel], max_buffer_size=size) as events:
            gc.collect()
            empty = rss_bytes()
            await trio.to_thread.run_sync(_send, uri, channel, 2 * size, PAYLOAD)
            with trio.fail_after(60):
                while events.statistics().buffered < size:
                    await trio.sleep(0.01)
            gc.collect()
            full = rss_bytes()
            buffered = events.statistics().buffered
        return {"delta_mb": (full - empty) / MB, "per_event_bytes": (full - empty) / buffered}
    finally:
        engine.dispose()


async def _million(uri: str, total: int) -> dict[str, float]:
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(uri).set(drivername="postgresql+psycopg2"))
    channel = unique_name("bench_mem")
    samples: list[int] = []
    try:
        async with open_event_stream(engine, [channel]) as events, trio.open_nursery() as nursery:

            async def produce() -> None:
                await trio.to_thread.run_sync(_send, uri, channel, total, PAYLOAD)

            nursery.start_soon(produce)
            got = 0
            length = 0
            with trio.fail_after(300):
                async for event in events:
                    length += len(event.payload)
                    got += 1
                    if got % 50_000 == 0:
                        samples.append(rss_bytes())
                    if got == total:
                        break
        warm = samples[1] if len(samples) > 1 else samples[0]
        return {
            "warm_mb": warm / MB,
            "end_mb": samples[-1] / MB,
            "growth_mb": (samples[-1] - warm) / MB,
            "peak_mb": max(samples) / MB,
        }
    finally:
        engine.dispose()


def _child(pipe: multiprocessing.connection.Connection, name: str, uri: str, arg: int) -> None:
    try:
        fn: Callable[[str, int], Any] = {"full": _full_buffer, "million": _million}[name]
        pipe.send(("ok", trio.run(fn, uri, arg)))
    except BaseException as exc:
        pipe.send(("error", repr(exc)))


def _in_fresh_process(name: str, uri: str, arg: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_child, args=(child, name, uri, arg))
    process.start()
    child.close()
    try:
        if not parent.poll(600):
            raise TimeoutError(f"memory benchmark {name} did not finish")
        status, value = parent.recv()
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()
    if status != "ok":
        raise RuntimeError(f"memory benchmark {name} failed: {value}")
    return dict(value)


def run(ctx: BenchContext) -> list[Result]:
    """Full-buffer RSS (default and 8x buffer) and RSS growth over 1M events."""
    reps = 1 if ctx.quick else min(ctx.reps, 3)
    out: list[Result] = []
    for size in (16_384, 131_072):
        runs = [_in_fresh_process("full", ctx.server.uri, size) for _ in range(reps)]
        ctx.log(f"memory: full buffer of {size:,}: {[round(r['delta_mb'], 1) for r in runs]} MB")
        per_event = [r["per_event_bytes"] for r in runs]
        out.append(
            Result(
                "memory",
                f"full buffer, max_buffer_size={size:,}",
                median([r["delta_mb"] for r in runs]),
                "MB",
                [r["delta_mb"] for r in runs],
                note=f"RSS of a full buffer over an open empty stream; {PAYLOAD}-byte payloads",
                extra={"per_event_bytes": median(per_event)},
            )
        )
        out.append(
            Result(
                "memory",
                f"  per buffered event, max_buffer_size={size:,}",
                median(per_event),
                "bytes",
                per_event,
            )
        )
    total = ctx.scale(1_000_000, 300_000)
    runs = [_in_fresh_process("million", ctx.server.uri, total) for _ in range(min(reps, 2))]
    ctx.log(f"memory: {total:,} events: {runs}")
    growth = [r["growth_mb"] for r in runs]
    result = Result(
        "memory",
        f"RSS growth over {total:,} events (fast consumer)",
        median(growth),
        "MB",
        growth,
        note="RSS after the first 100k events to RSS at the end; must be flat",
        extra={key: median([r[key] for r in runs]) for key in ("warm_mb", "end_mb", "peak_mb")},
    )
    result.target = "< 5 MB"
    result.met = result.value < 5
    out.append(result)
    out.append(
        Result(
            "memory",
            f"  RSS at the end of {total:,} events",
            median([r["end_mb"] for r in runs]),
            "MB",
            [r["end_mb"] for r in runs],
        )
    )
    return out
