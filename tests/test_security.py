"""Security: no role gains a privilege through what the installer creates (issue 13).

Every test creates low-privileged roles of its own, acts as them on a real
server, and checks what they could and could not do. The attacks are the
ones a review reproduced against 0.1.0:

- a role with nothing but CONNECT and TEMP attaching the durable outbox
  function to a temp table of its own, to write outbox rows and, through a
  cast to json of a type it owns, to run code as the function's owner;
- the owner of a durable-watched table doing the same through its own table;
- code planted on a victim's search_path (functions and operators with exact
  signatures, earlier on the path than pg_catalog) run by the triggers, the
  durable reader or the installer in the victim's session.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
import sqlalchemy
import trio

from trio_pgevents import (
    Installer,
    RowChange,
    decode_trigger_payload,
    open_durable_stream,
    open_event_stream,
)
from trio_pgevents._installer.sql import object_names

from .conftest import run_sql

Unique = Callable[[str], str]
PASSWORD = "s3cret-pw"


def ident(*names: str) -> str:
    """A (qualified) identifier, quoted exactly as Postgres needs it."""
    return ".".join('"' + n.replace('"', '""') + '"' for n in names)


def dsn_as(dsn: str, role: str, **options: str) -> str:
    """``dsn`` with another user (and its password), plus libpq options."""
    params = psycopg2.extensions.parse_dsn(dsn)
    params.update(user=role, password=PASSWORD, **options)
    return str(psycopg2.extensions.make_dsn(**params))


@contextmanager
def session(dsn: str) -> Iterator[Any]:
    """An autocommit cursor on a new connection."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            yield cursor
    finally:
        conn.close()


@pytest.fixture
def make_role(pg_dsn: str, unique: Unique) -> Iterator[Callable[..., str]]:
    """make_role() -> a LOGIN role with no privilege but PUBLIC's (CONNECT, TEMP); dropped after."""
    made: list[str] = []

    def make(prefix: str = "role", *, attributes: str = "") -> str:
        role = unique(prefix)
        run_sql(pg_dsn, f"CREATE ROLE {ident(role)} LOGIN PASSWORD '{PASSWORD}' {attributes}")
        made.append(role)
        return role

    yield make
    for role in reversed(made):
        run_sql(pg_dsn, f"DROP OWNED BY {ident(role)} CASCADE; DROP ROLE {ident(role)}")


@pytest.fixture
def app_schema(pg_dsn: str, unique: Unique) -> Iterator[str]:
    name = unique("secapp")
    run_sql(pg_dsn, f"CREATE SCHEMA {ident(name)}")
    yield name
    run_sql(pg_dsn, f"DROP SCHEMA IF EXISTS {ident(name)} CASCADE")


def is_superuser(dsn: str, role: str) -> bool:
    return bool(run_sql(dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))[0][0])


def outbox_rows(dsn: str, installer: Installer) -> list[dict[str, Any]]:
    rows = run_sql(dsn, f"SELECT payload FROM {ident(installer.schema, 'events')} ORDER BY id")
    return [row[0] for row in rows]


# Run by the intruder: a type, a cast to json that tries to make it a superuser (and
# records who ran it), and a temp table using the type.
ESCALATION = """
CREATE TYPE {schema}.mood AS ENUM ('calm', 'angry');
CREATE TABLE {schema}.ran_as (who text);
CREATE FUNCTION {schema}.escalate({schema}.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.ran_as VALUES (current_user);
    EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
    RETURN '"escalated"';
END $$;
CREATE CAST ({schema}.mood AS json) WITH FUNCTION {schema}.escalate({schema}.mood);
"""


@pytest.mark.parametrize("auto_rebuild", [False, True], ids=["plain", "auto_rebuild"])
def test_a_role_with_only_connect_and_temp_gains_nothing_from_the_outbox_function(
    make_installer: Callable[..., Installer],
    make_role: Callable[..., str],
    app_schema: str,
    pg_dsn: str,
    auto_rebuild: bool,
) -> None:
    installer = make_installer()
    run_sql(pg_dsn, f"CREATE TABLE {ident(app_schema, 'orders')} (id int PRIMARY KEY)")
    installer.install(durable=True, auto_rebuild=auto_rebuild)
    installer.watch_table("orders", app_schema, durable=True)
    intruder = make_role("intruder")
    outbox_fn = f"{ident(installer.schema)}.outbox_row()"
    capture_fn = f"{ident(installer.schema)}.outbox_capture()"
    with session(dsn_as(pg_dsn, intruder)) as cur:
        cur.execute(ESCALATION.format(schema="pg_temp"))
        cur.execute("CREATE TEMP TABLE orders (id int, feeling pg_temp.mood)")
        attached = []
        for name, fn in (("a_capture", capture_fn), ("b_outbox", outbox_fn)):
            try:
                cur.execute(
                    f"CREATE TRIGGER {name} AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION {fn}"
                )
                attached.append(name)
            except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.UndefinedFunction):
                pass
        if auto_rebuild:
            # The way auto-rebuild attaches outbox_row: lend the writer role TRIGGER on the
            # table, then ask. Refused: the table is not watched in durable mode.
            names = object_names(installer.schema)
            cur.execute(f"GRANT TRIGGER ON orders TO {ident(names.writer_role)}")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="not watched in durable mode"):
                cur.execute(
                    f"SELECT * FROM {ident(installer.schema)}.attach_outbox('orders'::regclass, %s)",
                    (names.row_out_trigger,),
                )
        cur.execute("INSERT INTO orders VALUES (1, 'angry')")
        cur.execute("SELECT who FROM pg_temp.ran_as")
        ran_as = {who for (who,) in cur.fetchall()}
    assert not is_superuser(pg_dsn, intruder)
    assert ran_as <= {intruder}  # the cast ran (if at all) with the intruder's own rights
    assert outbox_rows(pg_dsn, installer) == []  # no outbox row for a table nobody watches
    # Nobody but the installer may attach outbox_row; with auto-rebuild a table's creator
    # may attach outbox_capture (it runs as the writer) -- and gains nothing by it.
    assert attached == (["a_capture"] if auto_rebuild else [])


def test_the_owner_of_a_durable_table_runs_its_own_code_with_its_own_rights(
    make_installer: Callable[..., Installer],
    make_role: Callable[..., str],
    pg_dsn: str,
    unique: Unique,
) -> None:
    tenant = make_role("tenant")
    tenant_schema = unique("tenant")
    run_sql(pg_dsn, f"CREATE SCHEMA {ident(tenant_schema)} AUTHORIZATION {ident(tenant)}")
    try:
        with session(dsn_as(pg_dsn, tenant)) as cur:
            cur.execute(f"CREATE TABLE {ident(tenant_schema, 't')} (id int PRIMARY KEY)")
        installer = make_installer()
        installer.watch_table("t", tenant_schema, durable=True)
        with session(dsn_as(pg_dsn, tenant)) as cur:
            cur.execute(ESCALATION.format(schema=ident(tenant_schema)))
            cur.execute(
                f"ALTER TABLE {ident(tenant_schema, 't')} ADD COLUMN feeling {ident(tenant_schema)}.mood"
            )
            cur.execute(f"INSERT INTO {ident(tenant_schema, 't')} VALUES (1, 'angry')")  # commits
            cur.execute(f"SELECT who FROM {ident(tenant_schema, 'ran_as')}")
            ran_as = {who for (who,) in cur.fetchall()}
        assert not is_superuser(pg_dsn, tenant)
        assert ran_as <= {tenant}
        # The write committed, and the change is in the outbox: the row could not be
        # converted (the cast failed as the tenant), so the event says so instead.
        [event] = outbox_rows(pg_dsn, installer)
        assert (event["table_name"], event["method"], event["truncated"]) == ("t", "INSERT", True)
        assert "permission denied" in event["error"]
    finally:
        run_sql(pg_dsn, f"DROP SCHEMA IF EXISTS {ident(tenant_schema)} CASCADE")


def test_outbox_function_belongs_to_a_least_privileged_role(
    make_installer: Callable[..., Installer], app_schema: str, pg_dsn: str
) -> None:
    installer = make_installer()
    run_sql(pg_dsn, f"CREATE TABLE {ident(app_schema, 't')} (id int PRIMARY KEY)")
    installer.watch_table("t", app_schema, durable=True)
    role = object_names(installer.schema).writer_role
    [(owner, definer)] = run_sql(
        pg_dsn,
        "SELECT pg_get_userbyid(proowner), prosecdef FROM pg_proc WHERE oid = %s::regprocedure",
        (f"{ident(installer.schema)}.outbox_row()",),
    )
    assert (owner, definer) == (role, True)
    [attributes] = run_sql(
        pg_dsn,
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
        "FROM pg_roles WHERE rolname = %s",
        (role,),
    )
    assert not any(attributes)
    privileges = set(
        run_sql(
            pg_dsn,
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants WHERE grantee = %s",
            (role,),
        )
    )
    assert privileges == {("watched", "SELECT"), ("events", "INSERT")}
    # Every other function of the library is SECURITY INVOKER; both definers are the role's.
    definers = run_sql(
        pg_dsn,
        "SELECT proname, pg_get_userbyid(proowner) FROM pg_proc "
        "WHERE pronamespace = %s::regnamespace AND prosecdef ORDER BY proname",
        (ident(installer.schema),),
    )
    assert definers == [("attach_outbox", role), ("outbox_row", role)]
    assert installer.status().problems == ()
    # Uninstall takes the role away too.
    installer.uninstall()
    assert run_sql(pg_dsn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(0,)]


def test_nothing_is_granted_to_public_and_status_reports_what_an_old_install_left(
    make_installer: Callable[..., Installer], app_schema: str, pg_dsn: str
) -> None:
    installer = make_installer()
    run_sql(pg_dsn, f"CREATE TABLE {ident(app_schema, 't')} (id int PRIMARY KEY)")
    installer.watch_table("t", app_schema, durable=True)
    schema = ident(installer.schema)
    public = run_sql(
        pg_dsn,
        "SELECT p.proname FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
        "WHERE p.pronamespace = %s::regnamespace AND a.grantee = 0",
        (schema,),
    )
    assert public == []
    assert run_sql(pg_dsn, "SELECT has_schema_privilege('public', %s, 'USAGE')", (installer.schema,)) == [
        (False,)
    ]
    # What 0.1.0 left: PUBLIC usage on the schema, EXECUTE on the functions, a definer
    # owned by the superuser.
    run_sql(pg_dsn, f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")
    run_sql(pg_dsn, f"GRANT EXECUTE ON FUNCTION {schema}.outbox_row() TO PUBLIC")
    run_sql(pg_dsn, f"ALTER FUNCTION {schema}.outbox_row() OWNER TO CURRENT_USER")
    problems = installer.status().problems
    assert any("EXECUTE on" in p and "outbox_row" in p for p in problems), problems
    assert any("USAGE on schema" in p for p in problems), problems
    assert any("owned by superuser" in p for p in problems), problems
    assert not installer.status().ok
    installer.install()
    assert installer.status().problems == ()
    assert installer.status().ok


def test_auto_rebuild_runs_as_the_table_creator_and_needs_no_superuser(
    make_installer: Callable[..., Installer],
    make_role: Callable[..., str],
    app_schema: str,
    pg_dsn: str,
) -> None:
    installer = make_installer()
    installer.install(durable=True, auto_rebuild=True)
    installer.watch_schema(app_schema, durable=True)
    creator = make_role("creator")
    run_sql(pg_dsn, f"GRANT USAGE, CREATE ON SCHEMA {ident(app_schema)} TO {ident(creator)}")
    with session(dsn_as(pg_dsn, creator)) as cur:
        cur.execute(f"CREATE TABLE {ident(app_schema, 'fresh')} (id int PRIMARY KEY, body text)")
        cur.execute(f"INSERT INTO {ident(app_schema, 'fresh')} VALUES (1, 'hello')")
    [event] = outbox_rows(pg_dsn, installer)
    assert (event["table_name"], event["new_data"]) == ("fresh", {"id": 1, "body": "hello"})
    fresh = installer.status().table("fresh", app_schema)
    assert fresh is not None
    assert (fresh.state, fresh.reason) == ("INSTALLED", None)


# ---- code planted on the search_path --------------------------------------------------------------

# Overloads with exact signatures, each recording who called it, then doing the real thing.
_PLANTED_OPERATORS = [
    (op, left, right)
    for op in ("=", "<>", "<", ">", "<=", ">=")
    for left, right in (
        ("text", "text"),
        ("name", "name"),
        ("text", "name"),
        ("name", "text"),
        ("int4", "int4"),
        ("int8", "int8"),
        ("oid", "oid"),
        ("xid8", "xid8"),
        ("bool", "bool"),
        ("char", "char"),
    )
] + [
    ("||", "text", "text"),
    ("||", "jsonb", "jsonb"),
    ("->", "jsonb", "text"),
    ("->>", "jsonb", "text"),
    ("?", "jsonb", "text"),
    ("-", "int4", "int4"),
    ("*", "int8", "int8"),
    ("/", "int8", "int8"),
]
_PLANTED_FUNCTIONS = [
    ("row_to_json", "anyelement", "json"),
    ("to_jsonb", "anyelement", "jsonb"),
    ("pg_notify", "text, text", "void"),
    ("current_setting", "text, boolean", "text"),
    ("set_config", "text, text, boolean", "text"),
    ("octet_length", "text", "int4"),
    ("jsonb_typeof", "jsonb", "text"),
    ("pg_snapshot_xmin", "pg_snapshot", "xid8"),
    ("pg_current_snapshot", "", "pg_snapshot"),
    ("pg_current_xact_id", "", "xid8"),
    ("pg_try_advisory_xact_lock", "int8", "bool"),
    ("pg_notification_queue_usage", "", "float8"),
    ("now", "", "timestamptz"),
    ("pg_partition_root", "regclass", "regclass"),
]


def plant(dsn: str, planter: str, schema: str) -> None:
    """Create the planted schema (owned by ``planter``) and its overloads."""
    run_sql(dsn, f"CREATE SCHEMA {ident(schema)} AUTHORIZATION {ident(planter)}")
    statements = [
        f"CREATE TABLE {ident(schema, 'calls')} "
        "(who text, what text, query text DEFAULT pg_catalog.current_query())",
        f"GRANT USAGE ON SCHEMA {ident(schema)} TO PUBLIC",
        f"GRANT INSERT, SELECT ON {ident(schema, 'calls')} TO PUBLIC",
    ]
    results = {"||": None, "->": "jsonb", "->>": "text", "-": None, "*": None, "/": None}
    for index, (op, left, right) in enumerate(_PLANTED_OPERATORS):
        fn = ident(schema, f"op{index}")
        result = results.get(op, "bool") or left
        statements.append(
            f"CREATE FUNCTION {fn}(a {left}, b {right}) RETURNS {result} LANGUAGE sql AS $$ "
            f"INSERT INTO {ident(schema, 'calls')} VALUES (current_user, {_quote(op + ' ' + left)}); "
            f"SELECT a OPERATOR(pg_catalog.{op}) b $$"
        )
        statements.append(
            f"CREATE OPERATOR {ident(schema)}.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {fn})"
        )
    for name, args, result in _PLANTED_FUNCTIONS:
        params = ", ".join(f"a{i} {t.strip()}" for i, t in enumerate(args.split(","))) if args else ""
        call_args = ", ".join(f"a{i}" for i in range(len(args.split(",")))) if args else ""
        body = f"SELECT pg_catalog.{name}({call_args})"
        statements.append(
            f"CREATE FUNCTION {ident(schema, name)}({params}) RETURNS {result} LANGUAGE sql AS $$ "
            f"INSERT INTO {ident(schema, 'calls')} VALUES (current_user, {_quote(name)}); {body} $$"
        )
    run_sql(dsn, f"SET ROLE {ident(planter)}; " + "; ".join(statements))


EQ = "OPERATOR(pg_catalog.=)"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def test_nothing_planted_on_the_search_path_runs(
    make_installer: Callable[..., Installer],
    make_role: Callable[..., str],
    app_schema: str,
    pg_url: str,
    pg_dsn: str,
    unique: Unique,
) -> None:
    planter = make_role("planter")
    planted = unique("planted")
    plant(pg_dsn, planter, planted)
    try:
        # The victim: every session below puts the planted schema first on its path
        # (its own statements qualify their operators, so any call is ours).
        path = {"options": f"-c search_path={planted},pg_catalog,public"}
        victim_url = sqlalchemy.make_url(pg_url).update_query_dict(path)
        victim_dsn = psycopg2.extensions.make_dsn(pg_dsn, **path)
        installer = make_installer(engine=victim_url.render_as_string(hide_password=False))
        for table, durable, payload in (("d", True, "row"), ("n", False, "row"), ("k", False, "keys")):
            run_sql(pg_dsn, f"CREATE TABLE {ident(app_schema, table)} (id int PRIMARY KEY, body text)")
            installer.watch_table(table, app_schema, durable=durable, payload=payload)  # type: ignore[arg-type]
        installer.install(durable=True, ddl=True, auto_rebuild=True)
        installer.status()
        engine = sqlalchemy.create_engine(victim_url)
        try:
            async with (
                open_event_stream(
                    engine, [installer.channel], decoders={installer.channel: decode_trigger_payload}
                ) as events,
                open_durable_stream(
                    engine, unique("consumer"), schema=installer.schema, channel=installer.channel
                ) as durable_events,
            ):
                for table in ("d", "n", "k"):
                    big = "x" * 9000  # the NOTIFY path's slow path (payload over the limit) too
                    run_sql(
                        victim_dsn,
                        f"INSERT INTO {ident(app_schema, table)} VALUES (1, 'a'), (2, %s); "
                        f"UPDATE {ident(app_schema, table)} SET body = 'b' WHERE id {EQ} 1; "
                        f"DELETE FROM {ident(app_schema, table)} WHERE id {EQ} 2; "
                        f"TRUNCATE {ident(app_schema, table)}",
                        (big,),
                    )
                with trio.fail_after(20):
                    got = 0
                    while got < 10:  # n and k: 2 inserts, an update, a delete, a truncate each
                        event = await events.receive()
                        got += isinstance(event, RowChange)
                    durable_got = 0
                    while durable_got < 5:
                        event = await durable_events.receive()
                        durable_got += isinstance(event, RowChange)
        finally:
            engine.dispose()
        calls = run_sql(pg_dsn, f"SELECT who, what, query FROM {ident(planted, 'calls')}")
        assert calls == []
    finally:
        run_sql(pg_dsn, f"DROP SCHEMA IF EXISTS {ident(planted)} CASCADE")


def test_keys_payload_sends_only_the_key(
    make_installer: Callable[..., Installer], app_schema: str, pg_dsn: str
) -> None:
    installer = make_installer(payload="keys")
    for table in ("secrets", "secrets_outbox"):
        run_sql(
            pg_dsn,
            f"CREATE TABLE {ident(app_schema, table)} (id int, k2 text, pin text, PRIMARY KEY (id, k2))",
        )
    run_sql(pg_dsn, f"CREATE TABLE {ident(app_schema, 'keyless')} (pin text)")
    installer.watch_table("secrets", app_schema)
    installer.watch_table("keyless", app_schema)
    installer.watch_table("secrets_outbox", app_schema, durable=True)
    listener = psycopg2.connect(pg_dsn)
    listener.autocommit = True
    try:
        with listener.cursor() as cur:
            cur.execute(f"LISTEN {ident(installer.channel)}")
        for table in ("secrets", "secrets_outbox"):
            run_sql(
                pg_dsn,
                f"INSERT INTO {ident(app_schema, table)} VALUES (1, 'a', '1234'); "
                f"UPDATE {ident(app_schema, table)} SET pin = '9999'; "
                f"DELETE FROM {ident(app_schema, table)}",
            )
        run_sql(pg_dsn, f"INSERT INTO {ident(app_schema, 'keyless')} VALUES ('4321')")
        payloads: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(payloads) < 4 and time.monotonic() < deadline:
            select.select([listener], [], [], 1)
            listener.poll()
            while listener.notifies:
                payloads.append(json.loads(listener.notifies.pop(0).payload))
    finally:
        listener.close()
    outbox = outbox_rows(pg_dsn, installer)
    for events in (payloads, outbox):
        text = json.dumps(events)
        for secret in ("1234", "9999", "4321"):
            assert secret not in text, events
        assert all(e["query"] is None and e["keys_only"] for e in events)
    for ins, upd, dele in (payloads[:3], outbox):
        assert (ins["old_data"], ins["new_data"]) == (None, {"id": 1, "k2": "a"})
        assert upd["old_data"] == upd["new_data"] == {"id": 1, "k2": "a"}
        assert (dele["old_data"], dele["new_data"]) == ({"id": 1, "k2": "a"}, None)
    keyless = payloads[3]
    assert (keyless["table_name"], keyless["new_data"]) == ("keyless", None)


def test_cli_build_with_keys_payload_and_status_reports_privilege_problems(
    pg_url: str, pg_dsn: str, app_schema: str, unique: Unique
) -> None:
    lib, channel = unique("seccli"), unique("seccli_ch")
    run_sql(pg_dsn, f"CREATE TABLE {ident(app_schema, 'cards')} (id int PRIMARY KEY, pin text)")
    common = ["--database-url", pg_url, "--installer-schema", lib, "--channel", channel]
    cli = [sys.executable, "-m", "trio_pgevents"]
    try:
        built = subprocess.run(
            [*cli, "build", "--schema", app_schema, "--payload", "keys", "--auto-rebuild", "false", *common],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert built.returncode == 0, built.stderr
        listener = psycopg2.connect(pg_dsn)
        listener.autocommit = True
        try:
            with listener.cursor() as cur:
                cur.execute(f"LISTEN {ident(channel)}")
            run_sql(pg_dsn, f"INSERT INTO {ident(app_schema, 'cards')} VALUES (7, '0000')")
            select.select([listener], [], [], 10)
            listener.poll()
            [note] = listener.notifies
        finally:
            listener.close()
        event = json.loads(note.payload)
        assert (event["new_data"], event["keys_only"]) == ({"id": 7}, True)
        # What 0.1.0 left behind is reported, and build repairs it.
        run_sql(pg_dsn, f"GRANT USAGE ON SCHEMA {ident(lib)} TO PUBLIC")
        status = subprocess.run(
            [*cli, "status", *common], capture_output=True, text=True, timeout=60, check=False
        )
        assert status.returncode == 1, status.stdout
        assert f"privileges: USAGE on schema {lib} is granted to PUBLIC" in status.stdout
        rebuilt = subprocess.run(
            [*cli, "build", "--schema", app_schema, "--payload", "keys", "--auto-rebuild", "false", *common],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        status = subprocess.run(
            [*cli, "status", *common], capture_output=True, text=True, timeout=60, check=False
        )
        assert status.returncode == 0, status.stdout
    finally:
        Installer(pg_url, schema=lib, channel=channel).uninstall()
