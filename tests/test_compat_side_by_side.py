"""trio_pgevents.compat next to the original psycopg2-pgevents 0.2.2 (issue 17, points 7-11).

Each test runs the same operations with the original package and with
``trio_pgevents.compat``, each in its own database of the same server (they
install the same function, ``public.psycopg2_pgevents_create_event()``), and
compares what the user sees. Where compat differs on purpose, the test says
so and asserts both sides.

The original is installed by the nox ``tests`` session with ``--no-deps`` (its
metadata pins pytest<6 as a runtime dependency); these tests are skipped only
when it cannot be imported. Its trigger function needs the ``uuid-ossp``
extension; on a server without it (the embedded one) the original's install
statement creates ``public.uuid_generate_v4()`` from the built-in
``gen_random_uuid()`` instead of the extension: the rest of its SQL is as
shipped.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg2
import psycopg2.extensions
import pytest

from trio_pgevents import compat

from .conftest import run_sql

original = pytest.importorskip("psycopg2_pgevents", reason="psycopg2-pgevents 0.2.2 is not installed")
original_trigger = pytest.importorskip("psycopg2_pgevents.trigger")
original_debug = pytest.importorskip("psycopg2_pgevents.debug")
original_event = pytest.importorskip("psycopg2_pgevents.event")

_names = itertools.count()


def fresh(prefix: str) -> str:
    """A lower-case name no other test uses (the original puts names into SQL as they are)."""
    return f"{prefix}_{os.getpid()}_{next(_names)}"


@dataclass
class Side:
    """One package and its own database: a plain connection and a registered listener."""

    name: str
    lib: Any
    event: Any  # the Event class (not a top-level name of the original)
    dsn: str
    conn: Any = None
    listener: Any = None
    others: list[Any] = field(default_factory=list)

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        return run_sql(self.dsn, statement, params)

    def attempt(self, statement: str) -> str:
        """``"ok"``, or the class name of the error the statement raised."""
        try:
            self.sql(statement)
        except psycopg2.Error as exc:
            return type(exc).__name__
        return "ok"

    def call(self, function: str, *args: Any, **kwargs: Any) -> str:
        """Call ``lib.function(conn, ...)``: ``"ok"`` or the class name of the error it raised."""
        try:
            getattr(self.lib, function)(self.conn, *args, **kwargs)
        except psycopg2.Error as exc:
            return type(exc).__name__
        return "ok"

    def fresh_listener(self) -> Any:
        """A new autocommit connection registered on the channel (closed at teardown)."""
        connection = psycopg2.connect(self.dsn)
        self.others.append(connection)
        connection.autocommit = True
        self.lib.register_event_channel(connection)
        self.listener = connection
        return connection

    def events(self, count: int, timeout: float = 20.0) -> list[Any]:
        """Poll until ``count`` events arrived; then check that no more are coming."""
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            assert time.monotonic() < deadline, f"{self.name}: {len(got)} of {count} events"
            got.extend(self.lib.poll(self.listener, timeout=1.0))
        return got

    def sentinel_then_events(self, timeout: float = 20.0) -> list[Any]:
        """Every event sent so far: a last one is sent, and events are polled up to it."""
        marker = compat.Event(UUID(int=0), "INSERT", "sentinel", "sentinel", 0).tojson()
        self.sql("SELECT pg_notify(%s, %s)", (compat.CHANNEL, marker))
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while not got or got[-1].schema_name != "sentinel":
            assert time.monotonic() < deadline, f"{self.name}: no sentinel after {len(got)} events"
            got.extend(self.lib.poll(self.listener, timeout=1.0))
        return got[:-1]


def reset_pgevents_loggers() -> None:
    """Undo what the original's ``log`` leaves behind when it raises (a stdout handler, a level)."""
    for name in ("pgevents", "pgevents.debug", "pgevents.sql", "pgevents.trigger", "pgevents.event"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="module")
def databases(pg_dsn: str) -> Iterator[dict[str, str]]:
    """Two fresh databases of the test server: the original's and compat's."""
    names = {"original": fresh("p2pgev_original"), "ours": fresh("p2pgev_ours")}
    for name in names.values():
        run_sql(pg_dsn, f"CREATE DATABASE {name}")
    yield {side: psycopg2.extensions.make_dsn(pg_dsn, dbname=name) for side, name in names.items()}
    for name in names.values():
        run_sql(pg_dsn, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def sides(databases: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Side]]:
    """[original, ours], each with its trigger function installed and its channel registered."""
    made = [
        Side("original", original, original_event.Event, databases["original"]),
        Side("ours", compat, compat.Event, databases["ours"]),
    ]
    has_uuid_ossp = made[0].sql("SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'")
    if has_uuid_ossp != [(1,)]:
        shim = (
            "CREATE OR REPLACE FUNCTION public.uuid_generate_v4() RETURNS uuid"
            " LANGUAGE sql AS 'SELECT pg_catalog.gen_random_uuid()';"
        )
        statement = original_trigger.INSTALL_TRIGGER_FUNCTION_STATEMENT
        assert 'CREATE EXTENSION IF NOT EXISTS "uuid-ossp";' in statement
        monkeypatch.setattr(
            original_trigger,
            "INSTALL_TRIGGER_FUNCTION_STATEMENT",
            statement.replace('CREATE EXTENSION IF NOT EXISTS "uuid-ossp";', shim),
        )
    try:
        for side in made:
            side.conn = psycopg2.connect(side.dsn)
            side.listener = psycopg2.connect(side.dsn)
            side.listener.autocommit = True
            side.lib.install_trigger_function(side.conn)
            side.lib.register_event_channel(side.listener)
        yield made
    finally:
        original_debug.set_debug(False)
        compat.set_debug(False)
        reset_pgevents_loggers()
        for side in made:
            for connection in (side.conn, side.listener, *side.others):
                if connection is not None:
                    connection.close()


@pytest.fixture
def schema(sides: list[Side]) -> Iterator[str]:
    """A schema of the same (plain, lower-case) name in both databases, dropped at teardown."""
    name = fresh("sbs")
    for side in sides:
        side.sql(f"CREATE SCHEMA {name}")
    yield name
    for side in sides:
        side.sql(f"DROP SCHEMA {name} CASCADE")


def both(sides: list[Side], action: Callable[[Side], Any]) -> tuple[Any, Any]:
    """``action`` run for the original, then for ours: (original's result, ours)."""
    theirs, ours = (action(side) for side in sides)
    return theirs, ours


# ---- point 7: Event hash and equality ------------------------------------------------------------


def test_events_hash_and_compare_as_the_originals(sides: list[Side], schema: str) -> None:
    def behaviour(side: Side) -> dict[str, Any]:
        side.sql(f"CREATE TABLE {schema}.t (id int)")
        side.lib.install_trigger(side.conn, "t", schema)
        side.sql(f"INSERT INTO {schema}.t VALUES (1), (1)")
        first, second = side.events(2)
        copy = side.event.fromjson(first.tojson())
        return {
            "hash is stable": hash(first) == hash(first),
            "set of two events and a copy": len({first, second, copy}),
            "{Event.fromjson(j)}": len({side.event.fromjson(first.tojson())}),
            "equal to itself": first == first,
            "equal to its copy": first == copy,
            "equal to the other": first == second,
            "a dict key": {first: 1}.get(first),
            "copy found in a set": copy in {first},
            "json round trip": copy.tojson() == first.tojson(),
            "repr": repr(first).replace(str(first.id), "ID"),
        }

    theirs, ours = both(sides, behaviour)
    assert ours == theirs
    assert ours["set of two events and a copy"] == 3


# ---- point 8: table names ------------------------------------------------------------------------


def test_table_names_are_read_as_the_original_reads_them(sides: list[Side], schema: str) -> None:
    tables = ["MyTable", '"Quoted"', '"Both"', "both", "plain"]
    calls: list[tuple[str, str]] = [
        ("MyTable", schema),  # created unquoted: mytable
        ("MYTABLE", schema),
        ('"Quoted"', schema),
        ("Both", schema),  # both exist: SQL reads both
        ('"MyTable"', schema),  # exactly MyTable: not there, an error on both sides
        ("plain", schema.upper()),
        ("plain", f'"{schema}"'),
    ]

    def behaviour(side: Side) -> dict[str, Any]:
        for table in tables:
            side.sql(f"CREATE TABLE {schema}.{table} (id int)")
        outcomes = [side.call("install_trigger", table, s, overwrite=True) for table, s in calls]
        for number, table in enumerate(tables):
            side.sql(f"INSERT INTO {schema}.{table} VALUES ({number})")
        events = side.sentinel_then_events()
        return {
            "install_trigger": outcomes,
            "events": sorted((e.schema_name, e.table_name, e.row_id) for e in events),
            "trigger_installed(mytable)": side.lib.trigger_installed(side.conn, "mytable", schema),
            "trigger_installed(MyTable)": side.lib.trigger_installed(side.conn, "MyTable", schema),
            'trigger_installed("Quoted")': side.lib.trigger_installed(side.conn, '"Quoted"', schema),
            "trigger_installed(Quoted)": side.lib.trigger_installed(side.conn, "Quoted", schema),
            "uninstall_trigger(MyTable)": side.call("uninstall_trigger", "MyTable", schema),
            "after uninstalling": side.lib.trigger_installed(side.conn, "mytable", schema),
            "a name that needs quoting": side.call("install_trigger", "Quoted", schema, overwrite=True),
        }

    theirs, ours = both(sides, behaviour)
    assert ours["install_trigger"] == theirs["install_trigger"]
    assert theirs["install_trigger"] == ["ok", "ok", "ok", "ok", "UndefinedTable", "ok", "ok"]
    assert (
        ours["events"]
        == theirs["events"]
        == [
            (schema, "Quoted", 1),
            (schema, "both", 3),
            (schema, "mytable", 0),
            (schema, "plain", 4),
        ]
    )
    assert ours["uninstall_trigger(MyTable)"] == theirs["uninstall_trigger(MyTable)"] == "ok"
    assert ours["after uninstalling"] is theirs["after uninstalling"] is False
    assert ours["trigger_installed(mytable)"] is theirs["trigger_installed(mytable)"] is True
    # Differs on purpose: the original compared the name as given with the catalog's, so it
    # said False for the names it had just installed the trigger under; compat reads them as
    # install_trigger does.
    assert theirs["trigger_installed(MyTable)"] is theirs['trigger_installed("Quoted")'] is False
    assert ours["trigger_installed(MyTable)"] is ours['trigger_installed("Quoted")'] is True
    assert ours["trigger_installed(Quoted)"] is theirs["trigger_installed(Quoted)"] is True
    # Differs on purpose: a name SQL would fold, of a table created quoted, names that table.
    assert theirs["a name that needs quoting"] == "UndefinedTable"
    assert ours["a name that needs quoting"] == "ok"


# ---- point 9: row_id -----------------------------------------------------------------------------

#: (id column type, value): every write the original let through, then those it failed.
ROW_ID_WRITES = [
    ("int", "7"),
    ("smallint", "-3"),
    ("bigint", "2147483647"),
    ("text", "'42'"),
    ("text", "' 42 '"),
    ("varchar(10)", "'+042'"),
    ("text", "NULL"),
    ("numeric", "4.5"),
    ("numeric", "5.5"),
    ("numeric", "-4.5"),
    ("numeric", "5.0"),
    ("float8", "4.5"),
    ("float8", "5.5"),
    ("jsonb", "'42'"),
    ("text", "'abc'"),
    ("text", "'4.0'"),
    ("bigint", "10000000000"),
    ("numeric", "1e10"),
    ("uuid", "'00000000-0000-0000-0000-000000000005'"),
    ("jsonb", "'\"42\"'"),
]
#: What compat delivers for the writes the original failed, in order.
DELIVERED_WHERE_THE_ORIGINAL_FAILED = [
    "abc",
    "4.0",
    10000000000,
    10000000000,
    "00000000-0000-0000-0000-000000000005",
    "42",
]


def test_row_id_as_the_originals_where_it_had_one(sides: list[Side], schema: str) -> None:
    def behaviour(side: Side) -> tuple[list[str], list[Any]]:
        outcomes = []
        for number, (column, value) in enumerate(ROW_ID_WRITES):
            side.sql(f"CREATE TABLE {schema}.t{number} (id {column}, v int)")
            side.lib.install_trigger(side.conn, f"t{number}", schema)
            outcomes.append(side.attempt(f"INSERT INTO {schema}.t{number} VALUES ({value}, 1)"))
        side.sql(f"CREATE TABLE {schema}.no_id (code text PRIMARY KEY)")
        side.lib.install_trigger(side.conn, "no_id", schema)
        outcomes.append(side.attempt(f"INSERT INTO {schema}.no_id VALUES ('k')"))
        events = side.sentinel_then_events()
        return outcomes, [(e.table_name, e.row_id, type(e.row_id)) for e in events]

    (their_outcomes, theirs), (our_outcomes, ours) = both(sides, behaviour)
    assert our_outcomes == ["ok"] * (len(ROW_ID_WRITES) + 1)  # compat never fails a write
    succeeded = [number for number, outcome in enumerate(their_outcomes) if outcome == "ok"]
    assert len(succeeded) == len(ROW_ID_WRITES) - len(DELIVERED_WHERE_THE_ORIGINAL_FAILED)
    assert set(their_outcomes) == {
        "ok",
        "InvalidTextRepresentation",
        "NumericValueOutOfRange",
        "UndefinedColumn",
    }
    assert their_outcomes[-1] == "UndefinedColumn"  # no id column: the original failed the write
    # Where the original delivered, compat delivers the same row_id, of the same type.
    assert [ours[number] for number in succeeded] == theirs
    failed = [row_id for number, (_, row_id, _) in enumerate(ours) if number not in succeeded]
    assert failed == [*DELIVERED_WHERE_THE_ORIGINAL_FAILED, "k"]


# ---- point 10: execute, log, set_debug -----------------------------------------------------------


def test_execute_returns_what_the_originals_returns(sides: list[Side], schema: str) -> None:
    def behaviour(side: Side) -> list[Any]:
        run = side.lib.execute
        results: list[Any] = [
            run(side.conn, f"CREATE TABLE {schema}.x (v text)"),
            run(side.conn, f"INSERT INTO {schema}.x VALUES ('100%') RETURNING v, 1"),
            run(side.conn, f"INSERT INTO {schema}.x VALUES ('b')"),
            run(side.conn, f"SELECT v FROM {schema}.x WHERE false"),
        ]
        try:
            run(side.conn, f"SELECT nope FROM {schema}.x")
        except psycopg2.Error as exc:
            results.append(type(exc).__name__)
        results.append(run(side.conn, f"SELECT v FROM {schema}.x ORDER BY v"))
        results.append(side.sql(f"SELECT count(*) FROM {schema}.x"))  # committed
        return results

    theirs, ours = both(sides, behaviour)
    assert ours == theirs
    assert theirs[-3:] == ["UndefinedColumn", [("100%",), ("b",)], [(2,)]]


def without_time(text: str) -> list[str]:
    """Printed lines without their time stamps."""
    return [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", line) for line in text.splitlines()]


def test_log_and_set_debug_print_what_the_originals_print(
    sides: list[Side], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    def behaviour(side: Side) -> tuple[list[str], list[tuple[str, str, str]], str]:
        caplog.clear()
        capsys.readouterr()
        side.lib.log("silent while debug is off")
        side.lib.set_debug(True)
        side.lib.log("hello %s", "world")
        side.lib.log("named %(what)s", {"what": "args"}, logger_name="pgevents.mine")
        side.lib.log("an %s", "error", category="error", logger_name="pgevents.sql")
        side.lib.log("a warning", category="warning")
        side.lib.log("below info", category="debug")
        side.lib.set_debug(False)
        side.lib.log("silent again")
        try:
            side.lib.log("x", category="nope")
        except ValueError as exc:
            error = str(exc)
        reset_pgevents_loggers()  # the original leaves its stdout handler on "pgevents" here
        records = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
        return without_time(capsys.readouterr().out), records, error

    caplog.set_level(logging.NOTSET)
    theirs, ours = both(sides, behaviour)
    assert ours == theirs
    printed, records, error = theirs
    assert printed[0] == "INFO  [pgevents.debug]: Enabling debug output..."
    assert len(printed) == len(records) == 6
    assert error == 'Invalid log category "nope"'


def test_functions_log_the_originals_lines(
    sides: list[Side], schema: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    def behaviour(side: Side) -> list[tuple[str, str]]:
        side.sql(f"CREATE TABLE {schema}.t (id int)")
        caplog.clear()
        side.lib.set_debug(True)
        side.lib.install_trigger_function(side.conn)
        side.lib.install_trigger(side.conn, "t", schema)
        side.lib.install_trigger(side.conn, "t", schema)
        side.lib.uninstall_trigger(side.conn, "t", schema)
        side.lib.unregister_event_channel(side.listener)
        side.lib.register_event_channel(side.listener)
        assert list(side.lib.poll(side.listener, timeout=0)) == []
        assert list(side.lib.poll(side.listener, timeout=0.01)) == []
        side.lib.set_debug(False)
        kept = {"pgevents.debug", "pgevents.trigger", "pgevents.event"}  # pgevents.sql: the SQL differs
        return [(r.name, r.getMessage()) for r in caplog.records if r.name in kept]

    caplog.set_level(logging.NOTSET)
    theirs, ours = both(sides, behaviour)
    capsys.readouterr()
    assert ours == theirs
    assert ("pgevents.trigger", "Trigger function already installed; skipping...") in theirs
    assert ("pgevents.event", "Polling for events (Non-Blocking)...") in theirs


# ---- point 11: poll ------------------------------------------------------------------------------


def test_poll_keeps_the_order_the_events_were_sent_in(sides: list[Side], schema: str) -> None:
    def behaviour(side: Side) -> list[tuple[str, Any]]:
        side.sql(f"CREATE TABLE {schema}.t (id int, v int)")
        side.lib.install_trigger(side.conn, "t", schema)
        side.sql(f"INSERT INTO {schema}.t SELECT g, 0 FROM generate_series(1, 50) g")  # one transaction
        for number in range(51, 56):
            side.sql(f"INSERT INTO {schema}.t VALUES ({number}, 0)")
        side.sql(f"UPDATE {schema}.t SET v = 1 WHERE id = 3")
        side.sql(f"DELETE FROM {schema}.t WHERE id = 4")
        return [(e.type, e.row_id) for e in side.sentinel_then_events()]

    theirs, ours = both(sides, behaviour)
    # The original (0.2.2) does not reverse the order: both keep the order the server sent.
    assert ours == theirs == [("INSERT", n) for n in range(1, 56)] + [("UPDATE", 3), ("DELETE", 4)]


def event_text(row_id: int) -> str:
    return compat.Event(UUID(int=row_id), "INSERT", "s", "t", row_id).tojson()


def test_poll_edge_cases_differ_on_purpose(sides: list[Side], caplog: pytest.LogCaptureFixture) -> None:
    def buffered(side: Side) -> list[Any]:
        """A notification read into the connection's buffer by another statement."""
        side.fresh_listener()
        side.sql("SELECT pg_notify(%s, %s)", (compat.CHANNEL, event_text(1)))
        deadline = time.monotonic() + 10
        while not side.listener.notifies:
            assert time.monotonic() < deadline
            with side.listener.cursor() as cursor:
                cursor.execute("SELECT 1")
        return [e.row_id for e in side.lib.poll(side.listener, timeout=0.2)]

    def bad_payload(side: Side) -> list[Any] | str:
        side.fresh_listener()
        side.sql(
            "SELECT pg_notify(%s, 'not JSON'), pg_notify(%s, %s)", (compat.CHANNEL,) * 2 + (event_text(2),)
        )
        try:
            return [e.row_id for e in side.events(1)]
        except ValueError as exc:
            return type(exc).__name__

    def other_channel(side: Side) -> tuple[list[Any] | str, list[str]]:
        with side.fresh_listener().cursor() as cursor:
            cursor.execute("LISTEN sbs_other")
        side.sql("SELECT pg_notify('sbs_other', 'hello'), pg_notify(%s, %s)", (compat.CHANNEL, event_text(3)))
        try:
            got: list[Any] | str = [e.row_id for e in side.events(1)]
        except ValueError as exc:
            got = type(exc).__name__
        return got, [n.payload for n in side.listener.notifies]

    # Buffered notifications: the original waits for the socket and returns nothing.
    assert both(sides, buffered) == ([], [1])
    # A payload that is not an event: the original raises (the event after it waits for the
    # next poll, the bad one is lost); compat skips it with a warning and yields the next.
    compat._SKIPPED.reset()
    assert both(sides, bad_payload) == ("JSONDecodeError", [2])
    [warning] = [r for r in caplog.records if r.name == "trio_pgevents.compat"]
    assert "skipped: not a psycopg2-pgevents event" in warning.getMessage()
    # Another channel LISTENed on the same connection: the original parses its payloads as
    # events (and raises, leaving the events after it); compat leaves them on the connection.
    assert both(sides, other_channel) == (("JSONDecodeError", [event_text(3)]), ([3], ["hello"]))
