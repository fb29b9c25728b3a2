"""trio_pgevents.compat: psycopg2-pgevents' functions, on a plain psycopg2 connection."""

from __future__ import annotations

import inspect
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


def shown_parameter(p: inspect.Parameter) -> str:
    if p.kind is p.VAR_POSITIONAL:
        return f"*{p.name}"
    return p.name if p.default is p.empty else f"{p.name}={p.default!r}"


def test_same_names_and_signatures_as_psycopg2_pgevents() -> None:
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
        "execute": "(connection, statement)",
        "set_debug": "(enabled)",
        "log": "(message, *args, category='info', logger_name='pgevents')",
    }
    for name, signature in expected.items():
        function = getattr(compat, name)
        params = inspect.signature(function).parameters.values()
        shown = "(" + ", ".join(map(shown_parameter, params)) + ")"
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
    assert compat.Event.fromjson(events[0].tojson()).tojson() == events[0].tojson()
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


# ---- issue 17, points 7-11: what psycopg2-pgevents users rely on ----------------------------------


@pytest.fixture
def debug_off() -> Iterator[None]:
    """Debug output is process-wide: every test ends with it off."""
    yield
    compat.set_debug(False)


def test_events_are_hashable_and_equal_only_to_themselves(
    conn: Any, listener: Any, schema: str, pg_dsn: str
) -> None:
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 't')} (id int)")
    compat.install_trigger_function(conn)
    compat.install_trigger(conn, "t", schema)
    run_sql(pg_dsn, f"INSERT INTO {ident(schema, 't')} VALUES (1), (1)")
    first, second = poll_until(listener, 2)
    copy = compat.Event.fromjson(first.tojson())
    assert hash(first) == hash(first)
    assert len({first, second, copy}) == 3  # identity, as the original: two events, even for equal fields
    assert first == first
    assert first != copy
    assert first != second
    assert {first: "seen"}[first] == "seen"
    assert copy.tojson() == first.tojson()
    assert repr(first) == f"<Event id:{first.id} type:INSERT table:{schema}.t row-id:1"  # the original's


def test_table_names_are_read_as_sql_reads_them_then_as_given(
    conn: Any, listener: Any, schema: str, pg_dsn: str, unique: Unique
) -> None:
    compat.install_trigger_function(conn)
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema)}.MyTable (id int)")  # unquoted: mytable
    run_sql(pg_dsn, f'CREATE TABLE {ident(schema)}."Mixed" (id int)')
    run_sql(pg_dsn, f'CREATE TABLE {ident(schema)}."Both" (id int)')
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema)}.both (id int)")
    run_sql(pg_dsn, f'CREATE TABLE {ident(schema)}."Order Lines" (id int)')
    compat.install_trigger(conn, "MyTable", schema)  # the original's reading: mytable
    assert compat.trigger_installed(conn, "MYTABLE", schema)
    assert compat.trigger_installed(conn, "mytable", schema)
    compat.install_trigger(conn, '"Mixed"', schema)  # quoted: exactly Mixed
    assert compat.trigger_installed(conn, "Mixed", schema)  # no table mixed: the name as given
    compat.install_trigger(conn, "Both", schema)  # both exist: SQL's reading wins, as in the original
    assert compat.trigger_installed(conn, "both", schema)
    assert not compat.trigger_installed(conn, '"Both"', schema)
    compat.install_trigger(conn, "Order Lines", ident(schema))  # a quoted schema name works too
    with pytest.raises(psycopg2.errors.UndefinedTable):
        compat.install_trigger(conn, '"MyTable"', schema)  # quoted: exactly MyTable, which is not there
    folded = unique("Upper_Schema")
    run_sql(pg_dsn, f"CREATE SCHEMA {folded}")  # unquoted: lower case
    try:
        run_sql(pg_dsn, f"CREATE TABLE {folded}.t (id int)")
        compat.install_trigger(conn, "T", folded.upper())
        for table in (f"{ident(schema)}.mytable", f'{ident(schema)}."Mixed"', f"{ident(schema)}.both"):
            run_sql(pg_dsn, f"INSERT INTO {table} VALUES (1)")
        run_sql(pg_dsn, f'INSERT INTO {ident(schema)}."Both" VALUES (2)')  # no trigger
        run_sql(pg_dsn, f"INSERT INTO {ident(schema, 'Order Lines')} VALUES (3)")
        run_sql(pg_dsn, f"INSERT INTO {folded}.t VALUES (4)")
        events = poll_until(listener, 5)
        assert [(e.schema_name, e.table_name, e.row_id) for e in events] == [
            (schema, "mytable", 1),
            (schema, "Mixed", 1),
            (schema, "both", 1),
            (schema, "Order Lines", 3),
            (folded.lower(), "t", 4),
        ]
        compat.uninstall_trigger(conn, "MyTable", schema)
        assert not compat.trigger_installed(conn, "mytable", schema)
    finally:
        run_sql(pg_dsn, f"DROP SCHEMA {folded} CASCADE")


#: (column type, value inserted, row_id delivered): the original's conversion where its write
#: succeeded; the value itself where the original's trigger made the write fail.
ROW_IDS = [
    ("text", "'42'", 42),
    ("text", "' 42 '", 42),
    ("varchar", "'+042'", 42),
    ("numeric", "4.5", 5),
    ("numeric", "-4.5", -5),
    ("numeric", "5.0", 5),
    ("float8", "4.5", 4),
    ("bigint", "2147483647", 2147483647),
    ("jsonb", "'42'", 42),
    ("text", "NULL", None),
    # The original's write failed:
    ("text", "'abc'", "abc"),
    ("bigint", "10000000000", 10000000000),
    ("numeric", "1e10", 10000000000),
    ("uuid", "'00000000-0000-0000-0000-000000000005'", "00000000-0000-0000-0000-000000000005"),
    ("jsonb", "'\"x\"'", "x"),
]


def test_row_id_is_the_originals_integer_where_it_had_one(
    conn: Any, listener: Any, schema: str, pg_dsn: str
) -> None:
    compat.install_trigger_function(conn)
    for number, (column, _, _) in enumerate(ROW_IDS):
        run_sql(pg_dsn, f"CREATE TABLE {ident(schema, f't{number}')} (id {column}, v int)")
        compat.install_trigger(conn, f"t{number}", schema)
    for number, (_, value, _) in enumerate(ROW_IDS):
        run_sql(pg_dsn, f"INSERT INTO {ident(schema, f't{number}')} VALUES ({value}, 1)")
    events = poll_until(listener, len(ROW_IDS))
    got = [(e.table_name, e.row_id, type(e.row_id)) for e in events]
    assert got == [(f"t{n}", row_id, type(row_id)) for n, (_, _, row_id) in enumerate(ROW_IDS)]


def test_execute_runs_and_commits_like_the_original(conn: Any, schema: str, pg_dsn: str) -> None:
    table = ident(schema, "x")
    assert compat.execute(conn, f"CREATE TABLE {table} (v text)") is None
    assert compat.execute(conn, f"INSERT INTO {table} VALUES ('100%') RETURNING v") == [("100%",)]
    assert compat.execute(conn, f"SELECT v FROM {table} WHERE false") is None
    with pytest.raises(psycopg2.errors.UndefinedColumn):
        compat.execute(conn, f"SELECT nope FROM {table}")
    assert run_sql(pg_dsn, f"SELECT v FROM {table}") == [("100%",)]  # committed, by the first call
    assert compat.execute(conn, f"SELECT count(*) FROM {table}") == [(1,)]  # usable after an error


def test_set_debug_prints_the_originals_lines_on_its_loggers(
    conn: Any, schema: str, pg_dsn: str, caplog: pytest.LogCaptureFixture, capsys: Any, debug_off: None
) -> None:
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 't')} (id int)")
    compat.install_trigger_function(conn)
    compat.log("hidden while debug is off")
    compat.install_trigger(conn, "t", schema)
    assert not caplog.records
    assert capsys.readouterr().out == ""
    compat.set_debug(True)
    compat.install_trigger(conn, "t", schema)
    compat.log("in %s", "debug", category="debug")  # below info: the original never showed it
    compat.log("custom %s", "line", category="warning", logger_name="pgevents.mine")
    with pytest.raises(ValueError, match='Invalid log category "nope"'):
        compat.log("x", category="nope")
    compat.set_debug(False)
    compat.log("off again")
    records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert records[0] == ("pgevents.debug", "INFO", "Enabling debug output...")
    assert ("pgevents.trigger", "INFO", f"Checking if {schema}.t trigger installed...") in records
    assert ("pgevents.trigger", "INFO", f"{schema}.t trigger already installed; skipping...") in records
    assert ("pgevents.sql", "INFO", "Query") in records
    assert records[-2:] == [
        ("pgevents.mine", "WARNING", "custom line"),
        ("pgevents.debug", "INFO", "Disabling debug output..."),
    ]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= len(records)  # plus the continuation lines of multi-line rows
    assert lines[0].endswith(" INFO  [pgevents.debug]: Enabling debug output...")
    assert lines[-1].endswith(" INFO  [pgevents.debug]: Disabling debug output...")
    assert lines[-2].endswith(" WARNING [pgevents.mine]: custom line")


def test_poll_yields_buffered_notifications_at_once(conn: Any, listener: Any, pg_dsn: str) -> None:
    payload = compat.Event(UUID(int=1), "INSERT", "s", "t", 1).tojson()
    run_sql(pg_dsn, "SELECT pg_notify(%s, %s)", (compat.CHANNEL, payload))
    deadline = time.monotonic() + 10
    while not listener.notifies:  # a statement on the listener reads the notification into its buffer
        assert time.monotonic() < deadline
        with listener.cursor() as cursor:
            cursor.execute("SELECT 1")
    started = time.monotonic()
    [event] = compat.poll(listener, timeout=5.0)  # the original waited here, and returned nothing
    assert time.monotonic() - started < 2.5
    assert event.id == UUID(int=1)
    assert not listener.notifies
