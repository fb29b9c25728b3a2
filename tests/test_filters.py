"""Filters at the source (issue 16, point 4): operations, columns, conditions and channels.

On the LISTEN path and in durable mode a filter is a trigger definition
(``AFTER INSERT OR UPDATE OF ... WHEN (...)``); on a change stream it is the
publication's (``publish``, column list, row filter). Each test runs the same
statements (three INSERTs, three UPDATEs of which one changes nothing, a
DELETE and a TRUNCATE) and counts what arrives, by operation; a sentinel
sent after them proves that nothing more arrives.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import trio
from sqlalchemy.engine import Engine

from trio_pgevents import (
    ConfigurationError,
    Installer,
    Notification,
    ReplicationError,
    RowChange,
    decode_trigger_payload,
    open_change_stream,
    open_durable_stream,
    open_event_stream,
)
from trio_pgevents._cdc.publication import PublicationFilters, ensure_publication
from trio_pgevents._filters import check_condition
from trio_pgevents._installer.sql import object_names

from .conftest import Query, run_sql, take

Unique = Callable[[str], str]

#: The statements every test runs (one transaction): 3 INSERTs, 3 UPDATEs (the second
#: sets a column to the value it has), 1 DELETE, 1 TRUNCATE.
WORKLOAD = (
    "INSERT INTO {t} (id, status, total) VALUES (1, 'new', 5), (2, 'new', 50), (3, 'new', 500); "
    "UPDATE {t} SET status = 'paid' WHERE id = 2; "
    "UPDATE {t} SET total = total WHERE id = 3; "
    "UPDATE {t} SET total = 600 WHERE id = 3; "
    "DELETE FROM {t} WHERE id = 1; "
    "TRUNCATE {t}"
)
EVERYTHING = {"INSERT": 3, "UPDATE": 3, "DELETE": 1, "TRUNCATE": 1}

#: (watch options, events expected by operation): each filter alone, then combined.
TRIGGER_CASES: dict[str, tuple[dict[str, Any], dict[str, int]]] = {
    "unfiltered": ({}, EVERYTHING),
    "insert": ({"operations": ["INSERT"]}, {"INSERT": 3}),
    "update": ({"operations": ["update"]}, {"UPDATE": 3}),
    "delete": ({"operations": ["DELETE"]}, {"DELETE": 1}),
    "truncate": ({"operations": ["TRUNCATE"]}, {"TRUNCATE": 1}),
    "insert-delete": ({"operations": ["DELETE", "INSERT"]}, {"INSERT": 3, "DELETE": 1}),
    # Only the UPDATE that changed status; setting total to itself is no change either.
    "columns": ({"columns": ["status"]}, {"INSERT": 3, "UPDATE": 1, "DELETE": 1, "TRUNCATE": 1}),
    "when": ({"operations": ["INSERT", "UPDATE"], "when": "NEW.total > 10"}, {"INSERT": 2, "UPDATE": 3}),
    "combined": (
        {"operations": ["UPDATE", "DELETE"], "columns": ["total"], "when": "OLD.total > 10"},
        {"UPDATE": 1},
    ),
    "all-of-them": (
        {
            "operations": ["INSERT", "UPDATE", "TRUNCATE"],
            "columns": ["total", "status"],
            "when": "NEW.id > 1",
        },
        {"INSERT": 2, "UPDATE": 2, "TRUNCATE": 1},
    ),
}


def ident(*names: str) -> str:
    return ".".join('"' + n.replace('"', '""') + '"' for n in names)


@pytest.fixture
def schema(pg_dsn: str, unique: Unique) -> Iterator[str]:
    name = unique("flt")
    run_sql(pg_dsn, f"CREATE SCHEMA {ident(name)}")
    yield name
    run_sql(pg_dsn, f"DROP SCHEMA IF EXISTS {ident(name)} CASCADE")


def orders(dsn: str, schema: str, name: str = "orders") -> str:
    """Create ``schema.name`` (id, status, total); its quoted name."""
    table = ident(schema, name)
    run_sql(dsn, f"CREATE TABLE {table} (id int PRIMARY KEY, status text, total numeric)")
    return table


def triggers_on(dsn: str, table: str) -> dict[str, str]:
    rows = run_sql(
        dsn, "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s::regclass", (table,)
    )
    return dict(rows)


async def count_notified(url: str, query: Query, channel: str, statements: str) -> Counter[str]:
    """Run ``statements``, then count the row events NOTIFYed on ``channel`` by operation."""
    counts: Counter[str] = Counter()
    async with open_event_stream(url, [channel], decoders={channel: decode_trigger_payload}) as events:
        await query(statements)
        await query("SELECT pg_notify(%s, 'sentinel')", (channel,))
        with trio.fail_after(30):
            async for event in events:
                if isinstance(event, RowChange):
                    counts[event.method] += 1
                elif isinstance(event, Notification) and event.payload == "sentinel":
                    break
    return counts


# -- the LISTEN path ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(TRIGGER_CASES))
async def test_each_filter_alone_and_combined_on_the_listen_path(
    case: str, make_installer: Callable[..., Installer], schema: str, pg_url: str, pg_dsn: str, query: Query
) -> None:
    options, expected = TRIGGER_CASES[case]
    table = orders(pg_dsn, schema)
    installer = make_installer()
    await installer.aio.watch_table("orders", schema, **options)
    counts = await count_notified(pg_url, query, installer.channel, WORKLOAD.format(t=table))
    assert counts == Counter(expected)
    assert (await installer.aio.status()).ok


async def test_the_tables_own_channel(
    make_installer: Callable[..., Installer],
    schema: str,
    pg_url: str,
    pg_dsn: str,
    query: Query,
    unique: Unique,
) -> None:
    table = orders(pg_dsn, schema)
    orders(pg_dsn, schema, "other")
    installer = make_installer()
    own = unique("own ch")
    await installer.aio.watch_table("orders", schema, channel=own, operations=["INSERT"])
    await installer.aio.watch_table("other", schema)
    statements = WORKLOAD.format(t=table) + "; " + WORKLOAD.format(t=ident(schema, "other"))
    async with open_event_stream(pg_url, [installer.channel], decoders={}) as main_channel:
        assert await count_notified(pg_url, query, own, statements) == Counter({"INSERT": 3})
        await query("SELECT pg_notify(%s, 'sentinel')", (installer.channel,))
        got = await take(main_channel, 9)
    assert [(e.channel, e.payload) for e in got][-1] == (installer.channel, "sentinel")
    events = [decode_trigger_payload(e.channel, e.payload, 0, "test") for e in got[:-1]]
    assert {e.table_name for e in events if isinstance(e, RowChange)} == {"other"}
    assert all(isinstance(e, RowChange) for e in events)


# -- durable mode --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["unfiltered", "update", "columns", "when", "combined", "all-of-them"])
async def test_each_filter_in_durable_mode(
    case: str,
    make_installer: Callable[..., Installer],
    schema: str,
    pg_url: str,
    pg_dsn: str,
    query: Query,
    unique: Unique,
) -> None:
    options, expected = TRIGGER_CASES[case]
    table = orders(pg_dsn, schema)
    installer = make_installer()
    await installer.aio.install(durable=True)
    own = unique("dur ch")
    await installer.aio.watch_table("orders", schema, durable=True, channel=own, **options)
    opts: dict[str, Any] = {"schema": installer.schema, "channel": installer.channel, "poll_interval": 0.5}
    async with open_durable_stream(pg_url, unique("c"), **opts) as events:
        await query(WORKLOAD.format(t=table))
        # The outbox holds exactly what the triggers kept (capture and outbox agree)...
        rows = await query(
            f"SELECT payload ->> 'method', payload ->> 'truncated', channel, count(*) "
            f"FROM {ident(installer.schema, 'events')} GROUP BY 1, 2, 3"
        )
        assert {method: n for method, _, _, n in rows} == expected
        assert {(truncated, channel) for _, truncated, channel, _ in rows} == {("false", own)}
        # ...and the durable stream delivers it.
        got = await take(events, sum(expected.values()))
    assert Counter(e.method for e in got) == Counter(expected)
    assert {e.channel for e in got} == {own}
    assert (await installer.aio.status()).ok


async def test_a_volatile_condition_is_refused_in_durable_mode_only(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str
) -> None:
    table = orders(pg_dsn, schema)
    installer = make_installer()
    installer.install(durable=True)
    with pytest.raises(ConfigurationError, match=r"VOLATILE random\(\).*STABLE or IMMUTABLE"):
        installer.watch_table(
            "orders", schema, durable=True, when="NEW.total > random()", operations=["INSERT"]
        )
    assert triggers_on(pg_dsn, table) == {}
    # Sampling is fine with NOTIFY: there is one trigger per row event, nothing to agree with.
    installer.watch_table("orders", schema, when="random() < 2")
    assert len(triggers_on(pg_dsn, table)) == 4


# -- change streams ------------------------------------------------------------------------------------

#: (open_change_stream options, events expected, the statement that marks the end, its operation).
CDC_CASES: dict[str, tuple[dict[str, Any], dict[str, int], str, str]] = {
    "insert-truncate": (
        {"operations": ["INSERT", "TRUNCATE"]},
        {"INSERT": 3, "TRUNCATE": 1},
        "INSERT INTO {end} VALUES (101, 'x', 1)",
        "INSERT",
    ),
    "update-delete": (
        {"operations": ["UPDATE", "DELETE"]},
        {"UPDATE": 3, "DELETE": 1},
        "UPDATE {end} SET status = 'y'",
        "UPDATE",
    ),
    "columns": (
        {"columns": ["id", "status"]},
        EVERYTHING,
        "UPDATE {end} SET status = 'y'",
        "UPDATE",
    ),
    "where": ({"where": "id > 1"}, {"INSERT": 2, "UPDATE": 3, "TRUNCATE": 1}, "DELETE FROM {end}", "DELETE"),
    "combined": (
        {"operations": ["INSERT"], "columns": ["id", "total"], "where": "total > 10"},
        {"INSERT": 2},
        "INSERT INTO {end} VALUES (101, 'x', 11)",
        "INSERT",
    ),
}


@pytest.mark.parametrize("case", list(CDC_CASES))
async def test_each_filter_on_a_change_stream(
    case: str, pg_engine: Engine, pg_dsn: str, schema: str, query: Query, cdc_names: Any
) -> None:
    options, expected, end_sql, end_method = CDC_CASES[case]
    table = orders(pg_dsn, schema)
    end = orders(pg_dsn, schema, "end")
    run_sql(pg_dsn, f"INSERT INTO {end} VALUES (100, 'x', 1)")  # before the slot: not streamed
    slot, publication = cdc_names()
    tables = [f"{schema}.orders", f"{schema}.end"]
    async with open_change_stream(
        pg_engine, slot=slot, publication=publication, tables=tables, **options
    ) as changes:
        await query(WORKLOAD.format(t=table) + "; " + end_sql.format(end=end))
        got = await take(changes, sum(expected.values()) + 1, only=RowChange)
    *events, last = got
    assert (last.table_name, last.method) == ("end", end_method)
    assert Counter(e.method for e in events) == Counter(expected)
    if "columns" in options:
        assert all(
            set(e.new_data or e.old_data or options["columns"]) <= set(options["columns"]) for e in got
        )
    # The same options again: the existing publication is what they ask for.
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=tables, **options):
        pass


async def test_change_stream_filters_that_would_break_writers_are_refused(
    pg_engine: Engine, pg_dsn: str, schema: str, cdc_names: Any
) -> None:
    orders(pg_dsn, schema)
    tables = [f"{schema}.orders"]
    refused: list[tuple[dict[str, Any], str]] = [
        ({"where": "total > 10"}, r"where reads .*orders\.total, outside the replica identity"),
        ({"columns": ["status"]}, r"columns must include the replica identity .* \(id\)"),
        ({"columns": ["nope"]}, "has no column nope"),
        ({"where": "total > random()"}, "the filter was refused: .*WHERE expression"),
        ({"where": "no_such_column = 1"}, 'the filter was refused: .*"no_such_column" does not exist'),
    ]
    for options, message in refused:
        slot, publication = cdc_names()
        with pytest.raises(ConfigurationError, match=message):
            async with open_change_stream(
                pg_engine, slot=slot, publication=publication, tables=tables, **options
            ):
                pass
        assert run_sql(pg_dsn, "SELECT count(*) FROM pg_publication WHERE pubname = %s", (publication,)) == [
            (0,)
        ]
    # Without UPDATE and DELETE published, the replica identity does not matter.
    slot, publication = cdc_names()
    async with open_change_stream(
        pg_engine,
        slot=slot,
        publication=publication,
        tables=tables,
        operations=["INSERT"],
        where="total > 10",
    ):
        pass
    run_sql(pg_dsn, f"UPDATE {ident(schema, 'orders')} SET total = 1")  # writers are fine


async def test_an_existing_publication_must_have_the_filters_asked_for(
    pg_engine: Engine, pg_dsn: str, schema: str, cdc_names: Any
) -> None:
    orders(pg_dsn, schema)
    tables = [f"{schema}.orders"]
    slot, publication = cdc_names()
    run_sql(
        pg_dsn,
        f"CREATE PUBLICATION {ident(publication)} FOR TABLE {ident(schema, 'orders')} (id, status) "
        "WHERE (id > 1) WITH (publish = 'insert, update')",
    )
    mismatches: list[dict[str, Any]] = [
        {},
        {"operations": ["INSERT", "UPDATE"]},
        {"operations": ["INSERT", "UPDATE"], "columns": ["id", "status"]},
        {"operations": ["INSERT", "UPDATE"], "columns": ["id", "status"], "where": "id > 2"},
        {"operations": ["INSERT"], "columns": ["id", "status"], "where": "id > 1"},
    ]
    for options in mismatches:
        with pytest.raises(ReplicationError, match=r"exists with publish = 'insert, update'.*WHERE"):
            async with open_change_stream(
                pg_engine, slot=slot, publication=publication, tables=tables, create=False, **options
            ):
                pass
    same: dict[str, Any] = {
        "operations": ["UPDATE", "INSERT"],
        "columns": ["status", "id"],
        "where": "(id)>1",
    }
    async with open_change_stream(pg_engine, slot=slot, publication=publication, tables=tables, **same):
        pass
    # Nothing was altered, and no probe publication is left behind.
    assert (
        run_sql(pg_dsn, "SELECT pubname FROM pg_publication WHERE pubname LIKE 'trio_pgevents_probe%%'") == []
    )
    assert run_sql(
        pg_dsn, "SELECT rowfilter, attnames FROM pg_publication_tables WHERE pubname = %s", (publication,)
    ) == [("(id > 1)", ["id", "status"])]


def test_change_stream_filter_options_are_checked_before_connecting() -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"operations": []}, "operations must name at least one"),
        ({"operations": "INSERT"}, "operations must be a list"),
        ({"operations": ["UPSERT"]}, "'UPSERT' is not one of INSERT, UPDATE, DELETE, TRUNCATE"),
        ({"columns": ["a", ""]}, "columns entry must not be empty"),
        ({"where": "true); DROP TABLE x; --"}, "one SQL expression"),
        ({"where": "a > 1", "tables": None}, "need tables"),
    ]
    for options, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            PublicationFilters.parse(
                options.get("operations"),
                options.get("columns"),
                options.get("where"),
                options.get("tables", [("public", "t")]),
            )


class _OldServerCursor(psycopg2.extensions.cursor):
    """A real cursor, but the server says it is PostgreSQL 14.9 (column lists came in 15)."""

    def execute(self, query: Any, vars: Any = None) -> None:
        if isinstance(query, str) and "server_version_num" in query:
            query = "SELECT 140009"
        super().execute(query, vars)


def test_columns_and_where_need_postgresql_15(pg_dsn: str, schema: str, unique: Unique) -> None:
    orders(pg_dsn, schema)
    conn = psycopg2.connect(pg_dsn, cursor_factory=_OldServerCursor)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            for filters in (PublicationFilters(where="id > 1"), PublicationFilters(columns=("id",))):
                with pytest.raises(ReplicationError, match=r"need PostgreSQL 15 or later.*server is 14\.9"):
                    ensure_publication(cursor, unique("pub"), [(schema, "orders")], True, filters)
            # Operations alone work on any version.
            publication = unique("pub")
            filters = PublicationFilters(operations=("INSERT",))
            assert ensure_publication(cursor, publication, [(schema, "orders")], True, filters)
            cursor.execute(f"DROP PUBLICATION {ident(publication)}")
    finally:
        conn.close()


# -- validation: a bad filter installs nothing -------------------------------------------------------


def test_a_bad_when_installs_nothing(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str
) -> None:
    table = orders(pg_dsn, schema)
    installer = make_installer()
    bad = {
        "NEW.no_such_column > 1": r"the filter does not fit table .*orders.*column new\.no_such_column",
        "NEW.total +": "syntax error",
        "NEW.total": "argument of WHEN must be type boolean",
        "OLD.total > 1": r"INSERT trigger's WHEN .* OLD.*hint: an INSERT has no OLD row",
        "NEW.total > (SELECT 1)": "cannot use subquery",
        "public.no_such_function(NEW.id)": r"does not exist.*hint: the condition is read with search_path",
    }
    for when, message in bad.items():
        with pytest.raises(ConfigurationError, match=message) as raised:
            installer.watch_table("orders", schema, when=when)
        assert "nothing was changed" in str(raised.value)
        # Nothing: no trigger, and not even the library schema (one transaction).
        assert triggers_on(pg_dsn, table) == {}
        assert run_sql(
            pg_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (installer.schema,)
        ) == [(0,)]
    # With a watch in place, a bad new filter leaves the old triggers and registry entry as they were.
    installer.watch_table("orders", schema, operations=["INSERT"])
    before = (
        triggers_on(pg_dsn, table),
        run_sql(pg_dsn, f"SELECT * FROM {ident(installer.schema, 'watched')}"),
    )
    with pytest.raises(ConfigurationError, match="no_such_column"):
        installer.watch_table("orders", schema, when="NEW.no_such_column")
    with pytest.raises(ConfigurationError, match=r"does not fit table .*nope"):
        installer.watch_table("orders", schema, columns=["nope"])
    after = (
        triggers_on(pg_dsn, table),
        run_sql(pg_dsn, f"SELECT * FROM {ident(installer.schema, 'watched')}"),
    )
    assert after == before
    assert installer.status().ok


async def test_own_functions_in_a_condition_are_named_with_their_schema(
    make_installer: Callable[..., Installer], schema: str, pg_url: str, pg_dsn: str, query: Query
) -> None:
    table = orders(pg_dsn, schema)
    run_sql(
        pg_dsn,
        f"CREATE FUNCTION {ident(schema, 'is_big')}(numeric) RETURNS boolean "
        "LANGUAGE sql IMMUTABLE AS 'SELECT $1 > 100'",
    )
    installer = make_installer()
    with pytest.raises(ConfigurationError, match=r"is_big.*does not exist.*qualify your own"):
        installer.watch_table("orders", schema, when="is_big(NEW.total)", operations=["INSERT"])
    await installer.aio.watch_table(
        "orders", schema, when=f"{ident(schema, 'is_big')}(NEW.total)", operations=["INSERT"]
    )
    counts = await count_notified(pg_url, query, installer.channel, WORKLOAD.format(t=table))
    assert counts == Counter({"INSERT": 1})  # 500


def test_a_schema_watch_names_the_table_its_filter_does_not_fit(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str
) -> None:
    orders(pg_dsn, schema)
    run_sql(pg_dsn, f"CREATE TABLE {ident(schema, 'notes')} (id int PRIMARY KEY, body text)")
    installer = make_installer()
    with pytest.raises(ConfigurationError, match=r"does not fit table .*notes.*total"):
        installer.watch_schema(schema, when="NEW.total > 10", operations=["INSERT"])
    assert run_sql(pg_dsn, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'trio\\_pgevents\\_%%'") == [
        (0,)
    ]


def test_filter_options_are_checked_before_connecting() -> None:
    installer = Installer("postgresql+psycopg2://nobody@127.0.0.1:1/none")  # never reached
    bad: list[tuple[dict[str, Any], str]] = [
        ({"operations": ["INSERT", "MERGE"]}, "'MERGE' is not one of"),
        ({"operations": "INSERT"}, "operations must be a list"),
        ({"columns": ["total"], "operations": ["INSERT"]}, "columns filters UPDATEs"),
        ({"when": "NEW.x > 1", "operations": ["TRUNCATE"]}, "only TRUNCATE"),
        ({"when": "   "}, "must not be blank"),
        ({"when": "true) EXECUTE FUNCTION f(); CREATE TRIGGER x AFTER INSERT ON t WHEN (true"}, "one SQL"),
        ({"when": "NEW.a > 1; DROP TABLE t"}, "it contains ';'"),
        ({"when": "NEW.a > 1) OR (true"}, "closes a parenthesis"),
        ({"when": "NEW.a = 'it''s"}, "quoted string is not closed"),
        ({"when": "NEW.a > 1 -- big"}, "ends in a -- comment"),
        ({"channel": "x" * 64}, "64 bytes"),
        ({"columns": ["a" * 64]}, "64 bytes"),
    ]
    for options, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            installer.watch_table("orders", **options)
        with pytest.raises(ConfigurationError, match=message):
            installer.watch_schema_sql("app", **options)
    # Quotes, comments and dollar quotes hide what they hold.
    for fine in ("NEW.a = ';)'", 'NEW."we;ird)" > 1', "NEW.a = $x$ ;) $x$", "/* ; ) */ NEW.a\n-- ;)\n > 1"):
        assert check_condition("when", fine) == fine


# -- status, the definition hash, re-watching --------------------------------------------------------


def test_status_outdated_when_a_filter_changes_and_rewatching_updates(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str
) -> None:
    table = orders(pg_dsn, schema)
    installer = make_installer()
    installer.watch_table("orders", schema, when="NEW.total > 10", operations=["INSERT"])
    assert installer.status().table("orders", schema).state == "INSTALLED"  # type: ignore[union-attr]
    again = installer.watch_table("orders", schema, operations=["insert"], when="  NEW.total > 10 ")
    assert not again.changed  # the same filter, spelled otherwise
    # The registry says another filter than the triggers have (a migration run in part): OUTDATED.
    for options in (
        '{"payload": "row", "operations": ["INSERT"], "when": "NEW.total > 20"}',
        '{"payload": "row", "operations": ["INSERT", "DELETE"], "when": "NEW.total > 10"}',
        '{"payload": "row", "operations": ["INSERT"], "when": "NEW.total > 10", "channel": "x"}',
        '{"payload": "row"}',
    ):
        run_sql(pg_dsn, f"UPDATE {ident(installer.schema, 'watched')} SET options = %s", (options,))
        found = installer.status().table("orders", schema)
        assert found is not None
        assert found.state == "OUTDATED", options
        assert "for another mode or filter" in (found.reason or "") or "missing" in (found.reason or "")
    # install() brings the triggers to what the registry says; watching again to what is asked.
    installer.install()
    assert installer.status().ok
    names = object_names(installer.schema)
    assert set(triggers_on(pg_dsn, table)) == {names.row_trigger, names.truncate_trigger}
    report = installer.watch_table("orders", schema, columns=["status"])
    assert {a.action for a in report.actions if a.kind == "trigger"} == {"installed", "removed", "unchanged"}
    insert, update = names.operation_triggers["INSERT"][0], names.operation_triggers["UPDATE"][0]
    defs = triggers_on(pg_dsn, table)
    assert "AFTER UPDATE OF status" in defs[update]
    assert "record_image_ne(ROW(old.status), ROW(new.status))" in defs[update]
    assert "WHEN" not in defs[insert]
    assert installer.status().ok
    # unwatch finds every trigger a filtered watch made.
    installer.unwatch_table("orders", schema)
    assert triggers_on(pg_dsn, table) == {}


def test_filtered_watch_sql_for_migrations(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str
) -> None:
    table = orders(pg_dsn, schema)
    installer = make_installer()
    script = installer.install_sql() + installer.watch_table_sql(
        "orders", schema, operations=["UPDATE"], columns=["total"], when="NEW.total > 100", channel="big"
    )
    run_sql(pg_dsn, script)
    [definition] = triggers_on(pg_dsn, table).values()
    assert "AFTER UPDATE OF total" in definition
    assert "notify_row('row', 'big')" in definition
    assert installer.status().ok


# -- auto-rebuild, security ------------------------------------------------------------------------------


async def test_auto_rebuild_gives_new_tables_the_schemas_filter(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, query: Query
) -> None:
    installer = make_installer()
    await installer.aio.install(auto_rebuild=True, durable=True)
    await installer.aio.watch_schema(
        schema, durable=True, operations=["INSERT", "UPDATE"], columns=["total"], when="NEW.total > 10"
    )
    table = orders(pg_dsn, schema, "later")  # watched by auto-rebuild, through attach_outbox
    names = object_names(installer.schema)
    assert set(triggers_on(pg_dsn, table)) == {
        *names.operation_triggers["INSERT"],
        *names.operation_triggers["UPDATE"],
    }
    await query(WORKLOAD.format(t=table))
    rows = await query(
        f"SELECT payload ->> 'method', count(*) FROM {ident(installer.schema, 'events')} GROUP BY 1"
    )
    # 50 and 500 inserted; total changed once (500 -> 600).
    assert dict(rows) == {"INSERT": 2, "UPDATE": 1}
    assert (await installer.aio.status()).ok
    # A new table the filter does not fit gets no trigger (its DDL does not fail): MISSING.
    await query(f"CREATE TABLE {ident(schema, 'notes')} (id int PRIMARY KEY, body text)")
    assert triggers_on(pg_dsn, ident(schema, "notes")) == {}
    found = (await installer.aio.status()).table("notes", schema)
    assert found is not None
    assert found.state == "MISSING"


def test_the_condition_runs_with_the_writers_rights(
    make_installer: Callable[..., Installer], schema: str, pg_dsn: str, unique: Unique
) -> None:
    table = ident(schema, "log")
    run_sql(pg_dsn, f"CREATE TABLE {table} (id serial PRIMARY KEY, who text)")
    writer = unique("writer")
    run_sql(pg_dsn, f"CREATE ROLE {ident(writer)} NOLOGIN")
    try:
        run_sql(pg_dsn, f"GRANT USAGE ON SCHEMA {ident(schema)} TO {ident(writer)}")
        run_sql(pg_dsn, f"GRANT INSERT ON {table} TO {ident(writer)}")
        run_sql(pg_dsn, f"GRANT USAGE ON SEQUENCE {ident(schema, 'log_id_seq')} TO {ident(writer)}")
        installer = make_installer()
        installer.install(durable=True)
        installer.watch_table(
            "log", schema, durable=True, when="NEW.who = current_user", operations=["INSERT"]
        )
        for who in (writer, "postgres", writer):
            run_sql(pg_dsn, f"SET ROLE {ident(writer)}; INSERT INTO {table} (who) VALUES (%s)", (who,))
        rows = run_sql(
            pg_dsn, f"SELECT payload -> 'new_data' ->> 'who' FROM {ident(installer.schema, 'events')}"
        )
        # Both triggers (the writer's capture, the definer's outbox) saw current_user = the writer.
        assert rows == [(writer,), (writer,)]
        status = installer.status()
        assert status.ok
        assert status.problems == ()
        definers = run_sql(
            pg_dsn,
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.prosecdef ORDER BY 1",
            (installer.schema,),
        )
        assert definers == [("attach_outbox",), ("outbox_row",)]
    finally:
        run_sql(pg_dsn, f"DROP OWNED BY {ident(writer)} CASCADE; DROP ROLE {ident(writer)}")


# -- the command line ------------------------------------------------------------------------------------


def test_cli_build_with_filters(pg_url: str, pg_dsn: str, schema: str, unique: Unique) -> None:
    table = orders(pg_dsn, schema)
    orders(pg_dsn, schema, "untouched")
    lib, channel, own = unique("fltcli"), unique("fltcli_ch"), unique("fltcli_own")
    common = ["--database-url", pg_url, "--installer-schema", lib, "--channel", channel, "--no-ddl"]
    cli = [sys.executable, "-m", "trio_pgevents", "build"]

    def build(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *extra, *common], capture_output=True, text=True, timeout=120, check=False
        )

    try:
        built = build(
            "--table",
            f"{schema}.orders",
            "--operations",
            "insert, UPDATE",
            "--columns",
            "status",
            "--when",
            "NEW.total > 10",
            "--table-channel",
            own,
        )
        assert built.returncode == 0, built.stderr
        names = object_names(lib)
        defs = triggers_on(pg_dsn, table)
        assert set(defs) == set(
            names.operation_triggers["INSERT"][:1] + names.operation_triggers["UPDATE"][:1]
        )
        assert all(f"'{own}'" in d and "WHEN" in d for d in defs.values())
        assert triggers_on(pg_dsn, ident(schema, "untouched")) == {}  # --table: only that one
        # A filter that does not fit: exit 2, one line naming the table, nothing changed.
        failed = build("--table", f"{schema}.orders", "--when", "NEW.nope > 1", "--operations", "INSERT")
        assert failed.returncode == 2
        assert "does not fit table" in failed.stderr
        assert "orders" in failed.stderr
        assert "nope" in failed.stderr
        assert triggers_on(pg_dsn, table) == defs
        # Contradicting or malformed options: exit 2 before anything is done.
        for extra, message in (
            (["--columns", "status", "--operations", "INSERT"], "columns filters UPDATEs"),
            (["--operations", "INSERT,MERGE"], "'MERGE' is not one of"),
            (["--when", "true; DROP TABLE x"], "one SQL expression"),
        ):
            refused = build("--table", f"{schema}.orders", *extra)
            assert refused.returncode == 2, refused.stderr
            assert message in refused.stderr
        # Filters with neither --table nor --schema (every user schema): exit 2, nothing done.
        unnamed = build("--operations", "INSERT")
        assert unnamed.returncode == 2, unnamed.stderr
        assert "name them with --table or --schema" in unnamed.stderr
        assert triggers_on(pg_dsn, ident(schema, "untouched")) == {}
        # Building again without filters removes them.
        assert build("--table", f"{schema}.orders").returncode == 0
        assert set(triggers_on(pg_dsn, table)) == {names.row_trigger, names.truncate_trigger}
    finally:
        Installer(pg_url, schema=lib, channel=channel).uninstall()
