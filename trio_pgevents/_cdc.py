"""Change data capture: every committed row change, read from the WAL.

A publication names the tables, a logical replication slot (plugin
``pgoutput``) remembers how far the consumer got, and a psycopg2
``LogicalReplicationConnection`` streams the changes. Writers pay nothing
extra (no trigger, no NOTIFY lock); the server keeps WAL until the consumer
confirms it, so nothing is lost while the consumer is away — and a forgotten
slot keeps WAL forever (see :func:`change_stream_status`).

The hot loop mirrors the LISTEN stream: ``wait_readable(fd)`` ->
``read_message()`` until ``None`` -> decode -> one buffer put per batch.
Connecting, DDL and queries run in worker threads.

Acknowledgement: the WAL position of an acknowledged event is reported to the
server as the flush LSN. A restarted stream resumes after the last
acknowledged *transaction*; a transaction acknowledged only in part is
replayed whole. Delivery is at-least-once.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import select
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import sqlalchemy.exc
import trio
from psycopg2 import sql
from sqlalchemy.engine import Engine

from . import _connection as conn_mod
from ._buffer import EventBuffer, OverflowPolicy
from ._connection import KeepaliveSettings
from ._consumer import BufferedStream
from ._errors import (
    ConfigurationError,
    ConnectError,
    ConnectionLostError,
    ReplicationError,
    StreamClosedError,
    StreamGapError,
)
from ._events import Event, StreamGap
from ._names import check_identifier
from ._nursery import open_unwrapping_nursery
from ._options import DEFAULT_CONNECT_TIMEOUT, GapPolicy, StreamOptions
from ._pgoutput import PgOutputDecoder, ack_position, format_lsn
from ._secrets import get_logger, redactor_for
from ._threads import CallTimeout, Handoff, run_abandonable, shutdown_socket, thread_handoff

__all__ = [
    "ChangeStream",
    "ChangeStreamStatus",
    "change_stream_status",
    "drop_change_stream",
    "open_change_stream",
    "set_replica_identity",
]

logger = get_logger("trio_pgevents")

#: Default lag (bytes of WAL not yet confirmed) past which status warns.
DEFAULT_LAG_WARNING_BYTES = 1 << 30
#: Seconds to wait for a slot held by a walsender whose client just left.
_IN_USE_GRACE = 3.0
#: Most events put into the buffer per batch.
_MAX_BATCH = 4096
#: Default ``linger`` of :func:`open_change_stream` (seconds).
DEFAULT_LINGER = 0.005
_MAX_LINGER = 1.0
#: Replication slot names: what ``pg_create_logical_replication_slot`` accepts.
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
#: Session settings of the replication connection: values arrive in the
#: text form the decoder parses (ISO dates, UTC offsets, exact floats).
_SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 -c IntervalStyle=postgres"
_DB_ERRORS = (psycopg2.Error, sqlalchemy.exc.DBAPIError, OSError)


# ---------------------------------------------------------------------------
# validation and small helpers
# ---------------------------------------------------------------------------


def _check_slot_name(slot: object) -> str:
    if not isinstance(slot, str) or not _SLOT_NAME.fullmatch(slot):
        raise ConfigurationError(
            f"slot {slot!r} is not a valid replication slot name: use 1-63 characters "
            "of lower-case letters, digits and underscores"
        )
    return slot


def _check_identifier(what: str, name: object) -> str:
    return check_identifier(what, name)


def _split_table(table: object) -> tuple[str, str]:
    """``"orders"`` -> ``("public", "orders")``; ``"shop.orders"`` -> ``("shop", "orders")``."""
    if not isinstance(table, str) or not table:
        raise ConfigurationError(f"table must be 'name' or 'schema.name', not {table!r}")
    schema, dot, name = table.partition(".")
    if not dot:
        schema, name = "public", table
    return _check_identifier("schema name", schema), _check_identifier("table name", name)


def _quote(name: str) -> str:
    """Double-quote an identifier (for the publication_names option's list syntax)."""
    return '"' + name.replace('"', '""') + '"'


def replication_dsn(engine: Engine) -> str:
    """A libpq DSN for a replication connection to ``engine``'s database."""
    url = engine.url
    params: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    for key, value in url.query.items():
        params[key] = value if isinstance(value, str) else value[-1]
    extra = params.get("options")
    params["options"] = f"{extra} {_SESSION_OPTIONS}" if extra else _SESSION_OPTIONS
    params.setdefault("application_name", "trio_pgevents_cdc")
    return str(psycopg2.extensions.make_dsn(**{k: v for k, v in params.items() if v is not None}))


def _run(engine: Engine, work: Any, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Any:
    """Run ``work(cursor)`` on an autocommit connection from ``engine``; return its result.

    Blocking. Connecting is bounded by ``connect_timeout``; run by
    :func:`~trio_pgevents._threads.run_abandonable`, the socket is attached to
    its caller's handoff, so a caller that gives up unblocks this thread.
    """
    handoff = thread_handoff()
    redactor = redactor_for(engine)
    try:
        proxy = conn_mod.checkout(engine, (), None, handoff, connect_timeout)
    except _DB_ERRORS as exc:
        raise ConnectError(f"could not connect to {redactor.source}: {redactor.describe(exc)}") from exc
    broken = True
    try:
        with proxy.dbapi_connection.cursor() as cursor:
            result = work(cursor)
        broken = False
        return result
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        raise
    except BaseException:
        broken = False
        raise
    finally:
        if handoff is not None:
            handoff.detach()
        if broken:
            conn_mod.discard(proxy)
        else:
            _return_proxy(proxy)


# ---------------------------------------------------------------------------
# operations: status, drop, replica identity
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeStreamStatus:
    """Health of a change stream's replication slot (see :func:`change_stream_status`).

    Attributes:
        slot: the slot name.
        exists: False when there is no such slot (every other field is then empty).
        active: a consumer is connected to the slot right now.
        active_pid: backend pid of that consumer's walsender, or None.
        plugin: the slot's output plugin (``pgoutput`` for change streams).
        database: the database the slot decodes.
        confirmed_flush_lsn: the position the consumer confirmed (``X/Y``).
        restart_lsn: the oldest WAL position the slot still needs.
        current_lsn: the server's current WAL position.
        lag_bytes: ``pg_current_wal_lsn() - confirmed_flush_lsn``: WAL written
            since the consumer last confirmed (None if unknown).
        retained_bytes: ``pg_current_wal_lsn() - restart_lsn``: WAL the server
            keeps on disk because of this slot.
        wal_status: ``reserved``, ``extended``, ``unreserved`` or ``lost``.
        warning: a message when the slot needs attention (lag over the
            threshold, slot lost), else None. Also logged at WARNING level.
    """

    slot: str
    exists: bool
    active: bool = False
    active_pid: int | None = None
    plugin: str | None = None
    database: str | None = None
    confirmed_flush_lsn: str | None = None
    restart_lsn: str | None = None
    current_lsn: str | None = None
    lag_bytes: int | None = None
    retained_bytes: int | None = None
    wal_status: str | None = None
    warning: str | None = None


_STATUS_SQL = """
SELECT s.slot_name, s.active, s.active_pid, s.plugin, s.database,
       s.confirmed_flush_lsn::text, s.restart_lsn::text, pg_current_wal_lsn()::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
       s.wal_status
FROM pg_catalog.pg_replication_slots AS s
"""
_ONE_SLOT = "WHERE s.slot_name = %s"
_CHANGE_STREAM_SLOTS = (
    "WHERE s.slot_type = 'logical' AND s.plugin = 'pgoutput' AND s.database = current_database() "
    "ORDER BY s.slot_name"
)


def read_slot_statuses(
    cursor: Any, *, slot: str | None = None, lag_warning_bytes: int = DEFAULT_LAG_WARNING_BYTES
) -> list[ChangeStreamStatus]:
    """The status of one slot, or of every change stream slot of the database (one query).

    Each past ``lag_warning_bytes`` of unconfirmed WAL, or lost, carries a
    ``warning`` (also logged). Blocking; ``cursor`` is a psycopg2 cursor.
    """
    if slot is None:
        cursor.execute(_STATUS_SQL + _CHANGE_STREAM_SLOTS)
    else:
        cursor.execute(_STATUS_SQL + _ONE_SLOT, (slot,))
    return [_slot_status(row, lag_warning_bytes) for row in cursor.fetchall()]


def _slot_status(row: tuple[Any, ...], lag_warning_bytes: int) -> ChangeStreamStatus:
    slot, active, pid, plugin, database, confirmed, restart, current, lag, retained, wal_status = row
    warning = None
    if wal_status == "lost":
        warning = f"replication slot {slot!r} is lost: the WAL it needed was removed; drop and recreate it"
    elif lag is not None and lag > lag_warning_bytes:
        warning = (
            f"replication slot {slot!r} is {lag} bytes behind the current WAL position "
            f"(threshold {lag_warning_bytes}); the server keeps {retained} bytes of WAL for it. "
            "Start its consumer, or drop it with drop_change_stream() if it is no longer used."
        )
    if warning is not None:
        logger.warning("%s", warning)
    return ChangeStreamStatus(
        slot=slot,
        exists=True,
        active=bool(active),
        active_pid=pid,
        plugin=plugin,
        database=database,
        confirmed_flush_lsn=confirmed,
        restart_lsn=restart,
        current_lsn=current,
        lag_bytes=None if lag is None else int(lag),
        retained_bytes=None if retained is None else int(retained),
        wal_status=wal_status,
        warning=warning,
    )


def change_stream_status(
    engine: Engine | str, slot: str, *, lag_warning_bytes: int = DEFAULT_LAG_WARNING_BYTES
) -> ChangeStreamStatus:
    """Report a change stream's slot: active?, lag in bytes, WAL it retains.

    A slot whose consumer went away keeps WAL on the server forever; past
    ``lag_warning_bytes`` of unconfirmed WAL the status carries a ``warning``
    and it is logged at WARNING level. Blocking: from Trio, call it through
    ``trio.to_thread.run_sync``.

    Args:
        engine: SQLAlchemy engine (psycopg2) or URL of the database.
        slot: the replication slot name.
        lag_warning_bytes: warn when ``lag_bytes`` exceeds this (default 1 GiB).
    """
    engine = conn_mod.as_engine(engine)
    _check_slot_name(slot)
    found = _run(
        engine, lambda cursor: read_slot_statuses(cursor, slot=slot, lag_warning_bytes=lag_warning_bytes)
    )
    return found[0] if found else ChangeStreamStatus(slot=slot, exists=False)


def drop_change_stream(engine: Engine | str, slot: str, publication: str | None) -> None:
    """Drop a change stream's replication slot and publication (each if it exists).

    Do this when a change stream is no longer used: its slot keeps WAL on
    the server until dropped. Idempotent. Blocking (use a thread from Trio).
    ``publication=None`` drops only the slot.

    Raises:
        ReplicationError: the slot is in use by a connected consumer (stop it
            first), or the role may not drop it.
    """
    engine = conn_mod.as_engine(engine)
    _check_slot_name(slot)
    if publication is not None:
        _check_identifier("publication", publication)

    def work(cursor: Any) -> None:
        # A stream closed a moment ago may still hold the slot until its
        # walsender notices: give it a short grace before calling it in use.
        deadline = time.monotonic() + _IN_USE_GRACE
        while True:
            cursor.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            row = cursor.fetchone()
            if row is None or row[0] is None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if row is not None:
            if row[0] is not None:
                raise ReplicationError(
                    f"replication slot {slot!r} is in use by backend pid {row[0]}: "
                    "stop its change stream before dropping it"
                )
            try:
                cursor.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg2.errors.UndefinedObject:
                pass  # dropped concurrently
            except psycopg2.errors.ObjectInUse as exc:
                raise ReplicationError(f"replication slot {slot!r} is in use: {exc}".strip()) from exc
            except psycopg2.Error as exc:
                raise ReplicationError(f"could not drop replication slot {slot!r}: {exc}".strip()) from exc
        if publication is None:
            return
        try:
            cursor.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
        except psycopg2.Error as exc:
            raise ReplicationError(f"could not drop publication {publication!r}: {exc}".strip()) from exc

    _run(engine, work)


def set_replica_identity(
    engine: Engine | str, table: str, schema: str = "public", *, full: bool = True
) -> None:
    """Make change streams carry full old rows for ``table`` (or only its key again).

    ``full=True`` runs ``ALTER TABLE ... REPLICA IDENTITY FULL``: UPDATE and
    DELETE events then have the whole old row in ``old_data`` (costs more WAL).
    ``full=False`` restores ``REPLICA IDENTITY DEFAULT`` (primary key only).
    A table without a primary key needs FULL before UPDATE/DELETE on it can
    be published at all. Blocking (use a thread from Trio).

    Raises:
        ConfigurationError: the table does not exist.
        ReplicationError: the role may not alter the table.
    """
    engine = conn_mod.as_engine(engine)
    _check_identifier("table", table)
    _check_identifier("schema", schema)
    statement = sql.SQL("ALTER TABLE {}.{} REPLICA IDENTITY {}").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL("FULL" if full else "DEFAULT")
    )

    def work(cursor: Any) -> None:
        try:
            cursor.execute(statement)
        except psycopg2.errors.UndefinedTable as exc:
            raise ConfigurationError(f"table {schema}.{table} does not exist") from exc
        except psycopg2.Error as exc:
            raise ReplicationError(
                f"could not set the replica identity of {schema}.{table}: {exc}".strip()
            ) from exc

    _run(engine, work)


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
            f"(ALTER ROLE {_quote(user)} REPLICATION, run by a superuser)"
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


def _discard_proxy(proxy: Any) -> None:
    """Close a pooled connection that may be broken, and make the pool forget it."""
    conn_mod.discard(proxy)


def _return_proxy(proxy: Any) -> None:
    """Give a healthy, idle connection back to the pool.

    No round trip: psycopg2 changes autocommit locally, and the pool's
    rollback on return does nothing outside a transaction.
    """
    try:
        dbapi = proxy.dbapi_connection
        if dbapi is not None and not dbapi.closed:
            dbapi.autocommit = False
        proxy.close()
    except Exception:
        conn_mod.discard(proxy)


async def _prepare(
    engine: Engine,
    slot: str,
    publication: str,
    tables: list[tuple[str, str]] | None,
    create: bool,
    connect_timeout: float,
) -> None:
    """Check the server can stream, and create the publication and slot if asked.

    Connecting and the checks are bounded by ``connect_timeout`` (a silent
    server cannot hold the caller, nor the worker thread: its socket is shut
    down). Creating a missing slot waits for the transactions in progress to
    end, which may take long on a busy server: that step is bounded only by
    the caller's cancellation. Nothing is left half done: a publication
    created here is dropped again if the slot cannot be created.
    """
    source = conn_mod.describe_source(engine)
    handoff = Handoff(close=lambda plan: _discard_proxy(plan.proxy))

    def check() -> _Plan | None:
        proxy = conn_mod.checkout(engine, (), None, handoff, connect_timeout)  # attaches the socket
        try:
            with proxy.dbapi_connection.cursor() as cursor:
                found = _check_and_publish(cursor, engine, slot, publication, tables, create)
        except BaseException:
            handoff.detach()
            _discard_proxy(proxy)
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
    except _DB_ERRORS as exc:
        raise ConnectError(f"could not connect to {source}: {_one_line(exc)}") from exc
    assert plan is not None
    if plan.slot_exists:
        _return_proxy(plan.proxy)  # no round trip: nothing is open on it
        return
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
            creating.detach()
            _discard_proxy(plan.proxy)
            raise
        creating.detach()
        _return_proxy(plan.proxy)

    try:
        await run_abandonable(create_slot, timeout=None, handoff=creating, what="create replication slot")
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        raise ConnectError(
            f"lost the connection to {source} while creating slot {slot!r}: {_one_line(exc)}"
        ) from exc


def _one_line(exc: BaseException) -> str:
    """A driver error as one line (psycopg2 messages span several)."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return " ".join(str(exc).split()) or type(exc).__name__


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


def _in_use(slot: str, holder: object) -> str:
    return (
        f"replication slot {slot!r} is in use by {holder}: another change stream is "
        "consuming it (one consumer per slot)"
    )


# ---------------------------------------------------------------------------
# the replication connection
# ---------------------------------------------------------------------------


class _SlotInUse(ReplicationError):
    """The slot is in use (maybe by a walsender whose client just went away)."""


class _Fatal(Exception):
    """Internal: a replication error that reconnecting cannot fix."""


def _sql_string(text: str) -> str:
    """A string literal for a replication command.

    The replication grammar takes only plain ``'...'`` literals (no ``E''``
    escapes), with a quote written twice; psycopg2's own ``start_replication``
    turns non-Latin-1 text into garbage here (it adapts the value without the
    connection), so a publication named ``pub_é`` matched nothing.
    """
    return "'" + text.replace("'", "''") + "'"


def start_replication_command(slot: str, publication: str) -> str:
    """``START_REPLICATION SLOT "s" LOGICAL 0/0 (proto_version '1', publication_names '"p"')``.

    The slot resumes from its confirmed position (``0/0``: wherever the slot
    is). The command is text: psycopg2 encodes it in the connection's client
    encoding and the server converts it, like any query.
    """
    return (
        f"START_REPLICATION SLOT {_quote(slot)} LOGICAL 0/0 "
        f"(proto_version '1', publication_names {_sql_string(_quote(publication))})"
    )


def _with_connect_timeout(dsn: str, timeout: float) -> str:
    """libpq's own connect_timeout for a connection (unless the URL sets one).

    It bounds how long a thread given up on can stay in ``connect()`` against a
    server that accepted TCP and never answers (before the socket is known and
    can be shut down). libpq takes whole seconds, at least 2.
    """
    if "connect_timeout" in psycopg2.extensions.parse_dsn(dsn):
        return dsn
    return str(psycopg2.extensions.make_dsn(dsn, connect_timeout=max(2, math.ceil(timeout))))


def _open_replication(
    dsn: str,
    slot: str,
    publication: str,
    status_interval: float,
    keepalive: KeepaliveSettings | None,
    handoff: Handoff,
    connect_timeout: float,
) -> tuple[Any, Any, int | None]:
    """Connect and START_REPLICATION (blocking; runs in a worker thread).

    The socket is attached to ``handoff`` as soon as the connection exists,
    so a caller that gives up shuts it down and this thread returns.
    Returns the connection, its replication cursor, and the server's next
    full (epoch-extended) transaction id, against which the stream widens
    the WAL's 32-bit xids.
    """
    try:
        conn = psycopg2.connect(
            _with_connect_timeout(dsn, connect_timeout),
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
        )
    except psycopg2.OperationalError as exc:
        if "replication" in str(exc) and ("superuser" in str(exc) or "permission" in str(exc)):
            raise _Fatal(f"the role lacks the REPLICATION attribute: {exc}".strip()) from exc
        raise
    try:
        handoff.attach(conn.fileno())
        if keepalive is not None:
            conn_mod.set_keepalive(conn.fileno(), keepalive)
        cursor: Any = conn.cursor()
        # Assigns no transaction id (unlike txid_current()); exists on every version.
        cursor.execute("SELECT txid_snapshot_xmax(txid_current_snapshot())")
        row = cursor.fetchone()
        xid_reference = int(row[0]) if row else None
        try:
            cursor.start_replication_expert(
                start_replication_command(slot, publication),
                decode=False,
                status_interval=max(1, round(status_interval)),
            )
        except UnicodeEncodeError as exc:
            raise _Fatal(
                f"publication {publication!r} cannot be written in the connection's encoding: {exc.reason}"
            ) from exc
        except psycopg2.errors.ObjectInUse as exc:
            raise _SlotInUse(f"replication slot {slot!r} is in use: {exc}".strip()) from exc
        except (psycopg2.errors.UndefinedObject, psycopg2.errors.InsufficientPrivilege) as exc:
            raise _Fatal(f"cannot stream from replication slot {slot!r}: {exc}".strip()) from exc
        except psycopg2.ProgrammingError as exc:
            raise _Fatal(f"cannot stream from replication slot {slot!r}: {exc}".strip()) from exc
    except BaseException:
        handoff.detach()
        _close_quietly(conn)
        raise
    return conn, cursor, xid_reference


class _Lost(Exception):
    """Internal: the replication connection is gone (reason in args[0])."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Session:
    """One replication connection and the cursors that talk on it."""

    __slots__ = ("confirm", "conn", "cursor", "decoder", "fd", "position")

    def __init__(self, conn: Any, cursor: Any, decoder: PgOutputDecoder) -> None:
        self.conn = conn
        self.fd: int = conn.fileno()
        #: Reads the stream. psycopg2 answers the server's keepalives from it
        #: (with its own stored positions); we never report through it.
        self.cursor = cursor
        #: Reports the confirmed (flush) position: acknowledged changes only.
        #: A cursor of its own, so psycopg2's keepalive handling on the reading
        #: cursor (which forwards its flush position to the server's WAL end
        #: once the last message read is confirmed) never sees our positions:
        #: acknowledging part of a transaction whose rest is not read yet
        #: would otherwise confirm the whole of it.
        self.confirm = conn.cursor()
        #: Reports what was received (write position) with the flush position
        #: left invalid: see :meth:`_Replicator._report_received`.
        self.position = conn.cursor()
        self.decoder = decoder


class _Replicator:
    """Reads the slot into the stream's buffer, confirms acknowledged positions, reconnects."""

    def __init__(self, stream: ChangeStream, engine: Engine, status_interval: float, linger: float) -> None:
        self._stream = stream
        self._linger = linger
        self._engine = engine
        self._dsn = replication_dsn(engine)
        self._options = stream._options
        self._status_interval = status_interval
        self._session: _Session | None = None
        self._sent_flush = 0
        self._last_forced = 0.0
        self._reported_write = 0
        self._seen_feedback: Any = None
        self._last_read: Event | None = None
        self.finished = trio.Event()
        self.connected = False
        self.reconnects = 0
        self.last_gap: StreamGap | None = None
        self.backend_pid: int | None = None

    # ---- lifecycle ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            try:
                await self._first_connect()
            except ReplicationError:
                raise
            except _Fatal as exc:
                raise ReplicationError(str(exc)) from exc.__cause__
            except _DB_ERRORS as exc:
                raise ConnectError(
                    f"could not start replication from {self._stream.source}: {_one_line(exc)}"
                ) from exc
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._status_loop)
                while True:
                    try:
                        await self._pump()
                    except _Lost as lost:
                        await self._recover(str(lost.args[0]), lost.__cause__)
        finally:
            await self._close(final_feedback=True)
            self.finished.set()

    async def _first_connect(self) -> None:
        # A walsender whose client has just disconnected (a stream closed or a
        # consumer killed a moment ago) holds the slot until it notices: wait
        # a little before calling the slot "in use".
        deadline = trio.current_time() + _IN_USE_GRACE
        while True:
            try:
                await self._connect(self._options.connect_timeout)
                return
            except _SlotInUse as exc:
                if trio.current_time() >= deadline:
                    message = _in_use(self._stream.slot, "another client")
                    raise ReplicationError(f"{message} ({exc})") from exc
            await trio.sleep(0.05)

    async def _connect(self, limit: float) -> None:
        """One attempt: connect and START_REPLICATION within ``limit`` seconds."""
        handoff = Handoff(close=lambda result: _close_quietly(result[0]))
        stream = self._stream
        dsn, options, status_interval = self._dsn, self._options, self._status_interval
        connect_timeout = options.connect_timeout

        def work() -> tuple[Any, Any, int | None] | None:
            opened = _open_replication(
                dsn, stream.slot, stream.publication, status_interval, options.keepalive, handoff, limit
            )
            delivered: tuple[Any, Any, int | None] | None = handoff.deliver(opened)
            return delivered

        result = await run_abandonable(
            work,
            timeout=limit,
            handoff=handoff,
            what=f"start replication (connect_timeout={connect_timeout:g}s)",
        )
        assert result is not None
        conn, cursor, xid_reference = result
        encoding = psycopg2.extensions.encodings.get(
            conn.get_parameter_status("server_encoding") or "", "utf-8"
        )
        decoder = PgOutputDecoder(stream.slot, stream.source, encoding, xid_reference)
        self._session = _Session(conn, cursor, decoder)
        self.backend_pid = conn.get_backend_pid()
        self.connected = True
        self._sent_flush = 0
        self._reported_write = 0
        self._seen_feedback = cursor.feedback_timestamp
        self._last_read = None
        self._last_forced = trio.current_time()

    async def _close(self, *, final_feedback: bool) -> None:
        """Close the connection within ``close_timeout``, whatever the server does."""
        session, self._session = self._session, None
        self.connected = False
        if session is None:
            return
        # Computed now: the thread must not read the stream's state.
        position = self._confirmable() if final_feedback else 0
        received = session.cursor.wal_end
        with trio.CancelScope(shield=True):
            with contextlib.suppress(ValueError, OSError):
                trio.lowlevel.notify_closing(session.fd)
            handoff = Handoff()
            handoff.attach(session.fd)

            def work() -> None:
                if position:
                    # Confirm what was acknowledged, so a restart resumes right after it.
                    with contextlib.suppress(psycopg2.Error, OSError):
                        session.confirm.send_feedback(write_lsn=received, flush_lsn=position, force=True)
                _finish(session.conn, handoff)

            with contextlib.suppress(CallTimeout):
                await run_abandonable(
                    work, timeout=self._options.close_timeout, handoff=handoff, what="close replication"
                )

    async def _recover(self, reason: str, cause: BaseException | None) -> None:
        disconnected_at = _utcnow()
        logger.warning("lost replication connection to %s: %s", self._stream.source, reason)
        await self._close(final_feedback=False)
        if not self._options.reconnect:
            raise ConnectionLostError(
                f"lost replication connection to {self._stream.source}: {reason}"
            ) from cause
        await self._reconnect(reason)
        gap = StreamGap(self._stream.source, disconnected_at, _utcnow(), reason, True)
        self.last_gap = gap
        self.reconnects += 1
        logger.warning(
            "reconnected to %s after %.3fs; the slot replays from the last confirmed position",
            self._stream.source,
            gap.duration,
        )
        if self._options.on_gap == "raise":
            raise StreamGapError(
                f"replication connection to {self._stream.source} was lost for {gap.duration:.3f}s "
                "(changes are replayed from the slot)",
                gap,
            )
        self._stream._buffer.put_control(gap)

    async def _reconnect(self, reason: str) -> None:
        options = self._options
        delay = options.backoff_initial
        attempts = 0
        deadline = (
            math.inf if options.reconnect_timeout is None else trio.current_time() + options.reconnect_timeout
        )
        while True:
            attempts += 1
            # An attempt against a silent server would otherwise outlast reconnect_timeout.
            timeout = min(options.connect_timeout, max(0.0, deadline - trio.current_time()))
            try:
                await self._connect(timeout)
                return
            except _Fatal as exc:
                raise ReplicationError(
                    f"lost replication connection to {self._stream.source} ({reason}) and cannot "
                    f"resume: {exc}"
                ) from exc.__cause__
            except (ReplicationError, *_DB_ERRORS) as exc:
                # ReplicationError here is "slot in use": the old walsender
                # has not noticed yet that its client is gone.
                out_of_attempts = (
                    options.max_reconnect_attempts is not None and attempts >= options.max_reconnect_attempts
                )
                if out_of_attempts or trio.current_time() >= deadline:
                    raise ConnectionLostError(
                        f"lost replication connection to {self._stream.source} ({reason}) and could "
                        f"not reconnect after {attempts} attempt(s): {_one_line(exc)}"
                    ) from exc
                logger.info(
                    "reconnect to %s failed (attempt %d): %s", self._stream.source, attempts, _one_line(exc)
                )
            await trio.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, deadline - trio.current_time())))
            delay = min(delay * 2, options.backoff_max)

    # ---- the hot loop -----------------------------------------------------

    async def _pump(self) -> None:
        session = self._session
        assert session is not None
        conn, cursor, decoder = session.conn, session.cursor, session.decoder
        fd = session.fd
        read = cursor.read_message
        feed = decoder.feed
        put = self._stream._buffer.put
        wait_readable = trio.lowlevel.wait_readable
        linger = self._linger
        more = False
        while True:
            if more:
                await trio.lowlevel.checkpoint()
            else:
                await wait_readable(fd)
            batch: list[Event] = []
            more = False
            messages = 0
            try:
                while True:
                    message = read()
                    if message is None:
                        break
                    messages += 1
                    feed(message.payload, batch)
                    if len(batch) >= _MAX_BATCH:
                        more = True  # libpq may hold more: read again before waiting
                        break
                if batch:
                    # Before any status update: what was read but not yet
                    # delivered must hold the confirmed position back.
                    self._last_read = batch[-1]
                if cursor.feedback_timestamp != self._seen_feedback:
                    # psycopg2 answered a keepalive (or sent its periodic
                    # update) from the reading cursor, with that cursor's own
                    # (stale or zero) positions: follow it with ours at once.
                    self._send_status(session, force=True)
            except psycopg2.Error as exc:
                raise _Lost(str(exc).strip() or type(exc).__name__) from exc
            if conn.closed:
                raise _Lost("connection closed")
            if batch:
                await put(batch)
            if linger and messages and not more:
                # A trickle of small transactions (one message per wake-up) costs
                # a wake-up of this task and of the consumer per message: let the
                # next messages gather for ``linger`` seconds instead. The read
                # loop drained the socket; if more arrived meanwhile (a backlog
                # being sent), read on at once, so lingering never slows a flood.
                if _readable_now(fd):
                    more = True
                else:
                    await trio.sleep(linger)

    # ---- status updates ---------------------------------------------------

    def _confirmable(self) -> int:
        """The position to confirm: the acknowledged one, or the server's WAL end when that is as good.

        Only acknowledged changes are ever confirmed. When everything read on
        this connection was acknowledged and no transaction is half read, the
        WAL up to the server's last reported end holds nothing more for us
        (the server sends each transaction whole, in commit order, before
        reporting a later end), so confirming it skips nothing -- and lets an
        idle slot release WAL written to other tables.
        """
        acked = self._stream._ack_position()
        session = self._session
        if session is None or session.decoder.in_transaction:
            return acked
        last = self._last_read
        if last is not None and acked < (ack_position(last) or 0):
            return acked
        wal_end: int = session.cursor.wal_end
        return max(acked, wal_end)

    def _report_received(self, session: _Session) -> None:
        """Tell the server how far we *received* (write position), with no flush position.

        While we report a flush position, the server's walsender, stopping
        for a fast shutdown, waits until the flush position reaches all it
        sent (``WalSndDone`` in walsender.c) -- that is, until the consumer
        has acknowledged everything, however long it takes. Reported with an
        invalid (zero) flush position, a status update confirms nothing (the
        slot moves only on a valid flush position) and the walsender compares
        the write position instead, so it can finish once we have *read*
        everything. Sent after every confirmation and after every update
        psycopg2 sends on its own, so it is what the walsender last heard.
        """
        received: int = session.cursor.wal_end
        session.position.send_feedback(write_lsn=received, force=True)
        self._reported_write = received
        self._seen_feedback = session.cursor.feedback_timestamp

    def _send_status(self, session: _Session, *, force: bool) -> None:
        """Confirm the acknowledged position if it advanced (or ``force``), then report what was received."""
        position = self._confirmable()
        received: int = session.cursor.wal_end
        if force or position > self._sent_flush:
            session.confirm.send_feedback(write_lsn=received, flush_lsn=position, force=True)
            self._sent_flush = max(self._sent_flush, position)
            self._report_received(session)
        elif received > self._reported_write or session.cursor.feedback_timestamp != self._seen_feedback:
            self._report_received(session)

    async def _status_loop(self) -> None:
        """Confirm acknowledged positions within a second; a status update every ``status_interval``.

        Runs beside the pump, so the server hears from us even while the pump
        waits for a slow consumer (backpressure) and reads nothing.
        """
        tick = min(1.0, self._status_interval)
        while True:
            await trio.sleep(tick)
            session = self._session
            if session is None:
                continue  # reconnecting
            now = trio.current_time()
            force = now - self._last_forced >= self._status_interval
            try:
                self._send_status(session, force=force)
            except psycopg2.Error:
                continue  # the pump sees the broken connection and reconnects
            if force:
                self._last_forced = now


def _finish(conn: Any, handoff: Handoff) -> None:
    """Thread: close a replication connection without waiting on a peer that stopped reading.

    libpq's close sends a Terminate message and waits until the socket takes
    it; a peer whose receive window is full would hold the thread. Checked
    while the socket is still attached (so a caller giving up can shut it
    down): if it cannot take a byte now, shut it down first.
    """
    with contextlib.suppress(Exception):
        fd = conn.fileno()
        if not select.select([], [fd], [], 0)[1]:
            shutdown_socket(fd)
    handoff.detach()  # from here the descriptor may be closed and its number reused
    _close_quietly(conn)


def _readable_now(fd: int) -> bool:
    """Whether ``fd`` has data to read right now (a non-blocking poll)."""
    return bool(select.select([fd], [], [], 0)[0])


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


# ---------------------------------------------------------------------------
# the stream
# ---------------------------------------------------------------------------


class ChangeStream(BufferedStream):
    """An async stream of :class:`RowChange` events read from a replication slot.

    ``async for change in stream``, ``await stream.receive()``,
    ``stream.receive_nowait()`` and ``stream.batches()`` work as on an
    :class:`EventStream`. Events arrive in commit order; a transaction's
    changes are consecutive. After a reconnect a :class:`StreamGap` with
    ``replayed=True`` arrives, followed by the changes from the last
    confirmed position (some may be repeats).

    Acknowledging: with ``auto_ack=True`` an event counts as processed when
    the consumer asks for the next one (``async for`` moving on; for
    ``batches()``, asking for the next batch). With ``auto_ack=False`` call
    :meth:`ack`. Only processed positions are confirmed to the server.

    Made by :func:`open_change_stream`.
    """

    def __init__(
        self,
        engine: Engine,
        slot: str,
        publication: str,
        options: StreamOptions,
        *,
        auto_ack: bool,
        status_interval: float,
        linger: float,
    ) -> None:
        super().__init__(
            EventBuffer(options.max_buffer_size, options.overflow, conn_mod.describe_source(engine))
        )
        self.slot = slot
        self.publication = publication
        self.source = conn_mod.describe_source(engine)
        self.auto_ack = auto_ack
        self._options = options
        self._acked: Event | None = None
        self._handed: Event | None = None
        self._ack_floor = 0
        self._replicator = _Replicator(self, engine, status_interval, linger)
        self._scope: trio.CancelScope | None = None
        self._closed = False

    # ---- acknowledging -------------------------------------------------------

    def _ack_position(self) -> int:
        acked = self._acked
        if acked is not None:
            position = ack_position(acked)
            if position is not None and position > self._ack_floor:
                self._ack_floor = position
        return self._ack_floor

    async def ack(self, event: Event) -> None:
        """Mark ``event`` — and every event before it — as processed.

        Its transaction's position is confirmed to the server with the next
        status update (within a second), so a restarted stream continues
        after it: after the whole transaction once its last change is
        acknowledged, else from the start of that transaction.

        Raises:
            ConfigurationError: ``event`` did not come from a change stream.
        """
        position = ack_position(event)
        if position is None:
            if isinstance(event, StreamGap):
                await trio.lowlevel.checkpoint()
                return
            raise ConfigurationError(f"{event!r} did not come from a change stream: nothing to acknowledge")
        if position > self._ack_floor:
            self._acked = event
            self._ack_position()
        await trio.lowlevel.checkpoint()

    @property
    def confirmed_lsn(self) -> str | None:
        """The acknowledged WAL position (``X/Y``) reported to the server, if any."""
        position = self._ack_position()
        return format_lsn(position) if position else None

    # ---- reading (auto-acknowledging) ----------------------------------------

    async def __anext__(self) -> Event:
        if self.auto_ack and self._handed is not None:
            self._acked = self._handed
        pos = self._pos
        batch = self._batch
        if pos < len(batch):
            self._pos = pos + 1
            event = self._handed = batch[pos]
            return event
        try:
            batch = await self._buffer.get()
        except StreamClosedError:
            self._handed = None
            raise StopAsyncIteration from None
        self._batch = batch
        self._pos = 1
        event = self._handed = batch[0]
        return event

    async def receive(self) -> Event:
        """Wait for the next event (acknowledging the previous one with ``auto_ack``)."""
        if self.auto_ack and self._handed is not None:
            self._acked = self._handed
        event = self._handed = await super().receive()
        return event

    def receive_nowait(self) -> Event:
        """The next event if one is buffered, else raise ``trio.WouldBlock``."""
        if self.auto_ack and self._handed is not None:
            self._acked = self._handed
        event = self._handed = super().receive_nowait()
        return event

    async def _next_batch(self) -> list[Event]:
        if self.auto_ack and self._handed is not None:
            self._acked = self._handed
        batch = await super()._next_batch()
        self._handed = batch[-1]
        return batch

    # ---- lifecycle ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the replication connection is up."""
        return self._replicator.connected

    @property
    def reconnects(self) -> int:
        """How many times the connection was lost and restored."""
        return self._replicator.reconnects

    @property
    def backend_pid(self) -> int | None:
        """Process id of the server's walsender for this stream."""
        return self._replicator.backend_pid

    async def _start(self, nursery: trio.Nursery) -> None:
        self._scope = trio.CancelScope()
        await nursery.start(self._run, self._scope)

    async def _run(self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await self._replicator.run(task_status=task_status)

    async def aclose(self) -> None:
        """Confirm the acknowledged position, close the connection, end iteration.

        Idempotent; bounded in time (shielded, ``close_timeout``).
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._buffer.close()
        if self._scope is not None:
            self._scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(self._options.close_timeout + 1):
                await self._replicator.finished.wait()

    def __repr__(self) -> str:
        return f"ChangeStream(slot={self.slot!r}, publication={self.publication!r}, source={self.source!r})"


@asynccontextmanager
async def open_change_stream(
    engine: Engine | str,
    *,
    slot: str,
    publication: str,
    tables: Sequence[str] | None = None,
    create: bool = True,
    status_interval: float = 10.0,
    linger: float = DEFAULT_LINGER,
    auto_ack: bool = True,
    max_buffer_size: int = 16384,
    overflow: OverflowPolicy = "backpressure",
    on_gap: GapPolicy = "event",
    reconnect: bool = True,
    backoff_initial: float = 0.05,
    backoff_max: float = StreamOptions.backoff_max,
    max_reconnect_attempts: int | None = None,
    reconnect_timeout: float | None = None,
    keepalive: KeepaliveSettings | None = None,
    close_timeout: float = 1.0,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncIterator[ChangeStream]:
    """Stream every committed row change of ``tables`` from a logical replication slot.

    ``async with open_change_stream(engine, slot="orders_cdc", publication="orders_pub",
    tables=["orders"]) as changes: async for change in changes: ...`` yields the
    same :class:`RowChange` objects as the trigger path (``channel`` is the slot
    name, ``pid`` 0), plus ``lsn`` (commit LSN), ``txid`` and ``commit_time``.
    See :mod:`trio_pgevents._pgoutput` for how column values are typed.

    The publication (``CREATE PUBLICATION ... FOR TABLE`` / ``FOR ALL TABLES``)
    and the slot (plugin ``pgoutput``) are created if missing. They outlive the
    stream — that is how a restarted stream resumes — so drop them with
    :func:`drop_change_stream` when they are no longer wanted.

    Args:
        engine: SQLAlchemy engine (psycopg2) or URL; the role needs the
            REPLICATION attribute and the server ``wal_level = logical``.
        slot: replication slot name (lower-case letters, digits, ``_``).
        publication: publication name.
        tables: ``"name"`` or ``"schema.name"`` entries; ``None`` (default)
            publishes all tables (needs a superuser). Tables need a primary
            key or ``REPLICA IDENTITY FULL`` (:func:`set_replica_identity`).
        create: create a missing publication/slot (else :class:`ReplicationError`).
        status_interval: seconds between status updates to the server
            (keeps ``wal_sender_timeout`` away, even under backpressure).
        linger: seconds to let further changes gather after a small read,
            before reading again (only while changes keep coming, and never
            while the socket already holds more): fewer wake-ups under many
            small transactions, for at most this much added latency. The
            first change after a quiet spell is read at once. 0 disables it.
        auto_ack: acknowledge an event when the consumer moves past it; with
            False, call :meth:`ChangeStream.ack`.
        max_buffer_size, overflow, on_gap, reconnect, backoff_initial,
            backoff_max, max_reconnect_attempts, reconnect_timeout, keepalive,
            close_timeout: as for :func:`open_event_stream`. ``overflow``
            other than ``"backpressure"`` loses changes; the default is right
            for change capture. Leaving ``async with`` takes at most about
            ``close_timeout``, whatever the server does.
        connect_timeout: bound on one connect attempt, seconds: connecting
            and checking the server before streaming, and the replication
            connection with its ``START_REPLICATION`` (each reconnect attempt
            too, and never past ``reconnect_timeout``). A server that accepts
            TCP and never answers fails the attempt (:class:`ConnectError`
            when opening). Creating a missing slot waits for transactions in
            progress to end and is not bounded by it; ``trio.move_on_after``
            around ``open_change_stream`` is honoured at any point.

    Raises:
        ConnectError: the server could not be reached, or did not answer
            within ``connect_timeout``.
        ReplicationError: wal_level is not logical (needs a restart to change),
            the role lacks REPLICATION, the slot is in use by another
            consumer, or a publication of that name exists for other tables.
        ConfigurationError: a bad argument, or a table that does not exist
            or has no replica identity.
    """
    _check_slot_name(slot)
    _check_identifier("publication", publication)
    if isinstance(tables, str):
        raise ConfigurationError("tables must be a sequence of table names, not a single str")
    table_list = None if tables is None else list(dict.fromkeys(_split_table(t) for t in tables))
    if table_list is not None and not table_list:
        raise ConfigurationError("tables must name at least one table (or be None for all tables)")
    if (
        not isinstance(status_interval, (int, float))
        or isinstance(status_interval, bool)
        or not 0 < status_interval < float("inf")
    ):
        raise ConfigurationError(
            f"status_interval must be a positive number of seconds, not {status_interval!r}"
        )
    if not isinstance(linger, (int, float)) or isinstance(linger, bool) or not 0 <= linger <= _MAX_LINGER:
        raise ConfigurationError(f"linger must be between 0 and {_MAX_LINGER} seconds, not {linger!r}")
    option_values: dict[str, Any] = {
        "max_buffer_size": max_buffer_size,
        "overflow": overflow,
        "on_gap": on_gap,
        "reconnect": reconnect,
        "backoff_initial": backoff_initial,
        "backoff_max": backoff_max,
        "max_reconnect_attempts": max_reconnect_attempts,
        "reconnect_timeout": reconnect_timeout,
        "close_timeout": close_timeout,
        "connect_timeout": connect_timeout,
    }
    if keepalive is not None:
        option_values["keepalive"] = keepalive
    options = StreamOptions(**option_values)
    engine = conn_mod.as_engine(engine)
    await _prepare(engine, slot, publication, table_list, create, options.connect_timeout)
    stream = ChangeStream(
        engine,
        slot,
        publication,
        options,
        auto_ack=auto_ack,
        status_interval=status_interval,
        linger=linger,
    )
    async with open_unwrapping_nursery() as nursery:
        try:
            await stream._start(nursery)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        try:
            yield stream
        finally:
            await stream.aclose()
