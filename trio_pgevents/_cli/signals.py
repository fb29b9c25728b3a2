"""SIGINT/SIGTERM for long-running commands: the first stops gracefully, a second at once."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from sqlalchemy.engine import Engine

from .._secrets import get_logger
from .database import connected
from .settings import Settings

__all__ = ["serve_until_signalled"]

logger = get_logger("trio_pgevents.cli")


class _Signals:
    """First SIGINT/SIGTERM: graceful stop (``on_first``). Second one: cancel ``scope`` now."""

    def __init__(self, on_first: Callable[[str], None], scope: trio.CancelScope) -> None:
        self.on_first = on_first
        self.scope = scope
        self.forced = False

    async def watch(self, receiver: Any) -> None:
        first = True
        async for signum in receiver:
            name = signal.Signals(signum).name
            if first:
                first = False
                self.on_first(name)
            else:
                logger.warning("received %s again: stopping now", name)
                self.forced = True
                self.scope.cancel()


def _signal_receiver() -> Any:
    return trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)


async def serve_until_signalled(
    args: argparse.Namespace,
    settings: Settings,
    on_signal: Callable[[str, trio.CancelScope], None],
    body: Callable[[Engine], Awaitable[None]],
) -> bool:
    """Connect, run ``body(engine)`` while watching SIGINT/SIGTERM, dispose the engine.

    The first signal calls ``on_signal(name, scope)`` (stop gracefully, or cancel
    ``scope``); a second one cancels at once. Returns True if a second signal
    forced the stop.
    """
    with _signal_receiver() as signals:
        async with connected(args, settings) as engine, trio.open_nursery() as nursery:
            scope = nursery.cancel_scope
            watcher = _Signals(lambda name: on_signal(name, scope), scope)
            nursery.start_soon(watcher.watch, signals)
            await body(engine)
            scope.cancel()
    return watcher.forced
