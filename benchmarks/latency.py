"""Latency from a producer's commit to the consumer holding the event.

Producers (threads of a separate process, one connection each) send single
NOTIFYs in autocommit, paced by random pauses; each payload is the server's
``clock_timestamp()`` as epoch seconds, taken by the NOTIFYing statement just
before its commit. The consumer computes ``time.time() - payload`` as each
event reaches its code: the same machine, the same clock. Percentiles (p50,
p99, max) are taken per run; the table shows the median over the runs.

Clients: the raw psycopg2 + ``wait_readable`` loop (baseline) and
``trio_pgevents`` ``async for``; with 1 producer and with 16 concurrent ones.
"""

from __future__ import annotations

import time

import psycopg2
import sqlalchemy
import trio
from psycopg2 import sql

from trio_pgevents import open_event_stream

from ._common import BenchContext, Producer, Result, median, percentile, unique_name, with_ratio

__all__ = ["run"]

RAW = "raw loop"
STREAM = "trio_pgevents async for"


async def _raw(uri: str, channel: str, total: int, producer: Producer, job: dict[str, object]) -> list[float]:
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    latencies: list[float] = []
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        fd = conn.fileno()
        producer.start("paced", channel=channel, **job)
        with trio.fail_after(120):
            while len(latencies) < total:
                await trio.lowlevel.wait_readable(fd)
                conn.poll()
                notifies = conn.notifies
                conn.notifies = []
                for note in notifies:
                    latencies.append(time.time() - float(note.payload))
        producer.wait()
        return latencies
    finally:
        conn.close()


async def _stream(
    uri: str, channel: str, total: int, producer: Producer, job: dict[str, object]
) -> list[float]:
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(uri).set(drivername="postgresql+psycopg2"))
    latencies: list[float] = []
    try:
        async with open_event_stream(engine, [channel]) as events:
            producer.start("paced", channel=channel, **job)
            with trio.fail_after(120):
                async for event in events:
                    latencies.append(time.time() - float(event.payload))
                    if len(latencies) == total:
                        break
            producer.wait()
        return latencies
    finally:
        engine.dispose()


def run(ctx: BenchContext) -> list[Result]:
    """p50/p99/max for each client with 1 and 16 producers; ratios to the raw loop."""
    configs = {
        1: ctx.scale(2000, 400),  # notifications per producer
        16: ctx.scale(200, 40),
    }
    interval = {1: 0.001, 16: 0.004}  # mean pause between one producer's sends
    clients = {RAW: _raw, STREAM: _stream}
    out: list[Result] = []
    with Producer(ctx.server.uri) as producer:
        for producers, per_producer in configs.items():
            total = producers * per_producer
            job: dict[str, object] = {
                "producers": producers,
                "per_producer": per_producer,
                "interval": interval[producers],
            }
            stats: dict[str, dict[str, list[float]]] = {c: {"p50": [], "p99": [], "max": []} for c in clients}
            for rep in range(ctx.reps):
                order = list(clients) if rep % 2 == 0 else list(reversed(clients))
                for name in order:
                    latencies = trio.run(
                        clients[name], ctx.server.uri, unique_name("bench_lat"), total, producer, job
                    )
                    ms = [x * 1000 for x in latencies]
                    stats[name]["p50"].append(percentile(ms, 50))
                    stats[name]["p99"].append(percentile(ms, 99))
                    stats[name]["max"].append(max(ms))
                    ctx.log(
                        f"latency {producers} producer(s) rep {rep + 1}/{ctx.reps}: {name}: "
                        f"p50 {stats[name]['p50'][-1]:.3f} ms, p99 {stats[name]['p99'][-1]:.3f} ms"
                    )
            note = (
                f"{total:,} single-NOTIFY commits per run from {producers} producer(s); "
                "server clock_timestamp() in payload -> time.time() at receipt"
            )
            for pct in ("p50", "p99", "max"):
                base = Result(
                    "latency",
                    f"{RAW} {pct}, {producers} producer(s)",
                    median(stats[RAW][pct]),
                    "ms",
                    stats[RAW][pct],
                    note=note,
                )
                ours = Result(
                    "latency",
                    f"{STREAM} {pct}, {producers} producer(s)",
                    median(stats[STREAM][pct]),
                    "ms",
                    stats[STREAM][pct],
                    note=note,
                )
                out.append(base)
                out.append(
                    with_ratio(ours, base, target=1.5 if pct == "p99" else None, higher_is_better=False)
                )
    return out
