"""The CLI and durable consumers (issue 15): worker leases, ``status`` of consumers, metrics.

Every worker is the real console script in a subprocess, against a real Postgres.
"""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from psycopg2 import sql

from trio_pgevents import open_durable_stream

from .conftest import Outbox, Query, run_sql, take_rows
from .test_cli import SETTINGS, CliProcess, StartCli, _env, arun_cli, notify_all, row_payload
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


# ---- worker options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--group"], "--group needs --consumer (durable mode)"),
        (["--partitions", "4"], "--partitions needs --consumer (durable mode)"),
        (
            ["--lease-timeout", "5"],
            "--lease-timeout needs --consumer (durable mode)",
        ),
        (["--min-read-interval", "0.1"], "--min-read-interval needs --consumer (durable mode)"),
        (
            ["--consumer", "x", "--partitions", "4"],
            "--partitions needs --group (an exclusive consumer has one partition)",
        ),
    ],
)
async def test_durable_options_that_make_no_sense_exit_2_with_one_line(
    extra: list[str], message: str
) -> None:
    result = await arun_cli(["worker", "--settings", DURABLE_SETTINGS, *extra])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"trio-pgevents: error: worker: {message}"]


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--consumer", "x", "--group", "--partitions", "0"], "--partitions"),
        (["--consumer", "x", "--group", "--partitions", "1025"], "--partitions"),
        (["--consumer", "x", "--lease-timeout", "0"], "--lease-timeout"),
        (["--consumer", "x", "--min-read-interval", "2"], "--min-read-interval"),
        (["--consumer", "x", "--min-read-interval", "-1"], "--min-read-interval"),
        (["--metrics-port", "65536"], "--metrics-port"),
        (["--metrics-port", "http"], "--metrics-port"),
    ],
)
async def test_out_of_range_values_are_usage_errors(extra: list[str], flag: str) -> None:
    result = await arun_cli(["worker", "--settings", DURABLE_SETTINGS, *extra])
    assert result.returncode == 2, result.stderr
    assert f"argument {flag}" in result.stderr


# ---- leases: a graceful stop hands over at once ------------------------------------------------------


async def test_sigterm_hands_an_exclusive_consumer_to_the_standby_at_once(
    outbox: Outbox, start_cli: StartCli
) -> None:
    args = durable_args(outbox, "handover", "--lease-timeout", "30")  # expiry is far away
    first = await start_cli(args)
    await first.wait_for("durable consumer 'handover' (exclusive", where="err")
    second = await start_cli(args)
    await second.wait_for("durable consumer 'handover' (exclusive", where="err")
    with trio.fail_after(10):
        while not (held := holders(outbox, "handover")):
            await trio.sleep(0.05)
    assert len(held) == 1
    active, standby = (first, second) if held == {first.process.pid} else (second, first)
    assert held == {active.process.pid}

    await outbox.ainsert(1)
    await active.wait_for("ROW 1 ")
    active.send_signal(signal.SIGTERM)
    stopped_at = trio.current_time()
    assert await active.wait() == 0, active.transcript()
    await outbox.ainsert(2, 3)
    await standby.wait_for("ROW 3 ", timeout=5)  # the lease would expire only after 30 s
    assert trio.current_time() - stopped_at < 5
    assert handled(standby, 2)
    assert not handled(standby, 1), "row 1 was acknowledged when the active worker stopped"
    assert holders(outbox, "handover") == {standby.process.pid}


async def test_group_workers_share_the_partitions(outbox: Outbox, start_cli: StartCli) -> None:
    args = durable_args(outbox, "shared", "--group", "--lease-timeout", "2")
    workers = [await start_cli([*args, "--partitions", "4"])]
    await workers[0].wait_for("durable consumer 'shared' (group of 4 partitions)", where="err")
    workers.append(await start_cli(args))  # no --partitions: it joins the group as it is
    await workers[1].wait_for("durable consumer 'shared' (group of 4 partitions)", where="err")
    with trio.fail_after(20):
        while holders(outbox, "shared") != {w.process.pid for w in workers}:
            await trio.sleep(0.05)
    await outbox.ainsert(*range(1, 41))
    with trio.fail_after(30):
        while not all(any(handled(w, n) for w in workers) for n in range(1, 41)):
            await trio.sleep(0.05)
    # A new group with other partitions is refused with one line.
    other = await arun_cli(durable_args(outbox, "shared", "--group", "--partitions", "8"))
    assert other.returncode == 2, other.stderr
    (line,) = other.stderr.strip().splitlines()[-1:]
    assert line.startswith("trio-pgevents: error: durable consumer group 'shared' has 4 partitions")


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


# ---- metrics ----------------------------------------------------------------------------------------


async def metrics_url(process: CliProcess) -> str:
    (line,) = await process.wait_for("serving Prometheus metrics at ", where="err")
    return line.rsplit(" ", 1)[-1]


async def scrape(url: str) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    samples: Samples = {}
    for family in text_string_to_metric_families(await trio.to_thread.run_sync(get)):
        for sample in family.samples:
            samples[sample.name] = (sample.labels, sample.value)
    return samples


async def scrape_until(url: str, condition: Callable[[dict[str, float]], bool]) -> Samples:
    """Scrape until ``condition(values by name)`` holds (names without the ``trio_pgevents_`` prefix)."""
    with trio.fail_after(30):
        while True:
            samples = await scrape(url)
            values = {name.removeprefix("trio_pgevents_"): value for name, (_, value) in samples.items()}
            if condition(values):
                return samples
            await trio.sleep(0.1)


async def test_durable_worker_serves_prometheus_metrics(outbox: Outbox, start_cli: StartCli) -> None:
    worker = await start_cli(durable_args(outbox, "metered", "--max-attempts", "2", "--metrics-port", "0"))
    url = await metrics_url(worker)
    assert url.startswith("http://127.0.0.1:")
    await worker.wait_for("durable consumer 'metered'", where="err")
    first = await scrape_until(url, lambda v: "consumer_lag_events" in v)
    assert first["trio_pgevents_events_processed_total"] == ({"consumer": "metered"}, 0.0)
    assert first["trio_pgevents_active"][1] == 1.0

    await outbox.ainsert(1, -1, 2)
    await worker.wait_for("ROW 2 ")
    samples = await scrape_until(
        url, lambda v: v["dead_letters_total"] == 1 and v["consumer_lag_events"] == 0
    )
    values = {name.removeprefix("trio_pgevents_"): value for name, (_, value) in samples.items()}
    assert all(labels == {"consumer": "metered"} for labels, _ in samples.values())
    assert values["events_received_total"] == 3
    assert values["events_processed_total"] == 2
    assert values["callback_failures_total"] == 2  # row -1, twice
    assert values["retries_total"] == 1
    assert values["consumer_lag_seconds"] == 0.0
    assert (values["active"], values["partitions_held"], values["connected"]) == (1, 1, 1)
    assert values["lease_changes_total"] >= 1
    assert values["reconnects_total"] == 0

    worker.send_signal(signal.SIGTERM)
    assert await worker.wait() == 0, worker.transcript()


async def test_listening_worker_serves_the_metrics_that_apply(
    pg_url: str, query: Query, unique: Any, start_cli: StartCli
) -> None:
    channel = unique("metrics_ch")
    env = _env(PG_EVENTS_DATA_UPDATE_CALLBACK="tests.cli_settings.callbacks.on_data_raises")
    args = ["worker", "--settings", SETTINGS, "--database-url", pg_url, "--channel", channel]
    worker = await start_cli([*args, "--metrics-port", "0"], env=env)
    url = await metrics_url(worker)
    await worker.wait_for("worker listening", where="err")
    await notify_all(query, channel, [row_payload("t", 1, extra="fine"), row_payload("t", 2, extra="boom")])
    samples = await scrape_until(url, lambda v: v["callback_failures_total"] == 1)
    values = {name.removeprefix("trio_pgevents_"): value for name, (_, value) in samples.items()}
    assert values == {
        "events_received_total": 2,
        "events_processed_total": 1,
        "callback_failures_total": 1,
        "reconnects_total": 0,
        "connected": 1,
    }
    assert all(labels == {} for labels, _ in samples.values())
    worker.send_signal(signal.SIGTERM)
    assert await worker.wait() == 0, worker.transcript()


async def test_metrics_without_prometheus_client_is_one_clear_line(tmp_path: Path) -> None:
    blocked = tmp_path / "prometheus_client"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('not installed (blocked by the test)')\n")
    result = await arun_cli(
        ["worker", "--settings", DURABLE_SETTINGS, "--metrics-port", "0"], env=_env(PYTHONPATH=str(tmp_path))
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("trio-pgevents: error: worker: --metrics-port needs the prometheus_client package")
    assert "pip install 'trio-pgevents[metrics]'" in line


async def test_metrics_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await arun_cli(["worker", "--settings", DURABLE_SETTINGS, "--metrics-port", str(port)])
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"trio-pgevents: error: worker: cannot serve metrics on 127.0.0.1:{port}: ")
