"""A pg_events user switches to trio-pgevents and notices nothing (issue 17, points 1-6).

The original pg_events 0.1.6 (installed with ``pip install --no-deps
pg_events==0.1.6``; it imports on Python 3.11 beside psycopg2-binary) runs
side by side with trio-pgevents: the same operations on two databases of
the same server, one built by each, the same settings module and callbacks.
Each database is made for the test and dropped after it: pg_events triggers
every table of its database, and ``build`` watches every user schema.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy
import trio

from trio_pgevents import (
    Installer,
    InsufficientPrivilegeError,
    RowChange,
    SchemaChange,
    decode_trigger_payload,
    open_event_stream,
)
from trio_pgevents._cli.pgevents_shape import pg_events_payload
from trio_pgevents.testing._database import libpq_dsn

from .conftest import run_sql
from .test_cli import CLI, ROOT, TIMEOUT, CliProcess, StartCli, _env, arun_cli, start_cli

__all__ = ["start_cli"]  # test_cli's fixture, used here

HAS_PG_EVENTS = importlib.util.find_spec("pg_events") is not None
needs_pg_events = pytest.mark.skipif(
    not HAS_PG_EVENTS,
    reason="the original pg_events is not installed (pip install --no-deps pg_events==0.1.6)",
)
PG_EVENTS = [sys.executable, "-W", "ignore", "-m", "pg_events"]  # imp, distutils: deprecated in 3.11
ORIGINAL = "tests.cli_settings.pgevents_original"


class Database:
    """A database of the test server, made for one test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dsn = libpq_dsn(url)

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        return run_sql(self.dsn, statement, params)

    async def asql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        return await trio.to_thread.run_sync(self.sql, statement, params)


@pytest.fixture
def make_db(pg_url: str, pg_dsn: str, unique: Callable[[str], str]) -> Iterator[Callable[[], Database]]:
    made: list[str] = []

    def make() -> Database:
        name = unique("pgevents_compat")
        run_sql(pg_dsn, f'CREATE DATABASE "{name}"')
        made.append(name)
        return Database(sqlalchemy.make_url(pg_url).set(database=name).render_as_string(hide_password=False))

    yield make
    for name in made:
        run_sql(pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_events_build(db: Database, *args: str) -> None:
    """``pg_events build`` (the original) on ``db``."""
    env = _env(PG_EVENTS_ORIGINAL_URL=db.dsn)
    result = subprocess.run(
        [*PG_EVENTS, "build", "--settings", ORIGINAL, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def build(db: Database, *args: str) -> subprocess.CompletedProcess[str]:
    result = await arun_cli(["build", "--database-url", db.url, *args])
    assert result.returncode == 0, result.stderr
    return result


async def listening(db: Database, count: int = 1) -> None:
    """Wait until ``count`` sessions of ``db`` LISTEN (pg_events' worker says nothing when it does)."""
    with trio.fail_after(TIMEOUT):
        while True:
            rows = await db.asql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query ILIKE 'LISTEN%'"
            )
            if rows[0][0] >= count:
                return
            await trio.sleep(0.05)


async def start_workers(
    start_cli: StartCli, original: Database, ours: Database
) -> tuple[CliProcess, CliProcess]:
    """pg_events' worker on ``original``, trio-pgevents' on ``ours``: same settings, same callbacks."""
    theirs = await start_cli(
        ["worker", "--settings", ORIGINAL], program=PG_EVENTS, env=_env(PG_EVENTS_ORIGINAL_URL=original.dsn)
    )
    mine = await start_cli(["worker", "--settings", ORIGINAL, "--database-url", ours.url])
    await mine.wait_for("worker listening", where="err")
    await listening(original)
    return theirs, mine


def callbacks(proc: CliProcess) -> list[tuple[str, str, str]]:
    """Each callback call so far: (DATA or SCHEMA, thread, payload)."""
    calls = []
    for line in proc.out:
        kind, thread, kind_of_arg, payload = line.split(" ", 3)
        assert kind_of_arg == "type=str"
        calls.append((kind, thread.removeprefix("thread="), payload))
    return calls


MARK = "public.marks"


async def step(dbs: Sequence[Database], statement: str, label: str) -> None:
    """Run ``statement`` on every database, then a marker row each worker sees after its events."""
    for db in dbs:
        await db.asql(statement)
        await db.asql(f"INSERT INTO {MARK} VALUES (%s)", (label,))


def segments(calls: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The calls between markers, by the label of the marker that ends them."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for kind, _, payload in calls:
        data = json.loads(payload)
        if kind == "DATA" and data.get("table_name") == "marks":
            result[data["new_data"]["label"]] = current
            current = []
        else:
            current.append((kind, payload))
    return result


def comparable(kind: str, payload: str) -> tuple[str, Any]:
    """A callback's payload as both sides can agree on: a DDL event's objid depends on the database."""
    if kind == "DATA":
        return kind, payload  # byte for byte
    data = json.loads(payload)
    assert isinstance(data["objid"], str)
    data["objid"] = "<oid>"
    return kind, list(data.items())


STEPS = [
    ("insert", "INSERT INTO items (note) VALUES ('a')"),
    ("update", "UPDATE items SET note = 'b'"),
    ("delete", "DELETE FROM items"),
    ("underscore", "INSERT INTO _private VALUES (1)"),
    ("add column", "ALTER TABLE items ADD COLUMN extra int"),
    ("create index", "CREATE INDEX ON items (note)"),
    ("create schema", "CREATE SCHEMA later"),
    ("create table", "CREATE TABLE later.things (id serial PRIMARY KEY, note text)"),
    ("new schema's table", "INSERT INTO later.things (note) VALUES ('new')"),
    ("create table as", "CREATE TABLE copy AS SELECT 1 AS one"),
    ("drop column", "ALTER TABLE items DROP COLUMN extra"),
    ("truncate", "TRUNCATE later.things"),
    ("drop table", "DROP TABLE items"),
    # pg_events cannot build while a view exists (it tries row triggers on it): drop it at once.
    ("view", "CREATE VIEW v AS SELECT 1 AS one; DROP VIEW v"),
]
#: How many callbacks pg_events makes for each step (and so trio-pgevents).
EXPECTED = {
    "insert": ["DATA"],
    "update": ["DATA"],
    "delete": ["DATA"],
    "underscore": [],  # tables named _... are not watched
    "add column": ["SCHEMA"],
    "create index": [],
    "create schema": [],
    # CREATE SEQUENCE, CREATE TABLE, CREATE INDEX (the key), ALTER SEQUENCE (OWNED BY)
    "create table": ["SCHEMA"] * 4,
    "new schema's table": ["DATA"],  # a schema created after build is watched too
    "create table as": [],
    "drop column": ["SCHEMA", "SCHEMA"],  # the dropped column, then the ALTER TABLE
    "truncate": [],  # pg_events had no TRUNCATE trigger (see DIFFERS)
    "drop table": ["SCHEMA"],  # one event: its sequence, types, constraints... are not events
    "view": [],
}
#: Where trio-pgevents differs on purpose: a TRUNCATE reaches the data callback (a mirror of the
#: table would silently go stale otherwise), in pg_events' shape without old_data/new_data.
DIFFERS = {
    "truncate": [
        (
            "DATA",
            '{"table_schema" : "later", "table_name" : "things", "session_user" : "postgres", '
            '"method" : "TRUNCATE", "query" : "TRUNCATE later.things"}',
        )
    ]
}


@needs_pg_events
async def test_side_by_side_with_pg_events_the_callbacks_get_the_same(
    start_cli: StartCli, make_db: Callable[[], Database]
) -> None:
    original, ours = make_db(), make_db()
    for db in (original, ours):
        db.sql(
            f"CREATE TABLE {MARK} (label text); CREATE TABLE items (id serial PRIMARY KEY, note text);"
            "CREATE TABLE _private (id int)"
        )
    pg_events_build(original)
    await build(ours)  # the defaults: every user schema, auto-rebuild, DDL triggers
    theirs, mine = await start_workers(start_cli, original, ours)
    for label, statement in STEPS:
        await step([original, ours], statement, label)
    last = STEPS[-1][0]
    for proc in (theirs, mine):
        await proc.wait_for(f'"label":"{last}"')
    want, got = segments(callbacks(theirs)), segments(callbacks(mine))
    assert list(want) == list(got) == [label for label, _ in STEPS]
    for label, _ in STEPS:
        assert [kind for kind, _ in want[label]] == EXPECTED[label], (label, want[label])
        expected = DIFFERS.get(label, want[label])
        assert [comparable(*call) for call in got[label]] == [comparable(*call) for call in expected], label
    # Point 6: pg_events called back on its main thread; trio-pgevents calls plain functions in a
    # worker thread (the event loop goes on reading meanwhile).
    assert {thread for _, thread, _ in callbacks(theirs)} == {"main"}
    assert {thread for _, thread, _ in callbacks(mine)} == {"worker"}
    # The new schema's table has its triggers: nothing is missing.
    status = await arun_cli(["status", "--database-url", ours.url])
    assert status.returncode == 0, status.stdout
    assert "every user schema, those created later too" in status.stdout
    theirs.send_signal(signal.SIGTERM)
    mine.send_signal(signal.SIGTERM)
    assert await mine.wait() == 0, mine.transcript()


async def test_a_schema_created_after_build_without_auto_rebuild_is_reported_then_built(
    make_db: Callable[[], Database],
) -> None:
    db = make_db()
    db.sql("CREATE TABLE first (id int PRIMARY KEY)")
    await build(db, "--auto-rebuild", "false")
    db.sql("CREATE SCHEMA later; CREATE TABLE later.things (id int PRIMARY KEY)")
    db.sql("CREATE TABLE later._own (id int)")
    missing = await arun_cli(["status", "--json", "--database-url", db.url])
    assert missing.returncode == 1, missing.stdout
    status = json.loads(missing.stdout)
    assert status["all_schemas"] is True
    states = {(t["schema"], t["table"]): (t["state"], t["reason"]) for t in status["tables"]}
    state, reason = states[("later", "things")]
    assert state == "MISSING"
    assert "created after every user schema was watched" in reason
    assert ("later", "_own") not in states  # pg_events' rule: _tables are left out
    await build(db, "--auto-rebuild", "false")
    assert (await arun_cli(["status", "--database-url", db.url])).returncode == 0


async def test_underscore_tables_can_be_included(make_db: Callable[[], Database]) -> None:
    db = make_db()
    db.sql("CREATE TABLE _queue (id int PRIMARY KEY)")
    result = await build(db, "--include-underscore-tables")
    assert "on public._queue" in result.stdout
    installer = Installer(db.url)
    assert (table := (await installer.aio.status()).table("_queue")) is not None
    assert table.state == "INSTALLED"
    # And auto-rebuild follows the same rule for tables created later.
    await db.asql("CREATE TABLE _later (id int)")
    assert (later := (await installer.aio.status()).table("_later")) is not None
    assert later.state == "INSTALLED"


async def receive_ddl(db: Database, statements: Sequence[str], sentinel: str) -> list[SchemaChange]:
    """The DDL events of ``statements`` (then a CREATE TABLE of ``sentinel`` ends them)."""
    engine = sqlalchemy.create_engine(db.url)
    try:
        async with open_event_stream(engine, ["pgevents"]) as events:
            for statement in [*statements, f"CREATE TABLE public.{sentinel} (id int)"]:
                await db.asql(statement)
            got: list[SchemaChange] = []
            with trio.fail_after(TIMEOUT):
                async for event in events:
                    if isinstance(event, SchemaChange):
                        if event.object_identity == f"public.{sentinel}":
                            return got
                        got.append(event)
    finally:
        engine.dispose()
    raise AssertionError("stream ended")


async def test_a_drop_is_one_event_listing_its_dependents_and_all_is_an_option(
    make_db: Callable[[], Database],
) -> None:
    db = make_db()
    await build(db)
    statements = [
        "CREATE TABLE t (id serial PRIMARY KEY, note text)",
        "CREATE INDEX ON t (note)",
        "CREATE VIEW v AS SELECT 1 AS one",
        "CREATE SCHEMA s",
        "CREATE TABLE t2 AS SELECT 1 AS one",
        "DROP TABLE t",
    ]
    events = await receive_ddl(db, statements, "sentinel_1")
    tags = [e.command_tag for e in events]
    assert tags == ["CREATE SEQUENCE", "CREATE TABLE", "CREATE INDEX", "ALTER SEQUENCE", "DROP TABLE"]
    dropped = events[-1]
    assert (dropped.object_type, dropped.object_identity, dropped.data["original"]) == (
        "table",
        "public.t",
        True,
    )
    dependents = dropped.dependents
    assert {(d["object_type"], d["object_identity"]) for d in dependents} >= {
        ("sequence", "public.t_id_seq"),
        ("type", "public.t"),
        ("index", "public.t_pkey"),
        ("index", "public.t_note_idx"),
        ("default value", "for public.t.id"),
    }
    assert dropped.data["truncated"] is False
    # The callback's default payload is pg_events' drop event: no dependents.
    assert list(json.loads(pg_events_payload(dropped))) == [
        "classid", "objid", "objsubid", "original", "normal", "is_temporary",
        "object_type", "schema_name", "object_name", "object_identity",
    ]  # fmt: skip

    # The fuller stream, asked for: every command, every dropped object.
    result = await build(db, "--ddl-events", "all")
    assert "replaced" in result.stdout
    installer = Installer(db.url)
    status = await installer.aio.status()
    assert (status.ddl_events, status.ddl_state) == ("all", "INSTALLED")
    await installer.aio.install(ddl=True)  # without ddl_events: what is installed stays
    assert (await installer.aio.status()).ddl_events == "all"
    again = [*statements[:2], "CREATE VIEW v2 AS SELECT 1 AS one", "DROP TABLE t"]
    events = await receive_ddl(db, again, "sentinel_2")
    tags = [e.command_tag for e in events]
    assert tags.count("CREATE INDEX") == 2
    assert "CREATE VIEW" in tags
    drops = [e for e in events if e.command_tag == "DROP TABLE"]
    assert len(drops) >= 10  # the table, its sequence, types, default, constraints, TOAST table...
    assert all(e.dependents == () for e in drops)


def test_the_pg_events_shape_of_each_payload() -> None:
    def shaped(payload: str) -> str:
        event = decode_trigger_payload("pgevents", payload, 1, "db")
        assert isinstance(event, (RowChange, SchemaChange))
        return pg_events_payload(event)

    head = '"v" : 1, "kind" : "row", "table_schema" : "s", "table_name" : "t", "session_user" : "u", '
    # Numbers keep their text (1.50 is not 1.5): the row reads as row_to_json wrote it.
    assert shaped(
        "{" + head + '"method" : "UPDATE", "old_data" : {"n":1.50}, "new_data" : {"n":2}, '
        '"query" : "q", "truncated" : false}'
    ) == (
        '{"table_schema" : "s", "table_name" : "t", "session_user" : "u", "method" : "UPDATE", '
        '"old_data" : {"n":1.50}, "new_data" : {"n":2}, "query" : "q"}'
    )
    # DELETE: no new_data; TRUNCATE (pg_events had none): neither.
    assert '"new_data"' not in shaped(
        "{" + head + '"method" : "DELETE", "old_data" : {"n":1}, "new_data" : null, "query" : null, '
        '"truncated" : false}'
    )
    truncate = shaped(
        "{" + head + '"method" : "TRUNCATE", "old_data" : null, "new_data" : null, "query" : "q", '
        '"truncated" : false}'
    )
    assert list(json.loads(truncate)) == ["table_schema", "table_name", "session_user", "method", "query"]
    # Where pg_events would have failed the write, or sends keys only: the flag says so.
    cut = shaped(
        "{" + head + '"method" : "INSERT", "old_data" : null, "new_data" : {"id":1}, "query" : null, '
        '"truncated" : true}'
    )
    assert json.loads(cut)["truncated"] is True
    keys = shaped(
        "{" + head + '"method" : "INSERT", "old_data" : null, "new_data" : {"id":1}, "query" : null, '
        '"truncated" : false, "keys_only" : true}'
    )
    assert list(json.loads(keys))[-1] == "keys_only"
    # pg_events' own payloads (a database it built) pass as they came.
    legacy = '{"table_name": "t", "method": "INSERT", "new_data": {"id": 1}}'
    assert shaped(legacy) == legacy


@needs_pg_events
async def test_worker_auto_rebuild_false_needs_no_schema_callback(
    start_cli: StartCli, make_db: Callable[[], Database]
) -> None:
    original, ours = make_db(), make_db()
    for db in (original, ours):
        db.sql("CREATE TABLE items (id int PRIMARY KEY)")
    pg_events_build(original)
    await build(ours)
    data_only = "tests.cli_settings.pgevents_data_only"
    settings = ["--settings", data_only, "--database-url", ours.url]
    refused = await arun_cli(["worker", *settings])
    assert refused.returncode == 2
    assert "--auto-rebuild false" in refused.stderr
    mine = await start_cli(["worker", "--auto-rebuild", "false", *settings])
    await mine.wait_for("worker listening", where="err")
    # pg_events takes the same options and settings.
    theirs = await start_cli(
        ["worker", "--settings", data_only, "--auto-rebuild", "false"],
        program=PG_EVENTS,
        env=_env(PG_EVENTS_ORIGINAL_URL=original.dsn),
    )
    await listening(original)
    for db in (original, ours):
        await db.asql("ALTER TABLE items ADD COLUMN note text")  # a DDL event: ignored by both
        await db.asql("INSERT INTO items VALUES (1, 'one')")
    for proc in (mine, theirs):
        (line,) = await proc.wait_for('"method" : "INSERT"')
        assert line.startswith("DATA thread=")
        assert [line for line in proc.out if not line.startswith("DATA")] == []
    mine.send_signal(signal.SIGTERM)
    assert await mine.wait() == 0, mine.transcript()


def pg_events_objects(db: Database) -> list[tuple[str, ...]]:
    return db.sql(
        """SELECT 'event trigger', evtname::text FROM pg_event_trigger WHERE evtname LIKE 'pgevents%'
           UNION ALL SELECT 'function', proname::text FROM pg_proc WHERE proname LIKE 'pgevents%'
           UNION ALL SELECT 'trigger', tgname::text FROM pg_trigger WHERE tgname LIKE 'pgevents%'
           ORDER BY 1, 2"""
    )


@needs_pg_events
async def test_build_on_a_pg_events_database_reports_then_replaces_its_objects(
    start_cli: StartCli, make_db: Callable[[], Database]
) -> None:
    db = make_db()
    db.sql("CREATE TABLE items (id int PRIMARY KEY)")
    pg_events_build(db)
    assert ("trigger", "pgevents_public__items") in pg_events_objects(db)

    # Without --replace-pg-events and no terminal to ask on: refused, nothing changed (pg_events'
    # event triggers would run on build's own CREATE TABLE, and double every event).
    refused = await arun_cli(["build", "--database-url", db.url])
    assert refused.returncode == 2, refused.stderr
    assert "was built by pg_events" in refused.stderr
    assert "--replace-pg-events" in refused.stderr
    assert db.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgevents'") == [(0,)]
    status = await arun_cli(["status", "--database-url", db.url])
    assert "pg_events: event trigger pgevents_notice_alter_table" in status.stdout
    assert "--replace-pg-events" in status.stdout
    found = Installer(db.url).status().pg_events
    assert "function public.pgevents_data_update_notify()" in found
    assert "1 table trigger(s) calling public.pgevents_data_update_notify()" in found

    replaced = await build(db, "--replace-pg-events")
    assert "removed" in replaced.stdout
    assert "pgevents_notice_alter_table" in replaced.stdout
    assert pg_events_objects(db) == []
    assert Installer(db.url).status().pg_events == ()
    status = await arun_cli(["status", "--database-url", db.url])
    assert status.returncode == 0, status.stdout
    assert "pg_events" not in status.stdout

    # CREATE TABLE gives what pg_events gave: 4 callbacks, not 11 (no nested DROP/CREATE TRIGGER).
    proc = await start_cli(["worker", "--settings", ORIGINAL, "--database-url", db.url])
    await proc.wait_for("worker listening", where="err")
    await db.asql("CREATE TABLE t (id serial PRIMARY KEY)")
    await db.asql("INSERT INTO t VALUES (1)")
    await proc.wait_for('"method" : "INSERT"')
    assert [line.split(" ")[0] for line in proc.out] == ["SCHEMA"] * 4 + ["DATA"]
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.transcript()


@needs_pg_events
async def test_build_asks_on_a_terminal_before_replacing_pg_events(make_db: Callable[[], Database]) -> None:
    db = make_db()
    pg_events_build(db)

    def run() -> subprocess.CompletedProcess[str]:
        controller, terminal = os.openpty()
        try:
            os.write(controller, b"y\n")  # the terminal keeps the answer until build reads it
            return subprocess.run(
                [CLI, "build", "--database-url", db.url],
                stdin=terminal,
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=_env(),
                timeout=TIMEOUT,
                check=False,
            )
        finally:
            os.close(controller)
            os.close(terminal)

    result = await trio.to_thread.run_sync(run)
    assert result.returncode == 0, result.stderr
    assert "was built by pg_events" in result.stderr
    assert "[y/N]" in result.stderr
    assert pg_events_objects(db) == []


def test_replacing_pg_events_without_superuser_changes_nothing_of_theirs(
    make_db: Callable[[], Database], unique: Callable[[str], str], pg_dsn: str
) -> None:
    db = make_db()
    # pg_events' objects as its build makes them (a superuser's), without needing the package.
    db.sql(
        "CREATE FUNCTION pgevents_table_alter_event() RETURNS event_trigger LANGUAGE plpgsql "
        "AS $$ BEGIN END $$; CREATE EVENT TRIGGER pgevents_notice_alter_table ON ddl_command_end "
        "EXECUTE FUNCTION pgevents_table_alter_event()"
    )
    role = unique("plain")
    run_sql(pg_dsn, f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw'")
    try:
        database = sqlalchemy.make_url(db.url).database
        db.sql(f'GRANT CREATE ON DATABASE "{database}" TO "{role}"')
        url = sqlalchemy.make_url(db.url).set(username=role, password="pw")
        installer = Installer(url.render_as_string(hide_password=False))
        with pytest.raises(InsufficientPrivilegeError, match="removing pg_events' objects needs a superuser"):
            installer.install(replace_pg_events=True)
        assert [name for kind, name in pg_events_objects(db)] == [
            "pgevents_notice_alter_table",
            "pgevents_table_alter_event",
        ]
        # Everything else was installed; a superuser's script removes them in a migration.
        assert installer.status().function_state == "INSTALLED"
        script = Installer(db.url).install_sql(ddl=True, replace_pg_events=True)
        db.sql(script)
        assert pg_events_objects(db) == []
    finally:
        db.sql(f'DROP OWNED BY "{role}" CASCADE')
        run_sql(pg_dsn, f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


async def test_a_drop_with_too_many_dependents_for_notify_lists_fewer_and_says_so(
    make_db: Callable[[], Database],
) -> None:
    db = make_db()
    await build(db)
    columns = ", ".join(f"c{n} int" for n in range(120))
    db.sql(f"CREATE TABLE wide (id int PRIMARY KEY, {columns})")
    for n in range(120):  # each listed dependent takes ~200 bytes: far past NOTIFY's 8000
        db.sql(f'CREATE INDEX "wide_index_with_a_rather_long_name_number_{n:03}" ON wide (c{n})')
    (dropped,) = await receive_ddl(db, ["DROP TABLE wide"], "sentinel_3")
    assert dropped.object_identity == "public.wide"
    assert dropped.data["truncated"] is True
    assert 10 < len(dropped.dependents) < 120
    assert len(dropped.payload.encode()) < 8000


async def test_every_user_schema_leaves_out_system_and_library_schemas(
    make_db: Callable[[], Database],
) -> None:
    db = make_db()
    other = Installer(db.url, schema="other_library", channel="other")
    await other.aio.install(durable=True)  # its own tables (registry, outbox) are not user tables
    db.sql("CREATE SCHEMA app; CREATE TABLE app.orders (id int PRIMARY KEY)")
    installer = Installer(db.url)
    report = await installer.aio.watch_all_schemas()
    watched = {a.name.rpartition(" on ")[2] for a in report.actions if a.kind == "trigger"}
    assert watched == {"app.orders"}
    status = await installer.aio.status()
    assert {(t.schema, t.table) for t in status.tables} == {("app", "orders")}
    assert status.ok
