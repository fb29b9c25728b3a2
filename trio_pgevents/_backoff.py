"""Retrying with backoff: one object per episode, no I/O, the clock passed in.

Every loop that retries -- a stream reconnecting, the durable reader's
queries, a worker retrying a callback -- asks an :class:`Attempts` what to
do after a failure: wait this long, or give up. The rules (jittered
exponential backoff, ``max_attempts``, an overall ``timeout``) live here
once, after psycopg_pool's ``AttemptWithBackoff``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Attempts", "Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: ``initial``, doubling up to ``maximum``, each jittered.

    The jitter (a delay is drawn from [half, all] of the nominal one) spreads
    a herd of clients that failed at the same moment.
    """

    initial: float
    maximum: float

    def attempts(
        self,
        *,
        now: float,
        max_attempts: int | None = None,
        timeout: float | None = None,
        rng: Callable[[], float] = random.random,
    ) -> Attempts:
        """A new episode starting at ``now`` (``trio.current_time()`` or any clock)."""
        return Attempts(self, now=now, max_attempts=max_attempts, timeout=timeout, rng=rng)


class Attempts:
    """One episode of retries: counts failures, says how long to wait or when to give up.

    Args:
        backoff: the delays.
        now: the clock reading when the episode began.
        max_attempts: give up after this many failed attempts (None: never).
        timeout: give up this many seconds after ``now`` (None: never).
        rng: source of jitter in [0, 1).
    """

    def __init__(
        self,
        backoff: Backoff,
        *,
        now: float,
        max_attempts: int | None = None,
        timeout: float | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._backoff = backoff
        self._next = backoff.initial
        self._max_attempts = max_attempts
        self._rng = rng
        #: When the episode gives up (``math.inf``: never).
        self.deadline = math.inf if timeout is None else now + timeout
        #: Failed attempts so far.
        self.failures = 0

    def time_left(self, now: float) -> float:
        """Seconds until the episode gives up (``math.inf``: never)."""
        return max(0.0, self.deadline - now)

    def limit(self, now: float, per_attempt: float) -> float:
        """The time one attempt may take: ``per_attempt``, cut to what is left."""
        return min(per_attempt, self.time_left(now))

    def failed(self, now: float) -> float | None:
        """Record a failed attempt; the seconds to wait before the next, or None: give up."""
        self.failures += 1
        if self._max_attempts is not None and self.failures >= self._max_attempts:
            return None
        if now >= self.deadline:
            return None
        delay = self._next * (0.5 + 0.5 * self._rng())
        self._next = min(self._next * 2, self._backoff.maximum)
        return min(delay, self.time_left(now))
