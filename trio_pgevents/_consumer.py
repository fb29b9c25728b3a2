"""The consumer side shared by every stream: iteration over a batch buffer.

:class:`EventStream` (LISTEN/NOTIFY), the durable stream and the change
(logical replication) stream all feed an :class:`EventBuffer` from their own
tasks and inherit how it is read from :class:`BufferedStream`.

A LISTEN connection's batches are queued as :class:`NotifyBatch` -- psycopg2's
own ``Notify`` objects -- and turned into events only when the consumer takes
the batch. Measured with ``benchmarks/``, that is what keeps the garbage
collector quiet: a ``Notify`` is not tracked by the GC, an event (a tuple
subclass) is, so events built in the listener and left waiting in a full
buffer were promoted through every GC generation and made full collections
(tens of ms each, ~0.3 us per event) frequent. Built on delivery, events
mostly die young.

Turning a batch into events never raises and never loses an event: a
payload a decoder rejects, or a decoder that raises or returns something
other than an event, gives a plain :class:`Notification` for that one
notification (logged, rate-limited: see ``_decode.SetAsideLog``); should
building the batch fail anyway, the whole batch is delivered as
Notifications rather than dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from operator import length_hint
from typing import Any, Protocol

import trio

from ._buffer import EventBuffer
from ._decode import Decoder, set_aside
from ._errors import StreamClosedError
from ._events import Event, Notification
from ._payload import why
from ._secrets import get_logger

__all__ = ["BatchIterator", "BatchTyping", "BufferedStream", "NotifyBatch"]

_new = tuple.__new__

logger = get_logger("trio_pgevents.decode")


class NotifyBatch(list[Any]):
    """What one ``poll()`` read: psycopg2 ``Notify`` objects, not yet events.

    Args:
        notifies: the connection's ``notifies`` list (taken over, not copied).
        source: the events' ``source``.
        decoders: channel -> decoder for typed events, or None.
    """

    __slots__ = ("decoded", "decoders", "source")

    def __init__(self, notifies: list[Any], source: str, decoders: Mapping[str, Decoder] | None) -> None:
        super().__init__(notifies)
        self.source = source
        self.decoders = decoders
        #: Set by :meth:`events`: a decoder made at least one of them (they may need typing).
        self.decoded = False

    def events(self) -> list[Event]:
        """The batch as events, in order; one per notification, whatever its payload."""
        source = self.source
        decoders = self.decoders
        if decoders is None:
            return self.notifications()
        get = decoders.get
        decoded = False
        batch: list[Event] = []
        append = batch.append
        for n in self:
            channel = n.channel
            decoder = get(channel)
            if decoder is None:
                append(_new(Notification, (channel, n.payload, n.pid, source)))
                continue
            payload = n.payload
            decoded = True
            try:
                event = decoder(channel, payload, n.pid, source)
            except Exception as exc:  # a custom decoder's bug must not cost the batch
                event = set_aside(channel, payload, n.pid, source, f"the channel's decoder raised {why(exc)}")
            else:
                if not isinstance(event, Event):
                    reason = f"the channel's decoder returned {type(event).__name__}, not an Event"
                    event = set_aside(channel, payload, n.pid, source, reason)
            append(event)
        self.decoded = decoded
        return batch

    def notifications(self) -> list[Event]:
        """The batch as plain :class:`Notification` events, in order (nothing decoded)."""
        source = self.source
        return [_new(Notification, (n.channel, n.payload, n.pid, source)) for n in self]

    def __getitem__(self, index: Any) -> Any:
        # The drop-oldest policy slices queued batches: a slice stays a NotifyBatch.
        if isinstance(index, slice):
            return NotifyBatch(list.__getitem__(self, index), self.source, self.decoders)
        return list.__getitem__(self, index)


def _decoded(batch: list[Any]) -> bool:
    """True if events of ``batch`` were made by a decoder (only those can be row events)."""
    return type(batch) is not NotifyBatch or batch.decoded


def _events(batch: list[Event]) -> list[Event]:
    """A queued batch as events (a :class:`NotifyBatch` is converted; others are events already)."""
    if type(batch) is not NotifyBatch:
        return batch
    try:
        return batch.events()
    except Exception as exc:
        # events() handles each payload on its own; reaching here is a bug (or a decoders
        # mapping that fails). The batch is already out of the buffer: deliver it undecoded.
        logger.error(
            "could not decode a batch of %d notifications (%s): delivered as Notifications",
            len(batch),
            why(exc),
        )
        return batch.notifications()


#: Notifications decoded at a time for event-by-event reads (see BufferedStream._raw_chunk).
_CHUNK = 256

#: What ``BufferedStream._next`` is when no batch is being handed out.
_SPENT: Iterator[Any] = iter(())


class BatchTyping(Protocol):
    """Types the row events of a batch before it is delivered (see ``_columns.StreamTyping``)."""

    def attach(self, batch: list[Event]) -> bool:
        """Type what can be typed now; False if :meth:`learn` must run first."""
        ...

    async def learn(self) -> None:
        """Read what :meth:`attach` was missing (never raises a database error)."""
        ...


class BufferedStream:
    """Reads events, one at a time or a batch at a time, from a buffer.

    Per event, ``async for`` costs one step of a list iterator and no task
    switch; the consumer yields to the scheduler (and sees cancellation) once
    per batch.
    """

    def __init__(self, buffer: EventBuffer) -> None:
        self._buffer = buffer
        # The batch being handed out, and an iterator over what is left of it
        # (a C-level step per event, cheaper than an index kept in Python).
        self._batch: list[Event] = []
        self._next: Iterator[Event] = _SPENT
        #: Types row events before a batch is delivered (LISTEN streams), or None.
        self._typing: BatchTyping | None = None
        self._held: list[Event] | None = None  # a batch taken, waiting for its types
        # What is left of a notification batch taken from the buffer but not decoded yet:
        # event by event reads decode _CHUNK at a time (see _raw_chunk).
        self._raw: NotifyBatch | None = None
        self._raw_pos = 0

    @property
    def _pos(self) -> int:
        """How many events of :attr:`_batch` were delivered."""
        return len(self._batch) - length_hint(self._next)

    def _hand_out(self, batch: list[Event]) -> Event:
        """Make ``batch`` (never empty) the current one and take its first event."""
        self._batch = batch
        self._next = events = iter(batch)
        return next(events)

    @property
    def _undelivered(self) -> int:
        """Events taken from the buffer and not delivered yet."""
        pending = len(self._raw) - self._raw_pos if self._raw is not None else 0
        return length_hint(self._next) + pending

    def _raw_chunk(self, raw: Any, whole: bool) -> Any:
        """``raw`` to decode now: all of it, or (one event at a time) its next _CHUNK notifications.

        Decoding a 10k-notification batch at once keeps 10k events alive
        until the consumer reaches them: they outlive the young GC
        generations and make full collections frequent (measured: ~2 us per
        event in ``benchmarks/decoded.py``). A chunk is consumed while young.
        """
        if type(raw) is not NotifyBatch or (len(raw) <= _CHUNK and self._raw is None):
            return raw
        if self._raw is None:
            self._raw, self._raw_pos = raw, 0
        pending, pos = self._raw, self._raw_pos
        end = len(pending) if whole else pos + _CHUNK
        chunk = pending[pos:end] if pos or end < len(pending) else pending
        if end >= len(pending):
            self._raw, self._raw_pos = None, 0
        else:
            self._raw_pos = end
        return chunk

    async def _take_batch(self, whole: bool = False) -> list[Event]:
        """The next batch, as events, typed. A cancelled call takes nothing.

        ``whole``: all of what one poll() read (``batches()``), else possibly a
        chunk of it (event by event).
        """
        batch = self._held
        if batch is None:
            raw: list[Any]
            if self._raw is not None:
                # The rest of a batch already taken: no scheduler round (as for the
                # events of a decoded chunk), but a cancelled call still takes nothing.
                await trio.lowlevel.checkpoint_if_cancelled()
                raw = self._raw
            else:
                raw = await self._buffer.get()
            batch = self._decode(self._raw_chunk(raw, whole))
        if self._held is not None:  # cancelled while its types are read: the next call resumes
            assert self._typing is not None
            await self._typing.learn()
            self._typing.attach(batch)
            self._held = None
        return batch

    def _decode(self, raw: list[Any]) -> list[Event]:
        """``raw`` as events, typed if their types are known; else held (see :attr:`_held`)."""
        batch = _events(raw)
        if self._typing is not None and _decoded(raw) and not self._typing.attach(batch):
            self._held = batch  # its types must be read first
        return batch

    def _take_batch_nowait(self) -> list[Event]:
        """The next batch if one is ready (typed); else ``trio.WouldBlock``."""
        batch = self._held
        if batch is None:
            raw = self._raw if self._raw is not None else self._buffer.get_nowait()
            batch = self._decode(self._raw_chunk(raw, False))
        elif self._typing is not None and self._typing.attach(batch):
            self._held = None
        if self._held is not None:
            raise trio.WouldBlock  # its types must be read first: by the next receive()
        return batch

    def __aiter__(self) -> BufferedStream:
        return self

    async def __anext__(self) -> Event:
        for event in self._next:
            return event
        # Let the spent batch's events go before the next ones are built.
        self._batch, self._next = [], _SPENT
        try:
            batch = await self._take_batch()
        except StreamClosedError:
            raise StopAsyncIteration from None
        return self._hand_out(batch)

    async def receive(self) -> Event:
        """Wait for the next event. Raises :class:`StreamClosedError` at the end.

        As with Trio's channels, a ``receive()`` that is cancelled has taken
        nothing: the event is returned by the next call.
        """
        # Cancellation is seen before an event is taken, never after.
        await trio.lowlevel.checkpoint_if_cancelled()
        for event in self._next:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return event
        self._batch, self._next = [], _SPENT
        return self._hand_out(await self._take_batch())

    def receive_nowait(self) -> Event:
        """The next event if one is buffered, else raise ``trio.WouldBlock``."""
        for event in self._next:
            return event
        return self._hand_out(self._take_batch_nowait())

    def _withdraw_undelivered(self, unwanted: Callable[[Event], bool]) -> None:
        """Take every event ``unwanted`` says out of what is not delivered yet (control events stay)."""
        assert self._raw is None, "only event batches are withdrawn from"
        rest = [event for event in self._next if not unwanted(event)]
        self._batch, self._next = rest, iter(rest)
        self._buffer.discard(unwanted)

    def batches(self) -> BatchIterator:
        """Iterate over lists of events, in order: the fastest way to consume.

        ``async for batch in stream.batches():`` — each list is what one
        ``poll()`` read (or what remained of it after single-event reads).
        Breaking out of the loop is safe: nothing is lost, the stream goes on.
        """
        return BatchIterator(self)

    async def _next_batch(self) -> list[Event]:
        left = length_hint(self._next)
        if left:
            await trio.lowlevel.checkpoint_if_cancelled()  # before taking: a cancelled call takes nothing
            rest = self._batch if left == len(self._batch) else list(self._next)
            self._batch, self._next = [], _SPENT
            await trio.lowlevel.cancel_shielded_checkpoint()
            return rest
        try:
            return await self._take_batch(whole=True)
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
