"""The SQL the installer runs: definitions rendered from ``*.sql`` beside this module, and their hashes.

Every object the installer creates carries ``trio_pgevents <hash>`` in its
``COMMENT``, where the hash is the SHA-256 of the object's rendered
definition. ``status()`` compares comments with what this module would build
now: a different comment means OUTDATED (an upgrade changed the SQL).

The bodies of the functions live in ``trio_pgevents/_installer/sql/`` as readable SQL
with ``{placeholders}``; they are rendered with ``psycopg2.sql``, so the
schema name is always a quoted identifier and every value a quoted literal
(nothing user-supplied is formatted into SQL by hand). Rendering needs a live
psycopg2 connection (quoting depends on its encoding).

Privileges (the security model, see the README's "Security" section):

- Nothing is granted to PUBLIC by default: every function has ``EXECUTE``
  revoked from PUBLIC, the schema and tables have no PUBLIC grants.
- Trigger functions run as the writer (``SECURITY INVOKER``), except
  ``outbox_row``, which appends to the outbox for writers that have no
  privilege on it. It is ``SECURITY DEFINER`` owned by a dedicated role
  (``trio_pgevents_<hash>_writer``: ``NOLOGIN``, no attribute, allowed only to
  read the registry and append to ``events``) when a superuser installs, and
  runs no code a user can define (the row is converted to JSON beforehand by
  ``outbox_capture``, as the writer).
- With auto-rebuild, the role creating a table attaches the triggers itself
  (the event trigger runs as that role), so PUBLIC gets ``USAGE`` on the
  schema, ``SELECT`` on the registry and ``EXECUTE`` on the trigger functions
  and ``trigger_specs``: none of them lets a role do more than it could.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from psycopg2 import sql

from ..._errors import ConfigurationError

__all__ = [
    "COMMENT_PREFIX",
    "FORMAT_VERSION",
    "NOTIFY_MAX_BYTES",
    "PAYLOAD_MODES",
    "SqlBuilder",
    "object_names",
]

#: Every comment the installer writes starts with this.
COMMENT_PREFIX = "trio_pgevents "
#: The payload format version (the ``v`` key).
FORMAT_VERSION = 1
#: NOTIFY payloads must be shorter than 8000 bytes (BLCKSZ - NAMEDATALEN - 128).
NOTIFY_MAX_BYTES = 7999
#: What a row event carries: the whole row, or only its primary key columns.
PAYLOAD_MODES = ("row", "keys")

_TAG = "$trio_pgevents$"
_ROW_EVENTS = "AFTER INSERT OR UPDATE OR DELETE"
#: Set by outbox_capture, read by outbox_row in the same transaction.
_STASH_SETTING = "trio_pgevents.outbox_row_{hash}"
#: Search path of every installer function that is not on a writer's hot path
#: (those qualify every name instead: a SET clause costs each write ~10%).
_PINNED_PATH = "SET search_path = pg_catalog, pg_temp"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def comment_for(definition: str) -> str:
    """The ``COMMENT`` an object with this definition carries."""
    return COMMENT_PREFIX + _digest(definition)


@cache
def _template(name: str) -> str:
    return resources.files("trio_pgevents._installer.sql").joinpath(f"{name}.sql").read_text(encoding="utf-8")


@dataclass(frozen=True)
class ObjectNames:
    """Names of the objects one installer creates (derived, never truncated)."""

    row_trigger: str
    row_out_trigger: str
    truncate_trigger: str
    ddl_end_trigger: str
    sql_drop_trigger: str
    auto_rebuild_trigger: str
    writer_role: str

    @property
    def table_triggers(self) -> tuple[str, ...]:
        """Every table trigger name an installer may create."""
        return (self.row_trigger, self.row_out_trigger, self.truncate_trigger)


def object_names(schema: str) -> ObjectNames:
    """Short names derived from a hash of the library schema.

    Trigger names never contain the table name: two tables whose long names
    share a 63-byte prefix cannot collide, and nothing is silently truncated.
    Event trigger and role names are database- or cluster-wide, so the hash
    keeps two installers (two library schemas) apart. Table triggers fire in
    name order: ``_row`` (capture) before ``_row_out`` (outbox).
    """
    h = hashlib.sha256(schema.encode("utf-8")).hexdigest()[:8]
    base = f"trio_pgevents_{h}"
    return ObjectNames(
        row_trigger=f"{base}_row",
        row_out_trigger=f"{base}_row_out",
        truncate_trigger=f"{base}_truncate",
        ddl_end_trigger=f"{base}_ddl_end",
        sql_drop_trigger=f"{base}_sql_drop",
        auto_rebuild_trigger=f"{base}_auto_rebuild",
        writer_role=f"{base}_writer",
    )


@dataclass(frozen=True)
class Definition:
    """One object's SQL: the statement that creates it and its COMMENT statement.

    ``upgrade`` (tables only) brings any earlier version of the object to this
    one in place; it is idempotent.
    """

    kind: str
    name: str
    create: str
    comment_sql: str
    comment: str
    key: str = ""
    privileges: str = ""
    upgrade: str = ""

    @property
    def sql(self) -> str:
        """Create (or upgrade), comment (and revoke from PUBLIC), as one script."""
        parts = [self.create, *([self.upgrade] if self.upgrade else []), self.comment_sql]
        if self.privileges:
            parts.append(self.privileges)
        return "".join(f"{part};\n" for part in parts)


@dataclass(frozen=True)
class _FunctionSpec:
    name: str
    signature: str
    returns: str
    template: str
    language: str = "plpgsql"
    extra: str = ""


#: Every function of an install, with its signature and options.
_FUNCTIONS = (
    _FunctionSpec("notify_row", "", "trigger", "notify_row"),
    _FunctionSpec("outbox_capture", "", "trigger", "outbox_capture"),
    _FunctionSpec("outbox_row", "", "trigger", "outbox_row", extra="SECURITY DEFINER"),
    _FunctionSpec(
        "trigger_specs",
        "p_durable boolean, p_options jsonb",
        "TABLE(tgname text, events text, level text, func text, args text, comment text)",
        "trigger_specs",
        language="sql",
        extra=f"STABLE {_PINNED_PATH}",
    ),
    _FunctionSpec(
        "watch_relation",
        "rel regclass, durable boolean, options jsonb DEFAULT '{}'",
        "TABLE(kind text, name text, action text, reason text)",
        "watch_relation",
        extra=_PINNED_PATH,
    ),
    _FunctionSpec(
        "watch_table",
        "p_schema text, p_table text, durable boolean DEFAULT false, options jsonb DEFAULT '{}'",
        "TABLE(kind text, name text, action text, reason text)",
        "watch_table",
        extra=_PINNED_PATH,
    ),
    _FunctionSpec(
        "watch_schema",
        "target text, durable boolean DEFAULT false, options jsonb DEFAULT '{}'",
        "TABLE(kind text, name text, action text, reason text)",
        "watch_schema",
        extra=_PINNED_PATH,
    ),
    _FunctionSpec(
        "unwatch_table",
        "p_schema text, p_table text",
        "TABLE(kind text, name text, action text, reason text)",
        "unwatch_table",
        extra=_PINNED_PATH,
    ),
    _FunctionSpec(
        "attach_outbox",
        "rel regclass, trigger text",
        "TABLE(tgname text)",
        "attach_outbox",
        extra=f"SECURITY DEFINER {_PINNED_PATH}",
    ),
    _FunctionSpec("ddl_end", "", "event_trigger", "ddl_end", extra=_PINNED_PATH),
    _FunctionSpec("sql_drop", "", "event_trigger", "sql_drop", extra=_PINNED_PATH),
    _FunctionSpec("auto_rebuild", "", "event_trigger", "auto_rebuild", extra=_PINNED_PATH),
)

#: Functions of earlier versions that no longer exist (dropped by ``install``).
OBSOLETE_FUNCTIONS = ("fit_payload",)


class SqlBuilder:
    """Renders the installer's SQL for one (schema, channel, include_query).

    Args:
        context: a psycopg2 connection or cursor (used only for quoting).
        schema: the library schema.
        channel: the NOTIFY channel.
        include_query: put ``current_query()`` into row payloads.
    """

    #: Functions every install has (the durable and DDL ones are created on demand).
    BASE_FUNCTIONS = (
        "notify_row",
        "trigger_specs",
        "watch_relation",
        "watch_table",
        "watch_schema",
        "unwatch_table",
    )
    DURABLE_FUNCTIONS = ("outbox_capture", "outbox_row", "attach_outbox")
    DDL_FUNCTIONS = ("ddl_end", "sql_drop")
    AUTO_REBUILD_FUNCTIONS = ("auto_rebuild",)
    #: Functions nothing depends on: replaced by DROP + CREATE (their signature may change).
    HELPER_FUNCTIONS = (
        "watch_schema",
        "watch_table",
        "unwatch_table",
        "watch_relation",
        "trigger_specs",
        "attach_outbox",
    )
    #: What PUBLIC may use once auto-rebuild is installed (the table's creator attaches
    #: triggers; outbox_row only through attach_outbox).
    AUTO_REBUILD_GRANTS = ("notify_row", "outbox_capture", "trigger_specs", "attach_outbox")
    #: SECURITY DEFINER functions, owned by the writer role (superuser installs).
    WRITER_FUNCTIONS = ("outbox_row", "attach_outbox")

    def __init__(self, context: Any, schema: str, channel: str, include_query: bool) -> None:
        self._ctx = context
        self.schema = schema
        self.channel = channel
        self.include_query = include_query
        self.names = object_names(schema)
        self.S = sql.Identifier(schema)
        self._functions: dict[str, Definition] | None = None

    # -- rendering helpers -------------------------------------------------------------------------

    def render(self, composable: sql.Composable) -> str:
        """The SQL text of ``composable`` (quoted with the connection's rules)."""
        return composable.as_string(self._ctx)

    def _fmt(self, template: str, **params: Any) -> str:
        return self.render(sql.SQL(template).format(S=self.S, **params))

    def literal(self, value: Any) -> str:
        """``value`` as a quoted SQL literal."""
        return self.render(sql.Literal(value))

    def _common(self) -> dict[str, sql.Composable]:
        names = self.names
        # Reduce a row (json in notify_row, jsonb in outbox_capture) to its key columns ``pk``.
        keys_of = (
            "(SELECT pg_catalog.{t}_object_agg(e.key, e.value) FROM pg_catalog.{t}_each({var}) e "
            "WHERE e.key OPERATOR(pg_catalog.=) ANY (pk))"
        )
        reducers = {
            f"{prefix}keys_of_{which}": sql.SQL(keys_of.format(t=t, var=f"{which}_j"))
            for prefix, t in (("", "json"), ("j", "jsonb"))
            for which in ("old", "new")
        }
        return reducers | {
            "schema": sql.Literal(self.schema),
            "channel": sql.Literal(self.channel),
            "version": sql.Literal(FORMAT_VERSION),
            "limit": sql.Literal(NOTIFY_MAX_BYTES),
            "query": sql.SQL("pg_catalog.current_query()" if self.include_query else "NULL::pg_catalog.text"),
            "stash": sql.Literal(_STASH_SETTING.format(hash=_digest(f"{self.schema}:{self.channel}"))),
            "wake": sql.Literal(self.channel + ".durable"),
            "wake_key": sql.Literal(self.wake_lock_key()),
            "row_name": sql.Literal(names.row_trigger),
            "row_out_name": sql.Literal(names.row_out_trigger),
            "trunc_name": sql.Literal(names.truncate_trigger),
            "row_events": sql.Literal(_ROW_EVENTS),
            "all_names": sql.SQL("ARRAY[{}]::text[]").format(
                sql.SQL(", ").join(sql.Literal(n) for n in names.table_triggers)
            ),
            "own": sql.Literal(self._own_trigger_pattern()),
            "writer": sql.Literal(names.writer_role),
            "comment_prefix": sql.Literal(COMMENT_PREFIX),
            "key_columns": sql.SQL(_template("key_columns").strip()),
        }

    def wake_lock_key(self) -> int:
        """The advisory lock that lets one notifying transaction at a time send the wake-up."""
        digest = hashlib.sha256(f"trio_pgevents:wake:{self.schema}:{self.channel}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _body(self, template: str, params: dict[str, sql.Composable]) -> str:
        return self.render(sql.SQL(_template(template)).format(S=self.S, **params))

    def _function(self, spec: _FunctionSpec, params: dict[str, sql.Composable]) -> Definition:
        if spec.name == "trigger_specs":
            params = params | {"p_durable": sql.SQL("p_durable"), "p_options": sql.SQL("p_options")}
        body = self._body(spec.template, params)
        if _TAG in body:
            raise ConfigurationError(
                f"schema or channel name contains {_TAG!r}, which the installer uses as a quote"
            )
        qualified = self._fmt("{S}.{name}", name=sql.Identifier(spec.name))
        extra = f"{spec.extra} " if spec.extra else ""
        create = (
            f"CREATE OR REPLACE FUNCTION {qualified}({spec.signature}) RETURNS {spec.returns} "
            f"LANGUAGE {spec.language} {extra}AS {_TAG}{body}{_TAG}"
        )
        comment = comment_for(create)
        types = ", ".join(_arg_type(arg) for arg in spec.signature.split(",")) if spec.signature else ""
        target = f"FUNCTION {qualified}({types})"
        return Definition(
            "function",
            f"{self.schema}.{spec.name}({types})",
            create,
            f"COMMENT ON {target} IS {self.literal(comment)}",
            comment,
            spec.name,
            privileges=f"REVOKE ALL ON {target} FROM PUBLIC",
        )

    # -- functions ---------------------------------------------------------------------------------

    def functions(self) -> dict[str, Definition]:
        """Every function definition, by name (built once).

        ``trigger_specs`` embeds the comments of the trigger functions, so a
        changed trigger function makes every table's triggers OUTDATED.
        """
        if self._functions is None:
            params = self._common()
            built: dict[str, Definition] = {}
            for spec in _FUNCTIONS:
                if spec.name == "trigger_specs":
                    params = params | {
                        "notify_comment": sql.Literal(built["notify_row"].comment),
                        "capture_comment": sql.Literal(built["outbox_capture"].comment),
                        "outbox_comment": sql.Literal(built["outbox_row"].comment),
                    }
                built[spec.name] = self._function(spec, params)
            self._functions = built
        return self._functions

    def trigger_specs_query(self) -> str:
        """``trigger_specs``' query, to run directly (params ``durable``, ``options``).

        Used by ``status()``, which must work even when the function is missing
        or outdated in the database.
        """
        params = self._common() | {
            "notify_comment": sql.Literal(self.functions()["notify_row"].comment),
            "capture_comment": sql.Literal(self.functions()["outbox_capture"].comment),
            "outbox_comment": sql.Literal(self.functions()["outbox_row"].comment),
            "p_durable": sql.SQL("@DURABLE@"),
            "p_options": sql.SQL("@OPTIONS@"),
        }
        text = self._body("trigger_specs", params).replace("%", "%%")
        return text.replace("@DURABLE@", "%(durable)s::pg_catalog.bool").replace(
            "@OPTIONS@", "%(options)s::pg_catalog.jsonb"
        )

    def drop_function(self, name: str) -> str:
        """Drop every overload of one of the installer's functions (signatures change)."""
        return self._fmt(
            _template("drop_function"),
            nsp=sql.Literal(self.schema),
            name=sql.Literal(name),
            tag_open=sql.SQL(_TAG),
            tag_close=sql.SQL(_TAG),
        )

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
        return self._fmt(
            """DO {tag_open}
BEGIN
    REVOKE ALL ON SCHEMA {S} FROM PUBLIC;
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {S} FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA {S} FROM PUBLIC;
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger e WHERE e.evtname OPERATOR(pg_catalog.=) {auto}) THEN
        GRANT USAGE ON SCHEMA {S} TO PUBLIC;
        GRANT SELECT ON {S}.watched TO PUBLIC;
        """
            + base
            + """;
        IF pg_catalog.to_regprocedure({outbox}) IS NOT NULL THEN
            """
            + durable
            + """;
        END IF;
    END IF;
END
{tag_close}""",
            auto=sql.Literal(self.names.auto_rebuild_trigger),
            outbox=sql.Literal(self.render(sql.SQL("{}.outbox_row()").format(self.S))),
            tag_open=sql.SQL(_TAG),
            tag_close=sql.SQL(_TAG),
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
        role = self.names.writer_role
        comment = comment_for(f"role {role}")
        return self._fmt(
            _template("writer_role"),
            name=sql.Literal(role),
            role=sql.Identifier(role),
            comment=sql.Literal(comment),
            tag_open=sql.SQL(_TAG),
            tag_close=sql.SQL(_TAG),
        )

    def drop_writer_role_script(self) -> str:
        """Drop the writer role if it is ours and nothing else uses it (run in a savepoint)."""
        role = self.names.writer_role
        return self._fmt(
            _template("drop_writer_role"),
            name=sql.Literal(role),
            role=sql.Identifier(role),
            comment=sql.Literal(comment_for(f"role {role}")),
            tag_open=sql.SQL(_TAG),
            tag_close=sql.SQL(_TAG),
        )

    # -- DDL event triggers ------------------------------------------------------------------------

    def _own_trigger_pattern(self) -> str:
        # LIKE pattern of our table triggers' identities ("<name> on <table>"); "_" escaped.
        prefix = self.names.row_trigger.rsplit("_", 1)[0] + "_"
        return prefix.replace("_", "\\_") + "%"

    # -- schema and tables ---------------------------------------------------------------------------

    def schema_definition(self) -> Definition:
        """The library schema, created (and marked as ours) only when absent. No PUBLIC grant."""
        comment = comment_for(f"schema {self.schema}")
        create = self._fmt(
            """DO {tag_open}
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) {name}) THEN
        CREATE SCHEMA {S};
        COMMENT ON SCHEMA {S} IS {comment};
    END IF;
END
{tag_close}""",
            name=sql.Literal(self.schema),
            comment=sql.Literal(comment),
            tag_open=sql.SQL(_TAG),
            tag_close=sql.SQL(_TAG),
        )
        return Definition("schema", self.schema, create, "SELECT 1", comment)

    def _table(self, name: str, columns: str, extra: str = "", upgrade: str = "") -> Definition:
        create = self._fmt(
            "CREATE TABLE IF NOT EXISTS {S}.{t} (" + columns + ")",
            t=sql.Identifier(name),
        )
        comment = comment_for(create)
        comment_sql = self.render(
            sql.SQL("COMMENT ON TABLE {S}.{t} IS {c}").format(
                S=self.S, t=sql.Identifier(name), c=sql.Literal(comment)
            )
        )
        if extra:
            create = create + ";\n" + self._fmt(extra, t=sql.Identifier(name))
        return Definition(
            "table",
            f"{self.schema}.{name}",
            create,
            comment_sql,
            comment,
            name,
            upgrade=self._fmt(upgrade, t=sql.Identifier(name)) if upgrade else "",
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
                "consumers",
                "name text PRIMARY KEY, last_txid xid8 NOT NULL DEFAULT '0', "
                "last_id bigint NOT NULL DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now(), "
                "updated_at timestamptz NOT NULL DEFAULT now()",
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
        """
        fns = self.functions()
        specs = {
            "ddl_end": (self.names.ddl_end_trigger, "ddl_command_end", "", "ddl_end"),
            "sql_drop": (self.names.sql_drop_trigger, "sql_drop", "", "sql_drop"),
            "auto_rebuild": (
                self.names.auto_rebuild_trigger,
                "ddl_command_end",
                " WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')",
                "auto_rebuild",
            ),
        }
        result: dict[str, tuple[Definition, str]] = {}
        for purpose, (name, event, when, fn) in specs.items():
            create = self._fmt(
                "CREATE EVENT TRIGGER {name} ON " + event + when + " EXECUTE FUNCTION {S}.{fn}()",
                name=sql.Identifier(name),
                fn=sql.Identifier(fn),
            )
            comment = comment_for(f"{create} {fns[fn].comment}")
            comment_sql = self.render(
                sql.SQL("COMMENT ON EVENT TRIGGER {name} IS {c}").format(
                    name=sql.Identifier(name), c=sql.Literal(comment)
                )
            )
            drop = self._fmt("DROP EVENT TRIGGER IF EXISTS {name}", name=sql.Identifier(name))
            result[purpose] = (Definition("event_trigger", name, create, comment_sql, comment), drop)
        return result

    # -- calls -------------------------------------------------------------------------------------

    def call(self, function: str, *args: Any) -> str:
        """``SELECT * FROM <schema>.<function>(args...)`` with every argument a literal."""
        return self.render(
            sql.SQL("SELECT * FROM {S}.{fn}({args})").format(
                S=self.S,
                fn=sql.Identifier(function),
                args=sql.SQL(", ").join(sql.Literal(a) for a in args),
            )
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
        for spec in _FUNCTIONS:
            parts.append(self.drop_function(spec.name))
        for name in OBSOLETE_FUNCTIONS:
            parts.append(self.drop_function(name))
        for name in ("dead_letters", "consumers", "events", "watched"):
            parts.append(self._fmt("DROP TABLE IF EXISTS {S}.{t}", t=sql.Identifier(name)))
        parts.append(
            self._fmt(
                _template("drop_schema"),
                name=sql.Literal(self.schema),
                comment=sql.Literal(self.schema_definition().comment),
                tag_open=sql.SQL(_TAG),
                tag_close=sql.SQL(_TAG),
            )
        )
        return ";\n".join(parts) + ";\n"


def _arg_type(arg: str) -> str:
    # "table_schema text" / "durable boolean DEFAULT false" -> the type alone.
    words = arg.strip().split()
    if "DEFAULT" in words:
        words = words[: words.index("DEFAULT")]
    return " ".join(words[1:])
