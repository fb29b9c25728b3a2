"""``listen``: print each event on the given channels as one JSON line."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import trio
from sqlalchemy.engine import Engine

from ... import open_event_stream
from ..._secrets import get_logger
from ..database import command_settings
from ..exits import EXIT_OK
from ..output import print_event
from ..settings import Settings
from ..signals import serve_until_signalled

__all__ = ["cmd_listen"]

logger = get_logger("trio_pgevents.cli")


async def _run_listen(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    printed = 0

    def stop(name: str, scope: trio.CancelScope) -> None:
        logger.info("received %s: stopping", name)
        scope.cancel()

    async def body(engine: Engine) -> None:
        nonlocal printed
        async with open_event_stream(engine, args.channels) as stream:
            logger.info("listening on %s at %s", ", ".join(args.channels), settings.safe_url)
            async for batch in stream.batches():
                for event in batch:
                    # Any payload prints as a line: a bad one is a Notification by now.
                    print_event(out, event)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        break
                out.flush()
                if args.count is not None and printed >= args.count:
                    break

    await serve_until_signalled(args, settings, stop, body)
    return EXIT_OK


def cmd_listen(args: argparse.Namespace) -> int:
    """``listen``: print each event as one JSON line."""
    settings = command_settings(args)
    return trio.run(_run_listen, args, settings, sys.stdout)
