"""Watching tables: attaching the row and TRUNCATE triggers, and detaching them.

The work is done by the installer's own SQL functions (``watch_table``,
``watch_schema``, ``unwatch_table`` in the library schema), which also keep
the registry; each method calls one of them, after bringing the base objects
up to date, and its ``*_sql`` twin returns that call for a migration.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import ConfigurationError
from .base import Cursor, InstallerBase, PayloadMode, check_name, check_payload
from .catalog import read_state
from .ensure import action_rows, ensure_base, ensure_function, finish
from .reports import InstallAction, InstallReport
from .sql import SqlBuilder

__all__ = ["WatchOps"]


class WatchOps(InstallerBase):
    """``watch_table``, ``watch_schema``, ``unwatch_table`` and their ``*_sql`` twins (a mixin)."""

    def _options(self, payload: PayloadMode | None, skip_underscore: bool = False) -> str:
        """A watch's options as the registry keeps them (JSON text)."""
        options: dict[str, Any] = {"payload": self.payload if payload is None else check_payload(payload)}
        if not isinstance(skip_underscore, bool):
            raise ConfigurationError(f"skip_underscore must be a bool, not {skip_underscore!r}")
        if skip_underscore:
            options["skip_underscore"] = True
        return json.dumps(options)

    def _table_watch(
        self, table: str, schema: str, durable: bool, payload: PayloadMode | None
    ) -> tuple[Any, ...]:
        """The arguments of the ``watch_table`` function, checked."""
        check_name(table, "table name")
        check_name(schema, "schema name")
        return (schema, table, durable, self._options(payload))

    def _schema_watch(
        self, schema: str, durable: bool, payload: PayloadMode | None, skip_underscore: bool = False
    ) -> tuple[Any, ...]:
        """The arguments of the ``watch_schema`` function, checked."""
        check_name(schema, "schema name")
        return (schema, durable, self._options(payload, skip_underscore))

    def _watch(self, what: str, function: str, args: tuple[Any, ...], durable: bool) -> InstallReport:
        """Bring the base up to date, then call the installer's ``function`` (one transaction)."""

        def work(cur: Cursor, b: SqlBuilder) -> list[InstallAction]:
            state = read_state(cur, b)
            actions = ensure_base(cur, b, state, durable)
            cur.execute(b.call(function, *args))
            actions += action_rows(cur)
            finish(cur, b)
            return actions

        return InstallReport(tuple(self._run(what, work)))

    def _call_sql(self, function: str, args: tuple[Any, ...]) -> str:
        """The SQL calling the installer's ``function`` with ``args``, for a migration."""
        return self._render(lambda b: b.call(function, *args) + ";\n")

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
        args = self._table_watch(table, schema, durable, payload)
        return self._watch(f"watch_table({schema}.{table})", "watch_table", args, durable)

    def watch_table_sql(
        self,
        table: str,
        schema: str = "public",
        *,
        durable: bool = False,
        payload: PayloadMode | None = None,
    ) -> str:
        """The SQL of ``watch_table(...)`` (run ``install_sql()`` before it)."""
        return self._call_sql("watch_table", self._table_watch(table, schema, durable, payload))

    def watch_schema(
        self,
        schema: str,
        *,
        durable: bool = False,
        payload: PayloadMode | None = None,
        skip_underscore: bool = False,
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
            skip_underscore: leave out tables whose name starts with ``_``,
                now and when created later (pg_events' rule), unless watched
                by name.

        Raises:
            InstallError: the schema does not exist, or is the library schema.
        """
        args = self._schema_watch(schema, durable, payload, skip_underscore)
        return self._watch(f"watch_schema({schema})", "watch_schema", args, durable)

    def watch_schema_sql(
        self,
        schema: str,
        *,
        durable: bool = False,
        payload: PayloadMode | None = None,
        skip_underscore: bool = False,
    ) -> str:
        """The SQL of ``watch_schema(...)`` (run ``install_sql()`` before it)."""
        return self._call_sql("watch_schema", self._schema_watch(schema, durable, payload, skip_underscore))

    def unwatch_table(self, table: str, schema: str = "public") -> InstallReport:
        """Remove the triggers from one table and forget it.

        If its schema is watched, the table is remembered as excluded, so
        neither ``install()`` nor auto-rebuild puts the triggers back.
        """
        check_name(table, "table name")
        check_name(schema, "schema name")

        def work(cur: Cursor, b: SqlBuilder) -> list[InstallAction]:
            state = read_state(cur, b)
            if "unwatch_table" not in state.functions or "watched" not in state.tables:
                return [InstallAction("table", f"{schema}.{table}", "unchanged", "nothing is installed")]
            ensure_function(cur, b, "unwatch_table", state)
            cur.execute(b.call("unwatch_table", schema, table))
            actions = action_rows(cur)
            finish(cur, b)
            return actions

        return InstallReport(tuple(self._run(f"unwatch_table({schema}.{table})", work)))

    def unwatch_table_sql(self, table: str, schema: str = "public") -> str:
        """The SQL of ``unwatch_table(...)``."""
        return self._call_sql("unwatch_table", (schema, table))
