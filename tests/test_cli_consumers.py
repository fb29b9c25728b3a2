"""The CLI and durable consumers (issue 15): worker leases, ``status`` of consumers, metrics.

Every worker is the real console script in a subprocess, against a real Postgres.
"""

from __future__ import annotations

import json

import trio
from psycopg2 import sql

from trio_pgevents import DurableStream, RowChange, open_durable_stream

from .conftest import Outbox, run_sql
from .test_cli import CliProcess, arun_cli
from .test_cli import start_cli as start_cli  # the fixture

DURABLE_SETTINGS = "tests.cli_settings.durable"
#: Metrics by sample name: (labels, value).
Samples = dict[str, tuple[dict[str, str], float]]


def durable_args(outbox: Outbox, consumer: str, *extra: str) -> list[str]:
    return [
        "worker",
        "--settings",
        DURABLE_SETTINGS,
        "--database-url",
        outbox.url,
        "--callback-arg",
        "event",
        "--consumer",
        consumer,
        "--installer-schema",
        outbox.schema,
        "--channel",
        outbox.channel,
        *extra,
    ]


def holders(outbox: Outbox, consumer: str) -> set[int]:
    """Pids of the processes holding a partition of ``consumer`` now."""
    rows = run_sql(
        outbox.dsn,
        sql.SQL(  # type: ignore[arg-type]
            "SELECT holder FROM {}.consumer_parts WHERE consumer = %s AND holder IS NOT NULL "
            "AND expires_at > now()"
        ).format(sql.Identifier(outbox.schema)),
        (consumer,),
    )
    return {int(holder.split(":")[1]) for (holder,) in rows}


def handled(process: CliProcess, n: int) -> bool:
    return any(line.startswith(f"ROW {n} ") for line in process.out)


async def take_rows(stream: DurableStream, count: int) -> list[RowChange]:
    got: list[RowChange] = []
    with trio.fail_after(20):
        while len(got) < count:
            event = await stream.receive()
            if isinstance(event, RowChange):
                got.append(event)
    return got


# ---- status ----------------------------------------------------------------------------------------


async def test_status_lists_durable_consumers_and_gates_on_their_lag(outbox: Outbox) -> None:
    db = ["--database-url", outbox.url, "--installer-schema", outbox.schema, "--channel", outbox.channel]
    opts = outbox.opts(auto_ack=False, lease_timeout=5.0)
    group = outbox.opts(group=True, partitions=4, lease_timeout=5.0, start="latest")
    async with (
        open_durable_stream(outbox.url, "billing", **opts) as active,
        open_durable_stream(outbox.url, "billing", **opts) as standby,
        open_durable_stream(outbox.url, "fanout", **group) as fanout,
    ):
        ids = [s.statistics().member for s in (active, standby, fanout)]
        await outbox.ainsert(1, 2, 3)
        events = await take_rows(active, 3)
        await active.dead_letter(events[0], "broken on purpose", 1)

        result = await arun_cli(["status", "--json", *db])
        assert result.returncode == 0, result.stdout + result.stderr
        data = json.loads(result.stdout)
        assert data["lagging_consumers"] == []
        consumers = {c["name"]: c for c in data["consumers"]}
        billing, fan = consumers["billing"], consumers["fanout"]
        assert (billing["mode"], billing["partitions"], billing["lag_events"]) == ("exclusive", 1, 2)
        assert (billing["pending"], billing["dead_letters"], billing["last_id"]) == (2, 1, events[0].id)
        assert billing["lag_seconds"] > 0
        assert [(m["member"], m["active"], m["partitions"]) for m in billing["members"]] == [
            (ids[0], True, [0]),
            (ids[1], False, []),
        ]
        assert (fan["mode"], fan["partitions"]) == ("group", 4)
        assert [(m["member"], m["partitions"]) for m in fan["members"]] == [(ids[2], [0, 1, 2, 3])]

        late = await arun_cli(["status", "--max-consumer-lag", "0", *db])
        assert late.returncode == 3, late.stdout + late.stderr
        lines = late.stdout.splitlines()
        assert "durable consumers" in lines
        (row,) = [line for line in lines if line.startswith("billing ") and "exclusive" in line]
        for cell in ("1 active, 1 standby", f"{events[0].txid}/{events[0].id}", "LAGGING"):
            assert cell in row
        cells = row.split()
        assert (cells[-4], float(cells[-3]) >= 0, cells[-2], cells[-1]) == ("2", True, "1", "LAGGING")
        (member_row,) = [line for line in lines if ids[1] in line]
        assert member_row.split()[:4] == ["billing", ids[1], "standby", "-"]
        (fan_row,) = [line for line in lines if ids[2] in line]
        assert fan_row.split()[:4] == ["fanout", ids[2], "active", "0-3"]
        (loud,) = [line for line in late.stderr.splitlines() if "durable consumer 'billing'" in line]
        assert loud.startswith("trio-pgevents: WARNING: durable consumer 'billing' is ")
        assert "2 event(s) waiting; 1 active member(s)" in loud

        roomy = await arun_cli(["status", "--max-consumer-lag", "3600", *db])
        assert roomy.returncode == 0, roomy.stdout + roomy.stderr
        assert "LAGGING" not in roomy.stdout
        bad = await arun_cli(["status", "--max-consumer-lag", "soon", *db])
        assert bad.returncode == 2
        assert "--max-consumer-lag" in bad.stderr

        # Something MISSING keeps exit status 1 (it wins over the lag), still loud about the lag.
        run_sql(outbox.dsn, f'DROP TABLE "{outbox.schema}".watched')
        missing = await arun_cli(["status", "--max-consumer-lag", "0", *db])
        assert missing.returncode == 1, missing.stdout + missing.stderr
        assert "trio-pgevents: WARNING: durable consumer 'billing'" in missing.stderr
