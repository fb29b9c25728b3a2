"""The installer (issue 4) and the outbox side of durable mode (issue 7), on a real Postgres.

Each test uses its own library schema and channel (``unique``), and uninstalls
at teardown: event triggers are database-wide and must not outlive a test.
"""

from __future__ import annotations

import json
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy
import trio
from psycopg2 import sql

import trio_pgevents
from trio_pgevents import (
    AsyncInstaller,
    ConfigurationError,
    Installer,
    InstallError,
    InsufficientPrivilegeError,
    RowChange,
    SchemaChange,
    decode_trigger_payload,
    open_event_stream,
)
from trio_pgevents._installer.sql import NOTIFY_MAX_BYTES, object_names

from .conftest import run_sql

Unique = Callable[[str], str]


def ident(*names: str) -> str:
    """A (qualified) identifier, quoted exactly as Postgres needs it."""
    return ".".join('"' + n.replace('"', '""') + '"' for n in names)


class Listen:
    """A psycopg2 LISTEN connection; waits for notifications on its socket (no sleeps)."""

    def __init__(self, dsn: str, *channels: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.channels = channels
        with self.conn.cursor() as cur:
            for ch in channels:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))
        self.received: list[Any] = []

    def wait(self, count: int, timeout: float = 10.0) -> list[Any]:
        """Return once ``count`` notifications (in total) have arrived."""
        end = time.monotonic() + timeout
        while len(self.received) < count:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"only {len(self.received)} of {count} notifications: {self.received}")
            select.select([self.conn], [], [], left)
            self.conn.poll()
            while self.conn.notifies:
                self.received.append(self.conn.notifies.pop(0))
        return self.received

    def until_sentinel(self, dsn: str, timeout: float = 10.0) -> list[Any]:
        """Everything before a sentinel NOTIFY sent now (so 'nothing more' is provable)."""
        run_sql(dsn, "SELECT pg_notify(%s, 'sentinel')", (self.channels[0],))
        end = time.monotonic() + timeout
        while not any(n.payload == "sentinel" for n in self.received):
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("sentinel never arrived")
            select.select([self.conn], [], [], left)
            self.conn.poll()
            while self.conn.notifies:
                self.received.append(self.conn.notifies.pop(0))
        before = [n for n in self.received if n.payload != "sentinel"]
        self.received.clear()
        return before

    def payloads(self, count: int) -> list[dict[str, Any]]:
        """The first ``count`` payloads, decoded (and forgotten)."""
        got = self.wait(count)[:count]
        del self.received[:count]
        return [json.loads(n.payload) for n in got]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def schema(pg_dsn: str, unique: Unique) -> Iterator[str]:
    """A fresh user schema for the test's tables, dropped at teardown."""
    name = unique("app")
    run_sql(pg_dsn, f"CREATE SCHEMA {ident(name)}")
    yield name
    run_sql(pg_dsn, f"DROP SCHEMA IF EXISTS {ident(name)} CASCADE")


@pytest.fixture
def listen(pg_dsn: str) -> Iterator[Callable[..., Listen]]:
    opened: list[Listen] = []

    def make(*channels: str) -> Listen:
        listener = Listen(pg_dsn, *channels)
        opened.append(listener)
        return listener

    yield make
    for listener in opened:
        listener.close()


def state_in(status: trio_pgevents.InstallStatus, table: str, schema: str) -> str | None:
    """The state of one table in a status, or None when it is not listed."""
    found = status.table(table, schema)
    return found.state if found is not None else None


def catalog_snapshot(dsn: str) -> dict[str, set[tuple[Any, ...]]]:
    """What an uninstall must leave exactly as it was."""
    return {
        "pg_namespace": set(run_sql(dsn, "SELECT nspname FROM pg_namespace")),
        "pg_class": set(run_sql(dsn, "SELECT relnamespace::regnamespace::text, relname FROM pg_class")),
        "pg_proc": set(run_sql(dsn, "SELECT pronamespace::regnamespace::text, proname FROM pg_proc")),
        "pg_trigger": set(run_sql(dsn, "SELECT tgrelid::regclass::text, tgname FROM pg_trigger")),
        "pg_event_trigger": set(run_sql(dsn, "SELECT evtname FROM pg_event_trigger")),
        "pg_description": set(
            run_sql(dsn, "SELECT classoid, objoid, objsubid, description FROM pg_description")
        ),
    }


# -- 1. functions, triggers, idempotence -----------------------------------------------------------


def test_install_twice_changes_nothing(make_installer: Callable[..., Installer]) -> None:
    installer = make_installer()
    first = installer.install(durable=True)
    assert first.changed
    assert {a.kind for a in first.installed} >= {"schema", "table", "function"}
    second = installer.install(durable=True)
    assert not second.changed
    assert second.actions
    assert all(a.action == "unchanged" for a in second.actions)
    status = installer.status()
    assert status.ok
    assert (status.function_state, status.durable_state, status.ddl_state) == ("INSTALLED", "INSTALLED", None)


def test_row_events_for_every_method(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, listen: Callable[..., Listen]
) -> None:
    installer = make_installer()
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'orders')} (id int PRIMARY KEY, total numeric)")
    report = installer.watch_table("orders", schema)
    assert [a.action for a in report.actions if a.kind == "trigger"] == ["installed", "installed"]
    again = installer.watch_table("orders", schema)
    assert not again.changed
    events = listen(installer.channel)
    table = ident(schema, "orders")
    run_sql(pg_dsn, f"INSERT INTO {table} VALUES (1, 9.50)")
    run_sql(pg_dsn, f"UPDATE {table} SET total = 10 WHERE id = 1")
    run_sql(pg_dsn, f"DELETE FROM {table} WHERE id = 1")
    run_sql(pg_dsn, f"TRUNCATE {table}")
    ins, upd, dele, trunc = events.payloads(4)
    for p in (ins, upd, dele, trunc):
        assert list(p)[:2] == ["v", "kind"]
        assert (p["v"], p["kind"], p["table_schema"], p["table_name"]) == (1, "row", schema, "orders")
        assert p["session_user"] == run_sql(pg_dsn, "SELECT session_user")[0][0]
        assert p["truncated"] is False
        assert set(p) >= {
            "table_schema",
            "table_name",
            "session_user",
            "method",
            "old_data",
            "new_data",
            "query",
        }
    assert (ins["method"], ins["old_data"], ins["new_data"]) == ("INSERT", None, {"id": 1, "total": 9.50})
    assert (upd["method"], upd["old_data"], upd["new_data"]) == (
        "UPDATE",
        {"id": 1, "total": 9.50},
        {"id": 1, "total": 10},
    )
    assert (dele["method"], dele["old_data"], dele["new_data"]) == ("DELETE", {"id": 1, "total": 10}, None)
    assert (trunc["method"], trunc["old_data"], trunc["new_data"]) == ("TRUNCATE", None, None)
    assert ins["query"] == f"INSERT INTO {table} VALUES (1, 9.50)"
    # The raw payload starts exactly as the decoder's fast path expects.
    assert events.until_sentinel(pg_dsn) == []


# -- 2. payloads: identifiers, types, keys ---------------------------------------------------------


def test_hostile_identifiers(
    make_installer: Callable[..., Installer], pg_dsn: str, listen: Callable[..., Listen]
) -> None:
    long_prefix = "t" * 58
    lib_schema = 'Lib "schema" ü ' + "x" * 20
    installer = make_installer(schema=lib_schema, channel='Chan "nel" É')
    user_schema = 'My "Schema" with spaces ✓'
    names = [
        'Quoted "name"',
        "with space",
        "UPPER case",
        "ünïcødé ✓",
        "a" * 63,  # 63 bytes: the longest name Postgres keeps
        long_prefix + "_one",  # two 62-byte names sharing 58 bytes
        long_prefix + "_two",
        "semi;colon'--",
    ]
    assert all(len(n.encode()) <= 63 for n in names)
    run_sql(pg_dsn, f"CREATE SCHEMA {ident(user_schema)}")
    try:
        for n in names:
            run_sql(pg_dsn, f'CREATE TABLE {ident(user_schema, n)} ("Id ✓" int PRIMARY KEY, "My col" text)')
        report = installer.watch_schema(user_schema)
        assert len([a for a in report.actions if a.kind == "trigger" and a.action == "installed"]) == 2 * len(
            names
        )
        events = listen(installer.channel)
        for i, n in enumerate(names):
            run_sql(pg_dsn, f"INSERT INTO {ident(user_schema, n)} VALUES (%s, %s)", (i, n))
        got = events.payloads(len(names))
        assert [(p["table_schema"], p["table_name"], p["new_data"]) for p in got] == [
            (user_schema, n, {"Id ✓": i, "My col": n}) for i, n in enumerate(names)
        ]
        status = installer.status()
        assert [t.state for t in status.tables] == ["INSTALLED"] * len(names)
        # Trigger names never depend on the table name: short, equal on every table.
        trigger_names = run_sql(
            pg_dsn,
            "SELECT DISTINCT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relnamespace = %s::regnamespace",
            (ident(user_schema),),
        )
        assert {r[0] for r in trigger_names} == {
            object_names(lib_schema).row_trigger,
            object_names(lib_schema).truncate_trigger,
        }
    finally:
        run_sql(pg_dsn, f"DROP SCHEMA {ident(user_schema)} CASCADE")


def test_names_postgres_would_truncate_are_refused(pg_url: str) -> None:
    with pytest.raises(ConfigurationError, match="63 bytes"):
        Installer(pg_url, schema="s" * 64)
    with pytest.raises(ConfigurationError, match="channel"):
        Installer(pg_url, channel="")
    long_channel = Installer(pg_url, channel="c" * 60, schema="never_created")
    with pytest.raises(ConfigurationError, match="durable"):
        long_channel.install_sql(durable=True)


def test_column_types_and_key_types(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, listen: Callable[..., Listen]
) -> None:
    installer = make_installer()
    t_types = ident(schema, "types")
    run_sql(
        pg_dsn,
        f"""CREATE TABLE {t_types} (
            id uuid PRIMARY KEY, j json, jb jsonb, ints int[], texts text[], b bytea,
            ts timestamptz, d date, n numeric(30, 10), f double precision, flag boolean,
            big bigint, iv interval, txt text)""",
    )
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'composite')} (a text, b int, v text, PRIMARY KEY (a, b))")
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'nokey')} (v text)")
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'serial')} (id bigserial PRIMARY KEY, v text)")
    installer.watch_schema(schema)
    events = listen(installer.channel)
    run_sql(
        pg_dsn,
        f"""INSERT INTO {t_types} VALUES ('6f1c1a9e-8c1c-4f43-9d2a-2b1c1d1e1f10', '{{"a": [1, 2]}}',
            '{{"b": null}}', ARRAY[1, 2], ARRAY['x', 'y "z"'], '\\x00ff', '2024-01-02 03:04:05+00',
            '2024-02-29', 12345678901234567890.0123456789, 1.5, true, 9223372036854775807,
            '1 day 2 hours', E'line\\nbreak')""",
    )
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'composite')} VALUES ('k', 2, 'v')")
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'nokey')} VALUES ('no key')")
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'serial')} (v) VALUES ('s')")
    raw = [n.payload for n in events.wait(4)]
    types, composite, nokey, serial = (json.loads(r) for r in raw)
    row = types["new_data"]
    assert row["id"] == "6f1c1a9e-8c1c-4f43-9d2a-2b1c1d1e1f10"
    assert row["j"] == {"a": [1, 2]}
    assert row["jb"] == {"b": None}
    assert row["ints"] == [1, 2]
    assert row["texts"] == ["x", 'y "z"']
    assert row["b"] == "\\x00ff"
    assert row["ts"].startswith("2024-01-02T03:04:05")
    assert row["d"] == "2024-02-29"
    assert '"n":12345678901234567890.0123456789,' in raw[0]  # numeric keeps every digit in the JSON text
    assert row["f"] == 1.5
    assert row["flag"] is True
    assert row["big"] == 9223372036854775807
    assert row["iv"] == "1 day 02:00:00"
    assert row["txt"] == "line\nbreak"
    assert composite["new_data"] == {"a": "k", "b": 2, "v": "v"}
    assert nokey["new_data"] == {"v": "no key"}
    assert serial["new_data"] == {"id": 1, "v": "s"}


# -- 3. never fail the user's write ----------------------------------------------------------------


def test_one_megabyte_row_and_100kb_statement_commit_and_arrive_truncated(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, listen: Callable[..., Listen]
) -> None:
    installer = make_installer()
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'big')} (id int PRIMARY KEY, body text)")
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'big_nokey')} (body text)")
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'small')} (id int PRIMARY KEY, body text)")
    installer.watch_schema(schema)
    events = listen(installer.channel)
    comment = "/* " + "q" * 100_000 + " */"
    megabyte = "é" * 500_000  # 1 MB in UTF-8, multi-byte on purpose
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'big')} VALUES (7, %s) {comment}", (megabyte,))
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'big_nokey')} VALUES (%s) {comment}", (megabyte,))
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'small')} VALUES (1, 'tiny') {comment}")
    got = events.wait(3)
    assert all(len(n.payload.encode()) <= NOTIFY_MAX_BYTES for n in got)
    big, nokey, small = (json.loads(n.payload) for n in got)
    # The writes committed:
    assert run_sql(pg_dsn, f"SELECT id, length(body) FROM {ident(schema, 'big')}") == [(7, 500_000)]
    assert run_sql(pg_dsn, f"SELECT count(*) FROM {ident(schema, 'big_nokey')}") == [(1,)]
    # Row reduced to its primary key, query cut to what fits:
    assert big["truncated"] is True
    assert big["new_data"] == {"id": 7}
    assert big["method"] == "INSERT"
    # (psycopg2 sends parameters inline, so the statement itself is over 1 MB here)
    assert big["query"].startswith(f"INSERT INTO {ident(schema, 'big')} VALUES (7, 'éé")
    assert 3000 < len(big["query"]) < 8000
    assert nokey["truncated"] is True
    assert nokey["new_data"] is None
    # A small row keeps all its data: only the query is cut.
    assert small["truncated"] is True
    assert small["new_data"] == {"id": 1, "body": "tiny"}
    assert small["query"].startswith("INSERT INTO")
    assert len(small["query"]) < 8000
    assert len(json.dumps(small, ensure_ascii=False).encode()) > 7000  # the room was used


def test_include_query_false_leaves_the_statement_out(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, listen: Callable[..., Listen]
) -> None:
    installer = make_installer(include_query=False)
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'secret')} (id int PRIMARY KEY)")
    installer.watch_table("secret", schema)
    events = listen(installer.channel)
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'secret')} VALUES (1) /* password=hunter2 */")
    (p,) = events.payloads(1)
    assert p["query"] is None
    assert "hunter2" not in json.dumps(p)


# -- views, foreign tables, partitions ----------------------------------------------------------


def test_watch_schema_skips_views_and_foreign_tables(
    make_installer: Callable[..., Installer],
    schema: str,
    pg_dsn: str,
    listen: Callable[..., Listen],
    unique: Unique,
) -> None:
    installer = make_installer()
    fdw, server = unique("fdw"), unique("srv")
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'base')} (id int PRIMARY KEY)")
    run_sql(pg_dsn, f"CREATE VIEW {ident(schema, 'a_view')} AS SELECT * FROM {ident(schema, 'base')}")
    run_sql(pg_dsn, f"CREATE MATERIALIZED VIEW {ident(schema, 'mat')} AS SELECT 1 AS x")
    run_sql(pg_dsn, f"CREATE FOREIGN DATA WRAPPER {ident(fdw)}")
    run_sql(pg_dsn, f"CREATE SERVER {ident(server)} FOREIGN DATA WRAPPER {ident(fdw)}")
    try:
        run_sql(pg_dsn, f"CREATE FOREIGN TABLE {ident(schema, 'remote')} (id int) SERVER {ident(server)}")
        report = installer.watch_schema(schema)
        skipped = {a.name: a.reason for a in report.skipped}
        assert set(skipped) == {f"{schema}.{n}" for n in ("a_view", "mat", "remote")}
        assert all(skipped.values())
        status = installer.status()
        states = {t.table: (t.state, t.reason) for t in status.tables}
        assert states["base"] == ("INSTALLED", None)
        for name in ("a_view", "mat", "remote"):
            assert states[name][0] == "SKIPPED"
            assert states[name][1]
        assert "view" in str(states["a_view"][1])
        assert "foreign" in str(states["remote"][1])
        assert status.ok
        events = listen(installer.channel)
        run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'base')} VALUES (1)")
        assert events.payloads(1)[0]["table_name"] == "base"
    finally:
        run_sql(pg_dsn, f"DROP SCHEMA {ident(schema)} CASCADE; CREATE SCHEMA {ident(schema)}")
        run_sql(pg_dsn, f"DROP SERVER {ident(server)}; DROP FOREIGN DATA WRAPPER {ident(fdw)}")


def test_partitioned_tables(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, listen: Callable[..., Listen]
) -> None:
    installer = make_installer()
    parent = ident(schema, "measurements")
    run_sql(pg_dsn, f"CREATE TABLE {parent} (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
    run_sql(
        pg_dsn,
        f"CREATE TABLE {ident(schema, 'm2024')} PARTITION OF {parent} "
        f"FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    )
    installer.watch_schema(schema)
    # A partition created after watching gets the parent's (cloned) trigger.
    run_sql(
        pg_dsn,
        f"CREATE TABLE {ident(schema, 'm2025')} PARTITION OF {parent} "
        f"FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    )
    status = installer.status()
    assert [(t.table, t.state) for t in status.tables] == [("measurements", "INSTALLED")]
    events = listen(installer.channel)
    run_sql(pg_dsn, f"INSERT INTO {parent} VALUES (1, '2024-05-01'), (2, '2025-05-01')")
    run_sql(pg_dsn, f"UPDATE {parent} SET id = 3 WHERE id = 2")
    got = events.payloads(3)
    assert [(p["table_name"], p["method"]) for p in got] == [
        ("m2024", "INSERT"),
        ("m2025", "INSERT"),
        ("m2025", "UPDATE"),
    ]
    # Explicitly watching a partition is harmless: its trigger is the parent's.
    report = installer.watch_table("m2024", schema)
    assert {a.action for a in report.actions if a.kind == "trigger"} <= {"skipped", "installed"}
    run_sql(pg_dsn, f"INSERT INTO {parent} VALUES (4, '2024-06-01')")
    assert [json.loads(n.payload)["new_data"] for n in events.until_sentinel(pg_dsn)] == [
        {"id": 4, "at": "2024-06-01"}
    ]


# -- 4. decoded events -----------------------------------------------------------------------------


async def test_default_stream_decodes_row_and_schema_changes(
    pg_url: str, pg_engine: sqlalchemy.engine.Engine, schema: str, query: Any
) -> None:
    installer = Installer(pg_url)  # the defaults: schema and channel "pgevents"
    try:
        await installer.aio.install(ddl=True)
        await query(f"CREATE TABLE {ident(schema, 'items')} (id int PRIMARY KEY, name text)")
        await installer.aio.watch_table("items", schema)
        async with open_event_stream(pg_engine, ["pgevents"]) as events:
            await query(f"INSERT INTO {ident(schema, 'items')} VALUES (1, 'one')")
            await query(f"ALTER TABLE {ident(schema, 'items')} ADD COLUMN price numeric")
            await query(f"DROP TABLE {ident(schema, 'items')}")
            with trio.fail_after(10):
                row = await events.receive()
                assert isinstance(row, RowChange)
                assert (row.table_schema, row.table_name, row.method) == (schema, "items", "INSERT")
                assert row.new_data == {"id": 1, "name": "one"}
                assert row.old_data is None
                assert row.truncated is False
                assert row.query
                assert row.session_user
                alter = await events.receive()
                assert isinstance(alter, SchemaChange)
                assert (alter.command_tag, alter.object_type) == ("ALTER TABLE", "table")
                assert alter.object_identity == f"{schema}.items"
                assert alter.schema_name == schema
                assert alter.object_name == "items"
                for key in (
                    "classid",
                    "objid",
                    "objsubid",
                    "original",
                    "normal",
                    "in_extension",
                    "is_temporary",
                ):
                    assert key in alter.data
                drops: list[SchemaChange] = []
                while not any(d.object_type == "table" for d in drops):
                    event = await events.receive()
                    if isinstance(event, SchemaChange) and event.command_tag == "DROP TABLE":
                        drops.append(event)
                dropped = next(d for d in drops if d.object_type == "table")
                assert dropped.object_name == "items"
                assert dropped.data["original"] is True
    finally:
        await installer.aio.uninstall()


# -- 5. DDL event triggers without superuser --------------------------------------------------------


def test_non_superuser_gets_everything_but_ddl_triggers(
    pg_url: str, pg_dsn: str, unique: Unique, listen: Callable[..., Listen]
) -> None:
    role = unique("plain_role")
    user_schema = unique("owned")
    database = run_sql(pg_dsn, "SELECT current_database()")[0][0]
    run_sql(pg_dsn, f"CREATE ROLE {ident(role)} LOGIN NOSUPERUSER PASSWORD 'pw'")
    run_sql(pg_dsn, f"GRANT CREATE ON DATABASE {ident(database)} TO {ident(role)}")
    run_sql(pg_dsn, f"CREATE SCHEMA {ident(user_schema)} AUTHORIZATION {ident(role)}")
    url = sqlalchemy.make_url(pg_url).set(username=role, password="pw")
    installer = Installer(
        url.render_as_string(hide_password=False), schema=unique("pgev"), channel=unique("ch")
    )
    try:
        run_sql(
            pg_dsn, f"SET ROLE {ident(role)}; CREATE TABLE {ident(user_schema, 't')} (id int PRIMARY KEY)"
        )
        with pytest.raises(InsufficientPrivilegeError, match="superuser") as info:
            installer.install(ddl=True, auto_rebuild=True)
        assert "install(ddl=True)" in str(info.value)
        assert "Everything else was installed" in str(info.value)
        status = installer.status()
        assert (status.function_state, status.ddl_state, status.auto_rebuild_state) == (
            "INSTALLED",
            None,
            None,
        )
        names = object_names(installer.schema)
        mine = [names.ddl_end_trigger, names.sql_drop_trigger, names.auto_rebuild_trigger]
        assert run_sql(pg_dsn, "SELECT evtname FROM pg_event_trigger WHERE evtname = ANY (%s)", (mine,)) == []
        installer.watch_table("t", user_schema)
        events = listen(installer.channel)
        run_sql(pg_dsn, f"INSERT INTO {ident(user_schema, 't')} VALUES (1)")
        assert events.payloads(1)[0]["session_user"] == run_sql(pg_dsn, "SELECT session_user")[0][0]
        assert installer.status().ok
        # A table of another owner in its schema: reported as skipped, the others are watched.
        run_sql(pg_dsn, f"CREATE TABLE {ident(user_schema, 'not_mine')} (id int PRIMARY KEY)")
        run_sql(pg_dsn, f"CREATE TABLE {ident(user_schema, 'u')} (id int PRIMARY KEY)")
        run_sql(pg_dsn, f"ALTER TABLE {ident(user_schema, 'u')} OWNER TO {ident(role)}")
        report = installer.watch_schema(user_schema)
        skipped = {a.name: a.reason for a in report.skipped}
        assert any("not_mine" in name and "owned by" in (reason or "") for name, reason in skipped.items())
        assert any(a.name.endswith(f" on {user_schema}.u") for a in report.installed)
        states = {t.table: t.state for t in installer.status().tables}
        assert (states["t"], states["u"], states["not_mine"]) == ("INSTALLED", "INSTALLED", "MISSING")
    finally:
        installer.uninstall()
        installer.engine.dispose()
        run_sql(pg_dsn, f"DROP SCHEMA {ident(user_schema)} CASCADE")
        run_sql(pg_dsn, f"DROP OWNED BY {ident(role)}; DROP ROLE {ident(role)}")


# -- 6. auto-rebuild -------------------------------------------------------------------------------


def test_auto_rebuild_watches_a_new_table_in_the_same_transaction(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, listen: Callable[..., Listen]
) -> None:
    installer = make_installer()
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'old')} (id int PRIMARY KEY)")
    installer.watch_schema(schema)
    installer.install(auto_rebuild=True)
    assert installer.status().auto_rebuild_state == "INSTALLED"
    before = run_sql(pg_dsn, "SELECT oid, tgrelid, xmin::text FROM pg_trigger ORDER BY oid")
    events = listen(installer.channel)
    # One transaction: the table is created and written to before it commits.
    run_sql(
        pg_dsn,
        f"BEGIN; CREATE TABLE {ident(schema, 'New Table')} (id int PRIMARY KEY); "
        f"INSERT INTO {ident(schema, 'New Table')} VALUES (1); COMMIT",
    )
    (p,) = events.payloads(1)
    assert (p["table_name"], p["new_data"]) == ("New Table", {"id": 1})
    after = run_sql(pg_dsn, "SELECT oid, tgrelid, xmin::text FROM pg_trigger ORDER BY oid")
    # Only the new table's two triggers appeared; no other trigger was touched.
    assert set(before) <= set(after)
    new_rel = run_sql(pg_dsn, "SELECT %s::regclass::oid", (ident(schema, "New Table"),))[0][0]
    assert {r[1] for r in set(after) - set(before)} == {new_rel}
    assert len(set(after) - set(before)) == 2
    # Re-created tables too; tables outside watched schemas are left alone.
    run_sql(pg_dsn, f"DROP TABLE {ident(schema, 'old')}; CREATE TABLE {ident(schema, 'old')} (id int)")
    run_sql(pg_dsn, "CREATE TABLE public.not_watched_auto (id int)")
    try:
        run_sql(
            pg_dsn,
            f"INSERT INTO {ident(schema, 'old')} VALUES (5); INSERT INTO public.not_watched_auto VALUES (6)",
        )
        got = events.until_sentinel(pg_dsn)
        assert [json.loads(n.payload)["new_data"] for n in got] == [{"id": 5}]
        assert installer.status().ok
    finally:
        run_sql(pg_dsn, "DROP TABLE public.not_watched_auto")


def test_auto_rebuild_for_tables_created_by_another_role(
    make_installer: Callable[..., Installer],
    schema: str,
    pg_dsn: str,
    unique: Unique,
    listen: Callable[..., Listen],
) -> None:
    installer = make_installer()
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'ours')} (id int PRIMARY KEY, body text)")
    installer.watch_schema(schema)
    installer.install(ddl=True, auto_rebuild=True)
    role = unique("ddl_role")
    run_sql(pg_dsn, f"CREATE ROLE {ident(role)}")
    try:
        run_sql(pg_dsn, f"GRANT USAGE, CREATE ON SCHEMA {ident(schema)} TO {ident(role)}")
        events = listen(installer.channel)
        # The role has no privilege at all on the library schema.
        run_sql(pg_dsn, f"SET ROLE {ident(role)}; CREATE TABLE {ident(schema, 'theirs')} (id int)")
        assert state_in(installer.status(), "theirs", schema) == "INSTALLED"
        run_sql(pg_dsn, f"GRANT INSERT ON {ident(schema, 'ours')} TO {ident(role)}")
        run_sql(pg_dsn, f"SET ROLE {ident(role)}; INSERT INTO {ident(schema, 'theirs')} VALUES (1)")
        # A big row written by that role is reduced to its key (not an error event).
        run_sql(
            pg_dsn,
            f"SET ROLE {ident(role)}; INSERT INTO {ident(schema, 'ours')} VALUES (2, repeat('z', 9000))",
        )
        got = [json.loads(n.payload) for n in events.until_sentinel(pg_dsn)]
        rows = [p for p in got if p["kind"] == "row"]
        assert [p["new_data"] for p in rows] == [{"id": 1}, {"id": 2}]
        assert rows[1]["truncated"] is True
        assert "error" not in rows[1]
        # The DDL events arrive too, the role's CREATE TABLE included (pg_events' stream: no GRANT).
        assert [p["command_tag"] for p in got if p["kind"] == "ddl"] == ["CREATE TABLE"]
    finally:
        run_sql(pg_dsn, f"DROP OWNED BY {ident(role)}; DROP ROLE {ident(role)}")


# -- 7. status, idempotence, prune, uninstall -----------------------------------------------------


def test_status_outdated_after_upgrade_then_installed(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str
) -> None:
    installer = make_installer()
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 't')} (id int PRIMARY KEY)")
    installer.watch_table("t", schema)
    assert state_in(installer.status(), "t", schema) == "INSTALLED"
    # Simulate a library upgrade: the stored hashes no longer match this version's SQL.
    names = object_names(installer.schema)
    run_sql(
        pg_dsn,
        f"COMMENT ON TRIGGER {ident(names.row_trigger)} ON {ident(schema, 't')} IS 'trio_pgevents old'",
    )
    run_sql(pg_dsn, f"COMMENT ON FUNCTION {ident(installer.schema, 'notify_row')}() IS 'trio_pgevents old'")
    status = installer.status()
    assert status.function_state == "OUTDATED"
    assert not status.ok
    assert state_in(status, "t", schema) == "OUTDATED"
    report = installer.install()
    assert {a.name for a in report.replaced} >= {f"{installer.schema}.notify_row()"}
    assert any(a.kind == "trigger" and a.action == "replaced" for a in report.actions)
    status = installer.status()
    assert status.ok
    assert state_in(status, "t", schema) == "INSTALLED"
    # Switching a table to durable mode makes its notify triggers OUTDATED, then replaced.
    installer.install(durable=True)
    run_sql(pg_dsn, f"UPDATE {ident(installer.schema, 'watched')} SET mode = 'durable'")
    assert state_in(installer.status(), "t", schema) == "OUTDATED"
    installer.watch_table("t", schema, durable=True)
    assert installer.status().table("t", schema) == trio_pgevents.TableStatus(
        schema, "t", "INSTALLED", None, True
    )


def test_missing_orphaned_and_prune(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str
) -> None:
    installer = make_installer()
    for t in ("kept", "forgotten", "dropped"):
        run_sql(pg_dsn, f"CREATE TABLE {ident(schema, t)} (id int)")
        installer.watch_table(t, schema)
    names = object_names(installer.schema)
    run_sql(pg_dsn, f"DROP TRIGGER {ident(names.row_trigger)} ON {ident(schema, 'kept')}")
    run_sql(pg_dsn, f"DROP TRIGGER {ident(names.truncate_trigger)} ON {ident(schema, 'kept')}")
    run_sql(pg_dsn, f"DELETE FROM {ident(installer.schema, 'watched')} WHERE table_name = 'forgotten'")
    run_sql(pg_dsn, f"DROP TABLE {ident(schema, 'dropped')}")
    states = {t.table: t.state for t in installer.status().tables}
    assert states == {"kept": "MISSING", "forgotten": "ORPHANED", "dropped": "ORPHANED"}
    sql_text = installer.prune_sql()
    assert "DROP TRIGGER" in sql_text
    assert "DELETE FROM" in sql_text
    report = installer.prune()
    assert len(report.removed) == 3  # two triggers on 'forgotten', one registry entry
    states = {t.table: t.state for t in installer.status().tables}
    assert states == {"kept": "MISSING"}
    installer.install()  # brings MISSING back
    assert installer.status().ok
    assert not installer.prune().actions


def test_unwatch_table_inside_a_watched_schema(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str
) -> None:
    installer = make_installer()
    for t in ("a", "b"):
        run_sql(pg_dsn, f"CREATE TABLE {ident(schema, t)} (id int)")
    installer.watch_schema(schema)
    report = installer.unwatch_table("b", schema)
    assert [a.action for a in report.actions] == ["removed", "removed"]
    installer.install()  # must not put it back
    assert [(t.table, t.state) for t in installer.status().tables] == [("a", "INSTALLED")]
    assert run_sql(
        pg_dsn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass", (ident(schema, "b"),)
    ) == [(0,)]


def test_uninstall_leaves_the_catalog_as_it_was(pg_url: str, pg_dsn: str, unique: Unique) -> None:
    user_schema = unique("app")
    run_sql(pg_dsn, f"CREATE SCHEMA {ident(user_schema)}; CREATE TABLE {ident(user_schema, 't')} (id int)")
    try:
        before = catalog_snapshot(pg_dsn)
        installer = Installer(pg_url, schema=unique("pgev"), channel=unique("ch"))
        installer.install(ddl=True, auto_rebuild=True, durable=True)
        installer.watch_schema(user_schema)
        run_sql(pg_dsn, f"CREATE TABLE {ident(user_schema, 'later')} (id int)")  # auto-rebuilt
        run_sql(pg_dsn, f"DROP TABLE {ident(user_schema, 'later')}")
        installer.watch_table("t", user_schema, durable=True)
        assert catalog_snapshot(pg_dsn) != before
        report = installer.uninstall()
        assert any(a.kind == "schema" and a.action == "removed" for a in report.actions)
        assert catalog_snapshot(pg_dsn) == before
        # Uninstalling twice is harmless.
        assert not any(a.action == "removed" for a in installer.uninstall().actions)
    finally:
        run_sql(pg_dsn, f"DROP SCHEMA {ident(user_schema)} CASCADE")


def test_uninstall_keeps_a_schema_it_did_not_create(pg_url: str, pg_dsn: str, unique: Unique) -> None:
    lib = unique("mine")
    run_sql(pg_dsn, f"CREATE SCHEMA {ident(lib)}; CREATE TABLE {ident(lib, 'user_data')} (id int)")
    try:
        installer = Installer(pg_url, schema=lib, channel=unique("ch"))
        installer.install()
        report = installer.uninstall()
        assert [a.action for a in report.actions if a.kind == "schema"] == ["skipped"]
        assert run_sql(
            pg_dsn, "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace", (ident(lib),)
        ) == [("user_data",)]
    finally:
        run_sql(pg_dsn, f"DROP SCHEMA {ident(lib)} CASCADE")


def test_one_transaction_per_call(
    make_installer: Callable[..., Installer], pg_dsn: str, unique: Unique
) -> None:
    installer = make_installer()
    with pytest.raises(InstallError, match="does not exist"):
        installer.watch_table("no_such_table", "public")
    # The base install that preceded the failure in the same call was rolled back.
    assert run_sql(pg_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (installer.schema,)) == [
        (0,)
    ]
    with pytest.raises(InstallError, match="does not exist"):
        installer.watch_schema(unique("no_such_schema"))
    assert installer.status().function_state == "MISSING"


def test_replacing_an_outdated_trigger_loses_no_event(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, listen: Callable[..., Listen]
) -> None:
    installer = make_installer()
    table = ident(schema, "busy")
    run_sql(pg_dsn, f"CREATE TABLE {table} (id int PRIMARY KEY)")
    installer.watch_table("busy", schema)
    events = listen(installer.channel)
    names = object_names(installer.schema)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        conn = psycopg2.connect(pg_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            i = 0
            while not stop.is_set() or i < 50:
                cur.execute(f"INSERT INTO {table} VALUES (%s)", (i,))
                written.append(i)
                i += 1
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            run_sql(
                pg_dsn, f"COMMENT ON TRIGGER {ident(names.row_trigger)} ON {table} IS 'trio_pgevents old'"
            )
            assert any(a.action == "replaced" for a in installer.watch_table("busy", schema).actions)
    finally:
        stop.set()
        thread.join()
    got = events.until_sentinel(pg_dsn)
    assert sorted(json.loads(n.payload)["new_data"]["id"] for n in got) == written


# -- 8. SQL for migrations -------------------------------------------------------------------------


def test_sql_for_migrations_run_by_hand(
    pg_url: str, pg_dsn: str, schema: str, unique: Unique, listen: Callable[..., Listen]
) -> None:
    installer = Installer(pg_url, schema=unique("pgev"), channel=unique("ch"))
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'a')} (id int PRIMARY KEY)")
    run_sql(pg_dsn, "CREATE TABLE public.migrated_table (id int PRIMARY KEY)")
    before = catalog_snapshot(pg_dsn)
    try:
        script = (
            installer.install_sql(ddl=True, auto_rebuild=True, durable=True)
            + installer.watch_schema_sql(schema)
            + installer.watch_table_sql("migrated_table", durable=True)
        )
        assert run_sql(
            pg_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (installer.schema,)
        ) == [(0,)]
        conn = psycopg2.connect(pg_dsn)  # one transaction, as a migration tool runs it
        try:
            with conn, conn.cursor() as cur:
                cur.execute(script)
        finally:
            conn.close()
        status = installer.status()
        assert status.ok
        assert (status.ddl_state, status.auto_rebuild_state, status.durable_state) == ("INSTALLED",) * 3
        assert {(t.table, t.state, t.durable) for t in status.tables} == {
            ("a", "INSTALLED", False),
            ("migrated_table", "INSTALLED", True),
        }
        assert not installer.install(ddl=True, auto_rebuild=True, durable=True).changed
        events = listen(installer.channel)
        run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'a')} VALUES (1)")
        assert events.payloads(1)[0]["new_data"] == {"id": 1}
        run_sql(pg_dsn, installer.unwatch_table_sql("a", schema))
        run_sql(pg_dsn, installer.uninstall_sql())
        assert catalog_snapshot(pg_dsn) == before
    finally:
        installer.uninstall()
        run_sql(pg_dsn, "DROP TABLE public.migrated_table")


# -- 10. from Trio ---------------------------------------------------------------------------------


async def test_async_installer_does_not_block_the_event_loop(
    make_installer: Callable[..., Installer], schema: str, query: Any, pg_dsn: str
) -> None:
    installer = make_installer()
    aio = installer.aio
    assert isinstance(aio, AsyncInstaller)
    await query(f"CREATE TABLE {ident(schema, 't')} (id int PRIMARY KEY)")
    await query(f"CREATE TABLE {ident(schema, 'locked')} (id int PRIMARY KEY)")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    # Hold a lock that the installer must wait for: the loop keeps running meanwhile.
    blocker = psycopg2.connect(pg_dsn)
    blocker.autocommit = False
    try:
        with blocker.cursor() as cur:
            cur.execute(f"LOCK TABLE {ident(schema, 'locked')} IN ACCESS EXCLUSIVE MODE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            done = trio.Event()

            async def watch() -> None:
                await aio.watch_table("locked", schema)
                done.set()

            nursery.start_soon(watch)
            with trio.fail_after(10):
                while ticks < 20:
                    await trio.sleep(0.01)
            assert not done.is_set()
            blocker.rollback()
            with trio.fail_after(10):
                await done.wait()
            nursery.cancel_scope.cancel()
    finally:
        blocker.close()
    assert (await aio.install()).changed is False
    await aio.watch_schema(schema)
    status = await aio.status()
    assert status.ok
    assert {t.table for t in status.tables} == {"t", "locked"}
    assert "CREATE OR REPLACE FUNCTION" in await aio.install_sql()


# -- durable mode: the outbox --------------------------------------------------------------------


def test_durable_outbox_one_wakeup_per_transaction(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, listen: Callable[..., Listen]
) -> None:
    installer = make_installer()
    table = ident(schema, "ledger")
    run_sql(pg_dsn, f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
    installer.watch_table("ledger", schema, durable=True)  # creates the outbox on demand
    assert installer.status().durable_state == "INSTALLED"
    events = listen(installer.channel, installer.channel + ".durable")
    run_sql(pg_dsn, f"INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 10000) g")
    run_sql(pg_dsn, f"INSERT INTO {table} VALUES (0, %s)", ("x" * 100_000,))
    run_sql(pg_dsn, f"TRUNCATE {table}")
    got = events.until_sentinel(pg_dsn)
    # Three transactions, three wake-ups, nothing on the plain channel.
    assert [n.channel for n in got] == [installer.channel + ".durable"] * 3
    txids = [int(n.payload) for n in got]
    outbox = ident(installer.schema, "events")
    rows = run_sql(pg_dsn, f"SELECT txid::text::bigint, channel, payload FROM {outbox} ORDER BY id")
    assert len(rows) == 10002
    assert [r[0] for r in rows] == [txids[0]] * 10000 + [txids[1], txids[2]]
    assert {r[1] for r in rows} == {installer.channel}
    first, big, trunc = rows[0][2], rows[10000][2], rows[10001][2]
    assert first["new_data"] == {"id": 1, "body": "row 1"}
    assert first["kind"] == "row"
    assert first["v"] == 1
    assert big["new_data"]["body"] == "x" * 100_000
    assert big["truncated"] is False
    assert (trunc["method"], trunc["new_data"], trunc["old_data"]) == ("TRUNCATE", None, None)


def test_durable_writer_needs_no_privilege_on_the_outbox(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, unique: Unique
) -> None:
    installer = make_installer()
    role = unique("writer")
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'w')} (id int)")
    installer.watch_table("w", schema, durable=True)
    run_sql(pg_dsn, f"CREATE ROLE {ident(role)}")
    try:
        run_sql(pg_dsn, f"GRANT USAGE ON SCHEMA {ident(schema)} TO {ident(role)}")
        run_sql(pg_dsn, f"GRANT INSERT ON {ident(schema, 'w')} TO {ident(role)}")
        run_sql(pg_dsn, f"SET ROLE {ident(role)}; INSERT INTO {ident(schema, 'w')} VALUES (1)")
        assert run_sql(pg_dsn, f"SELECT count(*) FROM {ident(installer.schema, 'events')}") == [(1,)]
    finally:
        run_sql(pg_dsn, f"DROP OWNED BY {ident(role)}; DROP ROLE {ident(role)}")


def test_retention_and_consumers(make_installer: Callable[..., Installer], schema: str, pg_dsn: str) -> None:
    installer = make_installer()
    assert installer.list_consumers() == []
    assert installer.delete_acknowledged() == 0
    assert installer.drop_consumer("nobody") is False
    table = ident(schema, "r")
    run_sql(pg_dsn, f"CREATE TABLE {table} (id int)")
    installer.watch_table("r", schema, durable=True)
    for i in range(5):  # five transactions, 10 events each
        run_sql(pg_dsn, f"INSERT INTO {table} SELECT g FROM generate_series({i * 10}, {i * 10 + 9}) g")
    outbox, consumers = ident(installer.schema, "events"), ident(installer.schema, "consumers")
    ids = run_sql(pg_dsn, f"SELECT txid::text, id FROM {outbox} ORDER BY txid, id")
    # No consumer registered: nothing may be deleted.
    assert installer.delete_acknowledged() == 0
    run_sql(pg_dsn, f"INSERT INTO {consumers} (name, last_txid, last_id) VALUES ('fast', %s, %s)", ids[34])
    run_sql(pg_dsn, f"INSERT INTO {consumers} (name) VALUES ('behind')")
    assert installer.delete_acknowledged(batch_size=7) == 0  # 'behind' has acknowledged nothing
    info = {c.name: c for c in installer.list_consumers()}
    assert info["fast"].last_id == ids[34][1]
    assert info["fast"].pending == 15
    assert info["behind"].last_id == 0
    assert info["behind"].pending == 50
    run_sql(pg_dsn, f"UPDATE {consumers} SET last_txid = %s, last_id = %s WHERE name = 'behind'", ids[21])
    assert installer.delete_acknowledged(batch_size=7) == 22  # 4 batches, bounded
    remaining = run_sql(pg_dsn, f"SELECT txid::text, id FROM {outbox} ORDER BY txid, id")
    assert remaining == ids[22:]
    assert installer.drop_consumer("behind") is True
    assert installer.delete_acknowledged() == 13
    assert [c.name for c in installer.list_consumers()] == ["fast"]


async def test_decoder_accepts_every_installer_payload(
    make_installer: Callable[..., Installer], schema: str, open_stream: Any, query: Any
) -> None:
    installer = make_installer()
    await query(f"CREATE TABLE {ident(schema, 'd')} (id int PRIMARY KEY, body text)")
    await installer.aio.watch_table("d", schema)
    stream = await open_stream([installer.channel], decoders={installer.channel: decode_trigger_payload})
    await query(f"INSERT INTO {ident(schema, 'd')} VALUES (1, %s)", ("y" * 20000,))
    await query(f"TRUNCATE {ident(schema, 'd')}")
    with trio.fail_after(10):
        big = await stream.receive()
        trunc = await stream.receive()
    assert isinstance(big, RowChange)
    assert big.truncated
    assert big.new_data == {"id": 1}
    assert isinstance(trunc, RowChange)
    assert trunc.method == "TRUNCATE"
