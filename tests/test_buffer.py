"""The event buffer alone (no server): bounds, overflow policies, control events, closing."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_pgevents import Event, Notification, Overflow, StreamClosedError, StreamGap, StreamOverflowError
from trio_pgevents._buffer import EventBuffer
from trio_pgevents._source import utcnow


def events(*numbers: int) -> list[Event]:
    return [Notification("ch", str(n), 1, "src") for n in numbers]


def payloads(batch: list[Event]) -> list[str]:
    return [e.payload if isinstance(e, Notification) else type(e).__name__ for e in batch]


async def test_batches_come_out_whole_and_in_order() -> None:
    buffer = EventBuffer(10, "backpressure")
    await buffer.put(events(1, 2))
    await buffer.put(events(3))
    assert len(buffer) == 3
    assert payloads(await buffer.get()) == ["1", "2"]
    assert payloads(buffer.get_nowait()) == ["3"]
    with pytest.raises(trio.WouldBlock):
        buffer.get_nowait()
    assert (buffer.events_in, buffer.batches_in) == (3, 2)


async def test_backpressure_blocks_the_writer_until_the_reader_takes() -> None:
    buffer = EventBuffer(2, "backpressure")
    await buffer.put(events(1, 2))
    put_done = trio.Event()

    async def writer() -> None:
        await buffer.put(events(3))
        put_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert not put_done.is_set(), "a full buffer took another batch"
        assert payloads(await buffer.get()) == ["1", "2"]
        with trio.fail_after(5):
            await put_done.wait()
    assert payloads(await buffer.get()) == ["3"]


async def test_max_bytes_bounds_the_bytes_not_just_the_events() -> None:
    buffer = EventBuffer(1000, "backpressure", max_bytes=100)
    await buffer.put(events(1), 60)
    await buffer.put(events(2), 60)  # below the bound when it arrived: taken
    assert buffer.bytes == 120
    blocked = trio.Event()
    done = trio.Event()

    async def writer() -> None:
        blocked.set()
        await buffer.put(events(3), 10)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await blocked.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set(), "a buffer over max_bytes took another batch"
        await buffer.get()  # 60 bytes left, below the bound: the writer goes on
        with trio.fail_after(5):
            await done.wait()
    assert buffer.bytes == 70


def test_max_bytes_needs_backpressure() -> None:
    with pytest.raises(ValueError, match="backpressure"):
        EventBuffer(10, "drop-oldest", max_bytes=10)


async def test_drop_oldest_counts_exactly_and_says_so_first() -> None:
    buffer = EventBuffer(3, "drop-oldest", "src")
    await buffer.put(events(1, 2))
    await buffer.put(events(3, 4, 5))  # 5 > 3: the two oldest go
    batch = await buffer.get()
    assert len(batch) == 1
    assert isinstance(batch[0], Overflow)
    assert (batch[0].dropped, batch[0].source) == (2, "src")
    assert payloads(await buffer.get()) == ["3", "4", "5"]
    assert buffer.dropped_total == 2


async def test_drop_oldest_never_drops_a_control_event() -> None:
    buffer = EventBuffer(2, "drop-oldest")
    now = utcnow()
    gap = StreamGap("src", now, now, "test", False)
    await buffer.put(events(1))
    buffer.put_control(gap)
    await buffer.put(events(2, 3, 4))
    taken: list[Event] = []
    while len(buffer) or taken == []:
        taken.extend(buffer.get_nowait())
    assert gap in taken
    dropped = sum(e.dropped for e in taken if isinstance(e, Overflow))
    kept = [e for e in taken if isinstance(e, Notification)]
    assert dropped + len(kept) == 4, "every event is either delivered or counted as dropped"


async def test_raise_policy_raises_and_keeps_what_it_had() -> None:
    buffer = EventBuffer(2, "raise")
    await buffer.put(events(1, 2))
    with pytest.raises(StreamOverflowError, match="max_buffer_size=2"):
        await buffer.put(events(3))
    assert payloads(await buffer.get()) == ["1", "2"]


async def test_control_events_never_block_even_when_full() -> None:
    buffer = EventBuffer(1, "backpressure")
    await buffer.put(events(1))
    now = utcnow()
    buffer.put_control(StreamGap("src", now, now, "test", True))  # returns at once
    assert len(buffer) == 2


async def test_close_drains_then_raises_and_wakes_everyone() -> None:
    buffer = EventBuffer(1, "backpressure")
    await buffer.put(events(1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(buffer.put, events(2))  # blocked: full
        await trio.testing.wait_all_tasks_blocked()
        buffer.close()  # the blocked writer returns; its batch is not taken
    assert payloads(await buffer.get()) == ["1"]
    with pytest.raises(StreamClosedError):
        await buffer.get()
    with pytest.raises(StreamClosedError):
        buffer.get_nowait()
    await buffer.put(events(3))  # after close: ignored, no error
    assert len(buffer) == 0


async def test_a_cancelled_get_takes_nothing() -> None:
    buffer = EventBuffer(10, "backpressure")
    await buffer.put(events(1))
    with trio.CancelScope() as scope:
        scope.cancel()
        await buffer.get()
    assert scope.cancelled_caught
    assert payloads(await buffer.get()) == ["1"]


async def test_discard_takes_out_what_is_unwanted_and_frees_room() -> None:
    buffer = EventBuffer(4, "backpressure", max_bytes=1000)
    await buffer.put(events(1, 2), 200)
    now = utcnow()
    buffer.put_control(StreamGap("src", now, now, "test", True))
    await buffer.put(events(3, 4), 200)
    assert len(buffer) == 5
    removed = buffer.discard(lambda e: int(e.payload) % 2 == 0)
    assert removed == 2
    assert len(buffer) == 3
    assert buffer.bytes == 200
    taken: list[Event] = []
    while len(buffer):
        taken.extend(buffer.get_nowait())
    assert payloads(taken) == ["1", "StreamGap", "3"]
    assert buffer.discard(lambda e: True) == 0
