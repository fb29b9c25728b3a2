"""Getting a listening connection from a SQLAlchemy engine, and giving it back.

Everything here that talks to the server is synchronous and is run in a worker
thread by the callers (``trio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import sqlalchemy
from psycopg2 import sql
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from ._errors import ConfigurationError, ConnectError
from ._names import check_channel
from ._secrets import redactor_for, safe_url
from ._threads import Handoff, _dup_socket, thread_handoff

__all__ = [
    "APPLICATION_NAME",
    "DB_ERRORS",
    "as_engine",
    "run_on_connection",
    "describe_source",
    "validate_channel",
    "listen_sql",
    "unlisten_sql",
    "checkout",
    "release",
    "reset_for_pool",
    "discard",
    "give_back",
    "finish_use",
    "set_keepalive",
]


#: Failures of one connect attempt (or query) that reconnecting may cure (a full pool too).
DB_ERRORS = (
    psycopg2.Error,
    sqlalchemy.exc.DBAPIError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    OSError,
)


def as_engine(engine_or_url: Engine | str) -> Engine:
    """Accept an Engine, or a URL/DSN string (then a NullPool engine is made)."""
    if isinstance(engine_or_url, Engine):
        engine = engine_or_url
    elif isinstance(engine_or_url, str):
        url_text = engine_or_url
        if "://" not in url_text:
            raise ConfigurationError(
                f"database URL {safe_url(url_text)!r} is not a URL like postgresql://user@host/db"
            )
        try:
            url = sqlalchemy.make_url(url_text)
        except sqlalchemy.exc.ArgumentError as exc:
            raise ConfigurationError(f"database URL {safe_url(url_text)!r} cannot be parsed") from exc
        if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
            url = url.set(drivername="postgresql+psycopg2")
        engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    else:
        raise ConfigurationError(
            f"engine must be a SQLAlchemy Engine or a URL string, not {type(engine_or_url).__name__}"
        )
    redactor_for(engine)  # its secrets are masked in every message from now on
    if engine.dialect.driver != "psycopg2":
        raise ConfigurationError(
            f"engine {describe_source(engine)!r} uses driver {engine.dialect.driver!r}; "
            "trio_pgevents needs postgresql+psycopg2"
        )
    return engine


def describe_source(engine: Engine) -> str:
    """The engine's database as ``Event.source`` names it: a URL with every secret masked."""
    return redactor_for(engine).source


def validate_channel(channel: object) -> str:
    """Return ``channel`` if Postgres accepts it as a channel name unchanged."""
    return check_channel(channel)


def listen_sql(channels: Iterable[str]) -> sql.Composed:
    """``LISTEN "a"; LISTEN "b"`` with every name quoted as an identifier."""
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(ch)) for ch in channels)


def unlisten_sql(channels: Iterable[str]) -> sql.Composed:
    """``UNLISTEN "a"; ...`` with every name quoted as an identifier."""
    return sql.SQL("; ").join(sql.SQL("UNLISTEN {}").format(sql.Identifier(ch)) for ch in channels)


def execute(dbapi_conn: Any, statement: sql.Composable | str) -> None:
    """Run one statement (no result wanted) on a psycopg2 connection."""
    with dbapi_conn.cursor() as cursor:
        cursor.execute(statement)


#: The ``application_name`` of every connection the library opens, unless the
#: URL, the engine's ``connect_args`` or ``$PGAPPNAME`` names one: a stream's
#: backends can be found in ``pg_stat_activity`` (change streams' replication
#: connections are ``trio_pgevents_cdc``; the CLI's ``trio-pgevents-COMMAND``).
APPLICATION_NAME = "trio_pgevents"

# Parameters for the connections the library makes (and only those): set per
# thread around ``engine.raw_connection()``, read by a ``do_connect`` hook.
# libpq's connect_timeout bounds how long an abandoned attempt's thread can
# stay blocked on a peer that accepted TCP but never answers; application_name
# names the backend.
_thread_state = threading.local()
_hooked_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_hook_lock = threading.Lock()


def _names_application(cparams: dict[str, Any]) -> bool:
    """Whether the connection's parameters (or the environment) already name it."""
    dsn = cparams.get("dsn")
    return (
        "application_name" in cparams
        or bool(os.environ.get("PGAPPNAME"))
        or (isinstance(dsn, str) and "application_name" in dsn)
    )


def _apply_connect_params(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    if not getattr(_thread_state, "active", False):
        return  # a connection the application itself asked the engine for
    timeout = getattr(_thread_state, "connect_timeout", None)
    if timeout is not None and "connect_timeout" not in cparams:
        # libpq takes whole seconds and treats anything under 2 as 2.
        cparams["connect_timeout"] = max(2, math.ceil(timeout))
    if not _names_application(cparams):
        cparams["application_name"] = APPLICATION_NAME


def _hook_connect_params(engine: Engine) -> None:
    with _hook_lock:
        if engine not in _hooked_engines:
            event.listen(engine, "do_connect", _apply_connect_params)
            _hooked_engines.add(engine)


def checkout(
    engine: Engine,
    channels: Iterable[str],
    keepalive: KeepaliveSettings | None,
    handoff: Handoff | None = None,
    connect_timeout: float | None = None,
    *,
    autocommit: bool = True,
) -> Any:
    """Take a raw connection from ``engine``, make it autocommit (by default), LISTEN.

    Returns SQLAlchemy's pool proxy (``.dbapi_connection`` is the psycopg2
    connection). On failure the connection is invalidated and the error raised.
    With ``handoff``, the socket is registered so an abandoning caller can
    unblock a LISTEN stuck on a dead peer. ``connect_timeout`` (unless the
    engine sets its own) is passed to libpq for a new connection, and so is
    :data:`APPLICATION_NAME` unless the connection is named already.
    """
    _hook_connect_params(engine)
    _thread_state.active, _thread_state.connect_timeout = True, connect_timeout
    try:
        proxy = engine.raw_connection()
    finally:
        _thread_state.active, _thread_state.connect_timeout = False, None
    try:
        dbapi_conn = proxy.dbapi_connection
        if not isinstance(dbapi_conn, psycopg2.extensions.connection):
            raise ConfigurationError("engine did not give a psycopg2 connection")
        if handoff is not None:
            handoff.attach(dbapi_conn.fileno())
        dbapi_conn.autocommit = autocommit
        if keepalive is not None:
            set_keepalive(dbapi_conn.fileno(), keepalive)
        names = list(channels)
        if names:
            execute(dbapi_conn, listen_sql(names))
    except BaseException:
        if handoff is not None:
            handoff.detach()
        proxy.invalidate()
        raise
    return proxy


def reset_for_pool(proxy: Any) -> None:
    """UNLISTEN everything and restore autocommit, so the pool may hand it out again.

    Talks to the server: raises if the connection is broken. Does not close.
    """
    dbapi_conn = proxy.dbapi_connection
    execute(dbapi_conn, "UNLISTEN *")
    dbapi_conn.notifies.clear()
    dbapi_conn.autocommit = False


def release(proxy: Any, *, broken: bool) -> None:
    """Give a listening connection back: UNLISTEN, restore autocommit, return.

    A broken (or possibly broken) connection is invalidated instead, so
    SQLAlchemy's pool discards it rather than handing it to someone else.
    """
    if proxy is None:
        return
    if not broken:
        try:
            reset_for_pool(proxy)
            proxy.close()
            return
        except Exception:
            pass
    discard(proxy)


def give_back(proxy: Any) -> None:
    """Give a healthy, idle connection back to the pool (never raises).

    No round trip: psycopg2 changes autocommit locally, and the pool's
    rollback on return does nothing outside a transaction.
    """
    try:
        dbapi = proxy.dbapi_connection
        if dbapi is not None and not dbapi.closed:
            dbapi.autocommit = False
        proxy.close()
    except Exception:
        discard(proxy)


def finish_use(proxy: Any, handoff: Handoff | None, *, broken: bool) -> None:
    """A worker thread is done with a pooled connection.

    Detaches its socket from the caller's ``handoff`` (from here the
    descriptor may be closed and its number reused), then gives the
    connection back, or discards it when it may be broken.
    """
    if handoff is not None:
        handoff.detach()
    if broken:
        discard(proxy)
    else:
        give_back(proxy)


def has_unread_data(fd: int) -> bool:
    """True if the socket has bytes waiting (e.g. a backlog of notifications).

    Resetting such a connection for the pool would first read the whole
    backlog (the server answers UNLISTEN only after it), so it is discarded.
    """
    try:
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def queue_usage(engine: Engine) -> float:
    """``pg_notification_queue_usage()`` read on a separate pooled connection."""
    _hook_connect_params(engine)
    _thread_state.active = True
    try:
        connection = engine.connect()
    finally:
        _thread_state.active = False
    with connection:
        value = connection.exec_driver_sql("SELECT pg_catalog.pg_notification_queue_usage()").scalar()
    return float(value or 0.0)


def discard(proxy: Any) -> None:
    """Close the connection and make the pool forget it (never raises)."""
    with contextlib.suppress(Exception):
        proxy.invalidate()


@dataclass(frozen=True)
class KeepaliveSettings:
    """TCP keepalive and user-timeout settings of a stream's connections.

    Args:
        idle: seconds of silence before the first keepalive probe.
        interval: seconds between probes.
        count: unanswered probes after which the connection is dead.
    """

    idle: float = 10.0
    interval: float = 5.0
    count: int = 3

    def __post_init__(self) -> None:
        for name in ("idle", "interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigurationError(f"KeepaliveSettings {name} must be a positive number, not {value!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ConfigurationError(f"KeepaliveSettings count must be an int >= 1, not {self.count!r}")

    @property
    def user_timeout_ms(self) -> int:
        """Unacknowledged data is given up on after the keepalive window."""
        return int((self.idle + self.interval * self.count) * 1000)


def set_keepalive(fd: int, settings: KeepaliveSettings) -> None:
    """Turn on TCP keepalives (no-op on Unix-domain sockets)."""
    sock = _dup_socket(fd)
    if sock is None:
        return
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", max(1, int(settings.idle))),
            ("TCP_KEEPINTVL", max(1, int(settings.interval))),
            ("TCP_KEEPCNT", settings.count),
            ("TCP_USER_TIMEOUT", settings.user_timeout_ms),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    finally:
        sock.close()


def run_on_connection(engine: Engine, work: Any, connect_timeout: float) -> Any:
    """Run ``work(cursor)`` on an autocommit connection from ``engine``; return its result.

    Blocking: run it with :func:`~trio_pgevents._threads.run_abandonable`.
    Connecting is bounded by ``connect_timeout``; the socket is attached to the
    calling thread's handoff, so a caller that gives up unblocks this thread.

    Raises:
        ConnectError: no connection within ``connect_timeout``.
    """
    handoff = thread_handoff()
    redactor = redactor_for(engine)
    try:
        proxy = checkout(engine, (), None, handoff, connect_timeout)
    except DB_ERRORS as exc:
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
        finish_use(proxy, handoff, broken=broken)
