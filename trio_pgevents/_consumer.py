"""The consumer side shared by every stream: iteration over a batch buffer.

:class:`EventStream` (LISTEN/NOTIFY), the durable stream and the change
(logical replication) stream all feed an :class:`EventBuffer` from their own
tasks and inherit how it is read from :class:`BufferedStream`.
"""

from __future__ import annotations

import trio

from ._buffer import EventBuffer
from ._errors import StreamClosedError
from ._events import Event

__all__ = ["BatchIterator", "BufferedStream"]


class BufferedStream:
    """Reads events, one at a time or a batch at a time, from a buffer.

    Per event, ``async for`` costs one list index and no task switch; the
    consumer yields to the scheduler (and sees cancellation) once per batch.
    """

    def __init__(self, buffer: EventBuffer) -> None:
        self._buffer = buffer
        self._batch: list[Event] = []
        self._pos = 0

    def __aiter__(self) -> BufferedStream:
        return self

    async def __anext__(self) -> Event:
        pos = self._pos
        batch = self._batch
        if pos < len(batch):
            self._pos = pos + 1
            return batch[pos]
        try:
            batch = await self._buffer.get()
        except StreamClosedError:
            raise StopAsyncIteration from None
        self._batch = batch
        self._pos = 1
        return batch[0]

    async def receive(self) -> Event:
        """Wait for the next event. Raises :class:`StreamClosedError` at the end."""
        pos = self._pos
        batch = self._batch
        if pos < len(batch):
            self._pos = pos + 1
            await trio.lowlevel.checkpoint()
            return batch[pos]
        batch = await self._buffer.get()
        self._batch = batch
        self._pos = 1
        return batch[0]

    def receive_nowait(self) -> Event:
        """The next event if one is buffered, else raise ``trio.WouldBlock``."""
        pos = self._pos
        batch = self._batch
        if pos < len(batch):
            self._pos = pos + 1
            return batch[pos]
        batch = self._buffer.get_nowait()
        self._batch = batch
        self._pos = 1
        return batch[0]

    def batches(self) -> BatchIterator:
        """Iterate over lists of events, in order: the fastest way to consume.

        ``async for batch in stream.batches():`` — each list is what one
        ``poll()`` read (or what remained of it after single-event reads).
        Breaking out of the loop is safe: nothing is lost, the stream goes on.
        """
        return BatchIterator(self)

    async def _next_batch(self) -> list[Event]:
        if self._pos < len(self._batch):
            rest = self._batch[self._pos :] if self._pos else self._batch
            self._batch, self._pos = [], 0
            await trio.lowlevel.checkpoint()
            return rest
        try:
            return await self._buffer.get()
        except StreamClosedError:
            raise StopAsyncIteration from None


class BatchIterator:
    """Async iterator over a stream's batches (see :meth:`EventStream.batches`).

    A plain iterator object rather than an async generator, so breaking out of
    ``async for`` needs no finalisation.
    """

    def __init__(self, stream: BufferedStream) -> None:
        self._stream = stream

    def __aiter__(self) -> BatchIterator:
        return self

    async def __anext__(self) -> list[Event]:
        return await self._stream._next_batch()
