"""Per-partition positions of one member of a durable consumer (no I/O).

Events are read in one pass over the outbox (the follower's cursor), and
each belongs to one partition. For every partition this member holds, the
ledger knows:

- ``read_through``: every row of the partition up to here has been read
  (delivered, or not of this partition);
- which delivered events are not processed yet (``pending``, in read order);
- what can be stored: ``read_through`` when nothing is pending, else the last
  processed event's position -- never past an unprocessed event.

Each delivered event gets a sequence number in read (= delivery) order:
the stream's acknowledgement model counts in those (``ack(event)`` covers it
and every event delivered before it, whatever their partitions).
"""

from __future__ import annotations

from collections import deque

from .._events import Event
from .outbox import Position

__all__ = ["Ledger"]


class Ledger:
    """Positions of the partitions one member reads."""

    def __init__(self) -> None:
        #: Partitions read now (held, not being handed back), and how far.
        self.read_through: dict[int, Position] = {}
        #: Positions stored, by partition held.
        self.stored: dict[int, Position] = {}
        self._acked: dict[int, Position] = {}
        self._pending: deque[tuple[int, int, Position]] = deque()  # (seq, part, position)
        self._pending_count: dict[int, int] = {}
        self._seq = 0

    # ---- holding -------------------------------------------------------------------

    def gain(self, parts: dict[int, Position]) -> Position | None:
        """Start reading ``parts`` from their stored positions; return the earliest (to rewind to)."""
        for part, position in parts.items():
            self.read_through[part] = self.stored[part] = self._acked[part] = position
            self._pending_count[part] = 0
        return min(parts.values()) if parts else None

    def stop_reading(self, parts: set[int]) -> None:
        """No more events of ``parts`` (being handed back: what was delivered may still be acked)."""
        for part in parts:
            self.read_through.pop(part, None)

    def forget(self, parts: set[int]) -> None:
        """Drop ``parts`` entirely (handed back, or lost): their events are another member's now."""
        self.stop_reading(parts)
        for part in parts:
            self.stored.pop(part, None)
            self._acked.pop(part, None)
            self._pending_count.pop(part, None)
        self._pending = deque(entry for entry in self._pending if entry[1] not in parts)

    def forget_seqs(self, seqs: set[int]) -> None:
        """Forget the events numbered ``seqs`` (taken out of the stream before delivery)."""
        if not seqs:
            return
        kept: deque[tuple[int, int, Position]] = deque()
        for entry in self._pending:
            if entry[0] in seqs:
                self._pending_count[entry[1]] -= 1
            else:
                kept.append(entry)
        self._pending = kept

    def confirm_stored(self, stored: dict[int, Position]) -> None:
        """The database says these positions are stored (``ack_in_transaction`` stores there).

        Events at or before them are processed: they are no longer pending.
        """
        self.mark_stored(stored)
        done = {part for part, position in stored.items() if part in self._acked}
        if not done:
            return
        kept: deque[tuple[int, int, Position]] = deque()
        for entry in self._pending:
            _, part, position = entry
            if part in done and position <= stored[part]:
                self._pending_count[part] -= 1
                if position > self._acked[part]:
                    self._acked[part] = position
            else:
                kept.append(entry)
        self._pending = kept

    def has_pending(self, parts: set[int]) -> bool:
        """True while a delivered event of ``parts`` is not processed."""
        return any(self._pending_count.get(part, 0) for part in parts)

    @property
    def held(self) -> set[int]:
        """Partitions this member holds (read, or being handed back)."""
        return set(self.stored)

    # ---- reading -------------------------------------------------------------------

    def take(self, events: list[Event], parts: list[int], after: Position) -> tuple[list[Event], int]:
        """The events (of ``parts``, read after ``after``) to deliver, and their payloads' size.

        An event is delivered only if every earlier row of its partition was
        read: a partition whose rows before ``after`` are not read yet (gained
        while this read was under way: the reader rewinds) gets it on the
        re-read, in order. Each event delivered gets its sequence number.
        """
        read_through, pending, count = self.read_through, self._pending, self._pending_count
        seq, size = self._seq, 0
        taken: list[Event] = []
        for event, part in zip(events, parts, strict=True):
            through = read_through.get(part)
            attributes = event.__dict__
            position = attributes["_position"]
            if through is None or position <= through or through < after:
                continue
            seq += 1
            attributes["_seq"] = seq
            attributes["_part"] = part
            pending.append((seq, part, position))
            count[part] += 1
            taken.append(event)
            size += len(event[1])
        self._seq = seq
        return taken, size

    def read_up_to(self, after: Position, position: Position, parts: frozenset[int] | None = None) -> None:
        """The reader read every row after ``after`` up to ``position`` (of ``parts``; None: of all).

        A partition read up to ``after`` or further is now read up to
        ``position``; one that was not (gained meanwhile), or that the read
        did not look for (``parts``: gained after the read chose its rows),
        waits for the re-read.
        """
        for part, through in self.read_through.items():
            if through >= after and position > through and (parts is None or part in parts):
                self.read_through[part] = position

    def behind(self, position: Position) -> Position | None:
        """The earliest position a partition read now is read to, if before ``position``."""
        return min((through for through in self.read_through.values() if through < position), default=None)

    # ---- acknowledging ----------------------------------------------------------------

    def processed_through(self, seq: int) -> None:
        """Every event numbered up to ``seq`` is processed."""
        pending, acked, count = self._pending, self._acked, self._pending_count
        while pending and pending[0][0] <= seq:
            _, part, position = pending.popleft()
            if part in acked:
                if position > acked[part]:
                    acked[part] = position
                count[part] -= 1

    def to_store(self) -> dict[int, Position]:
        """The positions to store now: as far as each held partition is processed, if further."""
        result: dict[int, Position] = {}
        for part, stored in self.stored.items():
            through = self.read_through.get(part)
            target = through if through is not None and not self._pending_count[part] else self._acked[part]
            if target > stored:
                result[part] = target
        return result

    def mark_stored(self, positions: dict[int, Position]) -> None:
        """``positions`` are stored (of partitions still held)."""
        for part, position in positions.items():
            if part in self.stored and position > self.stored[part]:
                self.stored[part] = position

    def processed_position(self, default: Position) -> Position:
        """How far every held partition is processed: the earliest (``default`` when none is held)."""
        targets = self.to_store()
        return min((targets.get(part, stored) for part, stored in self.stored.items()), default=default)
