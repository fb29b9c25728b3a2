"""A durable consumer for the crash test: killed with SIGKILL and started again.

``python tests/durable_crash_consumer.py URL SCHEMA CHANNEL CONSUMER OUTPUT ACK_EVERY``

Appends the ``n`` column of every event it receives to OUTPUT (one line per
event, written with ``os.write`` on an ``O_APPEND`` file so a line is either
fully there or not at all), then asks for the next event, which acknowledges
the previous one. Runs until killed.
"""

from __future__ import annotations

import os
import sys

import trio

from trio_pgevents import RowChange, open_durable_stream


async def main(url: str, schema: str, channel: str, consumer: str, output: str, ack_every: int) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        async with open_durable_stream(
            url,
            consumer,
            schema=schema,
            channel=channel,
            ack_every=ack_every,
            batch_size=500,
            poll_interval=0.5,
        ) as events:
            os.write(fd, b"started\n")
            async for event in events:
                if isinstance(event, RowChange) and event.new_data is not None:
                    os.write(fd, f"{event.new_data['n']}\n".encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    url, schema, channel, consumer, output, ack_every = sys.argv[1:7]
    trio.run(main, url, schema, channel, consumer, output, int(ack_every))
