"""``demo``: the command's options, handed to :mod:`trio_pgevents._cli.demo`."""

from __future__ import annotations

import argparse

__all__ = ["cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: an embedded Postgres, a table, triggers, a writer, live events and a summary."""
    from ..demo import DemoOptions
    from ..demo import main as demo_main

    options = DemoOptions(rows=args.rows, rate=args.rate, burst=args.burst, timeout=args.timeout)
    return demo_main(options)
