"""The stream's hot path: events built on delivery, the listener's flood path, benchmark helpers."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from typing import Any

import trio
from psycopg2.extensions import Notify
from sqlalchemy.engine import Engine

from benchmarks import throughput
from benchmarks._common import Producer, Result, _as_uri, format_table, percentile, with_ratio
from tests.conftest import Query, drain
from trio_pgevents import Notification, RowChange, decode_trigger_payload, open_event_stream
from trio_pgevents._buffer import EventBuffer
from trio_pgevents._consumer import BufferedStream, NotifyBatch

ROW = '{"v" : 1, "kind" : "row", "table_schema" : "public", "table_name" : "t", "method" : "INSERT"}'


def test_notify_batch_builds_events_in_order() -> None:
    batch = NotifyBatch([Notify(7, "a", "1"), Notify(8, "b", "2")], "src", None)
    events = batch.events()
    assert events == [Notification("a", "1", 7, "src"), Notification("b", "2", 8, "src")]
    assert all(type(e) is Notification for e in events)


def test_notify_batch_decodes_per_channel() -> None:
    batch = NotifyBatch(
        [Notify(1, "rows", ROW), Notify(2, "plain", ROW), Notify(3, "rows", "hand-written")],
        "src",
        {"rows": decode_trigger_payload},
    )
    first, second, third = batch.events()
    assert type(first) is RowChange
    assert first.method == "INSERT"
    assert type(second) is Notification  # no decoder for that channel
    assert type(third) is Notification  # not the installer's format
    assert third.payload == "hand-written"


def test_notify_batch_slices_stay_batches() -> None:
    # The drop-oldest policy slices queued batches.
    batch = NotifyBatch([Notify(i, "c", str(i)) for i in range(5)], "src", None)
    tail = batch[2:]
    assert type(tail) is NotifyBatch
    assert [e.payload for e in tail.events()] == ["2", "3", "4"]
    assert tail.events()[0].source == "src"
    assert batch[0].payload == "0"  # single items are the Notify objects


def _live_notifications() -> int:
    gc.collect()  # earlier tests' garbage (events in reference cycles) is not what this counts
    return sum(1 for obj in gc.get_objects() if type(obj) is Notification)


async def test_buffered_notifications_are_not_events_yet(
    pg_engine: Engine, query: Query, unique: Callable[[str], str]
) -> None:
    channel = unique("lazy")
    async with open_event_stream(pg_engine, [channel]) as events:
        await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, 3000) g", (channel,))
        with trio.fail_after(10):
            while events.statistics().buffered < 3000:
                await trio.sleep(0.01)
        # Buffered, but no event object (GC-tracked) exists yet.
        assert _live_notifications() == 0
        received = [await events.receive() for _ in range(3000)]
    assert [e.payload for e in received] == [str(i) for i in range(1, 3001)]
    assert all(type(e) is Notification for e in received)


async def test_idle_after_a_flood_still_receives(
    pg_engine: Engine, query: Query, unique: Callable[[str], str]
) -> None:
    # After a poll that read notifications the listener polls without
    # waiting; an empty poll must send it back to waiting on the socket.
    channel = unique("flood")
    async with open_event_stream(pg_engine, [channel]) as events:
        await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, 20000) g", (channel,))
        assert await drain(events, 20000, timeout=20) == 20000
        await trio.sleep(0.2)  # let the listener go idle (nothing is expected here)
        await query("SELECT pg_notify(%s, 'late')", (channel,))
        with trio.fail_after(5):
            late = await events.receive()
    assert late.payload == "late"
    assert events.statistics().buffered == 0


async def test_cancelled_receive_keeps_statistics_sane(
    pg_engine: Engine, query: Query, unique: Callable[[str], str]
) -> None:
    channel = unique("stats")
    async with open_event_stream(pg_engine, [channel]) as events:
        await query("SELECT pg_notify(%s, 'one')", (channel,))
        with trio.fail_after(5):
            assert (await events.receive()).payload == "one"
        with trio.move_on_after(0.05):
            await events.receive()  # nothing comes: cancelled while waiting
        assert events.statistics().buffered == 0
        await query("SELECT pg_notify(%s, 'two')", (channel,))
        with trio.fail_after(5):
            assert (await events.receive()).payload == "two"


def test_benchmark_helpers() -> None:
    assert percentile([float(x) for x in range(1, 101)], 50) == 50
    assert percentile([float(x) for x in range(1, 101)], 99) == 99
    base = Result("b", "raw", 100.0, "ev/s")
    ours = with_ratio(Result("b", "ours", 70.0, "ev/s"), base, target=0.6)
    assert ours.ratio is not None
    assert abs(ours.ratio - 0.7) < 1e-9
    assert ours.met is True
    slow = with_ratio(
        Result("b", "slow", 2.0, "ms"), Result("b", "fast", 1.0, "ms"), target=1.5, higher_is_better=False
    )
    assert slow.met is False
    table = format_table([base, ours, slow])
    assert "0.70x" in table
    assert "NO" in table
    assert _as_uri("host=127.0.0.1 port=5 user=u dbname=d") == "postgresql://u@127.0.0.1:5/d"
    assert _as_uri("postgresql+psycopg2://u@h:5/d") == "postgresql://u@h:5/d"


def test_throughput_ceilings() -> None:
    # The ceiling rows: the raw loop's median CPU per event plus the least an
    # event object per notification costs, as a speed ratio.
    cpu = {throughput.RAW: [500.0, 600.0, 700.0]}
    batches, async_for = throughput.ceiling_results("b", cpu, 150.0, 50.0)
    assert batches.value == 750.0
    assert batches.ratio == 600.0 / 750.0
    assert batches.extra["target_reachable"] is False  # 0.8x < 0.9x
    assert async_for.value == 800.0
    assert async_for.ratio == 600.0 / 800.0
    assert async_for.extra["target_reachable"] is True  # 0.75x
    build, step = throughput.event_costs(rounds=1, reps=2, size=8)
    assert build > 0  # building events takes time; step may be noise at this size
    assert math.isfinite(step)


def test_throughput_clients_receive_everything(pg_url: str) -> None:
    # Each trio client of the throughput benchmark, on a small run: it returns
    # only after reading every notification (or would hang: bounded below).
    uri = _as_uri(pg_url)
    with Producer(uri) as producer:
        for client in (throughput.RAW, throughput.STREAM_FOR, throughput.STREAM_BATCHES):
            figures: Any = throughput.measure(uri, producer, client, 5_000)
            assert figures.rate > 0
            assert figures.cpu_ns > 0


async def test_probes_during_a_flood_do_not_pull_the_backlog_in(
    pg_engine: Engine, query: Query, unique: Callable[[str], str]
) -> None:
    # A probe is a query; the server answers it only after sending the whole
    # backlog, which libpq would read at once, past max_buffer_size. While
    # data flows the listener postpones probes, and any big read is handed
    # over in pieces: batches stay small, however often probes are due.
    channel = unique("backlog")
    total = 100_000
    async with open_event_stream(pg_engine, [channel], max_buffer_size=1000, probe_interval=0.01) as events:
        await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, %s) g", (channel, total))
        sizes: list[int] = []
        with trio.fail_after(60):
            async for batch in events.batches():
                sizes.append(len(batch))
                await trio.lowlevel.checkpoint()  # a consumer that yields: probes come due mid-flood
                if sum(sizes) == total:
                    break
        assert max(sizes) <= 1024


async def test_reads_of_every_kind_share_one_batch_in_order() -> None:
    # One NotifyBatch larger than a decoding chunk, read through every entry
    # point in turn: nothing is lost, duplicated or reordered, a cancelled
    # read takes nothing, and the count of undelivered events stays exact.
    buffer = EventBuffer(10_000, "backpressure")
    stream = BufferedStream(buffer)
    total = 600
    await buffer.put(NotifyBatch([Notify(1, "c", str(i)) for i in range(total)], "src", None))
    buffer.close()
    got: list[str] = []
    async for event in stream:
        got.append(event.payload)
        if len(got) == 10:
            break
    assert stream._undelivered == total - 10
    got.append(stream.receive_nowait().payload)
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.receive()
    assert scope.cancelled_caught
    got.append((await stream.receive()).payload)
    batches = stream.batches()
    with trio.CancelScope() as scope:
        scope.cancel()
        await batches.__anext__()
    assert scope.cancelled_caught
    got.extend(event.payload for event in await batches.__anext__())  # the rest of the chunk
    assert stream._undelivered == total - len(got)
    async for event in stream:  # on into the next chunk
        got.append(event.payload)
        if len(got) == 300:
            break
    async for batch in batches:
        got.extend(event.payload for event in batch)
    assert got == [str(i) for i in range(total)]
    assert stream._undelivered == 0


async def test_withdrawn_events_leave_the_current_batch() -> None:
    # A durable stream handing partitions back withdraws their undelivered events.
    buffer = EventBuffer(100, "backpressure")
    stream = BufferedStream(buffer)
    await buffer.put([Notification("c", str(i), 1, "src") for i in range(6)])
    assert (await stream.receive()).payload == "0"
    stream._withdraw_undelivered(lambda event: int(event.payload) % 2 == 1)
    assert stream._undelivered == 2
    assert [stream.receive_nowait().payload for _ in range(2)] == ["2", "4"]
    assert stream._undelivered == 0


async def test_probe_deadline_during_backpressure_loses_nothing(
    pg_engine: Engine, query: Query, unique: Callable[[str], str]
) -> None:
    # The listener's probe deadline spans its reads: when it fires while a
    # full buffer holds the listener in put(), that batch is queued after.
    channel = unique("held")
    total = 5000
    async with open_event_stream(pg_engine, [channel], max_buffer_size=100, probe_interval=0.01) as events:
        await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, %s) g", (channel, total))
        got: list[str] = []
        with trio.fail_after(60):
            while len(got) < total:
                got.append((await events.receive()).payload)
                if len(got) % 250 == 0:
                    await trio.sleep(0.02)  # a slow consumer: the deadline passes while put() waits
    assert got == [str(i) for i in range(1, total + 1)]
