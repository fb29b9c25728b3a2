"""The installer: trigger functions, table triggers, DDL event triggers, the outbox.

``Installer(engine)`` prepares a database so that changes arrive as events:

- ``install()`` creates the library schema (``pgevents``), its functions and
  the registry of watched tables; ``install(ddl=True)`` adds DDL event
  triggers (superuser only), ``auto_rebuild=True`` an event trigger that
  watches tables created later in a watched schema, ``durable=True`` the
  outbox tables of durable mode.
- ``watch_table`` / ``watch_schema`` attach an AFTER INSERT/UPDATE/DELETE row
  trigger and an AFTER TRUNCATE statement trigger; ``unwatch_table`` detaches.
- ``status()`` compares what is in the database with what this version would
  create (hashes in ``COMMENT``\\ s); ``prune()`` removes ORPHANED leftovers;
  ``uninstall()`` removes everything the installer created, nothing else.
- ``change_streams()`` lists the database's change stream slots (logical
  replication, ``pgoutput``) with their lag; ``drop_change_stream()`` drops
  one with its publication (a forgotten slot keeps WAL forever).
- Every operation runs in one transaction (nothing half done, no window
  where a replaced trigger is missing) under an advisory lock, and each has a
  ``*_sql`` twin returning the SQL for a migration instead of running it.

Everything here is synchronous (for scripts and migrations);
:attr:`Installer.aio` gives the same methods as coroutines that run in a
worker thread, for Trio code.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql as pgsql  # not "sql": that is the subpackage .sql
from sqlalchemy.engine import Engine

from .. import _cdc
from .. import _connection as conn_mod
from .._cdc import DEFAULT_LAG_WARNING_BYTES, ChangeStreamStatus
from .._connection import as_engine, describe_source, validate_channel
from .._errors import ConfigurationError, InstallError, InsufficientPrivilegeError
from .._names import MAX_IDENTIFIER_BYTES, check_identifier
from .._options import DEFAULT_CONNECT_TIMEOUT
from .._secrets import describe_error, redactor_for
from .._threads import run_abandonable, thread_handoff
from .sql import OBSOLETE_FUNCTIONS, PAYLOAD_MODES, Definition, SqlBuilder

__all__ = [
    "ActionKind",
    "AsyncInstaller",
    "ConsumerInfo",
    "InstallAction",
    "InstallReport",
    "InstallStatus",
    "Installer",
    "TableStatus",
]

T = TypeVar("T")

ActionKind = Literal["installed", "replaced", "unchanged", "removed", "skipped"]
ObjectState = Literal["INSTALLED", "OUTDATED", "MISSING"]
PayloadMode = Literal["row", "keys"]
TableState = Literal["INSTALLED", "OUTDATED", "MISSING", "ORPHANED", "SKIPPED"]

_Cursor = Any  # psycopg2 cursor (types-psycopg2's class is not worth the casts here)


@dataclass(frozen=True)
class InstallAction:
    """One thing an operation did (or would do, or found already done).

    Attributes:
        kind: what kind of object: ``schema``, ``table``, ``function``,
            ``trigger``, ``event_trigger``, ``watch`` (a registry entry).
        name: which object (schema-qualified, quoted where it helps).
        action: ``installed``, ``replaced`` (was OUTDATED), ``unchanged``,
            ``removed`` or ``skipped``.
        reason: why it was skipped (or other detail), else ``None``.
    """

    kind: str
    name: str
    action: ActionKind
    reason: str | None = None


@dataclass(frozen=True)
class InstallReport:
    """What an installer operation did, object by object."""

    actions: tuple[InstallAction, ...] = ()

    def _with(self, action: str) -> tuple[InstallAction, ...]:
        return tuple(a for a in self.actions if a.action == action)

    @property
    def installed(self) -> tuple[InstallAction, ...]:
        """Objects created."""
        return self._with("installed")

    @property
    def replaced(self) -> tuple[InstallAction, ...]:
        """OUTDATED objects re-created with the current definition."""
        return self._with("replaced")

    @property
    def unchanged(self) -> tuple[InstallAction, ...]:
        """Objects that were already up to date."""
        return self._with("unchanged")

    @property
    def removed(self) -> tuple[InstallAction, ...]:
        """Objects dropped."""
        return self._with("removed")

    @property
    def skipped(self) -> tuple[InstallAction, ...]:
        """Objects left alone, each with a reason (views, foreign tables...)."""
        return self._with("skipped")

    @property
    def changed(self) -> bool:
        """True if anything was installed, replaced or removed."""
        return any(a.action in ("installed", "replaced", "removed") for a in self.actions)

    def __str__(self) -> str:
        lines = [
            f"{a.action:>9}  {a.kind:<13} {a.name}" + (f"  ({a.reason})" if a.reason else "")
            for a in self.actions
        ]
        return "\n".join(lines) if lines else "(nothing to do)"


@dataclass(frozen=True)
class TableStatus:
    """The state of one table's triggers.

    Attributes:
        schema: the table's schema.
        table: the table's name.
        state: ``INSTALLED`` (up to date), ``OUTDATED`` (made by another
            version or mode: the next ``watch_*``/``install`` replaces it),
            ``MISSING`` (watched, no trigger), ``ORPHANED`` (trigger on a table
            no longer watched, or a watched table that was dropped:
            ``prune()`` removes it), ``SKIPPED`` (views, foreign tables...).
        reason: detail for any state but INSTALLED.
        durable: True when the table is watched in durable (outbox) mode.
    """

    schema: str
    table: str
    state: TableState
    reason: str | None = None
    durable: bool = False


@dataclass(frozen=True)
class InstallStatus:
    """What is installed, compared with what this version would install.

    Attributes:
        function_state: the library schema's base functions and registry.
        ddl_state: the DDL event triggers, or ``None`` when never installed.
        tables: per watched (or orphaned) table.
        auto_rebuild_state: the auto-rebuild event trigger, or ``None``.
        durable_state: the outbox tables and function, or ``None``.
        change_streams: every change stream slot of the database (see
            :meth:`Installer.change_streams`). They do not count in
            :attr:`ok`; :attr:`lagging_change_streams` lists those that need
            attention.
        problems: privileges in the library schema that let a role do more
            than it should (EXECUTE or USAGE granted to PUBLIC beyond what
            auto-rebuild needs, a SECURITY DEFINER function owned by a
            superuser: what an install by an earlier version left).
            ``install()`` fixes them.
    """

    function_state: ObjectState
    ddl_state: ObjectState | None
    tables: tuple[TableStatus, ...]
    auto_rebuild_state: ObjectState | None = None
    durable_state: ObjectState | None = None
    change_streams: tuple[ChangeStreamStatus, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def lagging_change_streams(self) -> tuple[ChangeStreamStatus, ...]:
        """Change stream slots with a warning: lag past the threshold, or lost."""
        return tuple(s for s in self.change_streams if s.warning is not None)

    @property
    def ok(self) -> bool:
        """False when anything is OUTDATED or MISSING, or there is a privilege problem."""
        states: list[str | None] = [
            self.function_state,
            self.ddl_state,
            self.auto_rebuild_state,
            self.durable_state,
        ]
        states.extend(t.state for t in self.tables)
        return not self.problems and not any(s in ("OUTDATED", "MISSING") for s in states)

    def table(self, table: str, schema: str = "public") -> TableStatus | None:
        """The status of one table, or None when it is not listed."""
        for t in self.tables:
            if t.schema == schema and t.table == table:
                return t
        return None


@dataclass(frozen=True)
class ConsumerInfo:
    """A durable-mode consumer and its stored position.

    Attributes:
        name: the consumer's name.
        last_txid: transaction id of the last acknowledged event.
        last_id: id of the last acknowledged event.
        created_at: when the consumer was registered.
        updated_at: when its position was last stored.
        pending: events in the outbox after its position.
    """

    name: str
    last_txid: int
    last_id: int
    created_at: datetime
    updated_at: datetime
    pending: int = 0


@dataclass
class _State:
    """What the library schema holds now (read at the start of an operation)."""

    schema_exists: bool = False
    functions: dict[str, str | None] = field(default_factory=dict)
    tables: dict[str, str | None] = field(default_factory=dict)
    event_triggers: dict[str, str | None] = field(default_factory=dict)


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"trio_pgevents:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _check_lag_warning(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"lag_warning_bytes must be an int >= 0, not {value!r}")


def _check_payload(value: object) -> PayloadMode:
    if value not in PAYLOAD_MODES:
        raise ConfigurationError(
            f"payload must be one of {', '.join(map(repr, PAYLOAD_MODES))}, not {value!r}"
        )
    return value  # type: ignore[return-value]


def _validate_schema_name(value: object, what: str) -> str:
    return check_identifier(what, value)


class Installer:
    """Installs, inspects and removes the triggers that turn changes into events.

    Args:
        engine: a SQLAlchemy engine (psycopg2 driver) or a database URL.
        schema: the schema holding the library's functions and tables.
        channel: the NOTIFY channel of row and DDL events (the durable
            wake-ups use ``<channel>.durable``).
        include_query: put the statement text (``current_query()``) into row
            events. It can leak data to every listener: turn it off when
            listeners should see only rows.
        connect_timeout: bound on connecting, seconds (libpq's, unless the
            engine sets its own).
        payload: what row events of the tables this installer watches carry
            (each ``watch_*`` call may choose otherwise): ``"row"`` (default,
            the whole row) or ``"keys"`` (table, operation and primary key
            only). Any role that can connect may LISTEN on the channel and
            read NOTIFY payloads; with ``"keys"`` no row data reaches it
            (consumers re-read the row, or use durable mode, whose outbox only
            granted roles can read).

    Raises:
        ConfigurationError: a name Postgres would reject or truncate, or a bad option.
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
        self.schema = _validate_schema_name(schema, "schema name")
        self.channel = validate_channel(channel)
        if not isinstance(include_query, bool):
            raise ConfigurationError(f"include_query must be a bool, not {include_query!r}")
        self.include_query = include_query
        self.payload = _check_payload(payload)
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

    @property
    def aio(self) -> AsyncInstaller:
        """The same operations as coroutines (run in a worker thread), for Trio code."""
        return AsyncInstaller(self)

    # -- plumbing --------------------------------------------------------------------------------

    def _check_durable_channel(self) -> None:
        wake = self.channel + ".durable"
        if len(wake.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
            raise ConfigurationError(
                f"channel {self.channel!r} is too long for durable mode: its wake-up channel "
                f"{wake!r} must fit in {MAX_IDENTIFIER_BYTES} bytes"
            )

    def _run(self, what: str, work: Callable[[_Cursor, SqlBuilder], T], *, lock: bool = True) -> T:
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
            if handoff is not None:
                handoff.detach()
            if broken:
                conn_mod.discard(proxy)
            else:
                proxy.close()

    def _wrap(self, what: str, exc: psycopg2.Error) -> InstallError:
        message = (exc.diag.message_primary if exc.diag else None) or describe_error(exc)
        message = redactor_for(self._engine).redact(message)
        hint = exc.diag.message_hint if exc.diag else None
        if hint:
            message = f"{message} (hint: {hint})"
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

    # -- reading the current state ---------------------------------------------------------------

    def _read_state(self, cur: _Cursor, b: SqlBuilder) -> _State:
        state = _State()
        cur.execute("SELECT true FROM pg_catalog.pg_namespace WHERE nspname = %s", (self.schema,))
        state.schema_exists = cur.fetchone() is not None
        if state.schema_exists:
            cur.execute(
                """SELECT p.proname, d.description FROM pg_catalog.pg_proc p
                   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                   LEFT JOIN pg_catalog.pg_description d
                     ON d.objoid = p.oid AND d.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                  WHERE n.nspname = %s""",
                (self.schema,),
            )
            state.functions = {name: comment for name, comment in cur.fetchall()}
            cur.execute(
                """SELECT c.relname, d.description FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_catalog.pg_description d
                     ON d.objoid = c.oid AND d.objsubid = 0
                    AND d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  WHERE n.nspname = %s AND c.relkind IN ('r', 'p')""",
                (self.schema,),
            )
            state.tables = {name: comment for name, comment in cur.fetchall()}
        names = b.names
        cur.execute(
            """SELECT e.evtname, d.description FROM pg_catalog.pg_event_trigger e
               LEFT JOIN pg_catalog.pg_description d
                 ON d.objoid = e.oid AND d.classoid = 'pg_catalog.pg_event_trigger'::pg_catalog.regclass
              WHERE e.evtname = ANY (%s)""",
            ([names.ddl_end_trigger, names.sql_drop_trigger, names.auto_rebuild_trigger],),
        )
        state.event_triggers = {name: comment for name, comment in cur.fetchall()}
        return state

    # -- install ---------------------------------------------------------------------------------

    def _ensure(self, cur: _Cursor, d: Definition, current: dict[str, str | None], key: str) -> InstallAction:
        if key in current and current[key] == d.comment:
            return InstallAction(d.kind, d.name, "unchanged")
        cur.execute(d.create)
        cur.execute(d.comment_sql)
        return InstallAction(d.kind, d.name, "replaced" if key in current else "installed")

    def _ensure_function(self, cur: _Cursor, b: SqlBuilder, name: str, state: _State) -> InstallAction:
        d = b.functions()[name]
        if name in state.functions and state.functions[name] != d.comment and name in b.HELPER_FUNCTIONS:
            cur.execute(b.drop_function(name))  # its signature may have changed
        action = self._ensure(cur, d, state.functions, name)
        state.functions[name] = d.comment
        return action

    def _ensure_base(self, cur: _Cursor, b: SqlBuilder, state: _State, durable: bool) -> list[InstallAction]:
        actions: list[InstallAction] = []
        schema_def = b.schema_definition()
        if state.schema_exists:
            actions.append(InstallAction("schema", self.schema, "unchanged"))
        else:
            cur.execute(schema_def.create)
            state.schema_exists = True
            actions.append(InstallAction("schema", self.schema, "installed"))
        for table in b.base_tables():
            actions.append(self._ensure_table(cur, table, state))
        for name in OBSOLETE_FUNCTIONS:
            if name in state.functions:
                cur.execute(b.drop_function(name))
                del state.functions[name]
                actions.append(
                    InstallAction("function", f"{self.schema}.{name}", "removed", "no longer used")
                )
        if durable or self._has_outbox(state):
            self._check_durable_channel()
            for table in b.durable_tables():
                actions.append(self._ensure_table(cur, table, state))
            for name in b.DURABLE_FUNCTIONS:
                actions.append(self._ensure_function(cur, b, name, state))
        for name in b.BASE_FUNCTIONS:
            actions.append(self._ensure_function(cur, b, name, state))
        if self._has_outbox(state):
            # A superuser's install hands the outbox functions to the least-privileged writer role.
            cur.execute(b.writer_role_script())
        return actions

    @staticmethod
    def _has_outbox(state: _State) -> bool:
        return "outbox_row" in state.functions or "events" in state.tables

    def _finish(self, cur: _Cursor, b: SqlBuilder) -> None:
        """Last step of every change: PUBLIC gets nothing but what auto-rebuild needs."""
        cur.execute(b.privileges_script())

    def _ensure_table(self, cur: _Cursor, d: Definition, state: _State) -> InstallAction:
        key = d.key
        if key in state.tables:
            # Tables hold data: never re-created. Known earlier versions are upgraded in place.
            if state.tables[key] == d.comment:
                return InstallAction("table", d.name, "unchanged")
            if not d.upgrade:
                return InstallAction(
                    "table", d.name, "skipped", "exists with another definition; migrate it by hand"
                )
            cur.execute(d.upgrade)
            cur.execute(d.comment_sql)
            state.tables[key] = d.comment
            return InstallAction("table", d.name, "replaced", "upgraded in place")
        cur.execute(d.create)
        cur.execute(d.comment_sql)
        state.tables[key] = d.comment
        return InstallAction("table", d.name, "installed")

    def _ensure_event_triggers(
        self, cur: _Cursor, b: SqlBuilder, state: _State, purposes: Iterable[str]
    ) -> list[InstallAction]:
        actions: list[InstallAction] = []
        triggers = b.event_triggers()
        for purpose in purposes:
            fn = purpose
            actions.append(self._ensure_function(cur, b, fn, state))
            d, drop = triggers[purpose]
            if state.event_triggers.get(d.name, "") == d.comment and d.name in state.event_triggers:
                actions.append(InstallAction(d.kind, d.name, "unchanged"))
                continue
            existed = d.name in state.event_triggers
            cur.execute(drop)
            cur.execute(d.create)
            cur.execute(d.comment_sql)
            state.event_triggers[d.name] = d.comment
            actions.append(InstallAction(d.kind, d.name, "replaced" if existed else "installed"))
        return actions

    def _rows(self, cur: _Cursor) -> list[InstallAction]:
        return [InstallAction(kind, name, action, reason) for kind, name, action, reason in cur.fetchall()]

    def _refresh_watched(self, cur: _Cursor, b: SqlBuilder) -> list[InstallAction]:
        """Bring every watched table's triggers up to date (what an upgrade needs)."""
        cur.execute(
            pgsql.SQL(
                """SELECT w.schema_name, w.table_name, w.mode, w.options::text,
                          EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname = w.schema_name),
                          EXISTS (SELECT FROM pg_catalog.pg_class c
                                    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                   WHERE n.nspname = w.schema_name AND c.relname = w.table_name)
                     FROM {S}.watched w ORDER BY w.table_name <> '', w.schema_name, w.table_name"""
            ).format(S=b.S)
        )
        rows = cur.fetchall()
        watched_schemas = {s for s, t, _, _, exists, _ in rows if t == "" and exists}
        actions: list[InstallAction] = []
        for schema, table, mode, options, schema_exists, table_exists in rows:
            if table == "" and schema_exists:
                cur.execute(b.call("watch_schema", schema, mode == "durable", options))
                actions.extend(self._rows(cur))
            elif table and mode != "excluded" and table_exists and schema not in watched_schemas:
                cur.execute(b.call("watch_table", schema, table, mode == "durable", options))
                actions.extend(self._rows(cur))
        return actions

    def install(
        self, *, ddl: bool = False, auto_rebuild: bool = False, durable: bool = False
    ) -> InstallReport:
        """Create (or bring up to date) the library schema, functions and registry.

        Calling it again changes nothing (every action says ``unchanged``);
        after an upgrade it replaces OUTDATED functions and the triggers of
        every watched table, all in one transaction. Options only add: an
        ``install()`` without ``ddl=True`` keeps DDL triggers installed earlier
        (and brings them up to date).

        Args:
            ddl: add DDL event triggers (``SchemaChange`` events). Superuser only.
            auto_rebuild: add an event trigger that watches tables created (or
                re-created) in a watched schema, in the DDL's own transaction.
                Superuser only.
            durable: create the outbox tables and function of durable mode.

        Raises:
            InsufficientPrivilegeError: ``ddl``/``auto_rebuild`` without superuser.
                Everything else was installed (and committed) before it is raised.
            InstallError: anything else went wrong; nothing was changed.
        """
        denied: list[str] = []

        def work(cur: _Cursor, b: SqlBuilder) -> list[InstallAction]:
            state = self._read_state(cur, b)
            actions = self._ensure_base(cur, b, state, durable)
            names = b.names
            groups: list[tuple[str, tuple[str, ...]]] = []
            if (
                ddl
                or names.ddl_end_trigger in state.event_triggers
                or names.sql_drop_trigger in state.event_triggers
            ):
                groups.append(("DDL event triggers", ("ddl_end", "sql_drop")))
            if auto_rebuild or names.auto_rebuild_trigger in state.event_triggers:
                groups.append(("the auto-rebuild event trigger", ("auto_rebuild",)))
            for label, purposes in groups:
                cur.execute("SAVEPOINT trio_pgevents_ddl")
                try:
                    actions.extend(self._ensure_event_triggers(cur, b, state, purposes))
                except psycopg2.errors.InsufficientPrivilege:
                    cur.execute("ROLLBACK TO SAVEPOINT trio_pgevents_ddl")
                    denied.append(label)
                    for purpose in purposes:
                        actions.append(
                            InstallAction("event_trigger", purpose, "skipped", "needs a superuser")
                        )
                else:
                    cur.execute("RELEASE SAVEPOINT trio_pgevents_ddl")
            actions.extend(self._refresh_watched(cur, b))
            self._finish(cur, b)
            return actions

        actions = self._run("install", work)
        if denied:
            user = self._engine.url.username or "the connected role"
            raise InsufficientPrivilegeError(
                f"creating {' and '.join(denied)} needs a superuser (CREATE EVENT TRIGGER), and role "
                f"{user!r} is not one. Everything else was installed. To get DDL events, run "
                "install(ddl=True) once as a superuser (or have one run install_sql(ddl=True) in a "
                "migration); or call install() without ddl/auto_rebuild."
            )
        return InstallReport(tuple(actions))

    def install_sql(self, *, ddl: bool = False, auto_rebuild: bool = False, durable: bool = False) -> str:
        """The SQL of ``install(...)`` for a migration: idempotent, run it in one transaction."""
        if durable:
            self._check_durable_channel()

        def build(b: SqlBuilder) -> str:
            parts = [b.schema_definition().create + ";\n"]
            parts.extend(t.sql for t in b.base_tables())
            parts.extend(b.drop_function(name) + ";\n" for name in OBSOLETE_FUNCTIONS)
            fns = b.functions()
            names = list(b.BASE_FUNCTIONS)
            if durable:
                parts.extend(t.sql for t in b.durable_tables())
                names.extend(b.DURABLE_FUNCTIONS)
            if ddl:
                names.extend(b.DDL_FUNCTIONS)
            if auto_rebuild:
                names.extend(b.AUTO_REBUILD_FUNCTIONS)
            for name in names:
                if name in b.HELPER_FUNCTIONS:
                    parts.append(b.drop_function(name) + ";\n")
                parts.append(fns[name].sql)
            if durable:
                parts.append(b.writer_role_script() + ";\n")
            triggers = b.event_triggers()
            purposes = (["ddl_end", "sql_drop"] if ddl else []) + (["auto_rebuild"] if auto_rebuild else [])
            for purpose in purposes:
                d, drop = triggers[purpose]
                parts.append(drop + ";\n" + d.sql)
            parts.append(b.privileges_script() + ";\n")
            return "".join(parts)

        return self._render(build)

    # -- watching --------------------------------------------------------------------------------

    def _options(self, payload: PayloadMode | None) -> str:
        """A watch's options as the registry keeps them (JSON text)."""
        return json.dumps({"payload": self.payload if payload is None else _check_payload(payload)})

    def watch_table(
        self,
        table: str,
        schema: str = "public",
        *,
        durable: bool = False,
        payload: PayloadMode | None = None,
    ) -> InstallReport:
        """Attach the row and TRUNCATE triggers to one table (installing the base if needed).

        Args:
            table: the table's name, exactly as in the catalog (no quoting needed).
            schema: its schema.
            durable: outbox mode: events go to ``<schema>.events`` (no size
                limit, survive listener outages) instead of a plain NOTIFY.
            payload: ``"row"`` or ``"keys"`` (primary key only); default: the
                installer's ``payload``.

        Raises:
            InstallError: the table does not exist (nothing was changed).
        """
        _validate_schema_name(table, "table name")
        _validate_schema_name(schema, "schema name")
        options = self._options(payload)

        def work(cur: _Cursor, b: SqlBuilder) -> list[InstallAction]:
            state = self._read_state(cur, b)
            actions = self._ensure_base(cur, b, state, durable)
            cur.execute(b.call("watch_table", schema, table, durable, options))
            actions += self._rows(cur)
            self._finish(cur, b)
            return actions

        return InstallReport(tuple(self._run(f"watch_table({schema}.{table})", work)))

    def watch_table_sql(
        self,
        table: str,
        schema: str = "public",
        *,
        durable: bool = False,
        payload: PayloadMode | None = None,
    ) -> str:
        """The SQL of ``watch_table(...)`` (run ``install_sql()`` before it)."""
        _validate_schema_name(table, "table name")
        _validate_schema_name(schema, "schema name")
        options = self._options(payload)
        return self._render(lambda b: b.call("watch_table", schema, table, durable, options) + ";\n")

    def watch_schema(
        self, schema: str, *, durable: bool = False, payload: PayloadMode | None = None
    ) -> InstallReport:
        """Watch every table of a schema (ordinary and partitioned).

        Views, materialized views and foreign tables are skipped with a
        reason (they appear as SKIPPED in ``status()``); partitions are
        covered by their parent's trigger; a table the connected role may not
        attach triggers to (another role's, for a non-superuser) is skipped
        with a reason, and the others are watched. Tables created later are
        watched by ``install(auto_rebuild=True)``, or by the next ``install()``.

        Args:
            schema: the schema to watch.
            durable: outbox mode (see :meth:`watch_table`).
            payload: ``"row"`` or ``"keys"``; default: the installer's ``payload``.

        Raises:
            InstallError: the schema does not exist, or is the library schema.
        """
        _validate_schema_name(schema, "schema name")
        options = self._options(payload)

        def work(cur: _Cursor, b: SqlBuilder) -> list[InstallAction]:
            state = self._read_state(cur, b)
            actions = self._ensure_base(cur, b, state, durable)
            cur.execute(b.call("watch_schema", schema, durable, options))
            actions += self._rows(cur)
            self._finish(cur, b)
            return actions

        return InstallReport(tuple(self._run(f"watch_schema({schema})", work)))

    def watch_schema_sql(
        self, schema: str, *, durable: bool = False, payload: PayloadMode | None = None
    ) -> str:
        """The SQL of ``watch_schema(...)`` (run ``install_sql()`` before it)."""
        _validate_schema_name(schema, "schema name")
        options = self._options(payload)
        return self._render(lambda b: b.call("watch_schema", schema, durable, options) + ";\n")

    def unwatch_table(self, table: str, schema: str = "public") -> InstallReport:
        """Remove the triggers from one table and forget it.

        If its schema is watched, the table is remembered as excluded, so
        neither ``install()`` nor auto-rebuild puts the triggers back.
        """
        _validate_schema_name(table, "table name")
        _validate_schema_name(schema, "schema name")

        def work(cur: _Cursor, b: SqlBuilder) -> list[InstallAction]:
            state = self._read_state(cur, b)
            if "unwatch_table" not in state.functions or "watched" not in state.tables:
                return [InstallAction("table", f"{schema}.{table}", "unchanged", "nothing is installed")]
            self._ensure_function(cur, b, "unwatch_table", state)
            cur.execute(b.call("unwatch_table", schema, table))
            actions = self._rows(cur)
            self._finish(cur, b)
            return actions

        return InstallReport(tuple(self._run(f"unwatch_table({schema}.{table})", work)))

    def unwatch_table_sql(self, table: str, schema: str = "public") -> str:
        """The SQL of ``unwatch_table(...)``."""
        return self._render(lambda b: b.call("unwatch_table", schema, table) + ";\n")

    # -- status, prune, uninstall ----------------------------------------------------------------

    def status(self, *, lag_warning_bytes: int = DEFAULT_LAG_WARNING_BYTES) -> InstallStatus:
        """Compare the database with what this version installs (read only).

        The result's ``change_streams`` lists the database's change stream
        slots; each one more than ``lag_warning_bytes`` behind (default 1 GiB)
        carries a ``warning`` (also logged at WARNING level).
        """
        _check_lag_warning(lag_warning_bytes)

        def work(cur: _Cursor, b: SqlBuilder) -> InstallStatus:
            streams = tuple(_cdc.read_slot_statuses(cur, lag_warning_bytes=lag_warning_bytes))
            return dataclasses.replace(self._status(cur, b), change_streams=streams)

        return self._run("status", work, lock=False)  # one connection, one transaction

    def _object_state(self, wanted: dict[str, str], current: dict[str, str | None]) -> ObjectState:
        if any(name not in current for name in wanted):
            return "MISSING"
        if any(current[name] != comment for name, comment in wanted.items()):
            return "OUTDATED"
        return "INSTALLED"

    def _status(self, cur: _Cursor, b: SqlBuilder) -> InstallStatus:
        state = self._read_state(cur, b)
        fns = b.functions()
        base = {name: fns[name].comment for name in b.BASE_FUNCTIONS}
        base_tables = {d.key: d.comment for d in b.base_tables()}
        function_state = self._object_state(base, state.functions)
        if function_state == "INSTALLED" and any(t not in state.tables for t in base_tables):
            function_state = "MISSING"

        durable_state: ObjectState | None = None
        if self._has_outbox(state):
            durable_state = self._object_state(
                {name: fns[name].comment for name in b.DURABLE_FUNCTIONS}, state.functions
            )
            if durable_state == "INSTALLED" and any(d.key not in state.tables for d in b.durable_tables()):
                durable_state = "MISSING"

        triggers = b.event_triggers()

        def event_state(purposes: tuple[str, ...]) -> ObjectState | None:
            defs = [triggers[p][0] for p in purposes]
            if not any(d.name in state.event_triggers for d in defs):
                return None
            wanted = {d.name: d.comment for d in defs}
            result = self._object_state(wanted, state.event_triggers)
            if result == "INSTALLED":
                result = self._object_state({p: fns[p].comment for p in purposes}, state.functions)
            return result

        tables = self._table_statuses(cur, b, state)
        return InstallStatus(
            function_state=function_state,
            ddl_state=event_state(("ddl_end", "sql_drop")),
            tables=tables,
            auto_rebuild_state=event_state(("auto_rebuild",)),
            durable_state=durable_state,
            problems=self._privilege_problems(cur, b, state) if state.schema_exists else (),
        )

    def _privilege_problems(self, cur: _Cursor, b: SqlBuilder, state: _State) -> tuple[str, ...]:
        """What in the library schema lets a role do more than it should (see the README's Security)."""
        auto_rebuild = b.names.auto_rebuild_trigger in state.event_triggers
        public_functions = set(b.AUTO_REBUILD_GRANTS) if auto_rebuild else set()
        problems: list[str] = []
        cur.execute(
            """SELECT p.proname, p.prosecdef, r.rolname, r.rolsuper,
                      EXISTS (SELECT FROM pg_catalog.aclexplode(
                                  coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
                               WHERE a.grantee = 0)
                 FROM pg_catalog.pg_proc p
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                 JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
                WHERE n.nspname = %s ORDER BY p.proname""",
            (self.schema,),
        )
        for name, definer, owner, owner_super, public in cur.fetchall():
            if public and name not in public_functions:
                problems.append(f"EXECUTE on {self.schema}.{name}() is granted to PUBLIC")
            if definer and name not in b.WRITER_FUNCTIONS:
                problems.append(f"{self.schema}.{name}() is SECURITY DEFINER")
            if definer and owner_super:
                problems.append(
                    f"{self.schema}.{name}() is SECURITY DEFINER owned by superuser {owner!r} "
                    f"(install() hands it to {b.names.writer_role!r})"
                )
        cur.execute(
            """SELECT a.privilege_type FROM pg_catalog.pg_namespace n,
                      pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
                WHERE n.nspname = %s AND a.grantee = 0 ORDER BY 1""",
            (self.schema,),
        )
        for (privilege,) in cur.fetchall():
            if privilege != "USAGE" or not auto_rebuild:
                problems.append(f"{privilege} on schema {self.schema} is granted to PUBLIC")
        cur.execute(
            """SELECT c.relname, a.privilege_type FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
                      pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
                WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'S') AND a.grantee = 0 ORDER BY 1, 2""",
            (self.schema,),
        )
        for table, privilege in cur.fetchall():
            if not (auto_rebuild and table == "watched" and privilege == "SELECT"):
                problems.append(f"{privilege} on {self.schema}.{table} is granted to PUBLIC")
        return tuple(problems)

    def _table_statuses(self, cur: _Cursor, b: SqlBuilder, state: _State) -> tuple[TableStatus, ...]:
        registry: list[tuple[str, str, str, str]] = []
        if "watched" in state.tables:
            # to_jsonb(w): works before the registry's upgrade too (0.1.0 had no options).
            cur.execute(
                pgsql.SQL(
                    "SELECT w.schema_name, w.table_name, w.mode, "
                    "coalesce((pg_catalog.to_jsonb(w) -> 'options')::text, '{{}}') FROM {S}.watched w"
                )
                .format(S=b.S)
                .as_string(cur)
            )
            registry = list(cur.fetchall())
        schema_modes = {s: (m, o) for s, t, m, o in registry if t == ""}
        table_modes = {(s, t): (m, o) for s, t, m, o in registry if t != ""}
        # Relations that matter: every one in a watched schema, and explicitly registered ones.
        cur.execute(
            """SELECT n.nspname, c.relname, c.relkind, c.relispartition FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
                AND ((n.nspname = ANY (%s) AND NOT c.relispartition)
                     OR (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[])))""",
            (
                list(schema_modes),
                [s for s, _ in table_modes],
                [t for _, t in table_modes],
            ),
        )
        relations = {(s, t): (kind, part) for s, t, kind, part in cur.fetchall()}
        cur.execute(
            """SELECT n.nspname, c.relname, t.tgname, t.tgparentid <> 0, p.proname, d.description
                 FROM pg_catalog.pg_trigger t
                 JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                 LEFT JOIN pg_catalog.pg_description d
                   ON d.objoid = t.oid AND d.classoid = 'pg_catalog.pg_trigger'::pg_catalog.regclass
                WHERE t.tgname = ANY (%s)""",
            (list(b.names.table_triggers),),
        )
        found: dict[tuple[str, str], dict[str, tuple[bool, str, str | None]]] = {}
        for s, t, tgname, inherited, fn_name, comment in cur.fetchall():
            found.setdefault((s, t), {})[tgname] = (inherited, fn_name, comment)

        watched: dict[tuple[str, str], tuple[str, str]] = {}
        for (s, t), (_, part) in relations.items():
            entry = table_modes.get((s, t)) or (schema_modes.get(s) if not part else None)
            if entry is not None and entry[0] != "excluded":
                watched[(s, t)] = entry
        for key, entry in table_modes.items():
            if entry[0] != "excluded" and key not in relations:
                watched[key] = entry

        specs: dict[tuple[bool, str], dict[str, str]] = {}

        def wanted(durable: bool, options: str) -> dict[str, str]:
            if (durable, options) not in specs:
                cur.execute(b.trigger_specs_query(), {"durable": durable, "options": options})
                specs[(durable, options)] = {row[0]: row[5] for row in cur.fetchall()}
            return specs[(durable, options)]

        result: list[TableStatus] = []
        for (s, t), (mode, options) in sorted(watched.items()):
            durable = mode == "durable"
            if (s, t) not in relations:
                result.append(TableStatus(s, t, "ORPHANED", "the table no longer exists", durable))
                continue
            kind, _ = relations[(s, t)]
            if kind not in ("r", "p"):
                reason = {
                    "v": "a view: it has no rows of its own; watch the tables it reads",
                    "m": "a materialized view: row triggers are not possible on it",
                    "f": "a foreign table: its changes happen on another server",
                }.get(kind, f"not a table (relkind {kind})")
                result.append(TableStatus(s, t, "SKIPPED", reason, durable))
                continue
            if s == self.schema:
                result.append(TableStatus(s, t, "SKIPPED", "belongs to the library schema", durable))
                continue
            have = found.get((s, t), {})
            want = wanted(durable, options)
            problems: list[str] = []
            for tgname, comment in want.items():
                if tgname not in have:
                    problems.append(f"{tgname} missing")
                elif not have[tgname][0] and have[tgname][2] != comment:
                    problems.append(f"{tgname} was made by another version or for another mode")
            for tgname, (inherited, fn_name, _) in have.items():
                if tgname not in want and not inherited:
                    problems.append(f"{tgname} (calling {fn_name}()) is not used in {mode} mode")
            if not have:
                result.append(TableStatus(s, t, "MISSING", "watched but no trigger installed", durable))
            elif problems:
                result.append(TableStatus(s, t, "OUTDATED", "; ".join(problems), durable))
            else:
                result.append(TableStatus(s, t, "INSTALLED", None, durable))
        for (s, t), have in sorted(found.items()):
            if (s, t) in watched or all(inherited for inherited, _, _ in have.values()):
                continue
            durable = any(fn in b.DURABLE_FUNCTIONS for _, fn, _ in have.values())
            result.append(
                TableStatus(s, t, "ORPHANED", "triggers left on a table that is not watched", durable)
            )
        return tuple(result)

    def _prune_statements(self, cur: _Cursor, b: SqlBuilder) -> list[tuple[InstallAction, str]]:
        state = self._read_state(cur, b)
        plan: list[tuple[InstallAction, str]] = []
        for t in self._table_statuses(cur, b, state):
            if t.state != "ORPHANED":
                continue
            if t.reason == "the table no longer exists":
                statement = b.render(
                    pgsql.SQL("DELETE FROM {S}.watched WHERE schema_name = {s} AND table_name = {t}").format(
                        S=b.S, s=pgsql.Literal(t.schema), t=pgsql.Literal(t.table)
                    )
                )
                plan.append((InstallAction("watch", f"{t.schema}.{t.table}", "removed", t.reason), statement))
            else:
                cur.execute(
                    """SELECT t.tgname FROM pg_catalog.pg_trigger t
                         JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = %s AND c.relname = %s AND t.tgname = ANY (%s) AND t.tgparentid = 0
                        ORDER BY t.tgname""",
                    (t.schema, t.table, list(b.names.table_triggers)),
                )
                for (tgname,) in cur.fetchall():
                    plan.append(
                        (
                            InstallAction(
                                "trigger", f"{tgname} on {t.schema}.{t.table}", "removed", t.reason
                            ),
                            b.drop_trigger(tgname, t.schema, t.table),
                        )
                    )
        return plan

    def prune(self) -> InstallReport:
        """Remove ORPHANED triggers, and registry entries of dropped tables."""

        def work(cur: _Cursor, b: SqlBuilder) -> list[InstallAction]:
            plan = self._prune_statements(cur, b)
            for _, statement in plan:
                cur.execute(statement)
            return [action for action, _ in plan]

        return InstallReport(tuple(self._run("prune", work)))

    def prune_sql(self) -> str:
        """The SQL ``prune()`` would run now (it depends on the database's state)."""
        plan = self._run("prune_sql", lambda cur, b: self._prune_statements(cur, b), lock=False)
        return "".join(statement + ";\n" for _, statement in plan)

    def uninstall(self) -> InstallReport:
        """Remove every object this installer created, and nothing else.

        Table triggers, event triggers, functions, the registry and outbox
        tables (their data too), and the library schema if the installer
        created it and nothing else is left in it. One transaction.
        """

        def work(cur: _Cursor, b: SqlBuilder) -> list[InstallAction]:
            state = self._read_state(cur, b)
            actions: list[InstallAction] = []
            for name in state.event_triggers:
                actions.append(InstallAction("event_trigger", name, "removed"))
            for t in self._table_statuses(cur, b, state) if "watched" in state.tables else ():
                if (
                    t.state in ("INSTALLED", "OUTDATED", "ORPHANED")
                    and t.reason != "the table no longer exists"
                ):
                    actions.append(InstallAction("trigger", f"triggers on {t.schema}.{t.table}", "removed"))
            for name in sorted(state.functions):
                actions.append(InstallAction("function", f"{self.schema}.{name}", "removed"))
            for name in sorted(state.tables):
                actions.append(InstallAction("table", f"{self.schema}.{name}", "removed"))
            cur.execute(b.uninstall_script())
            actions.extend(self._drop_writer_role(cur, b))
            cur.execute("SELECT true FROM pg_catalog.pg_namespace WHERE nspname = %s", (self.schema,))
            if state.schema_exists:
                if cur.fetchone() is None:
                    actions.append(InstallAction("schema", self.schema, "removed"))
                else:
                    actions.append(
                        InstallAction(
                            "schema", self.schema, "skipped", "not created by trio_pgevents, or not empty"
                        )
                    )
            return actions

        return InstallReport(tuple(self._run("uninstall", work)))

    def _drop_writer_role(self, cur: _Cursor, b: SqlBuilder) -> list[InstallAction]:
        """Drop the outbox writer role, unless another database's install still uses it."""
        role = b.names.writer_role
        cur.execute("SELECT true FROM pg_catalog.pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone() is None:
            return []
        cur.execute("SAVEPOINT trio_pgevents_role")
        try:
            cur.execute(b.drop_writer_role_script())
        except psycopg2.Error as exc:
            cur.execute("ROLLBACK TO SAVEPOINT trio_pgevents_role")
            reason = (exc.diag.message_primary if exc.diag else None) or str(exc).strip()
            return [InstallAction("role", role, "skipped", f"still in use: {reason}")]
        cur.execute("RELEASE SAVEPOINT trio_pgevents_role")
        cur.execute("SELECT true FROM pg_catalog.pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone() is not None:
            return [InstallAction("role", role, "skipped", "not created by trio_pgevents")]
        return [InstallAction("role", role, "removed")]

    def uninstall_sql(self) -> str:
        """The SQL of ``uninstall()``: works whatever is installed (the writer role is kept)."""
        return self._render(lambda b: b.uninstall_script())

    # -- change streams (logical replication slots) ---------------------------------------------

    def change_streams(
        self, *, lag_warning_bytes: int = DEFAULT_LAG_WARNING_BYTES
    ) -> tuple[ChangeStreamStatus, ...]:
        """Every change stream slot of the database, with its lag.

        Lists the logical replication slots using the ``pgoutput`` plugin in
        the current database (whoever made them), each as
        :func:`~trio_pgevents.change_stream_status` reports it. A slot more
        than ``lag_warning_bytes`` of WAL behind (default 1 GiB), or lost,
        carries a ``warning``: a slot nobody consumes keeps WAL forever.
        """
        _check_lag_warning(lag_warning_bytes)
        return self._run(
            "change_streams",
            lambda cur, b: tuple(_cdc.read_slot_statuses(cur, lag_warning_bytes=lag_warning_bytes)),
            lock=False,
        )

    def drop_change_stream(self, slot: str, publication: str | None = None) -> InstallReport:
        """Drop a change stream's replication slot and (if given) its publication.

        Delegates to :func:`~trio_pgevents.drop_change_stream`. Each object is
        reported ``removed``, or ``unchanged`` when it did not exist.

        Raises:
            ConfigurationError: a bad name, or ``slot`` is not a change stream
                slot of this database (another plugin, a physical slot, or
                another database's): it is left alone.
            ReplicationError: the slot is in use by a connected consumer (stop
                it first), or the role may not drop it.
        """
        _cdc._check_slot_name(slot)
        if publication is not None:
            _cdc._check_identifier("publication", publication)

        def work(cur: _Cursor, b: SqlBuilder) -> tuple[tuple[str, str, str] | None, bool]:
            cur.execute(
                "SELECT slot_type::text, coalesce(plugin::text, ''), coalesce(database::text, '') = "
                "current_database() FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
            found = cur.fetchone()
            cur.execute("SELECT true FROM pg_catalog.pg_publication WHERE pubname = %s", (publication,))
            return found, cur.fetchone() is not None

        found, publication_exists = self._run("drop_change_stream", work, lock=False)
        if found is not None and (found[0] != "logical" or found[1] != "pgoutput" or not found[2]):
            kind, plugin, _ = found
            raise ConfigurationError(
                f"replication slot {slot!r} is not a change stream slot of this database "
                f"({kind} slot{f', plugin {plugin}' if plugin else ''}): not dropping it"
            )
        _cdc.drop_change_stream(self._engine, slot, publication)
        actions = [
            InstallAction(
                "slot",
                slot,
                "removed" if found else "unchanged",
                None if found else "no such replication slot",
            )
        ]
        if publication is not None:
            actions.append(
                InstallAction(
                    "publication",
                    publication,
                    "removed" if publication_exists else "unchanged",
                    None if publication_exists else "no such publication",
                )
            )
        return InstallReport(tuple(actions))

    def drop_change_stream_sql(self, slot: str, publication: str | None = None) -> str:
        """The SQL of ``drop_change_stream(...)``, for a migration.

        It drops the slot if it exists (and fails while a consumer holds it),
        then the publication if given and it exists.
        """
        _cdc._check_slot_name(slot)
        if publication is not None:
            _cdc._check_identifier("publication", publication)
        statements = [
            pgsql.SQL(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots "
                "WHERE slot_name = {} AND slot_type = 'logical' AND plugin = 'pgoutput' "
                "AND database = current_database()"
            ).format(pgsql.Literal(slot))
        ]
        if publication is not None:
            drop = pgsql.SQL("DROP PUBLICATION IF EXISTS {}").format(pgsql.Identifier(publication))
            statements.append(drop)
        return self._run(
            "building SQL",
            lambda cur, b: "".join(s.as_string(cur) + ";\n" for s in statements),
            lock=False,
        )

    # -- durable mode: consumers and retention ---------------------------------------------------

    def _durable_exists(self, cur: _Cursor) -> bool:
        cur.execute(
            "SELECT pg_catalog.to_regclass(%s) IS NOT NULL AND pg_catalog.to_regclass(%s) IS NOT NULL",
            (
                pgsql.SQL("{}.events").format(pgsql.Identifier(self.schema)).as_string(cur),
                pgsql.SQL("{}.consumers").format(pgsql.Identifier(self.schema)).as_string(cur),
            ),
        )
        row = cur.fetchone()
        return bool(row and row[0])

    def delete_acknowledged(self, batch_size: int = 10000) -> int:
        """Delete outbox events that every registered consumer has acknowledged.

        An event goes once ``(txid, id)`` is at or before the position of the
        consumer furthest behind. Batches of ``batch_size`` rows, each in its
        own short transaction. With no consumer registered nothing is deleted
        (a consumer registered later must still see the events).

        Returns:
            How many events were deleted.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be an int >= 1, not {batch_size!r}")

        def one_batch(cur: _Cursor, b: SqlBuilder) -> int:
            if not self._durable_exists(cur):
                return 0
            cur.execute(
                pgsql.SQL(
                    """WITH slowest AS (
                           SELECT last_txid, last_id FROM {S}.consumers ORDER BY last_txid, last_id LIMIT 1),
                       doomed AS (
                           SELECT e.id FROM {S}.events e, slowest s
                            WHERE (e.txid, e.id) <= (s.last_txid, s.last_id)
                            ORDER BY e.txid, e.id LIMIT %s)
                       DELETE FROM {S}.events e USING doomed WHERE e.id = doomed.id"""
                ).format(S=b.S),
                (batch_size,),
            )
            return int(cur.rowcount)

        total = 0
        while True:
            deleted = self._run("delete_acknowledged", one_batch, lock=False)
            total += deleted
            if deleted < batch_size:
                return total

    def list_consumers(self) -> list[ConsumerInfo]:
        """The registered durable consumers, with their positions and backlog."""

        def work(cur: _Cursor, b: SqlBuilder) -> list[ConsumerInfo]:
            if not self._durable_exists(cur):
                return []
            cur.execute(
                pgsql.SQL(
                    """SELECT c.name, c.last_txid::text, c.last_id, c.created_at, c.updated_at,
                              (SELECT count(*) FROM {S}.events e
                                WHERE (e.txid, e.id) > (c.last_txid, c.last_id))
                         FROM {S}.consumers c ORDER BY c.name"""
                ).format(S=b.S)
            )
            return [
                ConsumerInfo(name, int(txid), int(last_id), created, updated, int(pending))
                for name, txid, last_id, created, updated, pending in cur.fetchall()
            ]

        return self._run("list_consumers", work, lock=False)

    def drop_consumer(self, name: str) -> bool:
        """Forget a durable consumer (retention stops waiting for it).

        Its dead letters are kept. Returns True if it existed.
        """

        def work(cur: _Cursor, b: SqlBuilder) -> bool:
            if not self._durable_exists(cur):
                return False
            cur.execute(pgsql.SQL("DELETE FROM {S}.consumers WHERE name = %s").format(S=b.S), (name,))
            return bool(cur.rowcount)

        return self._run("drop_consumer", work, lock=False)


P = ParamSpec("P")


def _async_twin(
    method: Callable[Concatenate[Installer, P], T],
) -> Callable[Concatenate[AsyncInstaller, P], Coroutine[Any, Any, T]]:
    """The coroutine version of an :class:`Installer` method (as ``trio.Path`` derives its own)."""

    async def twin(self: AsyncInstaller, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._call(method, *args, **kwargs)

    twin.__name__ = twin.__qualname__ = method.__name__
    twin.__doc__ = (
        f"Like :meth:`Installer.{method.__name__}`, run in a worker thread the caller can give up on."
    )
    return twin


class AsyncInstaller:
    """:class:`Installer`'s operations as coroutines, for Trio code.

    Each runs the synchronous method in a worker thread, so the event loop
    never blocks on DDL. A cancelled call returns at once: its connection is
    shut down, so the server rolls its one transaction back -- nothing is
    half done, and a silent server cannot hold the caller.
    """

    def __init__(self, installer: Installer) -> None:
        self.installer = installer

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_abandonable(
            functools.partial(method, self.installer, *args, **kwargs), timeout=None, what=method.__name__
        )

    install = _async_twin(Installer.install)
    install_sql = _async_twin(Installer.install_sql)
    watch_table = _async_twin(Installer.watch_table)
    watch_table_sql = _async_twin(Installer.watch_table_sql)
    watch_schema = _async_twin(Installer.watch_schema)
    watch_schema_sql = _async_twin(Installer.watch_schema_sql)
    unwatch_table = _async_twin(Installer.unwatch_table)
    unwatch_table_sql = _async_twin(Installer.unwatch_table_sql)
    status = _async_twin(Installer.status)
    change_streams = _async_twin(Installer.change_streams)
    drop_change_stream = _async_twin(Installer.drop_change_stream)
    drop_change_stream_sql = _async_twin(Installer.drop_change_stream_sql)
    prune = _async_twin(Installer.prune)
    prune_sql = _async_twin(Installer.prune_sql)
    uninstall = _async_twin(Installer.uninstall)
    uninstall_sql = _async_twin(Installer.uninstall_sql)
    delete_acknowledged = _async_twin(Installer.delete_acknowledged)
    list_consumers = _async_twin(Installer.list_consumers)
    drop_consumer = _async_twin(Installer.drop_consumer)
