"""``SqlBuilder``: every statement and script the installer runs or hands out.

On top of the function definitions (:mod:`.functions`): the library schema,
the registry and outbox tables, the event triggers, the grants to PUBLIC, the
outbox writer role, calls of the installer's functions, and the uninstall
script.
"""

from __future__ import annotations

from typing import Any

from psycopg2 import sql

from .base import DDL_EVENT_TAGS, Definition, comment_for, template
from .functions import FUNCTIONS, OBSOLETE_FUNCTIONS, FunctionSql

__all__ = ["SqlBuilder"]

#: The grants to PUBLIC (see :meth:`SqlBuilder.privileges_script`).
_PRIVILEGES = """DO {tag_open}
BEGIN
    REVOKE ALL ON SCHEMA {S} FROM PUBLIC;
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {S} FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA {S} FROM PUBLIC;
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger e WHERE e.evtname OPERATOR(pg_catalog.=) {auto}) THEN
        GRANT USAGE ON SCHEMA {S} TO PUBLIC;
        GRANT SELECT ON {S}.watched TO PUBLIC;
        {base_grants};
        IF pg_catalog.to_regprocedure({outbox}) IS NOT NULL THEN
            {durable_grants};
        END IF;
    END IF;
END
{tag_close}"""

#: The library schema, created (and marked as ours) only when absent.
_CREATE_SCHEMA = """DO {tag_open}
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) {name}) THEN
        CREATE SCHEMA {S};
        COMMENT ON SCHEMA {S} IS {comment};
    END IF;
END
{tag_close}"""


class SqlBuilder(FunctionSql):
    """Renders the installer's SQL for one (schema, channel, include_query).

    Args:
        context: a psycopg2 connection or cursor (used only for quoting).
        schema: the library schema.
        channel: the NOTIFY channel.
        include_query: put ``current_query()`` into row payloads.
    """

    # -- privileges --------------------------------------------------------------------------------

    def privileges_script(self) -> str:
        """Grants to PUBLIC: none, but what auto-rebuild needs when it is installed (idempotent).

        With the auto-rebuild event trigger, the role creating a table attaches
        its triggers itself, so it needs to read the registry and to name the
        trigger functions. A DO block, so that the same script serves
        ``install()`` and the SQL for migrations, whatever is installed.
        """

        def grant(name: str) -> str:
            types = self.functions()[name].name[len(f"{self.schema}.{name}(") : -1]
            return self._fmt(
                "GRANT EXECUTE ON FUNCTION {S}.{fn}(" + types + ") TO PUBLIC", fn=sql.Identifier(name)
            )

        base = "; ".join(grant(n) for n in self.AUTO_REBUILD_GRANTS if n not in self.DURABLE_FUNCTIONS)
        durable = "; ".join(grant(n) for n in self.AUTO_REBUILD_GRANTS if n in self.DURABLE_FUNCTIONS)
        return self._do(
            _PRIVILEGES,
            base_grants=sql.SQL(base),
            durable_grants=sql.SQL(durable),
            auto=sql.Literal(self.names.auto_rebuild_trigger),
            outbox=sql.Literal(self.render(sql.SQL("{}.outbox_row()").format(self.S))),
        )

    def _writer_role(self, name: str) -> str:
        role = self.names.writer_role
        return self._do(
            template(name),
            name=sql.Literal(role),
            role=sql.Identifier(role),
            comment=sql.Literal(comment_for(f"role {role}")),
        )

    def writer_role_script(self) -> str:
        """Give ``outbox_row`` to the dedicated writer role (when a superuser runs it).

        Creates the role if absent (``NOLOGIN``, no attribute), grants it only
        what the outbox function needs, and makes it the function's owner. A
        role of that name that can log in, has any attribute or belongs to any
        role was not made by us: the script fails rather than hand it the
        outbox. Run by a non-superuser it does nothing: that installer owns
        ``outbox_row`` itself (it is no superuser either).
        """
        return self._writer_role("writer_role")

    def drop_writer_role_script(self) -> str:
        """Drop the writer role if it is ours and nothing else uses it (run in a savepoint)."""
        return self._writer_role("drop_writer_role")

    # -- schema and tables ---------------------------------------------------------------------------

    def schema_definition(self) -> Definition:
        """The library schema, created (and marked as ours) only when absent. No PUBLIC grant."""
        comment = comment_for(f"schema {self.schema}")
        create = self._do(_CREATE_SCHEMA, name=sql.Literal(self.schema), comment=sql.Literal(comment))
        return Definition("schema", self.schema, create, "SELECT 1", comment)

    def _table(self, name: str, columns: str, extra: str = "", upgrade: str = "") -> Definition:
        table = sql.Identifier(name)
        create = self._fmt("CREATE TABLE IF NOT EXISTS {S}.{t} (" + columns + ")", t=table)
        comment = comment_for(create)
        comment_sql = self._fmt("COMMENT ON TABLE {S}.{t} IS {c}", t=table, c=sql.Literal(comment))
        if extra:
            create = create + ";\n" + self._fmt(extra, t=table)
        return Definition(
            "table",
            f"{self.schema}.{name}",
            create,
            comment_sql,
            comment,
            name,
            upgrade=self._fmt(upgrade, t=table) if upgrade else "",
        )

    def base_tables(self) -> list[Definition]:
        """The registry of watched schemas and tables, with each watch's options."""
        return [
            self._table(
                "watched",
                "schema_name text NOT NULL, table_name text NOT NULL DEFAULT '', "
                "mode text NOT NULL CHECK (mode IN ('notify', 'durable', 'excluded')), "
                "options jsonb NOT NULL DEFAULT '{{}}', "
                "created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (schema_name, table_name)",
                # 0.1.0's registry had no options.
                upgrade="ALTER TABLE {S}.{t} ADD COLUMN IF NOT EXISTS options jsonb NOT NULL DEFAULT '{{}}'",
            )
        ]

    def durable_tables(self) -> list[Definition]:
        """The outbox: events, consumers and dead letters (see the durable mode)."""
        return [
            self._table(
                "events",
                "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "txid xid8 NOT NULL DEFAULT pg_current_xact_id(), channel text NOT NULL, "
                "payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp()",
                extra="CREATE INDEX IF NOT EXISTS events_txid_id_idx ON {S}.{t} (txid, id)",
            ),
            self._table(
                # last_txid/last_id: every event up to here is acknowledged (in every
                # partition); what retention deletes up to. partitions: 1 for an
                # exclusive consumer, N for a group.
                "consumers",
                "name text PRIMARY KEY, last_txid xid8 NOT NULL DEFAULT '0', "
                "last_id bigint NOT NULL DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now(), "
                "updated_at timestamptz NOT NULL DEFAULT now(), "
                "partitions int NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 1024), "
                "grouped boolean NOT NULL DEFAULT false",
                # 0.1.0's consumers had no partitions (each was one exclusive partition).
                upgrade="ALTER TABLE {S}.{t} ADD COLUMN IF NOT EXISTS partitions int NOT NULL DEFAULT 1 "
                "CHECK (partitions BETWEEN 1 AND 1024), "
                "ADD COLUMN IF NOT EXISTS grouped boolean NOT NULL DEFAULT false",
            ),
            self._table(
                # Each partition's position and lease: held by one member until expires_at.
                "consumer_parts",
                "consumer text NOT NULL REFERENCES {S}.consumers (name) ON DELETE CASCADE, "
                "part int NOT NULL, last_txid xid8 NOT NULL DEFAULT '0', last_id bigint NOT NULL DEFAULT 0, "
                "holder text, expires_at timestamptz, updated_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (consumer, part)",
            ),
            self._table(
                # The streams open under each name (alive until expires_at), for fair shares.
                "consumer_members",
                "consumer text NOT NULL REFERENCES {S}.consumers (name) ON DELETE CASCADE, "
                "member text NOT NULL, joined_at timestamptz NOT NULL DEFAULT now(), "
                "expires_at timestamptz NOT NULL, PRIMARY KEY (consumer, member)",
            ),
            self._table(
                "dead_letters",
                "consumer text NOT NULL, event_id bigint NOT NULL, txid xid8 NOT NULL, "
                "channel text NOT NULL, payload jsonb NOT NULL, error text NOT NULL, attempts int NOT NULL, "
                "failed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, event_id)",
            ),
        ]

    # -- event triggers ------------------------------------------------------------------------------

    def event_triggers(self) -> dict[str, tuple[Definition, str]]:
        """Event trigger definitions by purpose: ``ddl_end``, ``sql_drop``, ``auto_rebuild``.

        Each comes with its DROP statement (event triggers cannot be replaced in place).
        The DDL triggers fire on pg_events' command tags only, unless
        :attr:`ddl_events` is ``"all"``.
        """
        fns = self.functions()

        def tags(purpose: str) -> str:
            if self.ddl_events == "all":
                return ""
            return " WHEN TAG IN (" + ", ".join(f"'{tag}'" for tag in DDL_EVENT_TAGS[purpose]) + ")"

        specs = {
            "ddl_end": (self.names.ddl_end_trigger, "ddl_command_end", tags("ddl_end"), "ddl_end"),
            "sql_drop": (self.names.sql_drop_trigger, "sql_drop", tags("sql_drop"), "sql_drop"),
            "auto_rebuild": (
                self.names.auto_rebuild_trigger,
                "ddl_command_end",
                " WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'CREATE SCHEMA')",
                "auto_rebuild",
            ),
        }
        result: dict[str, tuple[Definition, str]] = {}
        for purpose, (name, event, when, fn) in specs.items():
            trigger = sql.Identifier(name)
            create = self._fmt(
                "CREATE EVENT TRIGGER {name} ON " + event + when + " EXECUTE FUNCTION {S}.{fn}()",
                name=trigger,
                fn=sql.Identifier(fn),
            )
            comment = comment_for(f"{create} {fns[fn].comment}")
            comment_sql = self._fmt(
                "COMMENT ON EVENT TRIGGER {name} IS {c}", name=trigger, c=sql.Literal(comment)
            )
            drop = self._fmt("DROP EVENT TRIGGER IF EXISTS {name}", name=trigger)
            result[purpose] = (Definition("event_trigger", name, create, comment_sql, comment), drop)
        return result

    # -- calls -------------------------------------------------------------------------------------

    def call(self, function: str, *args: Any) -> str:
        """``SELECT * FROM <schema>.<function>(args...)`` with every argument a literal."""
        return self._fmt(
            "SELECT * FROM {S}.{fn}({args})",
            fn=sql.Identifier(function),
            args=sql.SQL(", ").join(sql.Literal(a) for a in args),
        )

    def drop_trigger(self, trigger: str, table_schema: str, table: str) -> str:
        """``DROP TRIGGER IF EXISTS`` one trigger."""
        return self.render(
            sql.SQL("DROP TRIGGER IF EXISTS {tg} ON {s}.{t}").format(
                tg=sql.Identifier(trigger), s=sql.Identifier(table_schema), t=sql.Identifier(table)
            )
        )

    def uninstall_script(self) -> str:
        """Removes every object of this installer, whatever state the database is in.

        Dropping the trigger functions with CASCADE removes the table triggers
        (they depend on them); tables are dropped without CASCADE, so a user's
        view on the outbox makes the uninstall fail rather than vanish; the
        schema is dropped only if the installer created it and it is empty.
        The writer role is dropped by :meth:`Installer.uninstall` itself (it
        may still own objects in another database).
        """
        parts = [drop for _, drop in self.event_triggers().values()]
        for spec in FUNCTIONS:
            parts.append(self.drop_function(spec.name))
        for name in OBSOLETE_FUNCTIONS:
            parts.append(self.drop_function(name))
        for name in ("dead_letters", "consumer_members", "consumer_parts", "consumers", "events", "watched"):
            parts.append(self._fmt("DROP TABLE IF EXISTS {S}.{t}", t=sql.Identifier(name)))
        parts.append(
            self._do(
                template("drop_schema"),
                name=sql.Literal(self.schema),
                comment=sql.Literal(self.schema_definition().comment),
            )
        )
        return ";\n".join(parts) + ";\n"
