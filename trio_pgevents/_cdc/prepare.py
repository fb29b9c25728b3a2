"""Getting a change stream ready: the server can stream, the publication and the slot exist."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql
from sqlalchemy.engine import Engine

from .. import _connection as conn_mod
from .._errors import (
    ConfigurationError,
    ConnectError,
    ReplicationError,
)
from .._secrets import get_logger
from .._source import DB_ERRORS
from .._threads import Handoff, run_abandonable
from .admin import one_line, quote_ident

logger = get_logger("trio_pgevents")

# ---------------------------------------------------------------------------
# preparing the slot and publication
# ---------------------------------------------------------------------------


@dataclass
class _Plan:
    """What the checks of :func:`_check_and_publish` found (connection still open)."""

    proxy: Any
    database: str
    created_publication: bool
    slot_exists: bool


def _check_and_publish(
    cursor: Any,
    engine: Engine,
    slot: str,
    publication: str,
    tables: list[tuple[str, str]] | None,
    create: bool,
) -> tuple[str, bool, bool]:
    """Check the server can stream, create the publication if asked: (database, created, slot exists)."""
    cursor.execute(
        "SELECT current_setting('wal_level'), current_user, "
        "(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), "
        "current_database()"
    )
    wal_level, user, may_replicate, database = cursor.fetchone()
    if wal_level != "logical":
        raise ReplicationError(
            f"wal_level is {wal_level!r} on {conn_mod.describe_source(engine)}; change streams need "
            "wal_level = logical (set it in postgresql.conf or with ALTER SYSTEM SET wal_level = "
            "'logical'; it takes effect only after a server restart)"
        )
    if not may_replicate:
        raise ReplicationError(
            f"role {user!r} lacks the REPLICATION attribute; change streams need it "
            f"(ALTER ROLE {quote_ident(user)} REPLICATION, run by a superuser)"
        )
    created_publication = _ensure_publication(cursor, publication, tables, create)
    try:
        slot_exists = _check_slot(cursor, slot, database, create)
    except BaseException:
        if created_publication:
            _drop_publication_quietly(cursor, publication)
        raise
    return database, created_publication, slot_exists


def _drop_publication_quietly(cursor: Any, publication: str) -> None:
    with contextlib.suppress(psycopg2.Error):
        cursor.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))


async def prepare(
    engine: Engine,
    slot: str,
    publication: str,
    tables: list[tuple[str, str]] | None,
    create: bool,
    connect_timeout: float,
    *,
    create_missing_slot: bool = True,
) -> bool:
    """Check the server can stream, and create the publication and slot if asked.

    Returns whether the slot existed. With ``create_missing_slot=False`` a missing slot
    is left for the caller to create (a change stream with ``snapshot=True``
    creates it on its replication connection, which exports the snapshot).

    Connecting and the checks are bounded by ``connect_timeout`` (a silent
    server cannot hold the caller, nor the worker thread: its socket is shut
    down). Creating a missing slot waits for the transactions in progress to
    end, which may take long on a busy server: that step is bounded only by
    the caller's cancellation. Nothing is left half done: a publication
    created here is dropped again if the slot cannot be created.
    """
    source = conn_mod.describe_source(engine)
    handoff = Handoff(close=lambda plan: conn_mod.discard(plan.proxy))

    def check() -> _Plan | None:
        proxy = conn_mod.checkout(engine, (), None, handoff, connect_timeout)  # attaches the socket
        try:
            with proxy.dbapi_connection.cursor() as cursor:
                found = _check_and_publish(cursor, engine, slot, publication, tables, create)
        except BaseException:
            conn_mod.finish_use(proxy, handoff, broken=True)
            raise
        plan: _Plan | None = handoff.deliver(_Plan(proxy, *found))
        return plan

    try:
        plan = await run_abandonable(
            check,
            timeout=connect_timeout,
            handoff=handoff,
            what=f"connect (connect_timeout={connect_timeout:g}s)",
        )
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"publication {publication!r} or a table name cannot be written in the client encoding "
            f"of {source}: {exc.reason}"
        ) from exc
    except DB_ERRORS as exc:
        raise ConnectError(f"could not connect to {source}: {one_line(exc)}") from exc
    assert plan is not None
    if plan.slot_exists or not create_missing_slot:
        conn_mod.give_back(plan.proxy)  # no round trip: nothing is open on it
        return plan.slot_exists
    # Creating the slot: the thread owns the connection from here on.
    fd = plan.proxy.dbapi_connection.fileno()
    creating = Handoff()
    creating.attach(fd)

    def create_slot() -> None:
        try:
            with plan.proxy.dbapi_connection.cursor() as cursor:
                try:
                    _create_slot(cursor, slot)
                except BaseException:
                    if plan.created_publication and not creating.abandoned:
                        _drop_publication_quietly(cursor, publication)
                    raise
        except BaseException:
            conn_mod.finish_use(plan.proxy, creating, broken=True)
            raise
        conn_mod.finish_use(plan.proxy, creating, broken=False)

    try:
        await run_abandonable(create_slot, timeout=None, handoff=creating, what="create replication slot")
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        raise ConnectError(
            f"lost the connection to {source} while creating slot {slot!r}: {one_line(exc)}"
        ) from exc
    return False


def _ensure_publication(
    cursor: Any, publication: str, tables: list[tuple[str, str]] | None, create: bool
) -> bool:
    if tables is not None:
        for schema, table in tables:
            cursor.execute(
                "SELECT c.relreplident, "
                "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) "
                "OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (schema, table),
            )
            row = cursor.fetchone()
            if row is None:
                raise ConfigurationError(f"table {schema}.{table} does not exist")
            identity, has_key = row
            if identity == "n" or (identity == "d" and not has_key):
                # Publishing it would make every UPDATE/DELETE on it fail.
                raise ConfigurationError(
                    f"table {schema}.{table} has no primary key (no replica identity): UPDATE and "
                    "DELETE on it would fail once published; call set_replica_identity(engine, "
                    f"{table!r}, {schema!r}, full=True) or add a primary key"
                )
    cursor.execute("SELECT oid, puballtables FROM pg_publication WHERE pubname = %s", (publication,))
    row = cursor.fetchone()
    if row is not None:
        _check_existing_publication(cursor, publication, bool(row[1]), tables)
        return False
    if not create:
        raise ReplicationError(f"publication {publication!r} does not exist (and create=False)")
    if tables is None:
        statement = sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(sql.Identifier(publication))
    else:
        statement = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
            sql.Identifier(publication),
            sql.SQL(", ").join(
                sql.SQL("{}.{}").format(sql.Identifier(s), sql.Identifier(t)) for s, t in tables
            ),
        )
    try:
        cursor.execute(statement)
    except psycopg2.errors.DuplicateObject:
        return False  # created concurrently
    except psycopg2.errors.InsufficientPrivilege as exc:
        raise ReplicationError(
            f"could not create publication {publication!r}: {exc}".strip()
            + (" (FOR ALL TABLES needs a superuser; pass tables=[...])" if tables is None else "")
        ) from exc
    except psycopg2.Error as exc:
        raise ReplicationError(f"could not create publication {publication!r}: {exc}".strip()) from exc
    if tables is None:
        _warn_keyless_tables(cursor, publication)
    return True


_KEYLESS_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
  AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (
        SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
ORDER BY 1, 2
"""


def _warn_keyless_tables(cursor: Any, publication: str) -> None:
    """FOR ALL TABLES includes tables whose UPDATE/DELETE now fail: say which, loudly."""
    cursor.execute(_KEYLESS_SQL)
    keyless = [f"{schema}.{table}" for schema, table in cursor.fetchall()]
    if keyless:
        shown = ", ".join(keyless[:20]) + (f" and {len(keyless) - 20} more" if len(keyless) > 20 else "")
        logger.warning(
            "publication %r publishes all tables, but %d have no primary key or replica identity: "
            "UPDATE and DELETE on them now fail until set_replica_identity(..., full=True) is "
            "called for them: %s",
            publication,
            len(keyless),
            shown,
        )


def _check_existing_publication(
    cursor: Any, publication: str, all_tables: bool, tables: list[tuple[str, str]] | None
) -> None:
    if tables is None:
        if not all_tables:
            raise ReplicationError(
                f"publication {publication!r} exists but is not FOR ALL TABLES; pass its tables, "
                "or drop it with drop_change_stream()"
            )
        return
    if all_tables:
        raise ReplicationError(
            f"publication {publication!r} exists FOR ALL TABLES, not for {_describe(tables)}; "
            "pass tables=None, or use another publication name"
        )
    cursor.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
    )
    existing = {(s, t) for s, t in cursor.fetchall()}
    if existing != set(tables):
        raise ReplicationError(
            f"publication {publication!r} exists for {_describe(sorted(existing)) or 'no tables'}, "
            f"not for {_describe(tables)}; use another publication name or drop it first"
        )


def _describe(tables: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{s}.{t}" for s, t in tables)


def _check_slot(cursor: Any, slot: str, database: str, create: bool) -> bool:
    """Whether the slot exists (and is ours to use); raises if it is unusable or missing with create=False."""
    cursor.execute(
        "SELECT plugin, slot_type, database FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    row = cursor.fetchone()
    if row is not None:
        plugin, slot_type, slot_database = row
        if slot_type != "logical" or plugin != "pgoutput":
            raise ReplicationError(
                f"replication slot {slot!r} exists but is a {slot_type} slot with plugin {plugin!r}, "
                "not a logical pgoutput slot"
            )
        if slot_database != database:
            raise ReplicationError(
                f"replication slot {slot!r} belongs to database {slot_database!r}, not {database!r}"
            )
        return True  # whether it is in use is for START_REPLICATION to say (see _first_connect)
    if not create:
        raise ReplicationError(f"replication slot {slot!r} does not exist (and create=False)")
    return False


def _create_slot(cursor: Any, slot: str) -> None:
    """Create the logical pgoutput slot (waits for the transactions in progress to end)."""
    try:
        cursor.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    except psycopg2.errors.DuplicateObject:
        return  # created concurrently
    except psycopg2.errors.InsufficientPrivilege as exc:
        raise ReplicationError(
            f"could not create replication slot {slot!r}: the role lacks the REPLICATION attribute"
        ) from exc
    except psycopg2.Error as exc:
        if exc.pgcode is None:
            raise  # the connection broke (or was given up on): not the slot's fault
        raise ReplicationError(f"could not create replication slot {slot!r}: {exc}".strip()) from exc
