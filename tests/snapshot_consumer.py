"""A change stream consumer with ``snapshot=True``, run as a subprocess by the kill-during-snapshot test.

``python tests/snapshot_consumer.py URL SLOT PUBLICATION TABLE DONE_TABLE OUTPUT DELAY``

Appends one JSON line per event to OUTPUT (written before the event is
acknowledged, i.e. before the loop moves on): ``{"snapshot": lsn}`` when the
stream takes a snapshot (whoever replays the file starts again from an empty
table there), then ``{"m": method, "old": old_data, "new": new_data}`` per
change of TABLE. Spends DELAY seconds per READ event (a slow consumer) and
exits when a row is inserted into DONE_TABLE.
"""

from __future__ import annotations

import json
import os
import sys

import trio

from trio_pgevents import RowChange, open_change_stream


async def consume(
    url: str, slot: str, publication: str, table: str, done: str, output: str, delay: float
) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(line: dict[str, object]) -> None:
        # One write() per line: a SIGKILL never leaves half a line.
        os.write(fd, (json.dumps(line) + "\n").encode())

    try:
        async with open_change_stream(
            url, slot=slot, publication=publication, tables=[table, done], snapshot=True, max_buffer_size=200
        ) as changes:
            if changes.snapshot_lsn is not None:
                write({"snapshot": changes.snapshot_lsn})
            async for change in changes:
                if not isinstance(change, RowChange):
                    continue
                if change.table_name == done:
                    if change.method == "INSERT":
                        break
                    continue
                write({"m": change.method, "old": change.old_data, "new": change.new_data})
                if delay and change.method == "READ":
                    await trio.sleep(delay)  # simulated processing time
    finally:
        os.close(fd)


def main(argv: list[str]) -> None:
    url, slot, publication, table, done, output, delay = argv
    trio.run(consume, url, slot, publication, table, done, output, float(delay))


if __name__ == "__main__":
    main(sys.argv[1:])
