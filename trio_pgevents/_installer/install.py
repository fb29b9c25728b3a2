"""``install()``: the library schema, its functions and registry, the outbox and the event triggers.

An install (or an upgrade: the same call) brings every object up to date and
then every watched table's triggers; ``install_sql()`` hands out the same as
one idempotent script for a migration.
"""

from __future__ import annotations

import psycopg2.errors
from psycopg2 import sql

from .._errors import InsufficientPrivilegeError
from .base import Cursor, InstallerBase, check_ddl_events, check_durable_channel
from .catalog import match_ddl_events, read_state
from .ensure import action_rows, ensure_base, ensure_event_triggers, finish
from .pgevents import drop_pg_events_script, find_pg_events
from .reports import InstallAction, InstallReport
from .sql import DEFAULT_DDL_EVENTS, OBSOLETE_FUNCTIONS, DdlEvents, SqlBuilder
from .sql.base import user_schema_sql

__all__ = ["InstallOps"]


def _refresh_watched(cur: Cursor, b: SqlBuilder) -> list[InstallAction]:
    """Bring every watched table's triggers up to date (what an upgrade needs)."""
    cur.execute(
        sql.SQL(
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
    everywhere = [(mode, options) for s, t, mode, options, _, _ in rows if s == "" and t == ""]
    if everywhere:
        # Every user schema is watched: those created since (no entry of their own) too.
        mode, options = everywhere[0]
        cur.execute(
            "SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE "
            + user_schema_sql(b.literal(b.schema)).replace("%", "%%")
            + " AND n.nspname <> ALL (%s) ORDER BY 1",
            (sorted(watched_schemas),),
        )
        for (schema,) in cur.fetchall():
            cur.execute(b.call("watch_schema", schema, mode == "durable", options))
            actions.extend(action_rows(cur))
    for schema, table, mode, options, schema_exists, table_exists in rows:
        if table == "" and schema_exists:
            cur.execute(b.call("watch_schema", schema, mode == "durable", options))
            actions.extend(action_rows(cur))
        elif table and mode != "excluded" and table_exists and schema not in watched_schemas:
            cur.execute(b.call("watch_table", schema, table, mode == "durable", options))
            actions.extend(action_rows(cur))
    return actions


def _install_script(b: SqlBuilder, ddl: bool, auto_rebuild: bool, durable: bool) -> str:
    """What ``install_sql()`` returns."""
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


class InstallOps(InstallerBase):
    """:meth:`install` and :meth:`install_sql` (a mixin of :class:`~trio_pgevents.Installer`)."""

    def install(
        self,
        *,
        ddl: bool = False,
        auto_rebuild: bool = False,
        durable: bool = False,
        ddl_events: DdlEvents | None = None,
        replace_pg_events: bool = False,
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
            ddl_events: which DDL events the DDL event triggers send:
                ``"tables"`` (pg_events' stream: CREATE TABLE, ALTER TABLE and
                DROP TABLE; a drop is one event whose ``dependents`` lists the
                objects dropped along with it) or ``"all"`` (every DDL command,
                each dropped object an event of its own). Default: what is
                installed, else ``"tables"``.
            replace_pg_events: first remove the original pg_events' event
                triggers, functions and table triggers (``status().pg_events``
                lists them), in the same transaction. Superuser only.

        Raises:
            InsufficientPrivilegeError: ``ddl``/``auto_rebuild``/``replace_pg_events``
                without superuser. Everything else was installed (and committed)
                before it is raised.
            InstallError: anything else went wrong; nothing was changed.
        """
        check_ddl_events(ddl_events)
        denied: list[str] = []

        def work(cur: Cursor, b: SqlBuilder) -> list[InstallAction]:
            state = read_state(cur, b)
            b.ddl_events = ddl_events or match_ddl_events(b, state) or DEFAULT_DDL_EVENTS
            actions: list[InstallAction] = []
            if replace_pg_events:
                # First: pg_events' event triggers would run their rebuild on our CREATE TABLEs.
                cur.execute("SAVEPOINT trio_pgevents_pg_events")
                found = find_pg_events(cur)
                try:
                    cur.execute(drop_pg_events_script())
                except psycopg2.errors.InsufficientPrivilege:
                    cur.execute("ROLLBACK TO SAVEPOINT trio_pgevents_pg_events")
                    denied.append("removing pg_events' objects")
                    why = "pg_events'; needs a superuser"
                    actions += [InstallAction(k, n, "skipped", why) for k, n in found]
                else:
                    cur.execute("RELEASE SAVEPOINT trio_pgevents_pg_events")
                    actions += [InstallAction(k, n, "removed", "pg_events'") for k, n in found]
            actions += ensure_base(cur, b, state, durable)
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
                    actions.extend(ensure_event_triggers(cur, b, state, purposes))
                except psycopg2.errors.InsufficientPrivilege:
                    cur.execute("ROLLBACK TO SAVEPOINT trio_pgevents_ddl")
                    denied.append(f"creating {label}")
                    for purpose in purposes:
                        actions.append(
                            InstallAction("event_trigger", purpose, "skipped", "needs a superuser")
                        )
                else:
                    cur.execute("RELEASE SAVEPOINT trio_pgevents_ddl")
            actions.extend(_refresh_watched(cur, b))
            finish(cur, b)
            return actions

        actions = self._run("install", work)
        if denied:
            user = self._engine.url.username or "the connected role"
            raise InsufficientPrivilegeError(
                f"{' and '.join(denied)} needs a superuser (event triggers are theirs), and role "
                f"{user!r} is not one. Everything else was installed. To get DDL events, run "
                "install(ddl=True) once as a superuser (or have one run install_sql(ddl=True) in a "
                "migration); or call install() without ddl/auto_rebuild/replace_pg_events."
            )
        return InstallReport(tuple(actions))

    def install_sql(
        self,
        *,
        ddl: bool = False,
        auto_rebuild: bool = False,
        durable: bool = False,
        ddl_events: DdlEvents | None = None,
        replace_pg_events: bool = False,
    ) -> str:
        """The SQL of ``install(...)`` for a migration: idempotent, run it in one transaction.

        ``ddl_events`` defaults to ``"tables"`` (the script cannot know what is installed).
        """
        check_ddl_events(ddl_events)
        if durable:
            check_durable_channel(self.channel)

        def render(b: SqlBuilder) -> str:
            b.ddl_events = ddl_events or DEFAULT_DDL_EVENTS
            script = _install_script(b, ddl, auto_rebuild, durable)
            return (drop_pg_events_script() + ";\n" + script) if replace_pg_events else script

        return self._render(render)
