"""Acknowledging events: one model for every stream that can resume (durable and change streams).

A resumable stream stores how far its consumer got -- an outbox position, or
a WAL position confirmed to the server -- so a restart continues after it.
The rules, the same for both:

- An event is *processed* when acknowledged: ``await stream.ack(event)``
  (it and every event before it), or, with ``auto_ack=True``, when the
  consumer asks for the next event (the next batch, with ``batches()``), or
  when ``async with`` ends without an error.
- The acknowledged position is *stored* after ``ack_every`` events, at least
  every ``ack_interval`` seconds, at once with ``ack(event, flush=True)``
  (the default) or ``flush()``, and on close. With ``ack_every=1`` and
  ``auto_ack``, it is stored before the next event is handed out.
- A ``receive()`` that is cancelled takes nothing and acknowledges nothing.

:class:`ResumableStream` implements them once; a stream says what an event's
position is (:meth:`ResumableStream._position`) and how a position is stored
(:meth:`ResumableStream._store`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import trio

from ._buffer import EventBuffer
from ._consumer import BufferedStream
from ._errors import ConfigurationError, StreamClosedError
from ._events import Event, Overflow, StreamGap
from ._options import StreamOptions

__all__ = ["ResumableStream", "closed_after_body"]

P = TypeVar("P")  # a position: comparable, totally ordered


class ResumableStream(BufferedStream, Generic[P]):
    """A buffered stream whose consumer acknowledges events, and whose positions are stored.

    Args:
        buffer: the events.
        start: the position stored now (what a restart would resume after).
        options: ``auto_ack`` (see the module docstring), ``ack_every`` (store
            after this many processed events), ``ack_interval`` (store at least
            this often; the stream runs :meth:`_flush_loop`).
        kind: what the stream is, for error messages ("a durable stream").
    """

    def __init__(
        self,
        buffer: EventBuffer,
        *,
        start: P,
        options: StreamOptions,
        kind: str,
    ) -> None:
        super().__init__(buffer)
        self.auto_ack = options.auto_ack
        self._ack_every = options.ack_every
        self._ack_interval = options.ack_interval
        self._kind = kind
        self._acked: P = start
        self._stored: P = start
        self._unstored = 0  # processed events whose position is not stored yet
        self._handed: P | None = None  # position of the last event handed out
        self._handed_count = 0  # events handed out since the last was marked processed
        self._flush_now = trio.Event()
        self._closing = False
        #: Position stores since the stream opened.
        self.position_stores = 0

    # ---- what a stream defines ---------------------------------------------------

    def _position(self, event: Event) -> P | None:
        """The position of ``event`` (None: it has none, e.g. a control event)."""
        raise NotImplementedError

    async def _store(self, position: P) -> None:
        """Store ``position`` (it is after the one stored now)."""
        raise NotImplementedError

    async def _shut_down(self) -> None:
        """Stop reading, store the acknowledged position, let go of the connection.

        Within ``close_timeout`` (and a moment) whatever the server does; shielded.
        """
        raise NotImplementedError

    async def aclose(self, *, processed: bool = True) -> None:
        """Store the acknowledged position, stop reading, let go of the connection.

        Args:
            processed: with ``auto_ack``, whether the last event handed out was
                processed (the opener passes False when its ``async with`` body
                raised, so that event is delivered again next time).

        Idempotent; returns within ``close_timeout`` (and a moment), even when
        cancelled or when the server does not answer.
        """
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._close_acknowledging(processed=processed)
        self._buffer.close()
        await self._shut_down()

    # ---- positions -------------------------------------------------------------------

    @property
    def acked_position(self) -> P:
        """The position acknowledged so far (stored soon)."""
        return self._acked

    @property
    def stored_position(self) -> P:
        """The position stored: a restart resumes after it."""
        return self._stored

    def _set_stored(self, position: P) -> None:
        """The position is known stored (read back at open, or stored another way)."""
        self._stored = self._acked = position

    # ---- acknowledging ------------------------------------------------------------

    def _mark_processed(self) -> None:
        handed = self._handed
        if handed is not None and handed > self._acked:  # type: ignore[operator]
            self._acked = handed
            self._unstored += self._handed_count
        self._handed = None
        self._handed_count = 0

    def _note_handed(self, events: list[Event]) -> None:
        self._handed_count += len(events)
        for event in reversed(events):
            position = self._position(event)
            if position is not None:
                self._handed = position
                break

    async def _after_processed(self) -> None:
        # A read that is cancelled takes nothing, and acknowledges nothing more either.
        await trio.lowlevel.checkpoint_if_cancelled()
        self._mark_processed()
        if self._unstored >= self._ack_every and not self._closing:
            if self._ack_every == 1:
                await self.flush()  # per event: stored before the next one is handed out
            else:
                self._flush_now.set()  # the flush task stores it; the consumer goes on
                await trio.lowlevel.checkpoint()

    async def ack(self, event: Event, *, flush: bool = True) -> None:
        """Acknowledge ``event`` and every event before it.

        Args:
            event: an event this stream delivered.
            flush: store the position now (default). False: with the next
                ``ack_every``/``ack_interval`` round or at close (cheaper per
                event; after a crash, those events come again).

        Raises:
            ConfigurationError: ``event`` did not come from this kind of stream.
            StreamClosedError: the stream is closed (or closing): what it had
                acknowledged was stored at close; this acknowledgement cannot be.
        """
        if self._closing:
            raise StreamClosedError(
                f"{self._kind} is closed: ack() before it closes (its position was stored at close)"
            )
        position = self._position(event)
        if position is None:
            if isinstance(event, (StreamGap, Overflow)):
                await trio.lowlevel.checkpoint()
                return  # control events have no position
            raise ConfigurationError(f"ack() needs an event read from {self._kind}, not {event!r}")
        if position > self._acked:  # type: ignore[operator]
            self._acked = position
            self._unstored += 1
        if flush or self._unstored >= self._ack_every:
            await self.flush()
        else:
            await trio.lowlevel.checkpoint()

    async def flush(self) -> None:
        """Store the acknowledged position now (normally every ``ack_every``/``ack_interval``)."""
        position = self._acked
        if not position > self._stored:  # type: ignore[operator]
            self._unstored = 0
            await trio.lowlevel.checkpoint()
            return
        await self._store(position)
        self.position_stores += 1
        if self._stored < position:  # type: ignore[operator]
            self._stored = position
        if self._acked == position:
            self._unstored = 0

    async def _flush_loop(self) -> None:
        """Store what was acknowledged every ``ack_interval``, or at once when ``ack_every`` is reached."""
        while True:
            with trio.move_on_after(self._ack_interval):
                await self._flush_now.wait()
            self._flush_now = trio.Event()
            if self._acked > self._stored:  # type: ignore[operator]
                await self.flush()

    # ---- reading: the auto-ack rule --------------------------------------------------

    async def __anext__(self) -> Event:
        if self.auto_ack:
            await self._after_processed()
        event = await super().__anext__()
        self._note_one(event)
        return event

    async def receive(self) -> Event:
        """Wait for the next event (with ``auto_ack``, the previous one counts as processed)."""
        if self.auto_ack:
            await self._after_processed()
        event = await super().receive()
        self._note_one(event)
        return event

    def receive_nowait(self) -> Event:
        """The next buffered event, or raise ``trio.WouldBlock`` (acks stored in the background)."""
        if self.auto_ack:
            self._mark_processed()
            if self._unstored >= self._ack_every:
                self._flush_now.set()
        event = super().receive_nowait()
        self._note_one(event)
        return event

    async def _next_batch(self) -> list[Event]:
        if self.auto_ack:
            await self._after_processed()
        batch = await super()._next_batch()
        self._note_handed(batch)
        return batch

    def _note_one(self, event: Event) -> None:
        self._handed_count += 1
        position = self._position(event)
        if position is not None:
            self._handed = position

    def _close_acknowledging(self, *, processed: bool) -> None:
        """At close: the last event handed out counts as processed if the body ended normally."""
        self._closing = True
        if self.auto_ack and processed:
            self._mark_processed()

    def _position_figures(self) -> dict[str, Any]:
        """The figures every resumable stream's statistics carry."""
        return {
            "acked_position": self._acked,
            "stored_position": self._stored,
            "position_stores": self.position_stores,
        }


@asynccontextmanager
async def closed_after_body(stream: ResumableStream[Any]) -> AsyncIterator[None]:
    """Run an opener's ``async with`` body, then close ``stream``.

    The event the body held when it ended counts as processed (with
    ``auto_ack``) only if the body did not raise: an event whose handling
    failed is delivered again.
    """
    processed = True
    try:
        yield
    except BaseException:
        processed = False
        raise
    finally:
        await stream.aclose(processed=processed)
