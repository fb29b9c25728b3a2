"""Operating change streams (issue 9 point 4): list, lag, drop, via the installer and the CLI.

Real Postgres (the plugin's embedded server runs with ``wal_level=logical``);
the CLI runs as the real console script in a subprocess. Every slot a test
makes is dropped at teardown: a forgotten slot keeps WAL forever.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import trio
from sqlalchemy.engine import Engine

from trio_pgevents import (
    ConfigurationError,
    Installer,
    InstallStatus,
    ReplicationError,
    drop_change_stream,
    open_change_stream,
)

from .conftest import Query, run_sql

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "trio-pgevents")
TIMEOUT = 60

Unique = Callable[[str], str]


def cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_EVENTS_")}
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


async def acli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(cli, args)


@pytest.fixture
async def slots(pg_engine: Engine, pg_dsn: str) -> AsyncIterator[list[tuple[str, str | None]]]:
    """Append ``(slot, publication)`` for everything a test makes; all dropped at teardown."""
    made: list[tuple[str, str | None]] = []
    yield made
    for slot, publication in made:
        rows = run_sql(pg_dsn, "SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        if rows and rows[0][0] == "physical":
            run_sql(pg_dsn, "SELECT pg_drop_replication_slot(%s)", (slot,))
            continue
        await trio.to_thread.run_sync(drop_change_stream, pg_engine, slot, publication)


async def make_slot(
    query: Query, slots: list[tuple[str, str | None]], unique: Unique
) -> tuple[str, str, str]:
    """A table, a publication for it and a pgoutput slot nobody consumes: (table, slot, publication)."""
    table, slot, publication = unique("ops_t"), unique("ops_slot"), unique("ops_pub")
    slots.append((slot, publication))
    await query(f"CREATE TABLE public.{table} (id int PRIMARY KEY, note text)")
    await query(f"CREATE PUBLICATION {publication} FOR TABLE public.{table}")
    await query("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    return table, slot, publication


async def write(query: Query, table: str, start: int, rows: int = 2000) -> None:
    await query(
        f"INSERT INTO public.{table} SELECT g, repeat('x', 100) FROM generate_series(%s, %s) AS g",
        (start, start + rows - 1),
    )


async def slot_exists(query: Query, slot: str) -> bool:
    return bool(await query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)))


async def publication_exists(query: Query, publication: str) -> bool:
    return bool(await query("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)))


# ---- the installer ---------------------------------------------------------------------------------


async def test_installer_lists_pgoutput_slots_with_a_lag_that_grows(
    pg_engine: Engine, query: Query, slots: list[tuple[str, str | None]], unique: Unique
) -> None:
    table, slot, _ = await make_slot(query, slots, unique)
    physical = unique("ops_phys")
    slots.append((physical, None))
    await query("SELECT pg_create_physical_replication_slot(%s)", (physical,))
    installer = Installer(pg_engine, schema=unique("ops_lib"))

    listed = {s.slot: s for s in await installer.aio.change_streams()}
    assert physical not in listed  # not a change stream: never listed
    before = listed[slot]
    assert before.exists
    assert not before.active
    assert before.plugin == "pgoutput"
    assert before.lag_bytes is not None
    assert before.warning is None

    await write(query, table, 1)
    after = {s.slot: s for s in installer.change_streams()}[slot]
    assert after.lag_bytes is not None
    assert after.lag_bytes >= before.lag_bytes + 200_000  # 2000 rows of 100+ bytes, nobody consuming
    assert after.confirmed_flush_lsn == before.confirmed_flush_lsn

    # status() carries them too (a fresh database: nothing installed, but the slots are there).
    status = await installer.aio.status(lag_warning_bytes=100_000)
    assert isinstance(status, InstallStatus)
    mine = {s.slot: s for s in status.change_streams}[slot]
    assert mine.warning is not None
    assert "behind" in mine.warning
    assert slot in {s.slot for s in status.lagging_change_streams}
    quiet = installer.status()  # default threshold 1 GiB
    assert slot in {s.slot for s in quiet.change_streams}
    assert slot not in {s.slot for s in quiet.lagging_change_streams}
    # The field has a default: code building InstallStatus without it keeps working.
    assert InstallStatus("INSTALLED", None, ()).change_streams == ()

    with pytest.raises(ConfigurationError, match="lag_warning_bytes"):
        installer.change_streams(lag_warning_bytes=-1)


async def test_installer_drops_slot_and_publication_and_reports_it(
    pg_engine: Engine, query: Query, slots: list[tuple[str, str | None]], unique: Unique
) -> None:
    table = unique("ops_t")
    slot, publication = unique("ops_slot"), unique("ops_pub")
    slots.append((slot, publication))
    await query(f"CREATE TABLE public.{table} (id int PRIMARY KEY)")
    installer = Installer(pg_engine, schema=unique("ops_lib"))
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=[table]) as changes:
        with pytest.raises(ReplicationError, match="in use"):
            await installer.aio.drop_change_stream(slot, publication)
        assert changes.connected
    assert await slot_exists(query, slot)
    assert await publication_exists(query, publication)

    report = await installer.aio.drop_change_stream(slot, publication)
    assert [(a.kind, a.name, a.action) for a in report.actions] == [
        ("slot", slot, "removed"),
        ("publication", publication, "removed"),
    ]
    assert report.changed
    assert not await slot_exists(query, slot)
    assert not await publication_exists(query, publication)
    assert slot not in {s.slot for s in installer.change_streams()}

    again = installer.drop_change_stream(slot, publication)
    assert [a.action for a in again.actions] == ["unchanged", "unchanged"]
    assert not again.changed


async def test_drop_without_publication_keeps_it_and_refuses_foreign_slots(
    pg_engine: Engine, query: Query, slots: list[tuple[str, str | None]], unique: Unique
) -> None:
    _, slot, publication = await make_slot(query, slots, unique)
    installer = Installer(pg_engine, schema=unique("ops_lib"))
    report = installer.drop_change_stream(slot)
    assert [(a.kind, a.action) for a in report.actions] == [("slot", "removed")]
    assert not await slot_exists(query, slot)
    assert await publication_exists(query, publication)  # not named: kept

    physical = unique("ops_phys")
    slots.append((physical, None))
    await query("SELECT pg_create_physical_replication_slot(%s)", (physical,))
    with pytest.raises(ConfigurationError, match="not a change stream slot"):
        installer.drop_change_stream(physical)
    assert await slot_exists(query, physical)
    with pytest.raises(ConfigurationError, match="not a valid replication slot name"):
        installer.drop_change_stream("Bad-Name")


async def test_drop_change_stream_sql_runs_in_a_migration_transaction(
    pg_engine: Engine, pg_dsn: str, query: Query, slots: list[tuple[str, str | None]], unique: Unique
) -> None:
    _, slot, publication = await make_slot(query, slots, unique)
    installer = Installer(pg_engine, schema=unique("ops_lib"))
    script = await installer.aio.drop_change_stream_sql(slot, publication)
    assert slot in script
    assert publication in script
    assert await slot_exists(query, slot)  # rendering changes nothing

    def migrate() -> None:
        conn = psycopg2.connect(pg_dsn)
        try:
            with conn, conn.cursor() as cursor:  # one transaction, as a migration tool runs it
                cursor.execute(script)
        finally:
            conn.close()

    await trio.to_thread.run_sync(migrate)
    assert not await slot_exists(query, slot)
    assert not await publication_exists(query, publication)
    await trio.to_thread.run_sync(migrate)  # a second run finds nothing to do


# ---- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def installed(pg_url: str, pg_dsn: str, unique: Unique) -> Iterator[list[str]]:
    """A private installer schema (no database-wide DDL triggers), built; uninstalled at teardown."""
    options = [
        "--database-url",
        pg_url,
        "--installer-schema",
        unique("ops_cli"),
        "--channel",
        unique("ops_ch"),
    ]
    watched = unique("ops_watched")
    run_sql(pg_dsn, f"CREATE SCHEMA {watched}")
    run_sql(pg_dsn, f"CREATE TABLE {watched}.t (id int PRIMARY KEY)")
    built = cli(["build", "--no-ddl", "--auto-rebuild", "false", "--schema", watched, *options])
    assert built.returncode == 0, built.stderr
    yield options
    result = cli(["uninstall", "--yes", *options])
    assert result.returncode == 0, result.stderr


async def test_cli_status_shows_slots_and_gates_on_lag(
    installed: list[str], query: Query, slots: list[tuple[str, str | None]], unique: Unique
) -> None:
    table, slot, _ = await make_slot(query, slots, unique)
    await write(query, table, 1)

    ok = await acli(["status", "--json", *installed])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = json.loads(ok.stdout)
    assert data["ok"] is True
    (mine,) = [s for s in data["change_streams"] if s["slot"] == slot]
    assert mine["lag_bytes"] >= 200_000
    assert mine["active"] is False
    assert mine["warning"] is None
    assert slot not in data["lagging_change_streams"]

    lagging = await acli(["status", "--json", "--max-slot-lag", "1", *installed])
    assert lagging.returncode == 3, lagging.stdout + lagging.stderr
    assert slot in json.loads(lagging.stdout)["lagging_change_streams"]
    (loud,) = [
        line
        for line in lagging.stderr.splitlines()
        if line.startswith("trio-pgevents: WARNING:") and f"'{slot}'" in line
    ]
    assert "behind" in loud
    assert f"drop-change-stream --slot {slot}" in loud

    text = await acli(["status", "--max-slot-lag", "100kB", *installed])
    assert text.returncode == 3, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert "change streams" in lines
    (row,) = [line for line in lines if line.startswith(slot + " ")]
    assert "LAGGING" in row
    assert "bytes)" in row
    assert " no " in row

    roomy = await acli(["status", "--max-slot-lag", "512MB", *installed])
    assert roomy.returncode == 0, roomy.stdout + roomy.stderr
    bad = await acli(["status", "--max-slot-lag", "lots", *installed])
    assert bad.returncode == 2
    assert "--max-slot-lag" in bad.stderr

    # Something MISSING keeps exit status 1 (the existing rule wins over the lag).
    await query(f'DROP TABLE "{installed[3]}".watched')
    missing = await acli(["status", "--max-slot-lag", "1", *installed])
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "trio-pgevents: WARNING:" in missing.stderr  # still loud about the slot


async def test_cli_drop_change_stream(
    pg_url: str, pg_engine: Engine, query: Query, slots: list[tuple[str, str | None]], unique: Unique
) -> None:
    _, slot, publication = await make_slot(query, slots, unique)
    db = ["--database-url", pg_url]

    refused = await acli(["drop-change-stream", "--slot", slot, "--publication", publication, *db])
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "trio-pgevents: error: drop-change-stream: refusing without confirmation "
        "(stdin is not a terminal): pass --yes"
    ]
    assert await slot_exists(query, slot)

    unknown = await acli(["drop-change-stream", "--yes", "--slot", unique("nosuch"), *db])
    assert unknown.returncode == 2
    (line,) = unknown.stderr.strip().splitlines()
    assert line.startswith("trio-pgevents: error: drop-change-stream: no replication slot")

    invalid = await acli(["drop-change-stream", "--yes", "--slot", "Bad-Name", *db])
    assert invalid.returncode == 2
    assert "not a valid replication slot name" in invalid.stderr

    # A slot in use by a running change stream is refused, and left as it was.
    table2, slot2, publication2 = unique("ops_t"), unique("ops_slot"), unique("ops_pub")
    slots.append((slot2, publication2))
    await query(f"CREATE TABLE public.{table2} (id int PRIMARY KEY)")
    async with open_change_stream(pg_engine, slot=slot2, publication=publication2, tables=[table2]):
        busy = await acli(
            ["drop-change-stream", "--yes", "--slot", slot2, "--publication", publication2, *db]
        )
    assert busy.returncode == 2, busy.stdout + busy.stderr
    (line,) = busy.stderr.strip().splitlines()
    assert "in use" in line
    assert slot2 in line
    assert await slot_exists(query, slot2)
    assert await publication_exists(query, publication2)

    dropped = await acli(["drop-change-stream", "--yes", "--slot", slot, "--publication", publication, *db])
    assert dropped.returncode == 0, dropped.stderr
    rows = [line.split() for line in dropped.stdout.splitlines()[1:-1]]
    assert rows == [["removed", "slot", slot], ["removed", "publication", publication]]
    assert not await slot_exists(query, slot)
    assert not await publication_exists(query, publication)
