"""Looking after an install: ``status()``, ``prune()`` of ORPHANED leftovers, ``uninstall()``.

``status()`` only reads (see :mod:`.catalog`); ``prune()`` and
``uninstall()`` remove what the installer made and nothing else, in one
transaction each.
"""

from __future__ import annotations

import dataclasses

import psycopg2
from psycopg2 import sql

from .._cdc import DEFAULT_LAG_WARNING_BYTES, read_slot_statuses
from .base import Cursor, InstallerBase, check_lag_warning
from .catalog import TABLE_GONE, read_state, read_status, table_statuses
from .reports import InstallAction, InstallReport, InstallStatus
from .sql import SqlBuilder

__all__ = ["MaintenanceOps"]


def _prune_statements(cur: Cursor, b: SqlBuilder) -> list[tuple[InstallAction, str]]:
    """What ``prune()`` removes, each with its statement."""
    state = read_state(cur, b)
    plan: list[tuple[InstallAction, str]] = []
    for t in table_statuses(cur, b, state):
        if t.state != "ORPHANED":
            continue
        if t.reason == TABLE_GONE:
            statement = b.render(
                sql.SQL("DELETE FROM {S}.watched WHERE schema_name = {s} AND table_name = {t}").format(
                    S=b.S, s=sql.Literal(t.schema), t=sql.Literal(t.table)
                )
            )
            plan.append((InstallAction("watch", f"{t.schema}.{t.table}", "removed", t.reason), statement))
            continue
        cur.execute(
            """SELECT t.tgname FROM pg_catalog.pg_trigger t
                 JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = %s AND c.relname = %s AND t.tgname = ANY (%s) AND t.tgparentid = 0
                ORDER BY t.tgname""",
            (t.schema, t.table, list(b.names.table_triggers)),
        )
        for (tgname,) in cur.fetchall():
            action = InstallAction("trigger", f"{tgname} on {t.schema}.{t.table}", "removed", t.reason)
            plan.append((action, b.drop_trigger(tgname, t.schema, t.table)))
    return plan


def _drop_writer_role(cur: Cursor, b: SqlBuilder) -> list[InstallAction]:
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


def _uninstall(cur: Cursor, b: SqlBuilder) -> list[InstallAction]:
    """Run ``uninstall()``'s script and say what it removed."""
    state = read_state(cur, b)
    actions: list[InstallAction] = []
    for name in state.event_triggers:
        actions.append(InstallAction("event_trigger", name, "removed"))
    for t in table_statuses(cur, b, state) if "watched" in state.tables else ():
        if t.state in ("INSTALLED", "OUTDATED", "ORPHANED") and t.reason != TABLE_GONE:
            actions.append(InstallAction("trigger", f"triggers on {t.schema}.{t.table}", "removed"))
    for name in sorted(state.functions):
        actions.append(InstallAction("function", f"{b.schema}.{name}", "removed"))
    for name in sorted(state.tables):
        actions.append(InstallAction("table", f"{b.schema}.{name}", "removed"))
    cur.execute(b.uninstall_script())
    actions.extend(_drop_writer_role(cur, b))
    cur.execute("SELECT true FROM pg_catalog.pg_namespace WHERE nspname = %s", (b.schema,))
    if state.schema_exists:
        if cur.fetchone() is None:
            actions.append(InstallAction("schema", b.schema, "removed"))
        else:
            actions.append(
                InstallAction("schema", b.schema, "skipped", "not created by trio_pgevents, or not empty")
            )
    return actions


class MaintenanceOps(InstallerBase):
    """``status``, ``prune``, ``uninstall`` and their ``*_sql`` twins (a mixin)."""

    def status(self, *, lag_warning_bytes: int = DEFAULT_LAG_WARNING_BYTES) -> InstallStatus:
        """Compare the database with what this version installs (read only).

        The result's ``change_streams`` lists the database's change stream
        slots; each one more than ``lag_warning_bytes`` behind (default 1 GiB)
        carries a ``warning`` (also logged at WARNING level).
        """
        check_lag_warning(lag_warning_bytes)

        def work(cur: Cursor, b: SqlBuilder) -> InstallStatus:
            streams = tuple(read_slot_statuses(cur, lag_warning_bytes=lag_warning_bytes))
            return dataclasses.replace(read_status(cur, b), change_streams=streams)

        return self._run("status", work, lock=False)  # one connection, one transaction

    def prune(self) -> InstallReport:
        """Remove ORPHANED triggers, and registry entries of dropped tables."""

        def work(cur: Cursor, b: SqlBuilder) -> list[InstallAction]:
            plan = _prune_statements(cur, b)
            for _, statement in plan:
                cur.execute(statement)
            return [action for action, _ in plan]

        return InstallReport(tuple(self._run("prune", work)))

    def prune_sql(self) -> str:
        """The SQL ``prune()`` would run now (it depends on the database's state)."""
        plan = self._run("prune_sql", _prune_statements, lock=False)
        return "".join(statement + ";\n" for _, statement in plan)

    def uninstall(self) -> InstallReport:
        """Remove every object this installer created, and nothing else.

        Table triggers, event triggers, functions, the registry and outbox
        tables (their data too), and the library schema if the installer
        created it and nothing else is left in it. One transaction.
        """
        return InstallReport(tuple(self._run("uninstall", _uninstall)))

    def uninstall_sql(self) -> str:
        """The SQL of ``uninstall()``: works whatever is installed (the writer role is kept)."""
        return self._render(lambda b: b.uninstall_script())
