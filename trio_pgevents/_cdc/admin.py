"""Change stream slots from the outside: names, status and lag, dropping, replica identity."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import sqlalchemy.exc
from psycopg2 import sql
from sqlalchemy.engine import Engine

from .. import _connection as conn_mod
from .._errors import (
    ConfigurationError,
    ReplicationError,
)
from .._names import check_identifier, check_slot_name
from .._options import DEFAULT_CONNECT_TIMEOUT
from .._secrets import get_logger

logger = get_logger("trio_pgevents")

__all__ = [
    "ChangeStreamStatus",
    "DEFAULT_LAG_WARNING_BYTES",
    "IN_USE_GRACE",
    "change_stream_status",
    "drop_change_stream",
    "in_use",
    "quote_ident",
    "read_slot_statuses",
    "replication_dsn",
    "set_replica_identity",
    "split_table",
]

#: Default lag (bytes of WAL not yet confirmed) past which status warns.
DEFAULT_LAG_WARNING_BYTES = 1 << 30
#: Seconds to wait for a slot held by a walsender whose client just left.
IN_USE_GRACE = 3.0
#: Session settings of the replication connection: values arrive in the
#: text form the decoder parses (ISO dates, UTC offsets, exact floats).
_SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 -c IntervalStyle=postgres"


# ---------------------------------------------------------------------------
# validation and small helpers
# ---------------------------------------------------------------------------


def split_table(table: object) -> tuple[str, str]:
    """``"orders"`` -> ``("public", "orders")``; ``"shop.orders"`` -> ``("shop", "orders")``."""
    if not isinstance(table, str) or not table:
        raise ConfigurationError(f"table must be 'name' or 'schema.name', not {table!r}")
    schema, dot, name = table.partition(".")
    if not dot:
        schema, name = "public", table
    return check_identifier("schema name", schema), check_identifier("table name", name)


def quote_ident(name: str) -> str:
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
    """Run ``work(cursor)`` on an autocommit connection from ``engine`` (blocking; see
    :func:`~trio_pgevents._connection.run_on_connection`)."""
    return conn_mod.run_on_connection(engine, work, connect_timeout)


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
    check_slot_name(slot)
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
    check_slot_name(slot)
    if publication is not None:
        check_identifier("publication", publication)

    def work(cursor: Any) -> None:
        # A stream closed a moment ago may still hold the slot until its
        # walsender notices: give it a short grace before calling it in use.
        deadline = time.monotonic() + IN_USE_GRACE
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
    check_identifier("table", table)
    check_identifier("schema", schema)
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


def in_use(slot: str, holder: object) -> str:
    """The message for a slot another consumer holds."""
    return (
        f"replication slot {slot!r} is in use by {holder}: another change stream is "
        "consuming it (one consumer per slot)"
    )


def one_line(exc: BaseException) -> str:
    """A driver error as one line (psycopg2 messages span several)."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return " ".join(str(exc).split()) or type(exc).__name__
