"""Durable consumers that scale out (issue 15): one owner per name, groups, fenced acks.

In-process tests: several streams in one Trio run, against a real Postgres.
The process-level tests (SIGKILL) are in ``test_durable_scaleout.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg2
import pytest
import sqlalchemy
import trio
from psycopg2 import sql
from sqlalchemy.pool import NullPool

from trio_pgevents import (
    ConfigurationError,
    DurableStream,
    DurableWorker,
    LeaseLostError,
    RowChange,
    open_durable_stream,
)

from .conftest import Outbox, run_sql, take_rows
from .tcp_proxy import TcpProxy

#: What a busy machine may add to a bound (scheduling, thread start, a query).
MARGIN = 2.0
LEASE = 2.0


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


def ns(events: list[Any]) -> list[int]:
    return [e.new_data["n"] for e in events if isinstance(e, RowChange) and e.new_data is not None]


def parts_table(outbox: Outbox, consumer: str) -> list[tuple[Any, ...]]:
    return run_sql(
        outbox.dsn,
        sql.SQL(
            "SELECT part, holder, last_id FROM {}.consumer_parts WHERE consumer = %s ORDER BY part"
        ).format(  # type: ignore[arg-type]
            sql.Identifier(outbox.schema)
        ),
        (consumer,),
    )


# ---- exclusive by default ---------------------------------------------------------------


async def test_a_second_stream_under_the_same_name_stands_by(outbox: Outbox) -> None:
    opts = outbox.opts(lease_timeout=LEASE)
    async with (
        open_durable_stream(outbox.url, "one", **opts) as first,
        open_durable_stream(outbox.url, "one", **opts) as second,
    ):
        assert first.statistics().active
        assert not second.statistics().active
        assert second.statistics().partitions_held == ()
        await outbox.ainsert(1, 2, 3)
        assert ns(await take_rows(first, 3)) == [1, 2, 3]
        with trio.move_on_after(LEASE):  # well past a few ticks: the standby delivers nothing
            await second.receive()
            pytest.fail("the standby delivered an event")
        assert first.statistics().member != second.statistics().member


async def test_closing_the_active_stream_hands_over_at_once(outbox: Outbox) -> None:
    opts = outbox.opts(lease_timeout=30.0, ack_every=1)  # expiry is far away: only the hand-over can do it
    streams: dict[str, DurableStream] = {}
    close_active = trio.Event()

    async def hold(role: str, until: trio.Event) -> None:
        async with open_durable_stream(outbox.url, "handover", **opts) as stream:
            streams[role] = stream
            await until.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "active", close_active)
        await wait_for(lambda: "active" in streams, 10, "the first stream")
        nursery.start_soon(hold, "standby", trio.Event())
        await wait_for(lambda: "standby" in streams, 10, "the second stream")
        active, standby = streams["active"], streams["standby"]
        assert active.statistics().active
        assert not standby.statistics().active
        await outbox.ainsert(1, 2)
        assert ns(await take_rows(active, 2)) == [1, 2]
        await outbox.ainsert(3)
        assert ns(await take_rows(active, 1)) == [3]
        close_active.set()  # event 3 counts as processed: the standby continues after it
        closed_at = trio.current_time()
        await outbox.ainsert(4)
        assert ns(await take_rows(standby, 1, timeout=1 + MARGIN)) == [4]
        assert trio.current_time() - closed_at < 1 + MARGIN
        assert standby.statistics().active
        nursery.cancel_scope.cancel()


async def test_a_silent_holder_loses_its_lease_and_its_late_ack_is_refused(
    outbox: Outbox, pg_url: str
) -> None:
    url = sqlalchemy.make_url(pg_url)
    opts = outbox.opts(lease_timeout=LEASE, auto_ack=False, query_timeout=LEASE, close_timeout=1.0)
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
        port = await nursery.start(proxy.run)
        proxied = sqlalchemy.create_engine(url.set(host="127.0.0.1", port=port), poolclass=NullPool)
        async with open_durable_stream(proxied, "silent", **opts) as old:
            await outbox.ainsert(1, 2)
            got = await take_rows(old, 2)
            async with open_durable_stream(outbox.url, "silent", **opts) as new:
                assert not new.statistics().active
                proxy.pause()  # the holder can no longer renew: it is as good as dead
                paused_at = trio.current_time()
                # Nothing was acknowledged: the new holder gets both events again.
                assert ns(await take_rows(new, 2, timeout=LEASE + 2 * MARGIN)) == [1, 2]
                assert trio.current_time() - paused_at < LEASE + 1 + MARGIN
                conn = psycopg2.connect(outbox.dsn)
                try:
                    with pytest.raises(LeaseLostError, match="no longer holds"), conn, conn.cursor() as cur:
                        old.ack_in_transaction(cur, got[0])
                finally:
                    conn.close()
            nursery.cancel_scope.cancel()


async def test_a_fenced_ack_in_transaction_rolls_back_with_the_effect(outbox: Outbox) -> None:
    opts = outbox.opts(lease_timeout=30.0, auto_ack=False)
    run_sql(outbox.dsn, f"CREATE TABLE {outbox.table}_effects (n int)")
    async with open_durable_stream(outbox.url, "fenced", **opts) as events:
        await outbox.ainsert(7)
        (event,) = await take_rows(events, 1)
        # Someone else holds the partition now (as after an expiry and a take-over).
        run_sql(
            outbox.dsn,
            f"UPDATE {outbox.schema}.consumer_parts SET holder = 'another' WHERE consumer = 'fenced'",
        )
        conn = psycopg2.connect(outbox.dsn)

        def effect_and_ack() -> None:
            with conn, conn.cursor() as cursor:  # raising rolls the transaction back
                cursor.execute(f"INSERT INTO {outbox.table}_effects VALUES (7)")
                events.ack_in_transaction(cursor, event)

        try:
            with pytest.raises(LeaseLostError):
                effect_and_ack()
        finally:
            conn.close()
        assert run_sql(outbox.dsn, f"SELECT count(*) FROM {outbox.table}_effects") == [(0,)]
        assert [row[2] for row in parts_table(outbox, "fenced")] == [0]
        with pytest.raises(LeaseLostError):
            await events.ack(event)


# ---- consumer groups ----------------------------------------------------------------------


@asynccontextmanager
async def members(
    outbox: Outbox, name: str, count: int, **options: Any
) -> AsyncIterator[list[DurableStream]]:
    opts = outbox.opts(group=True, lease_timeout=LEASE, **options)
    async with trio.open_nursery() as nursery:
        streams: list[DurableStream] = []
        done = trio.Event()

        async def member() -> None:
            async with open_durable_stream(outbox.url, name, **opts) as stream:
                streams.append(stream)
                await done.wait()

        for _ in range(count):
            nursery.start_soon(member)
        await wait_for(lambda: len(streams) == count, 20, "members open")
        try:
            yield streams
        finally:
            done.set()


def shares(streams: list[DurableStream]) -> list[int]:
    return sorted(len(s.statistics().partitions_held) for s in streams)


async def test_a_group_shares_its_partitions_and_each_event_goes_to_one_member(outbox: Outbox) -> None:
    async with members(outbox, "grp", 3, partitions=8) as streams:
        await wait_for(lambda: shares(streams) == [2, 3, 3], 6 * LEASE, "a fair share each")
        held = [set(s.statistics().partitions_held) for s in streams]
        assert set().union(*held) == set(range(8))
        rows = list(range(300))
        for start in range(0, 300, 50):
            await outbox.ainsert(*rows[start : start + 50])
        seen: dict[int, list[int]] = defaultdict(list)

        async def drain(index: int, stream: DurableStream) -> None:
            while True:
                event = await stream.receive()
                if isinstance(event, RowChange) and event.new_data is not None:
                    seen[index].append(event.new_data["n"])

        with trio.move_on_after(10):
            async with trio.open_nursery() as nursery:
                for index, stream in enumerate(streams):
                    nursery.start_soon(drain, index, stream)
                await wait_for(lambda: sum(map(len, seen.values())) >= 300, 10, "every row")
                nursery.cancel_scope.cancel()
        everything = [n for got in seen.values() for n in got]
        assert sorted(everything) == rows  # every row once, by exactly one member
        assert all(got == sorted(got) for got in seen.values())  # in order (n grows with id)
        assert len(seen) >= 2  # the work was shared


async def test_when_a_member_leaves_the_others_take_its_partitions(outbox: Outbox) -> None:
    opts = outbox.opts(group=True, partitions=6, lease_timeout=LEASE)
    async with open_durable_stream(outbox.url, "grp2", **opts) as a:
        async with open_durable_stream(outbox.url, "grp2", **opts) as b:
            await wait_for(lambda: shares([a, b]) == [3, 3], 6 * LEASE, "three each")
        left_at = trio.current_time()
        await wait_for(lambda: len(a.statistics().partitions_held) == 6, LEASE + 2 * MARGIN, "all six")
        assert trio.current_time() - left_at < LEASE + MARGIN
        await outbox.ainsert(*range(40))
        assert sorted(ns(await take_rows(a, 40))) == list(range(40))


async def test_the_partition_count_is_fixed_when_the_group_is_created(outbox: Outbox) -> None:
    async with open_durable_stream(outbox.url, "fixed", **outbox.opts(group=True, partitions=4)):
        pass
    with pytest.raises(ConfigurationError, match="has 4 partitions"):
        async with open_durable_stream(outbox.url, "fixed", **outbox.opts(group=True, partitions=8)):
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="is a consumer group: open it with group=True"):
        async with open_durable_stream(outbox.url, "fixed", **outbox.opts()):
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="partitions must be at most 1024"):
        async with open_durable_stream(outbox.url, "x", **outbox.opts(group=True, partitions=5000)):
            pass  # pragma: no cover


async def test_durable_workers_share_a_group(outbox: Outbox) -> None:
    opts = outbox.opts(group=True, partitions=4, lease_timeout=LEASE, auto_ack=False)
    processed: list[tuple[int, int]] = []
    workers: list[DurableWorker] = []
    streams: list[DurableStream] = []

    async def member(index: int) -> None:
        async def handler(event: RowChange) -> None:
            assert event.new_data is not None
            processed.append((index, event.new_data["n"]))
            await trio.sleep(0.001)

        async with open_durable_stream(outbox.url, "workers", **opts) as stream:
            streams.append(stream)
            worker = DurableWorker(handler)
            workers.append(worker)
            await worker.run(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(member, 0)
        nursery.start_soon(member, 1)
        await wait_for(lambda: len(streams) == 2 and shares(streams) == [2, 2], 6 * LEASE, "two each")
        await outbox.ainsert(*range(200))
        await wait_for(lambda: len(processed) >= 200, 30, "every row")
        for worker in workers:
            worker.stop()
    assert sorted(n for _, n in processed) == list(range(200))  # once each
    assert {index for index, _ in processed} == {0, 1}  # by both members


@pytest.mark.parametrize(
    ("options", "spacing"),
    [({"group": True, "partitions": 4}, 0.05), ({"min_read_interval": 0.2}, 0.2)],
)
async def test_reads_are_spaced_by_min_read_interval(
    outbox: Outbox, options: dict[str, Any], spacing: float
) -> None:
    # A group member reads at most every 50 ms by default (every member reads on every
    # wake-up); any consumer can be told to. Many small transactions: far fewer reads.
    async with open_durable_stream(outbox.url, "spaced", **outbox.opts(**options)) as stream:
        await wait_for(lambda: stream.statistics().active, 6 * LEASE, "active")
        reads = stream.statistics().reads
        started = trio.current_time()
        got: list[Any] = []

        async def write() -> None:
            for n in range(60):
                await outbox.ainsert(n)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            with trio.fail_after(30):
                while len(got) < 60:
                    got.append(await stream.receive())
        elapsed = trio.current_time() - started
        read_count = stream.statistics().reads - reads
    assert ns(got) == list(range(60))
    # Each read waits for the spacing since the one before (a busy machine only reads less).
    assert read_count <= elapsed / spacing + 2, (read_count, elapsed)


async def test_a_spaced_reader_stops_listening_while_busy_and_loses_nothing(outbox: Outbox) -> None:
    # A stream with a min_read_interval (a group member by default) reads that often anyway
    # while rows keep coming: it stops listening for wake-ups (each listener costs the
    # server every commit's NOTIFY) and listens again once a read finds nothing. An
    # exclusive consumer without one keeps listening (it reads on each wake-up).
    async with (
        open_durable_stream(outbox.url, "busy", **outbox.opts(group=True, partitions=4)) as member,
        open_durable_stream(outbox.url, "eager", **outbox.opts()) as eager,
    ):
        await wait_for(lambda: member.statistics().active and eager.statistics().active, 6 * LEASE, "active")
        member_wakeups, eager_wakeups = member._wake_stream, eager._wake_stream
        assert member_wakeups is not None
        assert eager_wakeups is not None
        assert member_wakeups.channels
        assert eager_wakeups.channels
        got: dict[str, list[Any]] = {"busy": [], "eager": []}
        written = 0
        eager_unlistened = False

        async def take(stream: DurableStream, into: list[Any]) -> None:
            async for batch in stream.batches():
                into.extend(batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, member, got["busy"])
            nursery.start_soon(take, eager, got["eager"])
            with trio.fail_after(60):
                while member_wakeups.channels:  # a write at a time until the member stops listening
                    await outbox.ainsert(written)
                    written += 1
                    eager_unlistened = eager_unlistened or not eager_wakeups.channels
                # Nothing more written: the member's next read finds nothing, it listens again.
                while not member_wakeups.channels:
                    await trio.sleep(0.01)
                # Wake-ups work again, and every row came once, in order, to both.
                await outbox.ainsert(written)
                written += 1
                while len(got["busy"]) < written or len(got["eager"]) < written:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert ns(got["busy"]) == ns(got["eager"]) == list(range(written))
    assert not eager_unlistened
    assert written >= 3
