"""Watching every user schema, those created after the watch too.

``watch_all_schemas()`` registers one entry meaning "every user schema" (the
registry's schema name ``''``: no schema can have an empty name) and watches
each user schema there is now. From then on a table created in a schema that
has no entry of its own -- a schema created after the watch -- is watched by
auto-rebuild as if its schema were watched with the same options; without
auto-rebuild, ``status()`` reports it MISSING and the next ``install()``
watches its schema. This is what ``trio-pgevents build`` does by default, as
pg_events watched every table of the database.
"""

from __future__ import annotations

from psycopg2 import sql

from .base import Cursor, PayloadMode
from .catalog import read_state
from .ensure import ensure_function, finish
from .reports import InstallAction, InstallReport
from .sql import SqlBuilder
from .watch import WatchOps

__all__ = ["AllSchemasOps"]


class AllSchemasOps(WatchOps):
    """``watch_all_schemas``, ``unwatch_all_schemas`` and the SQL twin (a mixin)."""

    def watch_all_schemas(
        self, *, durable: bool = False, payload: PayloadMode | None = None, skip_underscore: bool = True
    ) -> InstallReport:
        """Watch every user schema, now and created later (one transaction).

        User schemas are all but ``pg_*``, ``information_schema``, the
        library schema and those created by extensions. Each is watched as by
        :meth:`watch_schema` with these options (a schema's own watch is
        replaced by them); a schema created later is watched too: its tables
        get their triggers from auto-rebuild (``install(auto_rebuild=True)``)
        as they are created, or from the next ``install()``, and ``status()``
        reports them MISSING until then.

        Args:
            durable: outbox mode (see :meth:`watch_table`).
            payload: ``"row"`` or ``"keys"``; default: the installer's ``payload``.
            skip_underscore: leave out tables whose name starts with ``_``
                (pg_events' rule; default True), unless watched by name.
        """
        options = self._options(payload, None, None, None, None, skip_underscore)
        return self._watch("watch_all_schemas", "watch_all_schemas", (durable, options), durable)

    def watch_all_schemas_sql(
        self, *, durable: bool = False, payload: PayloadMode | None = None, skip_underscore: bool = True
    ) -> str:
        """The SQL of ``watch_all_schemas(...)`` (run ``install_sql()`` before it)."""
        return self._call_sql(
            "watch_all_schemas", (durable, self._options(payload, None, None, None, None, skip_underscore))
        )

    def unwatch_all_schemas(self) -> InstallReport:
        """Stop watching schemas created from now on (those watched stay watched)."""

        def work(cur: Cursor, b: SqlBuilder) -> list[InstallAction]:
            state = read_state(cur, b)
            if "watched" not in state.tables:
                return [InstallAction("watch", "every user schema", "unchanged", "nothing is installed")]
            ensure_function(cur, b, "watch_all_schemas", state)
            cur.execute(
                sql.SQL("DELETE FROM {S}.watched WHERE schema_name = '' AND table_name = ''")
                .format(S=b.S)
                .as_string(cur)
            )
            removed = cur.rowcount > 0
            finish(cur, b)
            return [InstallAction("watch", "every user schema", "removed" if removed else "unchanged")]

        return InstallReport(tuple(self._run("unwatch_all_schemas", work)))
