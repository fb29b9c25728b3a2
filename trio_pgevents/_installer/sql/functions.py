"""The installer's functions: which there are, and their definitions rendered from the templates.

Each function's body is a template ``<name>.sql`` beside this module; its
``CREATE OR REPLACE FUNCTION`` statement is hashed into its ``COMMENT``.
``trigger_specs`` embeds the comments of the trigger functions, so a changed
trigger function makes every table's triggers OUTDATED.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from ..._errors import ConfigurationError
from ..._payload import DDL, ROW, object_sql
from .base import (
    COMMENT_PREFIX,
    DDL_EVENTS,
    DEFAULT_DDL_EVENTS,
    NOTIFY_MAX_BYTES,
    TAG,
    DdlEvents,
    Definition,
    Renderer,
    comment_for,
    digest,
    template,
    user_schema_sql,
)

__all__ = ["FILTER_ERROR", "FUNCTIONS", "OBSOLETE_FUNCTIONS", "FunctionSql"]

#: The SQLSTATE a watch's filter raises when it does not fit a table (bad SQL in ``when``,
#: a column that does not exist...): ``ConfigurationError``, not ``InstallError``.
FILTER_ERROR = "TPF01"
#: Set by outbox_capture, read by outbox_row in the same transaction.
_STASH_SETTING = "trio_pgevents.outbox_row_{hash}"
#: Search path of every installer function that is not on a writer's hot path
#: (those qualify every name instead: a SET clause costs each write ~10%).
_PINNED_PATH = "SET search_path = pg_catalog, pg_temp"
#: What a row trigger knows of every row event.
_TRIGGER = {
    "table_schema": "TG_TABLE_SCHEMA",
    "table_name": "TG_TABLE_NAME",
    "session_user": "session_user",
    "method": "TG_OP",
}


@dataclass(frozen=True)
class _FunctionSpec:
    name: str
    signature: str
    returns: str
    template: str
    language: str = "plpgsql"
    extra: str = ""


#: Every function of an install, with its signature and options.
FUNCTIONS = (
    _FunctionSpec("notify_row", "", "trigger", "notify_row"),
    _FunctionSpec("outbox_capture", "", "trigger", "outbox_capture"),
    _FunctionSpec("outbox_row", "", "trigger", "outbox_row", extra="SECURITY DEFINER"),
    _FunctionSpec(
        "trigger_specs",
        "p_durable boolean, p_options jsonb",
        "TABLE(tgname text, events text, level text, func text, args text, comment text, cond text)",
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
        "watch_all_schemas",
        "durable boolean DEFAULT false, options jsonb DEFAULT '{}'",
        "TABLE(kind text, name text, action text, reason text)",
        "watch_all_schemas",
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


def _arg_type(arg: str) -> str:
    # "table_schema text" / "durable boolean DEFAULT false" -> the type alone.
    words = arg.strip().split()
    if "DEFAULT" in words:
        words = words[: words.index("DEFAULT")]
    return " ".join(words[1:])


def _trigger_comments(functions: dict[str, Definition]) -> dict[str, sql.Composable]:
    """What ``trigger_specs`` embeds: the comments of the trigger functions it attaches."""
    return {
        "notify_comment": sql.Literal(functions["notify_row"].comment),
        "capture_comment": sql.Literal(functions["outbox_capture"].comment),
        "outbox_comment": sql.Literal(functions["outbox_row"].comment),
    }


class FunctionSql(Renderer):
    """The function definitions of one installer (see :class:`SqlBuilder` for the arguments)."""

    #: Functions every install has (the durable and DDL ones are created on demand).
    BASE_FUNCTIONS = (
        "notify_row",
        "trigger_specs",
        "watch_relation",
        "watch_table",
        "watch_schema",
        "watch_all_schemas",
        "unwatch_table",
    )
    DURABLE_FUNCTIONS = ("outbox_capture", "outbox_row", "attach_outbox")
    DDL_FUNCTIONS = ("ddl_end", "sql_drop")
    AUTO_REBUILD_FUNCTIONS = ("auto_rebuild",)
    #: Functions nothing depends on: replaced by DROP + CREATE (their signature may change).
    HELPER_FUNCTIONS = (
        "watch_all_schemas",
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
        super().__init__(context, schema, channel, include_query)
        self._functions: dict[str, Definition] | None = None
        self._ddl_events: DdlEvents = DEFAULT_DDL_EVENTS

    @property
    def ddl_events(self) -> DdlEvents:
        """Which DDL events the event triggers send (see :data:`DDL_EVENTS`)."""
        return self._ddl_events

    @ddl_events.setter
    def ddl_events(self, value: DdlEvents) -> None:
        if value not in DDL_EVENTS:
            raise ConfigurationError(
                f"ddl_events must be one of {', '.join(map(repr, DDL_EVENTS))}, not {value!r}"
            )
        if value != self._ddl_events:
            self._ddl_events = value
            self._functions = None  # sql_drop's body depends on it

    def _common(self) -> dict[str, sql.Composable]:
        names = self.names
        # Reduce a row (json in notify_row, jsonb in outbox_capture) to its key columns ``pk``.
        keys_of = (
            "(SELECT pg_catalog.{t}_object_agg(e.key, e.value) FROM pg_catalog.{t}_each({var}) e "
            "WHERE e.key OPERATOR(pg_catalog.=) ANY (pk))"
        )
        reducers: dict[str, sql.Composable] = {
            f"{prefix}keys_of_{which}": sql.SQL(keys_of.format(t=t, var=f"{which}_j"))
            for prefix, t in (("", "json"), ("j", "jsonb"))
            for which in ("old", "new")
        }
        return (
            reducers
            | {
                "schema": sql.Literal(self.schema),
                "channel": sql.Literal(self.channel),
                "limit": sql.Literal(NOTIFY_MAX_BYTES),
                "query": sql.SQL(
                    "pg_catalog.current_query()" if self.include_query else "NULL::pg_catalog.text"
                ),
                "stash": sql.Literal(_STASH_SETTING.format(hash=digest(f"{self.schema}:{self.channel}"))),
                "wake": sql.Literal(self.channel + ".durable"),
                "wake_key": sql.Literal(self.wake_lock_key()),
                "row_name": sql.Literal(names.row_trigger),
                "row_out_name": sql.Literal(names.row_out_trigger),
                "trunc_name": sql.Literal(names.truncate_trigger),
                "split_names": sql.SQL("(VALUES {})").format(
                    sql.SQL(", ").join(
                        sql.SQL("({}, {}, {})").format(sql.Literal(op), sql.Literal(row), sql.Literal(out))
                        for op, (row, out) in names.operation_triggers.items()
                    )
                ),
                "filter_error": sql.Literal(FILTER_ERROR),
                "all_names": sql.SQL("ARRAY[{}]::text[]").format(
                    sql.SQL(", ").join(sql.Literal(n) for n in names.table_triggers)
                ),
                "own": sql.Literal(self._own_trigger_pattern()),
                "writer": sql.Literal(names.writer_role),
                "comment_prefix": sql.Literal(COMMENT_PREFIX),
                "key_columns": sql.SQL(template("key_columns").strip()),
                "user_schema": sql.SQL(user_schema_sql(self.literal(self.schema))),
                "every_object": sql.SQL("true" if self._ddl_events == "all" else "false"),
            }
            | {name: sql.SQL(text) for name, text in self._payloads().items()}
        )

    def _payloads(self) -> dict[str, str]:
        """The events the functions build, as SQL from the one payload format (``_payload``)."""
        query = "pg_catalog.current_query()" if self.include_query else "NULL::pg_catalog.text"
        rows = {"old_data": "old_j", "new_data": "new_j"}
        stashed = {
            "old_data": "stash OPERATOR(pg_catalog.->) 'o'",
            "new_data": "stash OPERATOR(pg_catalog.->) 'n'",
        }
        ddl = {
            "classid": "r.classid",
            "objid": "r.objid",
            "objsubid": "r.objsubid",
            "object_type": "r.object_type",
            "object_identity": "r.object_identity",
            "schema_name": "r.schema_name",
            "session_user": "session_user",
        }
        dropped = ddl | {
            "command_tag": "TG_TAG",
            "object_name": "r.object_name",
            "original": "r.original",
            "normal": "r.normal",
            "is_temporary": "r.is_temporary",
        }
        return {
            # notify_row: the whole row; its keys only; cut to fit NOTIFY (without, then with
            # as much of the query as fits); and the last resort when building failed.
            "row_whole": object_sql(ROW, _TRIGGER | rows | {"query": "q", "truncated": "false"}),
            "row_keys_only": object_sql(ROW, _TRIGGER | rows | {"truncated": "false", "keys_only": "true"}),
            "row_cut": object_sql(ROW, _TRIGGER | rows | {"truncated": "true"}),
            "row_cut_query": object_sql(ROW, _TRIGGER | rows | {"query": "cut", "truncated": "true"}),
            "row_failed": object_sql(
                ROW, _TRIGGER | {"truncated": "true", "error": "pg_catalog.left(SQLERRM, 1000)"}
            ),
            # outbox_row: the stashed row, plus why it is missing, or that it is keys only.
            "outbox_row": object_sql(
                ROW, _TRIGGER | stashed | {"query": query, "truncated": "note IS NOT NULL"}, jsonb=True
            ),
            "outbox_failed": object_sql(ROW, {"error": "note"}, jsonb=True, header=False),
            "outbox_keys_only": object_sql(
                ROW, {"keys_only": "true", "query": "NULL::pg_catalog.text"}, jsonb=True, header=False
            ),
            # ddl_end and sql_drop: what each event trigger function can know.
            "ddl_command": object_sql(
                DDL,
                ddl
                | {
                    "command_tag": "r.command_tag",
                    "object_name": "(pg_catalog.pg_identify_object(r.classid, r.objid, r.objsubid)).name",
                    "in_extension": "r.in_extension",
                },
            ),
            "ddl_dropped": object_sql(DDL, dropped),
            "ddl_dropped_with": object_sql(DDL, dropped | {"dependents": "kept", "truncated": "cut"}),
        }

    def wake_lock_key(self) -> int:
        """The advisory lock that lets one notifying transaction at a time send the wake-up."""
        hashed = hashlib.sha256(f"trio_pgevents:wake:{self.schema}:{self.channel}".encode()).digest()
        return int.from_bytes(hashed[:8], "big", signed=True)

    def _own_trigger_pattern(self) -> str:
        # LIKE pattern of our table triggers' identities ("<name> on <table>"); "_" escaped.
        prefix = self.names.row_trigger.rsplit("_", 1)[0] + "_"
        return prefix.replace("_", "\\_") + "%"

    def _body(self, name: str, params: dict[str, sql.Composable]) -> str:
        return self.render(sql.SQL(template(name)).format(S=self.S, **params))

    def _function(self, spec: _FunctionSpec, params: dict[str, sql.Composable]) -> Definition:
        if spec.name == "trigger_specs":
            params = params | {"p_durable": sql.SQL("p_durable"), "p_options": sql.SQL("p_options")}
        body = self._body(spec.template, params)
        if TAG in body:
            raise ConfigurationError(
                f"schema or channel name contains {TAG!r}, which the installer uses as a quote"
            )
        qualified = self._fmt("{S}.{name}", name=sql.Identifier(spec.name))
        extra = f"{spec.extra} " if spec.extra else ""
        create = (
            f"CREATE OR REPLACE FUNCTION {qualified}({spec.signature}) RETURNS {spec.returns} "
            f"LANGUAGE {spec.language} {extra}AS {TAG}{body}{TAG}"
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

    def functions(self) -> dict[str, Definition]:
        """Every function definition, by name (built once).

        ``trigger_specs`` embeds the comments of the trigger functions, so a
        changed trigger function makes every table's triggers OUTDATED.
        """
        if self._functions is None:
            params = self._common()
            built: dict[str, Definition] = {}
            for spec in FUNCTIONS:
                if spec.name == "trigger_specs":
                    params = params | _trigger_comments(built)
                built[spec.name] = self._function(spec, params)
            self._functions = built
        return self._functions

    def trigger_specs_query(self) -> str:
        """``trigger_specs``' query, to run directly (params ``durable``, ``options``).

        Used by ``status()``, which must work even when the function is missing
        or outdated in the database.
        """
        params = (
            self._common()
            | _trigger_comments(self.functions())
            | {"p_durable": sql.SQL("@DURABLE@"), "p_options": sql.SQL("@OPTIONS@")}
        )
        text = self._body("trigger_specs", params).replace("%", "%%")
        return text.replace("@DURABLE@", "%(durable)s::pg_catalog.bool").replace(
            "@OPTIONS@", "%(options)s::pg_catalog.jsonb"
        )

    def drop_function(self, name: str) -> str:
        """Drop every overload of one of the installer's functions (signatures change)."""
        return self._do(template("drop_function"), nsp=sql.Literal(self.schema), name=sql.Literal(name))
