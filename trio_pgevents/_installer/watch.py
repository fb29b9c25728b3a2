"""Watching tables: attaching the row and TRUNCATE triggers, and detaching them.

The work is done by the installer's own SQL functions (``watch_table``,
``watch_schema``, ``unwatch_table`` in the library schema), which also keep
the registry; each method calls one of them, after bringing the base objects
up to date, and its ``*_sql`` twin returns that call for a migration. A
watch's filters (operations, columns, condition, channel) travel in its
options (:mod:`.filters`) and become the triggers' definitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Cursor, InstallerBase, PayloadMode, check_name
from .catalog import read_state
from .ensure import action_rows, ensure_base, ensure_function, finish
from .filters import watch_options
from .reports import InstallAction, InstallReport
from .sql import SqlBuilder

__all__ = ["WatchOps"]


class WatchOps(InstallerBase):
    """``watch_table``, ``watch_schema``, ``unwatch_table`` and their ``*_sql`` twins (a mixin)."""

    def _options(
        self,
        payload: PayloadMode | None,
        operations: Sequence[str] | None,
        columns: Sequence[str] | None,
        when: str | None,
        channel: str | None,
        skip_underscore: bool = False,
    ) -> str:
        """A watch's options as the registry keeps them (JSON text), checked."""
        payload = self.payload if payload is None else payload
        return watch_options(payload, operations, columns, when, channel, skip_underscore)

    def _watch(self, what: str, function: str, args: tuple[Any, ...], durable: bool) -> InstallReport:
        """Bring the base up to date, then call the installer's ``function`` (one transaction).

        A filter that does not fit a table (bad SQL in ``when``, a column it
        lacks) raises :class:`ConfigurationError`, and the transaction is
        rolled back: nothing is installed, nothing registered.
        """

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

    def _table_watch(
        self,
        table: str,
        schema: str,
        durable: bool,
        payload: PayloadMode | None,
        operations: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        when: str | None = None,
        channel: str | None = None,
    ) -> tuple[Any, ...]:
        """The arguments of the ``watch_table`` function, checked."""
        check_name(table, "table name")
        check_name(schema, "schema name")
        return (schema, table, durable, self._options(payload, operations, columns, when, channel))

    def _schema_watch(
        self,
        schema: str,
        durable: bool,
        payload: PayloadMode | None,
        operations: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        when: str | None = None,
        channel: str | None = None,
        skip_underscore: bool = False,
    ) -> tuple[Any, ...]:
        """The arguments of the ``watch_schema`` function, checked."""
        check_name(schema, "schema name")
        return (schema, durable, self._options(payload, operations, columns, when, channel, skip_underscore))

    def watch_table(
        self,
        table: str,
        schema: str = "public",
        *,
        operations: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        when: str | None = None,
        channel: str | None = None,
        durable: bool = False,
        payload: PayloadMode | None = None,
    ) -> InstallReport:
        """Attach the row and TRUNCATE triggers to one table (installing the base if needed).

        The filters are trigger definitions (``AFTER INSERT OR UPDATE OF a, b
        ... WHEN (...)``): a row they leave out costs its writer nothing. They
        are part of each trigger's definition hash: watching again with other
        filters replaces the triggers, and ``status()`` says OUTDATED while
        the triggers and the registry disagree.

        Args:
            table: the table's name, exactly as in the catalog (no quoting needed).
            schema: its schema.
            operations: the operations that make events, among ``"INSERT"``,
                ``"UPDATE"``, ``"DELETE"``, ``"TRUNCATE"``; default: all four.
            columns: an UPDATE makes an event only when one of these columns
                changed (its value differs, byte for byte: setting a column to
                the value it has is no change). INSERT and DELETE are not
                affected. Needs UPDATE among ``operations``.
            when: a SQL condition on ``OLD`` and ``NEW`` (``"NEW.total >
                1000"``): only rows for which it is true make events. It is the
                triggers' ``WHEN`` clause: it runs in the writer's statement,
                with the writer's rights, and an error in it fails the write.
                An INSERT has no ``OLD`` and a DELETE no ``NEW``: a condition
                naming them needs ``operations`` without those. It is read
                with ``search_path = pg_catalog``: qualify your own functions
                (``myschema.is_vip(NEW.customer)``). TRUNCATE (no rows) is not
                filtered.
            channel: the table's own NOTIFY channel (default: the installer's).
                In durable mode, the events' ``channel`` (the outbox is one
                queue; wake-ups stay on the installer's channel).
            durable: outbox mode: events go to ``<schema>.events`` (no size
                limit, survive listener outages) instead of a plain NOTIFY.
                A ``when`` condition may then call no VOLATILE function.
            payload: ``"row"`` or ``"keys"`` (primary key only); default: the
                installer's ``payload``.

        Raises:
            ConfigurationError: a malformed option, or a filter that does not
                fit the table (bad SQL in ``when``, a column it lacks): the
                message names the table and the server's error, and nothing
                was installed.
            InstallError: the table does not exist (nothing was changed).
        """
        args = self._table_watch(table, schema, durable, payload, operations, columns, when, channel)
        return self._watch(f"watch_table({schema}.{table})", "watch_table", args, durable)

    def watch_table_sql(
        self,
        table: str,
        schema: str = "public",
        *,
        operations: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        when: str | None = None,
        channel: str | None = None,
        durable: bool = False,
        payload: PayloadMode | None = None,
    ) -> str:
        """The SQL of ``watch_table(...)`` (run ``install_sql()`` before it)."""
        args = self._table_watch(table, schema, durable, payload, operations, columns, when, channel)
        return self._call_sql("watch_table", args)

    def watch_schema(
        self,
        schema: str,
        *,
        operations: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        when: str | None = None,
        channel: str | None = None,
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
            operations, columns, when, channel: filters, as for
                :meth:`watch_table`, for every table of the schema (a table
                that does not fit them fails the whole call; one created later
                that does not fit gets no trigger, with a WARNING from
                auto-rebuild, and is MISSING in ``status()``).
            durable: outbox mode (see :meth:`watch_table`).
            payload: ``"row"`` or ``"keys"``; default: the installer's ``payload``.
            skip_underscore: leave out tables whose name starts with ``_``,
                now and when created later (pg_events' rule), unless watched
                by name.

        Raises:
            ConfigurationError: a malformed option, or a filter that does not
                fit one of the tables (nothing was installed).
            InstallError: the schema does not exist, or is the library schema.
        """
        args = self._schema_watch(
            schema, durable, payload, operations, columns, when, channel, skip_underscore
        )
        return self._watch(f"watch_schema({schema})", "watch_schema", args, durable)

    def watch_schema_sql(
        self,
        schema: str,
        *,
        operations: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        when: str | None = None,
        channel: str | None = None,
        durable: bool = False,
        payload: PayloadMode | None = None,
        skip_underscore: bool = False,
    ) -> str:
        """The SQL of ``watch_schema(...)`` (run ``install_sql()`` before it)."""
        args = self._schema_watch(
            schema, durable, payload, operations, columns, when, channel, skip_underscore
        )
        return self._call_sql("watch_schema", args)

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
