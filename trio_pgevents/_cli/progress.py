"""A progress bar on stderr for long installer runs, drawn only on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

__all__ = ["Progress"]

T = TypeVar("T")


class Progress:
    """A progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, unit: str) -> None:
        self.total = total
        self.unit = unit
        self.done = 0
        self.enabled = sys.stderr.isatty() and total > 0

    def show(self, label: str) -> None:
        """Redraw the bar with ``label`` beside it."""
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {self.unit}  {label[:40]:<40}")
        sys.stderr.flush()

    def advance(self, amount: int, label: str) -> None:
        """Count ``amount`` more units done and redraw."""
        self.done += amount
        self.show(label)

    async def while_waiting(self, label: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work``; meanwhile redraw the bar with the time spent, so a long step shows life."""
        if not self.enabled:
            return await work()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def tick() -> None:
                while True:
                    self.show(f"{label} {trio.current_time() - started:.1f}s")
                    await trio.sleep(0.2)  # a display refresh rate, not a wait for a condition

            nursery.start_soon(tick)
            result = await work()
            nursery.cancel_scope.cancel()
        return result

    def close(self) -> None:
        """Erase the bar."""
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()
