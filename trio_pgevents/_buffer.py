"""The bounded, batch-oriented queue between listener tasks and the consumer.

Listeners put one *batch* (a list of events) per ``poll()``; the consumer takes
whole batches, so the per-event cost of crossing tasks is a list index. This is
a small purpose-built queue rather than a ``trio`` memory channel because the
bound is counted in *events* (not batches) and the ``drop-oldest`` policy must
reach into what is already queued; memory channels allow neither.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal

import trio

from ._errors import StreamClosedError, StreamOverflowError
from ._events import Event, Overflow, StreamGap

__all__ = ["EventBuffer", "OverflowPolicy"]

OverflowPolicy = Literal["backpressure", "drop-oldest", "raise"]
_CONTROL_TYPES = (StreamGap, Overflow)


class EventBuffer:
    """Batches of events waiting for the consumer, bounded in events."""

    def __init__(
        self, max_size: int, overflow: OverflowPolicy, source: str = "", *, max_bytes: int | None = None
    ) -> None:
        if max_bytes is not None and overflow != "backpressure":
            raise ValueError("max_bytes needs the backpressure policy")
        self.max_size = max_size
        #: Bound on the bytes buffered (as counted by the writer), or None.
        self.max_bytes = max_bytes
        self.overflow = overflow
        self._source = source
        self._batches: deque[list[Event]] = deque()
        self._sizes: deque[int] = deque()  # bytes of each batch (max_bytes only)
        self._bytes = 0
        self._count = 0
        self._readers = trio.lowlevel.ParkingLot()
        self._writers = trio.lowlevel.ParkingLot()
        self._closed = False
        self._dropped_pending = 0
        #: Events and batches accepted since the stream opened (statistics).
        self.events_in = 0
        self.batches_in = 0
        #: Events discarded by the drop-oldest policy since the stream opened.
        self.dropped_total = 0

    def __len__(self) -> int:
        return self._count

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def bytes(self) -> int:
        """Bytes buffered now (0 unless ``max_bytes`` is set)."""
        return self._bytes

    def _full(self) -> bool:
        return self._count >= self.max_size or (self.max_bytes is not None and self._bytes >= self.max_bytes)

    async def put(self, batch: list[Event], nbytes: int = 0) -> None:
        """Queue a batch (of ``nbytes`` bytes, with ``max_bytes``), applying the overflow policy when full."""
        if self._count + len(batch) > self.max_size or (
            self.max_bytes is not None and self._bytes >= self.max_bytes
        ):
            if self.overflow == "backpressure":
                # Stop reading the socket; the server queues for us.
                while self._full() and not self._closed:
                    await self._writers.park()
            elif self.overflow == "raise":
                raise StreamOverflowError(
                    f"consumer fell behind: {self._count} events buffered, "
                    f"{len(batch)} more arrived (max_buffer_size={self.max_size})"
                )
        if self._closed:
            return
        self._batches.append(batch)
        if self.max_bytes is not None:
            self._sizes.append(nbytes)
            self._bytes += nbytes
        self._count += len(batch)
        self.events_in += len(batch)
        self.batches_in += 1
        if self.overflow == "drop-oldest" and self._count > self.max_size:
            self._drop_oldest(self._count - self.max_size)
        self._readers.unpark()

    def put_control(self, event: Event) -> None:
        """Queue a control event (gap, overflow); never dropped, never blocks."""
        if self._closed:
            return
        self._batches.append([event])
        if self.max_bytes is not None:
            self._sizes.append(0)
        self._count += 1
        self._readers.unpark()

    def discard(self, unwanted: Callable[[Event], bool]) -> int:
        """Take out every queued event ``unwanted`` says (never a control event); how many.

        For a durable stream handing partitions back: their events not yet
        delivered go to the partition's next holder instead.
        """
        removed = 0
        batches: deque[list[Event]] = deque()
        sizes: deque[int] = deque()
        for index, batch in enumerate(self._batches):
            kept = [e for e in batch if isinstance(e, _CONTROL_TYPES) or not unwanted(e)]
            removed += len(batch) - len(kept)
            if self.max_bytes is not None:
                size = self._sizes[index]
                new_size = size * len(kept) // len(batch) if batch else 0
                self._bytes -= size - new_size
                if kept:
                    sizes.append(new_size)
            if kept:
                batches.append(kept)
        self._batches = batches
        if self.max_bytes is not None:
            self._sizes = sizes
        self._count -= removed
        if removed and not self._full():
            self._writers.unpark_all()
        return removed

    def _drop_oldest(self, excess: int) -> None:
        kept: list[Event] = []
        dropped = 0
        while excess > 0 and self._batches:
            head = self._batches[0]
            if len(head) <= excess:
                self._batches.popleft()
                part = head
            else:
                self._batches[0] = head[excess:]
                part = head[:excess]
            excess -= len(part)
            self._count -= len(part)
            for event in part:
                if isinstance(event, _CONTROL_TYPES):
                    kept.append(event)  # control events (gap, overflow) survive
                else:
                    dropped += 1
        if kept:
            self._batches.appendleft(kept)
            self._count += len(kept)
        self._dropped_pending += dropped
        self.dropped_total += dropped

    def _take(self) -> list[Event]:
        if self._dropped_pending:
            dropped, self._dropped_pending = self._dropped_pending, 0
            return [Overflow(self._source, dropped)]
        batch = self._batches.popleft()
        if self.max_bytes is not None:
            self._bytes -= self._sizes.popleft()
        self._count -= len(batch)
        if not self._full():
            self._writers.unpark_all()
        return batch

    async def get(self) -> list[Event]:
        """Wait for and return the oldest batch; raises StreamClosedError at the end."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._batches and not self._dropped_pending:
            while not self._batches and not self._dropped_pending:
                if self._closed:
                    raise StreamClosedError("the event stream is closed")
                await self._readers.park()
            # Parking was the yield: return at once, one scheduler round
            # sooner (measured: p50 latency, benchmarks/latency.py).
            return self._take()
        batch = self._take()
        # Yield once per batch so listeners get to run (cancellation was
        # already checked above: a taken batch is never lost to it).
        await trio.lowlevel.cancel_shielded_checkpoint()
        return batch

    def get_nowait(self) -> list[Event]:
        """Return the oldest batch, or raise ``trio.WouldBlock``."""
        if not self._batches and not self._dropped_pending:
            if self._closed:
                raise StreamClosedError("the event stream is closed")
            raise trio.WouldBlock
        return self._take()

    def close(self) -> None:
        """End the stream: readers drain what is queued, then get StreamClosedError."""
        self._closed = True
        self._readers.unpark_all()
        self._writers.unpark_all()
