"""trio_pgevents.compat: psycopg2-pgevents' functions, on a plain psycopg2 connection."""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import psycopg2
import psycopg2.extensions
import pytest

from trio_pgevents import compat

from .conftest import run_sql

Unique = Callable[[str], str]


def ident(*names: str) -> str:
    """A (qualified) identifier, quoted exactly as Postgres needs it."""
    return ".".join('"' + n.replace('"', '""') + '"' for n in names)


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[Any]:
    """A plain (not autocommit) psycopg2 connection, as psycopg2-pgevents users have."""
    connection = psycopg2.connect(pg_dsn)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def listener(pg_dsn: str) -> Iterator[Any]:
    """An autocommit connection registered on the psycopg2-pgevents channel."""
    connection = psycopg2.connect(pg_dsn)
    connection.autocommit = True
    compat.register_event_channel(connection)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def schema(pg_dsn: str, unique: Unique) -> Iterator[str]:
    """A user schema with a hostile name, dropped (with the shared function) at teardown."""
    name = f'Compat "{unique("s")}" ✓'
    run_sql(pg_dsn, f"CREATE SCHEMA {ident(name)}")
    yield name
    run_sql(pg_dsn, f"DROP SCHEMA {ident(name)} CASCADE")
    run_sql(pg_dsn, "DROP FUNCTION IF EXISTS public.psycopg2_pgevents_create_event() CASCADE")


def poll_until(connection: Any, count: int, timeout: float = 10.0) -> list[compat.Event]:
    """Call compat.poll (which blocks up to 1 s each) until ``count`` events arrived."""
    events: list[compat.Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        assert time.monotonic() < deadline, f"only {len(events)} of {count} events"
        events.extend(compat.poll(connection, timeout=1.0))
    return events


def test_same_names_and_signatures_as_psycopg2_pgevents() -> None:
    import inspect

    expected = {
        "install_trigger_function": "(connection, overwrite=False)",
        "uninstall_trigger_function": "(connection, force=False)",
        "install_trigger": "(connection, table, schema='public', overwrite=False)",
        "uninstall_trigger": "(connection, table, schema='public')",
        "register_event_channel": "(connection)",
        "unregister_event_channel": "(connection)",
        "poll": "(connection, timeout=1.0)",
        "trigger_installed": "(connection, table, schema='public')",
        "trigger_function_installed": "(connection)",
    }
    for name, signature in expected.items():
        function = getattr(compat, name)
        params = inspect.signature(function).parameters.values()
        shown = (
            "("
            + ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params)
            + ")"
        )
        assert shown == signature, name


def test_events_in_order_with_row_ids(conn: Any, listener: Any, schema: str, pg_dsn: str) -> None:
    table = ident(schema, "With id")
    run_sql(pg_dsn, f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
    assert not compat.trigger_function_installed(conn)
    compat.install_trigger_function(conn)
    assert compat.trigger_function_installed(conn)
    compat.install_trigger(conn, "With id", schema)
    assert compat.trigger_installed(conn, "With id", schema)
    run_sql(pg_dsn, f"INSERT INTO {table} SELECT g, 'v' FROM generate_series(1, 100) g")
    run_sql(pg_dsn, f"UPDATE {table} SET v = 'w' WHERE id = 5")
    run_sql(pg_dsn, f"DELETE FROM {table} WHERE id = 7")
    events = poll_until(listener, 102)
    assert [(e.type, e.row_id) for e in events] == [("INSERT", i) for i in range(1, 101)] + [
        ("UPDATE", 5),
        ("DELETE", 7),
    ]
    assert all(isinstance(e.id, UUID) for e in events)
    assert len({e.id for e in events}) == 102
    assert {(e.schema_name, e.table_name) for e in events} == {(schema, "With id")}
    assert compat.Event.fromjson(events[0].tojson()) == events[0]
    # Nothing else is waiting; a zero timeout does not block.
    assert list(compat.poll(listener, timeout=0)) == []


def test_no_id_column_needed(conn: Any, listener: Any, schema: str, pg_dsn: str) -> None:
    tables = {
        "text key": "(code text PRIMARY KEY, v int)",
        "composite": "(a int, b text, v int, PRIMARY KEY (a, b))",
        "no key": "(v int)",
    }
    compat.install_trigger_function(conn)
    for name, columns in tables.items():
        run_sql(pg_dsn, f"CREATE TABLE {ident(schema, name)} {columns}")
        compat.install_trigger(conn, name, schema)
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'text key')} VALUES ('abc', 1)")
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'composite')} VALUES (1, 'x', 2)")
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'no key')} VALUES (3)")
    events = poll_until(listener, 3)
    assert [(e.table_name, e.row_id) for e in events] == [
        ("text key", "abc"),
        ("composite", {"a": 1, "b": "x"}),
        ("no key", None),
    ]


def test_search_path_untouched_and_no_uuid_ossp(conn: Any, schema: str, pg_dsn: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"SET search_path = {ident(schema)}, public")
        cur.execute("SHOW search_path")
        before = cur.fetchone()
    conn.commit()
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 't')} (id int)")
    compat.install_trigger_function(conn, overwrite=True)
    compat.install_trigger(conn, "t", schema, overwrite=True)
    with conn.cursor() as cur:
        cur.execute("SHOW search_path")
        assert cur.fetchone() == before
    assert run_sql(pg_dsn, "SELECT count(*) FROM pg_extension WHERE extname = 'uuid-ossp'") == [(0,)]


def test_overwrite_uninstall_and_unregister(conn: Any, listener: Any, schema: str, pg_dsn: str) -> None:
    table = ident(schema, "t")
    run_sql(pg_dsn, f"CREATE TABLE {table} (id int)")
    compat.install_trigger_function(conn)
    compat.install_trigger(conn, "t", schema)
    oid = run_sql(pg_dsn, "SELECT oid FROM pg_trigger WHERE tgrelid = %s::regclass", (table,))
    compat.install_trigger(conn, "t", schema)  # present: skipped
    assert run_sql(pg_dsn, "SELECT oid FROM pg_trigger WHERE tgrelid = %s::regclass", (table,)) == oid
    compat.install_trigger(conn, "t", schema, overwrite=True)  # replaced
    assert run_sql(pg_dsn, "SELECT oid FROM pg_trigger WHERE tgrelid = %s::regclass", (table,)) != oid
    compat.uninstall_trigger(conn, "t", schema)
    assert not compat.trigger_installed(conn, "t", schema)
    compat.uninstall_trigger(conn, "t", schema)  # absent: no error
    compat.install_trigger(conn, "t", schema)
    with pytest.raises(psycopg2.errors.DependentObjectsStillExist):
        compat.uninstall_trigger_function(conn)
    compat.uninstall_trigger_function(conn, force=True)
    assert not compat.trigger_function_installed(conn)
    assert not compat.trigger_installed(conn, "t", schema)
    compat.unregister_event_channel(listener)
    with listener.cursor() as cur:
        cur.execute("LISTEN compat_sentinel")
    payload = compat.Event(UUID(int=1), "INSERT", "s", "t", 1).tojson()
    run_sql(pg_dsn, "SELECT pg_notify(%s, %s)", (compat.CHANNEL, payload))
    run_sql(pg_dsn, "SELECT pg_notify('compat_sentinel', '')")  # sent after: proves the first is not coming
    deadline = time.monotonic() + 10
    while not listener.notifies:
        assert time.monotonic() < deadline
        select.select([listener], [], [], 1.0)
        listener.poll()
    assert [n.channel for n in listener.notifies] == ["compat_sentinel"]
    assert list(compat.poll(listener, timeout=0)) == []
