"""``demo``: the command's options, handed to :mod:`trio_pgevents._cli.demo`."""

from __future__ import annotations

import argparse

from ..demo import DemoOptions, run_embedded_demo

__all__ = ["cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: an embedded Postgres, a table, triggers, a writer, live events and a summary."""
    options = DemoOptions(rows=args.rows, rate=args.rate, burst=args.burst, timeout=args.timeout)
    return run_embedded_demo(options)
