"""A durable stream's memory stays bounded in bytes (issue 15, item 6).

300 rows of ~1 MB each wait in the outbox; a consumer in its own process
takes one event and stops (stuck handler). With the default
``max_buffer_bytes`` (64 MiB) the process's peak memory must stay at a few
hundred MB, not the 300 MB of backlog plus its copies.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import trio
from psycopg2 import sql

from .conftest import Outbox, Query

#: The consumer: open, take one event, let the reader fill its buffer, report peak RSS (KiB).
CONSUMER = textwrap.dedent(
    """
    import json, resource, sys, trio
    from trio_pgevents import open_durable_stream

    async def main(url, schema, channel, options):
        options = json.loads(options)
        async with open_durable_stream(url, "stuck", schema=schema, channel=channel, **options) as events:
            await events.receive()  # then stuck: nothing more is taken
            with trio.fail_after(120):
                # The reader fills the buffer up to its bound (64 MiB by default)...
                while events.statistics().buffered_bytes < (64 << 20):
                    await trio.sleep(0.1)
                # ...and then stops: nothing more read for a second.
                last = -1
                while (now := events.statistics().events_received) != last:
                    last = now
                    await trio.sleep(1.0)
            stats = events.statistics()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(stats.events_received, stats.buffered_bytes, peak)

    trio.run(main, *sys.argv[1:5])
    """
)


@pytest.mark.parametrize(
    "options",
    # A group member's first read finds tables it has not looked up yet: still bounded.
    [{}, {"group": True, "partitions": 4}],
    ids=["exclusive", "group"],
)
async def test_a_stuck_consumer_of_300_one_megabyte_rows_stays_at_a_few_hundred_mb(
    outbox: Outbox, query: Query, options: dict[str, Any]
) -> None:
    table = sql.Identifier(outbox.table)
    await query(sql.SQL("ALTER TABLE {} ADD COLUMN blob text").format(table))
    for _ in range(30):  # random hex: pglz cannot shrink it much
        await query(
            sql.SQL(
                "INSERT INTO {} (n, blob) SELECT g, (SELECT string_agg(md5(random()::text || i || g), '') "
                "FROM generate_series(1, 32768) i) FROM generate_series(1, 10) g"
            ).format(table)
        )
    result = await trio.to_thread.run_sync(
        functools.partial(
            subprocess.run,
            [sys.executable, "-c", CONSUMER, outbox.url, outbox.schema, outbox.channel, json.dumps(options)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    )
    received, buffered, peak_kib = map(int, result.stdout.split())
    assert received < 300  # the reader stopped: the buffer is full
    assert buffered <= (64 << 20) + (16 << 20) + (2 << 20)  # the bound, plus the read that filled it
    assert peak_kib < 400 * 1024, f"peak RSS {peak_kib / 1024:.0f} MB"
    figures = f"read {received}, buffered {buffered >> 20} MB, peak RSS {peak_kib >> 10} MB"
    print(f"\n300 x 1 MB rows, stuck consumer: {figures}")
