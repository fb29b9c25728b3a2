"""A change stream consumer run as a subprocess by the kill-and-resume test.

``python tests/cdc_consumer.py URL SLOT PUBLICATION TABLE OUTPUT STOP_ID DELAY``

Appends one line ``<id> <lsn>`` per change of TABLE to OUTPUT (written and
flushed before the event is acknowledged, i.e. before the loop moves on),
spends DELAY seconds per change (a slow consumer), and exits when it has
written the row whose ``id`` is STOP_ID.
"""

from __future__ import annotations

import os
import sys

import trio

from trio_pgevents import RowChange, open_change_stream


async def consume(
    url: str, slot: str, publication: str, table: str, output: str, stop_id: int, delay: float
) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        async with open_change_stream(url, slot=slot, publication=publication, tables=[table]) as changes:
            async for change in changes:
                if not isinstance(change, RowChange) or change.new_data is None:
                    continue
                row_id = int(change.new_data["id"])
                # One write() per line: a SIGKILL never leaves half a line.
                os.write(fd, f"{row_id} {change.lsn}\n".encode())
                if delay:
                    await trio.sleep(delay)  # simulated processing time
                if row_id == stop_id:
                    break
    finally:
        os.close(fd)


def main(argv: list[str]) -> None:
    url, slot, publication, table, output, stop_id, delay = argv
    trio.run(consume, url, slot, publication, table, output, int(stop_id), float(delay))


if __name__ == "__main__":
    main(sys.argv[1:])
