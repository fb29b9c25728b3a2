"""What every installer operation stands on: the options, their checks, and one transaction.

:class:`InstallerBase` holds an installer's configuration (checked when it is
made) and runs each operation's work in one transaction on a connection of
its own, under the schema's advisory lock, turning database errors into
:class:`~trio_pgevents.InstallError` with the secrets scrubbed. The
operations themselves are the mixins of :class:`~trio_pgevents.Installer`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import psycopg2
import psycopg2.errors
from sqlalchemy.engine import Engine

from .. import _connection as conn_mod
from .._connection import as_engine, describe_source, validate_channel
from .._errors import ConfigurationError, InstallError, InsufficientPrivilegeError
from .._names import MAX_IDENTIFIER_BYTES, check_identifier
from .._options import DEFAULT_CONNECT_TIMEOUT
from .._secrets import describe_error, redactor_for
from .._threads import thread_handoff
from .sql import DDL_EVENTS, FILTER_ERROR, PAYLOAD_MODES, SqlBuilder

__all__ = [
    "Cursor",
    "InstallerBase",
    "PayloadMode",
    "check_ddl_events",
    "check_durable_channel",
    "check_lag_warning",
    "check_name",
    "check_payload",
]

T = TypeVar("T")

PayloadMode = Literal["row", "keys"]

Cursor = Any  # psycopg2 cursor (types-psycopg2's class is not worth the casts here)


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"trio_pgevents:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def check_lag_warning(value: object) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is an int >= 0 (``lag_warning_bytes``)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"lag_warning_bytes must be an int >= 0, not {value!r}")


def check_payload(value: object) -> PayloadMode:
    """``value`` if it is a payload mode (``"row"`` or ``"keys"``), else :class:`ConfigurationError`."""
    if value not in PAYLOAD_MODES:
        raise ConfigurationError(
            f"payload must be one of {', '.join(map(repr, PAYLOAD_MODES))}, not {value!r}"
        )
    return value  # type: ignore[return-value]


def check_ddl_events(value: object) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is None or a ``ddl_events`` choice."""
    if value is not None and value not in DDL_EVENTS:
        raise ConfigurationError(
            f"ddl_events must be one of {', '.join(map(repr, DDL_EVENTS))}, not {value!r}"
        )


def check_name(value: object, what: str) -> str:
    """``value`` if Postgres takes it as a schema or table name unchanged."""
    return check_identifier(what, value)


def check_durable_channel(channel: str) -> None:
    """Raise :class:`ConfigurationError` if ``channel``'s durable wake-up channel is too long."""
    wake = channel + ".durable"
    if len(wake.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ConfigurationError(
            f"channel {channel!r} is too long for durable mode: its wake-up channel "
            f"{wake!r} must fit in {MAX_IDENTIFIER_BYTES} bytes"
        )


class InstallerBase:
    """An installer's options, and the transaction every operation runs in.

    See :class:`~trio_pgevents.Installer` for the arguments.
    """

    def __init__(
        self,
        engine: Engine | str,
        *,
        schema: str = "pgevents",
        channel: str = "pgevents",
        include_query: bool = True,
        payload: PayloadMode = "row",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self._engine = as_engine(engine)
        self.schema = check_name(schema, "schema name")
        self.channel = validate_channel(channel)
        if not isinstance(include_query, bool):
            raise ConfigurationError(f"include_query must be a bool, not {include_query!r}")
        self.include_query = include_query
        self.payload = check_payload(payload)
        if (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, (int, float))
            or not (0 < connect_timeout < float("inf"))
        ):
            raise ConfigurationError(f"connect_timeout must be a positive number, not {connect_timeout!r}")
        self.connect_timeout = float(connect_timeout)
        self._lock = _lock_key(self.schema)

    def __repr__(self) -> str:
        return (
            f"Installer({describe_source(self._engine)!r}, schema={self.schema!r}, "
            f"channel={self.channel!r}, include_query={self.include_query!r}, payload={self.payload!r})"
        )

    @property
    def engine(self) -> Engine:
        """The engine the installer connects with."""
        return self._engine

    def _run(self, what: str, work: Callable[[Cursor, SqlBuilder], T], *, lock: bool = True) -> T:
        """Run ``work`` in one transaction on a connection from the engine."""
        redactor = redactor_for(self._engine)
        # Set when AsyncInstaller runs this in its worker thread: a caller that gives up
        # shuts the socket down, so the thread returns and the server rolls back.
        handoff = thread_handoff()
        try:
            proxy = conn_mod.checkout(self._engine, (), None, handoff, self.connect_timeout, autocommit=False)
        except Exception as exc:
            raise InstallError(
                f"{what}: cannot connect to {redactor.source}: {redactor.describe(exc)}"
            ) from exc
        broken = False
        try:
            conn = proxy.dbapi_connection
            try:
                with conn.cursor() as cur:
                    # Every name below resolves in pg_catalog (or is schema-qualified):
                    # nothing a role put on the search_path runs as the installer.
                    cur.execute("SET LOCAL search_path = pg_catalog, pg_temp")
                    if lock:
                        # Two installers running at once would race on CREATE OR REPLACE.
                        cur.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (self._lock,))
                    builder = SqlBuilder(conn, self.schema, self.channel, self.include_query)
                    result = work(cur, builder)
                conn.commit()
                return result
            except BaseException:
                try:
                    conn.rollback()
                except Exception:
                    broken = True
                raise
        except psycopg2.Error as exc:
            broken = broken or isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
            raise self._wrap(what, exc) from exc
        finally:
            conn_mod.finish_use(proxy, handoff, broken=broken)

    def _wrap(self, what: str, exc: psycopg2.Error) -> InstallError | ConfigurationError:
        message = (exc.diag.message_primary if exc.diag else None) or describe_error(exc)
        message = redactor_for(self._engine).redact(message)
        hint = exc.diag.message_hint if exc.diag else None
        if hint:
            message = f"{message} (hint: {hint})"
        if exc.pgcode == FILTER_ERROR:
            # A watch's filter that does not fit a table: the transaction left nothing behind.
            return ConfigurationError(f"{what}: {message}; nothing was changed")
        if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
            return InsufficientPrivilegeError(
                f"{what}: {message}. The connected role needs to own the tables it watches and "
                f"to be allowed to create schema {self.schema!r} (GRANT CREATE ON DATABASE ...), "
                "or a privileged role can run the SQL from the *_sql() methods in a migration"
            )
        return InstallError(f"{what} failed: {message}")

    def _render(self, work: Callable[[SqlBuilder], str]) -> str:
        """Build SQL text without changing anything (a read-only transaction)."""
        return self._run("building SQL", lambda cur, b: work(b), lock=False)
