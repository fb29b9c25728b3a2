"""Getting a change stream ready: the server can stream, the publication and the slot exist."""

from __future__ import annotations

import contextlib
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
from .publication import NO_FILTERS, PublicationFilters, ensure_publication

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
    filters: PublicationFilters = NO_FILTERS,
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
    created_publication = ensure_publication(cursor, publication, tables, create, filters)
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
    filters: PublicationFilters = NO_FILTERS,
    *,
    create_missing_slot: bool = True,
) -> bool:
    """Check the server can stream, and create the publication and slot if asked.

    Returns whether the slot existed. With ``create_missing_slot=False`` a missing slot
    is left for the caller to create (a change stream with ``snapshot=True``
    creates it on its replication connection, which exports the snapshot).

    Connecting and the checks are bounded by ``connect_timeout`` (a silent
    server cannot hold the caller, nor the worker thread: its socket is shut
    down). ``filters`` shape the publication (see :mod:`.publication`).
    Creating a missing slot waits for the transactions in progress to
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
                found = _check_and_publish(cursor, engine, slot, publication, tables, create, filters)
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
