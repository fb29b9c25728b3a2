"""Durable delivery, the consumer side (issue 7), against a real Postgres."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy
import trio
from psycopg2 import sql

import trio_pgevents
from trio_pgevents import (
    ConfigurationError,
    ConnectError,
    DurableStream,
    DurableWorker,
    Installer,
    OutboxNotification,
    RowChange,
    StreamClosedError,
    StreamGap,
    open_durable_stream,
)
from trio_pgevents._durable.outbox import position_of

from .conftest import Outbox, Query, read_with_cancellations, run_sql
from .conftest import take as take_events


async def take(stream: DurableStream, count: int, timeout: float = 20) -> list[Any]:
    """The next ``count`` data events (control events are collected separately by callers)."""
    return await take_events(stream, count, timeout, only=RowChange)


def ns(events: list[Any]) -> list[int]:
    return [e.new_data["n"] for e in events]


async def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


# ---- the basics ---------------------------------------------------------------------


async def test_public_names() -> None:
    for name in ("open_durable_stream", "DurableStream", "DurableStatistics", "DurableWorker"):
        assert getattr(trio_pgevents, name).__module__.startswith("trio_pgevents._durable.")


async def test_delivers_row_changes_with_id_and_txid(outbox: Outbox) -> None:
    async with open_durable_stream(outbox.url, "c1", **outbox.opts()) as events:
        await outbox.ainsert(1)
        await outbox.ainsert(2, 3, 4)
        got = await take(events, 4)
    assert ns(got) == [1, 2, 3, 4]
    assert all(e.method == "INSERT" and e.table_name == outbox.table for e in got)
    assert all(e.channel == outbox.channel for e in got)
    ids = [e.id for e in got]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    # One transaction, one txid; the single-row transaction came before.
    assert got[0].txid < got[1].txid == got[2].txid == got[3].txid
    assert '"new_data"' in got[0].payload


async def test_events_written_before_open_are_delivered(outbox: Outbox) -> None:
    await outbox.ainsert(*range(2500))  # more than one read (batch_size) and one buffer
    async with open_durable_stream(outbox.url, "late", **outbox.opts(batch_size=700)) as events:
        got = await take(events, 2500)
    assert ns(got) == list(range(2500))


async def test_out_of_order_commit_is_not_skipped(outbox: Outbox) -> None:
    """T1 takes the lower id but commits after T2: both arrive, in txid order, none skipped."""
    first = psycopg2.connect(outbox.dsn)
    try:
        async with open_durable_stream(outbox.url, "order", **outbox.opts()) as events:
            insert = sql.SQL("INSERT INTO {} (n) VALUES (%s)").format(sql.Identifier(outbox.table))

            def begin_first() -> None:
                with first.cursor() as cursor:
                    cursor.execute(insert, (1,))  # transaction stays open

            await trio.to_thread.run_sync(begin_first)
            reads_before = events.statistics().reads
            await outbox.ainsert(2)  # commits first, with the higher id
            rows = run_sql(
                outbox.dsn,
                sql.SQL("SELECT id FROM {}.events ORDER BY id").format(  # type: ignore[arg-type]
                    sql.Identifier(outbox.schema)
                ),
            )
            assert len(rows) == 1  # only T2's row is visible; T1's id is lower
            # The wake-up of T2's commit made the reader look (and look again):
            # it must not deliver T2 while T1, which is below it, is still open.
            await wait_for(lambda: events.statistics().reads >= reads_before + 2)
            assert events.statistics().events_received == 0
            with pytest.raises(trio.WouldBlock):
                events.receive_nowait()
            await trio.to_thread.run_sync(first.commit)
            got = await take(events, 2)
        assert ns(got) == [1, 2]
        assert got[0].id < got[1].id
        assert got[0].txid < got[1].txid
    finally:
        first.close()


async def test_writer_that_skipped_its_wakeup_is_read_within_poll_interval(outbox: Outbox) -> None:
    """Only one transaction at a time NOTIFYs (writer cost); the others are found by polling.

    T_s takes its txid first; T_n writes (and holds the wake-up lock, so it
    will notify); T_s writes (finds the lock taken: no NOTIFY) and commits.
    T_s is readable at once (every older transaction is done) but nothing
    announces it: it arrives by the poll, while T_n is still open.
    """
    t_s, t_n = psycopg2.connect(outbox.dsn), psycopg2.connect(outbox.dsn)
    insert = sql.SQL("INSERT INTO {} (n) VALUES (%s)").format(sql.Identifier(outbox.table))
    try:
        async with open_durable_stream(outbox.url, "skip", **outbox.opts(poll_interval=0.5)) as events:

            def step(conn: Any, statement: Any, params: Any = None) -> None:
                with conn.cursor() as cursor:
                    cursor.execute(statement, params)

            await trio.to_thread.run_sync(step, t_s, "SELECT pg_current_xact_id()")
            await trio.to_thread.run_sync(step, t_n, insert, (1,))
            await trio.to_thread.run_sync(step, t_s, insert, (2,))
            await trio.to_thread.run_sync(t_s.commit)
            assert ns(await take(events, 1, timeout=5)) == [2]
            await trio.to_thread.run_sync(t_n.commit)
            assert ns(await take(events, 1, timeout=5)) == [1]
    finally:
        t_s.close()
        t_n.close()


async def test_rolled_back_transactions_do_not_block_or_appear(outbox: Outbox) -> None:
    conn = psycopg2.connect(outbox.dsn)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql.SQL("INSERT INTO {} (n) VALUES (99)").format(sql.Identifier(outbox.table)))
        conn.rollback()
    finally:
        conn.close()
    await outbox.ainsert(1)
    async with open_durable_stream(outbox.url, "rb", **outbox.opts()) as events:
        got = await take(events, 1)
        assert ns(got) == [1]
        await outbox.ainsert(2)
        assert ns(await take(events, 1)) == [2]


# ---- acknowledgement and positions ---------------------------------------------------


async def stored_position(outbox: Outbox, consumer: str) -> tuple[int, int]:
    statement: Any = sql.SQL("SELECT last_txid::text, last_id FROM {}.consumers WHERE name = %s").format(
        sql.Identifier(outbox.schema)
    )
    rows = await trio.to_thread.run_sync(run_sql, outbox.dsn, statement, (consumer,))
    return (int(rows[0][0]), int(rows[0][1]))


async def test_auto_ack_resumes_after_processed_events(outbox: Outbox) -> None:
    await outbox.ainsert(*range(5))
    async with open_durable_stream(outbox.url, "resume", **outbox.opts()) as events:
        got = await take(events, 5)
    # Closing without an error stored the last event handed out (it was processed).
    assert await stored_position(outbox, "resume") == (got[-1].txid, got[-1].id)
    await outbox.ainsert(5, 6)
    async with open_durable_stream(outbox.url, "resume", **outbox.opts()) as events:
        assert ns(await take(events, 2)) == [5, 6]


async def test_ack_every_stores_before_next_event(outbox: Outbox) -> None:
    await outbox.ainsert(*range(4))
    async with open_durable_stream(outbox.url, "each", **outbox.opts(ack_every=1)) as events:
        first: Any = await events.receive()
        assert await stored_position(outbox, "each") == (0, 0)  # not processed yet
        await events.receive()  # asking for the next one acks (and stores) the first
        assert await stored_position(outbox, "each") == (first.txid, first.id)


async def test_ack_interval_stores_in_the_background(outbox: Outbox) -> None:
    await outbox.ainsert(1, 2)
    async with open_durable_stream(outbox.url, "timed", **outbox.opts(ack_interval=0.05)) as events:
        first: Any = await events.receive()
        second: Any = await events.receive()  # marks the first as processed; not stored yet
        with trio.fail_after(10):
            while await stored_position(outbox, "timed") != (first.txid, first.id):
                await trio.sleep(0.02)
        assert events.position == (first.txid, first.id)
        assert second.id > first.id


async def test_error_in_body_leaves_last_event_unacked(outbox: Outbox) -> None:
    await outbox.ainsert(*range(3))

    class Boom(Exception):
        pass

    async def consume() -> None:
        async with open_durable_stream(outbox.url, "boom", **outbox.opts()) as events:
            async for event in events:
                if isinstance(event, RowChange) and (event.new_data or {}).get("n") == 1:
                    raise Boom  # event 1 was not processed

    with pytest.raises(Boom):
        await consume()
    async with open_durable_stream(outbox.url, "boom", **outbox.opts()) as events:
        assert ns(await take(events, 2)) == [1, 2]


async def test_explicit_ack(outbox: Outbox) -> None:
    await outbox.ainsert(*range(5))
    async with open_durable_stream(outbox.url, "manual", **outbox.opts(auto_ack=False)) as events:
        got = await take(events, 5)
        await events.ack(got[2])  # acks 0, 1 and 2
        assert await stored_position(outbox, "manual") == (got[2].txid, got[2].id)
        await events.ack(got[1])  # older than the stored position: no effect
        assert events.position == (got[2].txid, got[2].id)
        with pytest.raises(ConfigurationError, match="durable stream"):
            await events.ack(trio_pgevents.Notification("x", "y", 0, "z"))
    async with open_durable_stream(outbox.url, "manual", **outbox.opts(auto_ack=False)) as events:
        assert ns(await take(events, 2)) == [3, 4]


async def test_batches_ack_previous_batch(outbox: Outbox) -> None:
    await outbox.ainsert(*range(10))
    async with open_durable_stream(outbox.url, "batches", **outbox.opts(ack_every=1)) as events:
        seen: list[Any] = []
        async for batch in events.batches():
            seen.extend(e for e in batch if isinstance(e, RowChange))
            if len(seen) >= 10:
                break
        assert await stored_position(outbox, "batches") < (seen[-1].txid, seen[-1].id)
    assert await stored_position(outbox, "batches") == (seen[-1].txid, seen[-1].id)


async def test_ack_every_counts_events_of_batches(outbox: Outbox) -> None:
    await outbox.ainsert(*range(30))
    options = outbox.opts(ack_every=10, batch_size=10, ack_interval=3600)
    async with open_durable_stream(outbox.url, "counted", **options) as events:
        batches = events.batches()
        first = [e for e in await batches.__anext__() if isinstance(e, RowChange)]
        assert len(first) == 10
        await batches.__anext__()  # the first batch was processed: 10 events, so stored soon
        # (by the flush task, not after ack_interval=3600)
        with trio.fail_after(10):
            while await stored_position(outbox, "counted") != (first[-1].txid, first[-1].id):
                await trio.sleep(0.01)


async def test_start_latest_skips_existing_events(outbox: Outbox) -> None:
    await outbox.ainsert(1, 2)
    async with open_durable_stream(outbox.url, "latest", **outbox.opts(start="latest")) as events:
        await outbox.ainsert(3)
        assert ns(await take(events, 1)) == [3]
    async with open_durable_stream(outbox.url, "earliest", **outbox.opts()) as events:
        assert ns(await take(events, 3)) == [1, 2, 3]


async def test_many_consumers_each_get_every_event(outbox: Outbox) -> None:
    names = [f"c{i}" for i in range(4)]
    results: dict[str, list[int]] = {}
    async with trio.open_nursery() as nursery:
        ready = 0

        async def consume(name: str, task_status: trio.TaskStatus[None]) -> None:
            nonlocal ready
            async with open_durable_stream(outbox.url, name, **outbox.opts()) as events:
                task_status.started()
                results[name] = ns(await take(events, 300))

        for name in names:
            await nursery.start(consume, name)
        for start in range(0, 300, 30):
            await outbox.ainsert(*range(start, start + 30))
    for name in names:
        assert results[name] == list(range(300)), name
    # The writer's cost does not depend on the number of consumers: one row per change.
    assert outbox.count("events") == 300


# ---- retention ---------------------------------------------------------------------------


async def test_retention_never_deletes_unacked_events(outbox: Outbox) -> None:
    installer = Installer(outbox.url, schema=outbox.schema, channel=outbox.channel)
    await outbox.ainsert(*range(10))
    async with open_durable_stream(outbox.url, "fast", **outbox.opts()) as events:
        await take(events, 10)
    async with open_durable_stream(outbox.url, "slow", **outbox.opts(ack_every=1)) as events:
        await take(events, 3)  # closing normally: the third counts as processed
    deleted = await trio.to_thread.run_sync(installer.delete_acknowledged, 2)  # small batches
    assert deleted == 3  # only what the slowest consumer acknowledged
    assert outbox.count() == 7
    async with open_durable_stream(outbox.url, "slow", **outbox.opts()) as events:
        assert ns(await take(events, 7)) == list(range(3, 10))
    assert await trio.to_thread.run_sync(installer.delete_acknowledged) == 7
    assert outbox.count() == 0


async def test_retention_loop_of_the_stream(outbox: Outbox) -> None:
    installer = Installer(outbox.url, schema=outbox.schema, channel=outbox.channel)
    async with open_durable_stream(outbox.url, "behind", **outbox.opts()):
        pass  # registered at the start, acknowledges nothing
    options = outbox.opts(auto_ack=False, retention_interval=0.05)
    async with open_durable_stream(outbox.url, "ahead", **options) as events:
        await outbox.ainsert(*range(5))
        got = await take(events, 5)
        await events.ack(got[-1])
        # Retention runs (several rounds) but "behind" has acknowledged nothing.
        runs = events.statistics().retention_runs
        await wait_for(lambda: events.statistics().retention_runs >= runs + 3)
        assert outbox.count() == 5
        assert events.statistics().retention_deleted == 0
        # Dropping the consumer that holds retention back lets the loop delete.
        assert await trio.to_thread.run_sync(installer.drop_consumer, "behind")
        await wait_for(lambda: events.statistics().retention_deleted == 5)
        assert outbox.count() == 0
    names = [c.name for c in await trio.to_thread.run_sync(installer.list_consumers)]
    assert names == ["ahead"]


# ---- connection loss -------------------------------------------------------------------


async def test_wakeup_connection_lost_gives_replayed_gap(outbox: Outbox, query: Query) -> None:
    async with open_durable_stream(
        outbox.url, "gap", **outbox.opts(poll_interval=60.0, backoff_initial=0.01)
    ) as events:
        await outbox.ainsert(1)
        assert ns(await take(events, 1)) == [1]
        wake = events._wake_stream
        assert wake is not None
        pid = wake.statistics().sources[0].backend_pid
        # An event whose wake-up was never received (as if sent while disconnected):
        # with poll_interval=60 only the re-read after the gap can find it.
        await query(
            sql.SQL("INSERT INTO {}.events (channel, payload) VALUES (%s, %s::jsonb)").format(
                sql.Identifier(outbox.schema)
            ),
            (
                outbox.channel,
                json.dumps(
                    {
                        "v": 1,
                        "kind": "row",
                        "table_schema": "public",
                        "table_name": outbox.table,
                        "method": "INSERT",
                        "new_data": {"n": 2},
                    }
                ),
            ),
        )
        await query("SELECT pg_terminate_backend(%s)", (pid,))
        with trio.fail_after(20):
            seen = [await events.receive(), await events.receive()]
        assert ns(seen[:1]) == [2]  # re-read first...
        assert isinstance(seen[1], StreamGap)  # ...then the gap, which says so
        assert seen[1].replayed is True
        await outbox.ainsert(3)  # wake-ups work again
        assert ns(await take(events, 1)) == [3]


async def test_reader_connection_lost_nothing_missed(outbox: Outbox, query: Query) -> None:
    async with open_durable_stream(outbox.url, "rd", **outbox.opts(backoff_initial=0.01)) as events:
        await outbox.ainsert(1)
        assert ns(await take(events, 1)) == [1]
        pid = events._db.backend_pid
        await query("SELECT pg_terminate_backend(%s)", (pid,))
        await outbox.ainsert(2, 3)
        assert ns(await take(events, 2)) == [2, 3]


# ---- worker behaviour: retry, dead letters ----------------------------------------------


async def test_process_retries_then_dead_letters(outbox: Outbox, query: Query) -> None:
    await outbox.ainsert(1, 2, 3)
    calls: Counter[int] = Counter()
    done: list[int] = []

    async def handler(event: RowChange) -> None:
        n = event.new_data["n"]  # type: ignore[index]
        calls[n] += 1
        if n == 2:
            raise RuntimeError(f"cannot handle {n}")
        if n == 1 and calls[n] < 3:
            raise ValueError("flaky")
        done.append(n)

    async with open_durable_stream(outbox.url, "worker", **outbox.opts(auto_ack=False)) as events:
        worker = DurableWorker(handler, max_attempts=4, backoff_initial=0.01)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run, events)
            await wait_for(lambda: done == [1, 3])
            worker.stop()
        assert events.statistics().dead_lettered == 1
        assert worker.statistics.succeeded == 2
        assert worker.statistics.failed == 2 + 4
        assert worker.statistics.retried == 2 + 3  # the last failure dead-letters instead
        assert worker.statistics.dead_lettered == 1
    assert calls == {1: 3, 2: 4, 3: 1}
    rows = await query(
        sql.SQL("SELECT consumer, payload->'new_data'->>'n', error, attempts FROM {}.dead_letters").format(
            sql.Identifier(outbox.schema)
        )
    )
    assert rows == [("worker", "2", "RuntimeError: cannot handle 2", 4)]
    # Nothing is delivered again: 1 and 3 processed, 2 dead-lettered (and acked).
    await outbox.ainsert(4)
    async with open_durable_stream(outbox.url, "worker", **outbox.opts()) as events:
        assert ns(await take(events, 1)) == [4]


async def test_worker_stop_finishes_the_running_callback(outbox: Outbox) -> None:
    await outbox.ainsert(1, 2, 3)
    started = trio.Event()
    release = trio.Event()
    handled: list[int] = []

    async def handler(event: RowChange) -> None:
        started.set()
        await release.wait()
        handled.append(event.new_data["n"])  # type: ignore[index]

    async with open_durable_stream(outbox.url, "stopper", **outbox.opts(auto_ack=False)) as events:
        worker = DurableWorker(handler, shutdown_timeout=10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run, events)
            await started.wait()
            worker.stop()  # the running callback may finish; no new one starts
            release.set()
    assert handled == [1]
    # The finished event was acknowledged (stored at close); the others come again.
    async with open_durable_stream(outbox.url, "stopper", **outbox.opts()) as events:
        assert ns(await take(events, 2)) == [2, 3]


async def test_worker_needs_explicit_ack_stream(outbox: Outbox) -> None:
    async with open_durable_stream(outbox.url, "auto", **outbox.opts()) as events:
        with pytest.raises(ConfigurationError, match="auto_ack=False"):
            await DurableWorker(print).run(events)


_WORKER_SETTINGS = """
import json
import os

OUT = os.environ["DURABLE_TEST_OUT"]


def on_data(event):
    n = event.new_data["n"]
    if n == 2:
        raise RuntimeError("two is broken")
    with open(OUT, "a") as handle:
        handle.write(f"{n}\\n")


def on_schema(event):
    pass


PG_EVENTS_DATA_UPDATE_CALLBACK = on_data
PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK = on_schema
"""


async def test_cli_worker_consumer(outbox: Outbox, tmp_path: Path, query: Query) -> None:
    """``trio-pgevents worker --consumer``: every event once, failures dead-lettered, resumes, retention."""
    settings = tmp_path / "durable_settings.py"
    settings.write_text(_WORKER_SETTINGS)
    out = tmp_path / "handled.txt"
    cli = str(Path(sys.executable).parent / "trio-pgevents")
    args = [cli, "worker", "--settings", str(settings), "--database-url", outbox.url]
    args += ["--callback-arg", "event", "--consumer", "cli", "--max-attempts", "2"]
    args += ["--installer-schema", outbox.schema, "--channel", outbox.channel, "--retention-interval", "0.2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_EVENTS_")}
    env["DURABLE_TEST_OUT"] = str(out)

    def handled() -> list[int]:
        return [int(x) for x in out.read_text().split()] if out.exists() else []

    async def run_worker(until: Callable[[], bool]) -> str:
        proc = await trio.lowlevel.open_process(
            args, env=env, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        try:
            await wait_for(until, timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                status = await proc.wait()
        assert proc.stderr is not None
        err = (await proc.stderr.receive_some(1 << 20)).decode()
        await proc.stderr.aclose()
        assert status == 0, err
        return err

    await outbox.ainsert(1, 2, 3)
    err = await run_worker(lambda: handled() == [1, 3] and outbox.count("dead_letters") == 1)
    assert "durable consumer 'cli'" in err
    rows = await query(
        sql.SQL("SELECT event_id, error, attempts FROM {}.dead_letters").format(sql.Identifier(outbox.schema))
    )
    assert [(r[1], r[2]) for r in rows] == [("RuntimeError: two is broken", 2)]
    await outbox.ainsert(4)
    # Nothing handled twice; retention deletes what the only consumer acknowledged.
    await run_worker(lambda: handled() == [1, 3, 4] and outbox.count() == 0)


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"ack_every": -1}, "ack_every"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"start": "middle"}, "start"),
        ({"schema": ""}, "schema"),
        ({"channel": "x" * 60}, "channel"),
        ({"on_gap": "raise"}, "on_gap"),
        ({"auto_ack": "yes"}, "auto_ack"),
    ],
)
async def test_bad_options(pg_url: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        async with open_durable_stream(pg_url, "x", **options):
            pass  # pragma: no cover


@pytest.mark.parametrize("name", ["", "  ", "nul\x00name", "lone\udc00", 7])
async def test_bad_consumer_name(pg_url: str, name: Any) -> None:
    with pytest.raises(ConfigurationError, match="consumer"):
        async with open_durable_stream(pg_url, name):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"bogus": 1}, "'bogus': no option"),
        ({"backoff_initial": "x"}, "backoff_initial"),
        ({"backoff_max": -1}, "backoff_max"),
        ({"max_buffer_bytes": 0}, "max_buffer_bytes"),
        ({"query_timeout": 0}, "query_timeout"),
        ({"min_read_interval": -0.1}, "min_read_interval"),
        ({"min_read_interval": 2}, "min_read_interval"),
        ({"min_read_interval": "fast"}, "min_read_interval"),
        ({"channel": "ch\x00"}, "NUL"),
    ],
)
async def test_bad_options_fail_before_connecting(options: dict[str, Any], match: str) -> None:
    # Port 1: nothing listens there. A ConfigurationError, not a ConnectError, proves the
    # options were checked first.
    with pytest.raises(ConfigurationError, match=match):
        async with open_durable_stream("postgresql://nobody@127.0.0.1:1/none", "x", **options):
            pass  # pragma: no cover


async def test_unreachable_server_is_a_connect_error(outbox: Outbox) -> None:
    url = sqlalchemy.make_url(outbox.url).set(port=1).render_as_string(hide_password=False)
    with pytest.raises(ConnectError, match="durable consumer 'x'"):
        async with open_durable_stream(url, "x", **outbox.opts()):
            pass  # pragma: no cover


async def test_ack_in_transaction_and_closed_stream(outbox: Outbox) -> None:
    await outbox.ainsert(1, 2)
    conn = psycopg2.connect(outbox.dsn)
    try:
        async with open_durable_stream(outbox.url, "txn", **outbox.opts(auto_ack=False)) as events:
            got = await take(events, 2)

            def rolled_back() -> None:
                with conn.cursor() as cursor:
                    events.ack_in_transaction(cursor, got[1])
                conn.rollback()

            def committed() -> None:
                with conn, conn.cursor() as cursor:
                    events.ack_in_transaction(cursor, got[0])

            await trio.to_thread.run_sync(rolled_back)
            assert await stored_position(outbox, "txn") == (0, 0)  # rolled back: not stored
            await trio.to_thread.run_sync(committed)
            assert await stored_position(outbox, "txn") == (got[0].txid, got[0].id)
            with conn.cursor() as cursor, pytest.raises(ConfigurationError, match="durable stream"):
                events.ack_in_transaction(cursor, trio_pgevents.Notification("x", "y", 0, "z"))
        with pytest.raises(StreamClosedError):
            await events.ack(got[1])
    finally:
        conn.close()
    async with open_durable_stream(outbox.url, "txn", **outbox.opts()) as events:
        assert ns(await take(events, 1)) == [2]


async def test_missing_tables_named(pg_url: str, unique: Callable[[str], str]) -> None:
    schema = unique("nodur")
    with pytest.raises(ConfigurationError, match=r"install\(durable=True\)"):
        async with open_durable_stream(pg_url, "x", schema=schema):
            pass  # pragma: no cover


# ---- the crash test ----------------------------------------------------------------------


def _produce(outbox: Outbox, total: int, seed: int) -> int:
    """Insert ``total`` rows in mixed single-row and multi-row transactions; return #transactions."""
    rng = random.Random(seed)
    conn = psycopg2.connect(outbox.dsn)
    statement = sql.SQL("INSERT INTO {} (n) SELECT unnest(%s::int[])").format(sql.Identifier(outbox.table))
    transactions = 0
    try:
        n = 0
        while n < total:
            size = 1 if rng.random() < 0.5 else rng.randint(2, 200)
            size = min(size, total - n)
            with conn, conn.cursor() as cursor:
                cursor.execute(statement, (list(range(n, n + size)),))
            n += size
            transactions += 1
    finally:
        conn.close()
    return transactions


class _Received:
    """What the crash consumer recorded: lines of a file (mode ack) or rows of a table (mode tx)."""

    def __init__(self, mode: str, outbox: Outbox, tmp_path: Path, unique: Callable[[str], str]) -> None:
        self.mode = mode
        self.dsn = outbox.dsn
        if mode == "tx":
            self.target = unique("received")
            run_sql(self.dsn, f'CREATE TABLE "{self.target}" (n int NOT NULL)')
        else:
            self.target = str(tmp_path / "received.txt")

    def _all(self) -> list[int]:
        if self.mode == "tx":
            return [row[0] for row in run_sql(self.dsn, f'SELECT n FROM "{self.target}"')]
        path = Path(self.target)
        if not path.exists():
            return []
        return [-1 if line == "started" else int(line) for line in path.read_text().split()]

    def starts(self) -> int:
        return self._all().count(-1)

    def values(self) -> list[int]:
        return [n for n in self._all() if n >= 0]


@pytest.mark.parametrize(
    ("mode", "rows", "kills"),
    [("ack", 20_000, 6), ("tx", 5_000, 5)],
    ids=["ack-per-event", "ack-in-transaction"],
)
async def test_crash_consumer_sigkill_at_random_points(
    outbox: Outbox, tmp_path: Path, unique: Callable[[str], str], mode: str, rows: int, kills: int
) -> None:
    """SIGKILL the consumer at random points while rows are written; nothing is lost.

    ``ack``: the consumer appends each event to a file and acks per event
    (``ack_every=1``: the position is stored before the next event is handed
    out). A kill after an event was recorded but before its position was
    stored makes that one event come again: at most one duplicate per kill.

    ``tx``: the consumer records each event in a table and stores the position
    in the same transaction (``ack_in_transaction``): no duplicates at all.
    """
    rng = random.Random(7)
    received = _Received(mode, outbox, tmp_path, unique)
    script = Path(__file__).with_name("durable_crash_consumer.py")
    args = [sys.executable, str(script), outbox.url, outbox.schema, outbox.channel, "crash"]
    args += [received.target, mode]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(proc.wait)
        if proc.stderr:
            proc.stderr.close()

    def error(proc: subprocess.Popen[bytes]) -> str:
        return proc.stderr.read().decode() if proc.stderr else ""

    transactions: list[int] = []
    producer = threading.Thread(target=lambda: transactions.append(_produce(outbox, rows, 11)))
    done_kills = 0
    at_kill: list[int] = []  # deliveries so far at each kill: kills land mid-stream
    with trio.fail_after(90):
        producer.start()
        try:
            for _ in range(kills):
                proc = spawn()
                try:
                    while received.starts() <= done_kills and proc.poll() is None:
                        await trio.sleep(0.02)
                    assert proc.poll() is None, error(proc)
                    await trio.sleep(rng.uniform(0.05, 1.0))  # a random point while consuming
                finally:
                    await stop(proc)
                done_kills += 1
                at_kill.append(len(received.values()))
        finally:
            await trio.to_thread.run_sync(producer.join)
        # The last run consumes to the end.
        proc = spawn()
        try:
            while len(set(received.values())) < rows and proc.poll() is None:
                await trio.sleep(0.05)
            assert proc.poll() is None, error(proc)
        finally:
            await stop(proc)

    values = received.values()
    counts = Counter(values)
    duplicates = len(values) - len(counts)
    print(
        f"\ncrash test ({mode}): {rows} rows in {transactions[0]} transactions, {done_kills} SIGKILLs, "
        f"{len(values)} deliveries, {duplicates} duplicates; deliveries at each kill: {at_kill}"
    )
    assert set(counts) == set(range(rows))  # every row's event, at least once
    assert len(set(at_kill)) > 1  # the consumer made progress between kills
    if mode == "tx":
        assert duplicates == 0  # effect and position commit together
    else:
        # Per-event ack: only the event being processed at a kill can come again, so each
        # kill adds at most one delivery (two kills before the consumer gets past an event
        # give that event a third).
        assert duplicates <= done_kills + 1


async def test_row_data_never_decides_the_event_type(outbox: Outbox, query: Query) -> None:
    # A column named "kind", and a jsonb value, both holding what a DDL event's type looks like.
    table = sql.Identifier(outbox.table)
    await query(sql.SQL("ALTER TABLE {} ADD COLUMN kind text, ADD COLUMN doc jsonb").format(table))
    values = """(1, 'ddl', '{{"kind": "ddl"}}'), (2, 'row', NULL)"""
    await query(sql.SQL("INSERT INTO {} (n, kind, doc) VALUES " + values).format(table))
    handled: list[int] = []

    async def handler(event: RowChange) -> None:
        handled.append(event.new_data["n"])  # type: ignore[index]

    async with open_durable_stream(outbox.url, "kinds", **outbox.opts(auto_ack=False)) as events:
        worker = DurableWorker(handler)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run, events)
            await wait_for(lambda: len(handled) == 2)
            worker.stop()
    assert handled == [1, 2]
    assert (worker.statistics.skipped, worker.statistics.dead_lettered) == (0, 0)


async def test_an_outbox_row_that_is_no_change_is_dead_lettered(outbox: Outbox, query: Query) -> None:
    # Written by hand (a superuser can): not a change event. It is kept for a person to see.
    await query(
        sql.SQL("INSERT INTO {}.events (channel, payload) VALUES (%s, '[1, 2]'), (%s, %s)").format(
            sql.Identifier(outbox.schema)
        ),
        (outbox.channel, outbox.channel, json.dumps({"kind": "other", "x": 1})),
    )
    await outbox.ainsert(7)
    handled: list[int] = []

    async def handler(event: RowChange) -> None:
        handled.append(event.new_data["n"])  # type: ignore[index]

    async with open_durable_stream(outbox.url, "odd", **outbox.opts(auto_ack=False)) as events:
        worker = DurableWorker(handler)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run, events)
            await wait_for(lambda: handled == [7])
            worker.stop()
    assert worker.statistics.dead_lettered == 2
    rows = await query(
        sql.SQL("SELECT payload::text, error FROM {}.dead_letters ORDER BY event_id").format(
            sql.Identifier(outbox.schema)
        )
    )
    assert rows == [
        ('{"value": [1, 2]}', "not a row or schema change event"),
        ('{"x": 1, "kind": "other"}', "not a row or schema change event"),
    ]


async def test_a_cancelled_read_takes_nothing(outbox: Outbox) -> None:
    # Trio's rule for receive(): if it is cancelled, nothing was taken -- and auto-ack
    # never stores a position past an event the consumer did not get.
    for start in range(0, 3000, 500):
        await outbox.ainsert(*range(start, start + 500))
    async with open_durable_stream(outbox.url, "cancel", **outbox.opts(ack_every=1)) as events:
        got = await read_with_cancellations(events, 3000, timeout=60)
    assert ns(got) == list(range(3000))
    await outbox.ainsert(3000)
    async with open_durable_stream(outbox.url, "cancel", **outbox.opts()) as events:
        # Every event was handed out (and the body ended normally): all acknowledged.
        assert ns(await take(events, 1)) == [3000]


async def test_read_ahead_is_bounded_in_bytes(outbox: Outbox, query: Query) -> None:
    # 100 rows of ~1 MB each (random hex: pglz cannot shrink it much), and a consumer that
    # reads one event and stops: what is read ahead stays near max_buffer_bytes.
    table = sql.Identifier(outbox.table)
    await query(sql.SQL("ALTER TABLE {} ADD COLUMN blob text").format(table))
    for _ in range(10):
        await query(
            sql.SQL(
                "INSERT INTO {} (n, blob) SELECT g, (SELECT string_agg(md5(random()::text || i || g), '') "
                "FROM generate_series(1, 32768) i) FROM generate_series(1, 10) g"
            ).format(table)
        )
    limit = 8 << 20
    async with open_durable_stream(outbox.url, "bytes", **outbox.opts(max_buffer_bytes=limit)) as events:
        await take(events, 1)
        # Wait until the reader stops (the buffer is full), then look.
        last = -1
        with trio.fail_after(30):
            while (now := events.statistics().events_received) != last:
                last = now
                await trio.sleep(0.5)  # the reader reads many MB per 0.5 s while it can
        stats = events.statistics()
        assert stats.events_received < 100  # it did stop
        # The buffer's bound, plus the read that filled it (a quarter of the bound, one row more).
        assert stats.buffered_bytes <= limit + limit // 4 + (2 << 20)


async def test_every_event_carries_its_position_whatever_the_row_held(outbox: Outbox, query: Query) -> None:
    # The reader adds "id" and "txid" to the stored text: to an empty object too, and over
    # keys of those names a hand-written row had.
    await query(
        sql.SQL("INSERT INTO {}.events (channel, payload) VALUES (%s, '{{}}'), (%s, %s)").format(
            sql.Identifier(outbox.schema)
        ),
        (outbox.channel, outbox.channel, json.dumps({"id": "forged", "txid": -1, "kind": "other"})),
    )
    await outbox.ainsert(7)
    async with open_durable_stream(outbox.url, "positions", **outbox.opts()) as events:
        got = await take_events(events, 3, 20, only=(RowChange, OutboxNotification))
    assert [type(e) for e in got] == [OutboxNotification, OutboxNotification, RowChange]
    for event in got:
        position = position_of(event)
        assert position is not None
        assert (json.loads(event.payload)["txid"], json.loads(event.payload)["id"]) == position
    assert (got[2].txid, got[2].id) == position_of(got[2])
    assert json.loads(got[0].payload).keys() == {"id", "txid"}
    assert json.loads(got[1].payload)["kind"] == "other"
    assert ns(got[2:]) == [7]


async def test_a_background_query_says_when_it_is_under_way(pg_engine: sqlalchemy.Engine) -> None:
    """The follower's read-ahead waits for this before building events: the query must be running by then."""
    from trio_pgevents._durable.reader import OutboxConnection
    from trio_pgevents._options import StreamOptions

    db = OutboxConnection(pg_engine, StreamOptions.parse("open_durable_stream", {}), "test reader")
    await db.connect()
    running, release = threading.Event(), threading.Event()

    def slow_query(cursor: Any) -> int:
        running.set()
        cursor.execute("SELECT 1")
        assert release.wait(30)
        return int(cursor.fetchone()[0])

    result: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            started = trio.Event()

            async def run() -> None:
                result.append(await db.run(slow_query, started=started))

            nursery.start_soon(run)
            with trio.fail_after(10):
                await started.wait()
            assert running.wait(10)  # set in the query's thread, before it blocks
            assert not result  # set while the query still runs
            release.set()
        assert result == [1]

        # A call that will not run its query still sets it (the caller must not wait forever).
        db.close()
        given_up = trio.Event()
        with pytest.raises(StreamClosedError):
            await db.run(slow_query, started=given_up)
        assert given_up.is_set()
    finally:
        release.set()
        await db.release(broken=False)


def test_rows_left_in_the_driver_are_refused_once_the_connection_closed(pg_dsn: str) -> None:
    """What the reader relies on: converted later, a result reads as None once its connection closed."""
    from trio_pgevents._durable.follower import _fetch_later

    conn = psycopg2.connect(pg_dsn)
    try:
        kept, refused = conn.cursor(), conn.cursor()
        kept.execute("SELECT g FROM generate_series(1, 3) g")
        refused.execute("SELECT g FROM generate_series(1, 3) g")
        assert _fetch_later(kept)() == [(1,), (2,), (3,)]
        assert kept.closed
    finally:
        conn.close()
    assert _fetch_later(refused)() is None  # psycopg2: "cursor already closed"
    assert refused.closed


async def test_a_read_whose_rows_were_refused_is_read_again(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection closing between a read and the conversion of its rows loses nothing."""
    from trio_pgevents._durable import follower

    real = follower._fetch_later
    refusals: list[bool] = []

    def refuse_every_third(cursor: Any) -> Callable[[], list[Any] | None]:
        # (Not every other one: a refused read's re-read follows the read-ahead's, discarded.)
        fetch = real(cursor)
        if len(refusals) % 3:
            refusals.append(False)
            return fetch
        refusals.append(True)

        def refused() -> None:
            fetch()  # the cursor closed, as the driver would
            return None

        return refused

    monkeypatch.setattr(follower, "_fetch_later", refuse_every_third)
    outbox.insert(*range(1, 101))
    async with open_durable_stream(outbox.url, "refused", **outbox.opts(batch_size=7)) as events:
        got = ns(await take(events, 100))
    assert got == list(range(1, 101))
    assert refusals.count(True) >= 10
