"""The event stream against a real Postgres (issue 3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

import trio_pgevents
from trio_pgevents import (
    ConfigurationError,
    ConnectError,
    InvalidChannelError,
    KeepaliveSettings,
    Notification,
    Overflow,
    StreamClosedError,
    StreamOverflowError,
    TrioPgEventsError,
    connect_event_stream,
    open_event_stream,
)

from .conftest import Query, drain, read_with_cancellations

Notify = Callable[..., Any]


async def collect(stream: trio_pgevents.EventStream, count: int, timeout: float = 30) -> list[Any]:
    events: list[Any] = []
    with trio.fail_after(timeout):
        async for event in stream:
            events.append(event)
            if len(events) == count:
                break
    return events


async def test_public_names() -> None:
    expected = {
        "open_event_stream",
        "connect_event_stream",
        "EventStream",
        "Event",
        "Notification",
        "RowChange",
        "SchemaChange",
        "StreamGap",
        "Overflow",
        "TrioPgEventsError",
        "StreamStatistics",
    }
    assert expected <= set(dir(trio_pgevents))
    for name in expected:
        obj = getattr(trio_pgevents, name)
        assert obj.__module__.startswith("trio_pgevents._"), name
        assert obj.__doc__, f"{name} has no docstring"


async def test_notify_right_after_enter_is_received(pg_engine: Engine, query: Query, unique: Any) -> None:
    channel = unique("hello")
    async with open_event_stream(pg_engine, [channel]) as events:
        await query("SELECT pg_notify(%s, 'world')", (channel,))
        [event] = await collect(events, 1, timeout=10)
    assert isinstance(event, Notification)
    assert (event.channel, event.payload) == (channel, "world")
    assert event.pid > 0
    assert event.source == pg_engine.url.render_as_string(hide_password=True)


async def test_order_preserved_across_100k(pg_engine: Engine, query: Query, unique: Any) -> None:
    channel = unique("order")
    total = 100_000
    async with open_event_stream(pg_engine, [channel]) as events:
        async with trio.open_nursery() as nursery:
            # Two transactions, so ordering spans commits too.
            nursery.start_soon(
                query,
                "SELECT pg_notify(%s, g::text) FROM generate_series(1, %s) g",
                (channel, total // 2),
            )
            received = await collect(events, total // 2, timeout=60)
        await query(
            "SELECT pg_notify(%s, g::text) FROM generate_series(%s, %s) g",
            (channel, total // 2 + 1, total),
        )
        received += await collect(events, total // 2, timeout=60)
        stats = events.statistics()
    assert [int(e.payload) for e in received] == list(range(1, total + 1))
    assert stats.events_received == total
    # Batched: far fewer buffer operations than events.
    assert stats.batches_received < total / 10


async def test_receive_receive_nowait_and_batches(pg_engine: Engine, query: Query, unique: Any) -> None:
    channel = unique("api")
    async with open_event_stream(pg_engine, [channel]) as events:
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()
        await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, 300) g", (channel,))
        first = await events.receive()
        assert first.payload == "1"
        with trio.fail_after(10):
            while events.statistics().buffered == 0:
                await trio.sleep(0.01)
        second = events.receive_nowait()
        assert second.payload == "2"
        seen = [first.payload, second.payload]
        with trio.fail_after(10):
            async for batch in events.batches():
                assert batch, "batches are never empty"
                seen += [e.payload for e in batch]
                if len(seen) == 300:
                    break
        assert seen == [str(i) for i in range(1, 301)]
    with pytest.raises(StreamClosedError):
        await events.receive()
    assert isinstance(StreamClosedError("x"), trio.EndOfChannel)


async def test_listen_and_unlisten_while_running(pg_engine: Engine, query: Query, unique: Any) -> None:
    a, b = unique("a"), unique("b")
    async with open_event_stream(pg_engine, [a]) as events:
        assert events.channels == {a}
        await events.listen(b)
        assert events.channels == {a, b}
        await query("SELECT pg_notify(%s, '1'), pg_notify(%s, '2')", (a, b))
        got = await collect(events, 2)
        assert [(e.channel, e.payload) for e in got] == [(a, "1"), (b, "2")]
        await events.unlisten(a)
        assert events.channels == {b}
        await query("SELECT pg_notify(%s, '3')", (a,))
        await query("SELECT pg_notify(%s, '4')", (b,))
        [only] = await collect(events, 1)
        assert (only.channel, only.payload) == (b, "4")
        # The server agrees about what this connection listens to.
        assert events.statistics().channels == {b}


HOSTILE = [
    "with space",
    'quote"inside',
    "single'quote",
    "UPPER_case",
    "ünïcødé_канал_频道",
    "semi;colon -- comment",
    "x" * 63,
    "é" * 31,  # 62 bytes
]


async def test_hostile_channel_names(pg_engine: Engine, query: Query) -> None:
    async with open_event_stream(pg_engine, HOSTILE) as events:
        assert events.channels == set(HOSTILE)
        for index, name in enumerate(HOSTILE):
            await query("SELECT pg_notify(%s, %s)", (name, str(index)))
        got = await collect(events, len(HOSTILE))
    assert [(e.channel, e.payload) for e in got] == [(n, str(i)) for i, n in enumerate(HOSTILE)]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("x" * 64, "64 bytes"),
        ("é" * 32, "64 bytes"),
        ("nul\x00byte", "NUL"),
        (42, "str"),
        ("lone\ud800surrogate", "Unicode"),
    ],
)
async def test_rejected_channel_names(pg_engine: Engine, name: Any, reason: str) -> None:
    with pytest.raises(InvalidChannelError) as info:
        async with open_event_stream(pg_engine, [name]):
            pass  # pragma: no cover
    assert isinstance(info.value, TrioPgEventsError)
    async with open_event_stream(pg_engine, ["ok"]) as events:
        with pytest.raises(InvalidChannelError):
            await events.listen(name)
        assert events.channels == {"ok"}


async def test_bad_arguments_are_named(pg_engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="channels must be a list"):
        async with open_event_stream(pg_engine, "orders"):
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="max_buffer_size"):
        async with open_event_stream(pg_engine, ["x"], max_buffer_size=0):
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="overflow"):
        async with open_event_stream(pg_engine, ["x"], overflow="sometimes"):  # type: ignore[arg-type]
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="driver"):
        async with open_event_stream(sqlalchemy.create_engine("sqlite://"), ["x"]):
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="decoders must be a mapping"):
        async with open_event_stream(pg_engine, ["x"], decoders=[1]):  # type: ignore[arg-type]
            pass  # pragma: no cover
    with pytest.raises(ConfigurationError, match="must be callable"):
        async with open_event_stream(pg_engine, ["x"], decoders={"x": 1}):  # type: ignore[dict-item]
            pass  # pragma: no cover
    for settings, match in (({"count": 0}, "count"), ({"idle": -1}, "idle"), ({"interval": "5"}, "interval")):
        with pytest.raises(ConfigurationError, match=match):
            KeepaliveSettings(**settings)


async def test_unreachable_server_is_a_connect_error() -> None:
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg2://nobody:s3cret@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    with pytest.raises(ConnectError) as info:
        async with open_event_stream(engine, ["x"]):
            pass  # pragma: no cover
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


async def test_payload_of_7999_bytes_arrives_intact(pg_engine: Engine, query: Query, unique: Any) -> None:
    channel = unique("big")
    payload = ("ü" * 3999) + "!"  # 7,999 bytes of UTF-8
    assert len(payload.encode()) == 7999
    async with open_event_stream(pg_engine, [channel]) as events:
        await query("SELECT pg_notify(%s, %s)", (channel, payload))
        [event] = await collect(events, 1)
    assert event.payload == payload


async def _backend_count(query: Query, pid: int) -> int:
    rows = await query("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
    return int(rows[0][0])


async def test_cancel_mid_iteration_leaves_no_backend_and_no_task(
    pg_url: str, query: Query, unique: Any
) -> None:
    engine = sqlalchemy.create_engine(pg_url, poolclass=NullPool)
    channel = unique("cancel")
    got_some = trio.Event()
    pids: list[int] = []

    async def consume(task_status: trio.TaskStatus[None]) -> None:
        async with open_event_stream(engine, [channel]) as events:
            pid = events.statistics().sources[0].backend_pid
            assert pid is not None
            pids.append(pid)
            task_status.started()
            async for _ in events:
                got_some.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(consume)
        producer_done = trio.Event()

        async def produce() -> None:
            await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, 200000) g", (channel,))
            producer_done.set()

        nursery.start_soon(produce)
        with trio.fail_after(20):
            await got_some.wait()
        started = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started < 1.0
    assert not nursery.child_tasks
    with trio.fail_after(10):
        while await _backend_count(query, pids[0]):
            await trio.sleep(0.02)
    engine.dispose()


async def test_connect_event_stream_in_own_nursery(pg_url: str, query: Query, unique: Any) -> None:
    engine = sqlalchemy.create_engine(pg_url, poolclass=NullPool)
    channel = unique("tier")
    async with trio.open_nursery() as nursery:
        stream = await connect_event_stream(nursery, engine, [channel])
        pid = stream.statistics().sources[0].backend_pid
        assert pid is not None
        assert await _backend_count(query, pid) == 1
        await query("SELECT pg_notify(%s, 'x')", (channel,))
        [event] = await collect(stream, 1)
        assert event.payload == "x"
        with trio.fail_after(3):  # close_timeout (1 s) and a margin for a busy machine
            await stream.aclose()
        assert not nursery.child_tasks
        await stream.aclose()  # idempotent
    # The backend leaves pg_stat_activity a moment after its client closes the socket.
    with trio.fail_after(10):
        while await _backend_count(query, pid):
            await trio.sleep(0.05)
    engine.dispose()


async def test_pooled_connection_comes_back_clean(pg_url: str, unique: Any) -> None:
    engine = sqlalchemy.create_engine(pg_url, pool_size=1, max_overflow=0)
    channel = unique("pool")
    async with open_event_stream(engine, [channel]) as events:
        pid = events.statistics().sources[0].backend_pid
    proxy = engine.raw_connection()  # pool_size=1: the very same connection
    try:
        conn = proxy.dbapi_connection
        assert conn is not None
        assert conn.get_backend_pid() == pid
        assert conn.autocommit is False
        cursor = conn.cursor()
        cursor.execute("SELECT count(*) FROM pg_listening_channels()")
        assert cursor.fetchone() == (0,)
        cursor.close()
    finally:
        proxy.close()
        engine.dispose()


async def test_two_engines_merged(pg_url: str, pg_engine: Engine, query: Query, unique: Any) -> None:
    other_db = unique("otherdb")
    await query(f'CREATE DATABASE "{other_db}"')
    base_url = sqlalchemy.make_url(pg_url)
    # A trust-auth server ignores the password; a real one needs the real one.
    secret = base_url.password or "hunter2"
    other_url = base_url.set(database=other_db, password=secret)
    other = sqlalchemy.create_engine(other_url, poolclass=NullPool)
    channel = unique("merged")
    try:
        async with open_event_stream([pg_engine, other], [channel]) as events:
            assert len(events.sources) == 2
            from .conftest import run_sql

            other_dsn = other_url.render_as_string(hide_password=False).replace("+psycopg2", "")
            await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, 100) g", (channel,))
            await trio.to_thread.run_sync(
                run_sql, other_dsn, "SELECT pg_notify(%s, g::text) FROM generate_series(1, 100) g", (channel,)
            )
            got = await collect(events, 200)
            stats = events.statistics()
        by_source: dict[str, list[int]] = {}
        for event in got:
            by_source.setdefault(event.source, []).append(int(event.payload))
        assert set(by_source) == set(events.sources)
        for numbers in by_source.values():
            assert numbers == list(range(1, 101))
        assert all(secret not in s for s in events.sources)
        assert any("***" in s for s in events.sources)
        assert len(stats.sources) == 2
        assert stats.connected
        assert secret not in repr(events)
    finally:
        other.dispose()
        await query(f'DROP DATABASE "{other_db}"')


async def test_backpressure_bounds_the_buffer(pg_engine: Engine, query: Query, unique: Any) -> None:
    channel = unique("slow")
    total = 5000
    async with open_event_stream(pg_engine, [channel], max_buffer_size=100) as events:
        await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, %s) g", (channel, total))
        received: list[int] = []
        peak = 0
        with trio.fail_after(60):
            async for event in events:
                received.append(int(event.payload))
                peak = max(peak, events.statistics().buffered)
                if len(received) % 500 == 0:
                    await trio.sleep(0.01)  # a slow consumer: lets the listener refill
                if len(received) == total:
                    break
    assert received == list(range(1, total + 1))
    # At most the bound plus the one poll() batch that crossed it.
    assert peak <= 100 + 2000


async def test_drop_oldest_reports_exact_count(pg_engine: Engine, query: Query, unique: Any) -> None:
    channel = unique("drop")
    total = 3000
    async with open_event_stream(pg_engine, [channel], max_buffer_size=50, overflow="drop-oldest") as events:
        await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, %s) g", (channel, total))
        # Do not consume until everything has been read off the socket.
        with trio.fail_after(30):
            while events.statistics().events_received < total:
                await trio.sleep(0.01)
        assert events.statistics().buffered == 50
        items = [events.receive_nowait() for _ in range(51)]
    overflow, kept = items[0], items[1:]
    assert isinstance(overflow, Overflow)
    assert overflow.dropped == total - 50
    assert [int(e.payload) for e in kept] == list(range(total - 49, total + 1))


async def test_raise_policy_fails_the_stream(pg_engine: Engine, query: Query, unique: Any) -> None:
    channel = unique("raise")
    with pytest.raises(StreamOverflowError, match="max_buffer_size=10"):  # noqa: PT012
        async with open_event_stream(pg_engine, [channel], max_buffer_size=10, overflow="raise"):
            await query("SELECT pg_notify(%s, g::text) FROM generate_series(1, 100) g", (channel,))
            await trio.sleep_forever()


def test_events_compare_hash_and_pickle_by_content() -> None:
    import pickle

    from trio_pgevents import RowChange

    a = RowChange.from_data("ch", {"table_name": "t", "new_data": {"id": 1}}, 0, "db")
    b = RowChange.from_data("ch", {"table_name": "t", "new_data": {"id": 2}}, 0, "db")
    a_again = RowChange.from_data("ch", {"table_name": "t", "new_data": {"id": 1}}, 0, "db")
    assert a != b
    assert hash(a) != hash(b)
    assert a == a_again
    assert hash(a) == hash(a_again)
    restored = pickle.loads(pickle.dumps(b))
    assert restored == b
    assert restored.new_data == {"id": 2}
    note = Notification("ch", "x", 1, "db")
    assert pickle.loads(pickle.dumps(note)) == note
    assert note != RowChange("ch", "x", 1, "db")  # same fields, different kind of event
    with pytest.raises(AttributeError):
        a.channel = "other"


async def test_queue_usage_is_watched_while_the_consumer_holds_the_listener_back(
    pg_engine: Engine, query: Query, unique: Any, caplog: pytest.LogCaptureFixture
) -> None:
    channel = unique("queue")
    async with open_event_stream(
        pg_engine,
        [channel],
        max_buffer_size=10,
        probe_interval=0.2,
        queue_usage_warning=1e-9,
    ) as events:
        # Far more than the socket buffers hold: the rest waits in the server's queue.
        await query(
            "SELECT pg_notify(%s, repeat('x', 500) || g) FROM generate_series(1, 50000) g", (channel,)
        )
        with trio.fail_after(20):
            while not (events.statistics().sources[0].queue_usage or 0) > 0:
                await trio.sleep(0.05)
        assert events.statistics().buffered <= 10 + 1024
        assert "notification queue" in caplog.text
        # Draining the stream empties the queue again.
        assert await drain(events, 50000, timeout=60) == 50000


async def test_a_cancelled_read_takes_nothing(pg_engine: Engine, query: Query, unique: Any) -> None:
    # Trio's rule for receive(): if it is cancelled, nothing was taken.
    channel = unique("cancelled_read")
    async with open_event_stream(pg_engine, [channel]) as stream:
        for start in range(0, 3000, 500):
            statement = "SELECT pg_notify(%s, n::text) FROM generate_series(%s, %s) AS n"
            await query(statement, (channel, start, start + 499))
        events = await read_with_cancellations(stream, 3000, timeout=20)
    assert [int(e.payload) for e in events] == list(range(3000))
