"""A nursery for the stream openers: a lone error comes out as itself.

Trio nurseries wrap errors in exception groups. For a context manager like
``open_event_stream`` a user expects ``except ConnectionLostError`` to work,
so when exactly one exception (from the body or a task) ends the nursery, it
is re-raised unwrapped; several still come out as a group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_unwrapping_nursery", "sole_exception"]


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only leaf exception of a (nested) group, or None if there are several."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


@asynccontextmanager
async def open_unwrapping_nursery() -> AsyncIterator[trio.Nursery]:
    """``trio.open_nursery()``, re-raising a lone exception without its group."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        sole = sole_exception(group)
        if sole is None:
            raise
        raise sole from sole.__cause__
