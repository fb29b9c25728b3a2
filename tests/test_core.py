"""The pure pieces of the core, without a server: backoff, abandonable threads, redaction."""

from __future__ import annotations

import math
import socket
import threading

import pytest
import trio

from trio_pgevents._backoff import Backoff
from trio_pgevents._threads import CallTimeout, Handoff, run_abandonable


def test_attempts_back_off_then_give_up_on_max_attempts() -> None:
    attempts = Backoff(0.1, 0.4).attempts(now=0.0, max_attempts=4, rng=lambda: 1.0)
    assert [attempts.failed(now=0.0) for _ in range(4)] == [0.1, 0.2, 0.4, None]
    assert attempts.failures == 4


def test_attempts_jitter_stays_within_half_and_whole() -> None:
    low = Backoff(1.0, 1.0).attempts(now=0.0, rng=lambda: 0.0)
    high = Backoff(1.0, 1.0).attempts(now=0.0, rng=lambda: 0.999)
    assert low.failed(now=0.0) == 0.5
    assert 0.99 < (high.failed(now=0.0) or 0) < 1.0


def test_attempts_never_wait_past_the_timeout() -> None:
    attempts = Backoff(10.0, 10.0).attempts(now=100.0, timeout=3.0, rng=lambda: 1.0)
    assert attempts.limit(now=101.0, per_attempt=30.0) == 2.0  # one attempt is cut to what is left
    assert attempts.failed(now=101.0) == 2.0  # the wait too
    assert attempts.failed(now=103.0) is None
    assert Backoff(1, 1).attempts(now=0).deadline == math.inf


async def test_run_abandonable_returns_and_raises_like_the_call() -> None:
    assert await run_abandonable(lambda: 42, timeout=5) == 42

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await run_abandonable(fail, timeout=5)


async def test_run_abandonable_shuts_the_socket_of_a_call_given_up_on() -> None:
    left, right = socket.socketpair()
    handoff = Handoff()
    handoff.attach(left.fileno())
    read: list[bytes] = []

    def blocked_read() -> None:
        read.append(left.recv(1))  # nothing is ever sent: only a shutdown ends it

    try:
        with pytest.raises(CallTimeout, match=r"reading: no answer within 0\.2s"):
            await run_abandonable(blocked_read, timeout=0.2, handoff=handoff, what="reading")
        with trio.fail_after(5):
            while not read:
                await trio.sleep(0.01)
        assert read == [b""]  # the thread returned: its socket was shut down
    finally:
        left.close()
        right.close()


async def test_a_thread_ending_as_the_time_limit_fires_is_a_timeout_not_a_result() -> None:
    # The limit fires; during the grace the thread ends and delivers a connection. The
    # caller must get CallTimeout (never a missing result), and the delivery is closed.
    go = threading.Event()
    closed: list[object] = []
    handoff = Handoff(close=closed.append)

    def slow() -> object:
        go.wait()
        return handoff.deliver("connection")

    async def release_later() -> None:
        await trio.sleep(0.3)
        go.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        with pytest.raises(CallTimeout):
            await run_abandonable(slow, timeout=0.1, handoff=handoff, grace=5)
    assert closed == ["connection"]


async def test_a_late_connection_of_a_cancelled_call_is_closed() -> None:
    go = threading.Event()
    closed: list[object] = []
    handoff = Handoff(close=closed.append)

    def connect() -> object:
        go.wait()
        return handoff.deliver("late connection")

    with trio.move_on_after(0.1):
        await run_abandonable(connect, timeout=None, handoff=handoff)
    go.set()
    with trio.fail_after(5):
        while not closed:
            await trio.sleep(0.01)
    assert closed == ["late connection"]
