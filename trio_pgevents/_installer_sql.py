"""The SQL the installer runs: text builders, and the hash of every definition.

Every object the installer creates carries ``trio_pgevents <hash>`` in its
``COMMENT``, where the hash is the SHA-256 of the object's rendered
definition. ``status()`` compares comments with what this module would build
now: a different comment means OUTDATED (an upgrade changed the SQL).

Most of the logic that attaches triggers lives in PL/pgSQL functions in the
library schema (``watch_relation``, ``watch_table``, ``watch_schema``,
``unwatch_table``): the Python methods and the SQL for migrations call the
same code, so they cannot disagree. The auto-rebuild event trigger runs inside
the user's ``CREATE TABLE``, so for a new table it runs the same statements
(built once, by :meth:`SqlBuilder._attach_script`) without the checks.

Everything is rendered with a live psycopg2 connection, because identifiers
and literals are quoted by ``psycopg2.sql`` (which needs the connection's
encoding); nothing user-supplied is ever formatted into SQL text by hand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from ._errors import ConfigurationError

__all__ = [
    "COMMENT_PREFIX",
    "FORMAT_VERSION",
    "NOTIFY_MAX_BYTES",
    "SqlBuilder",
    "object_names",
]

#: Every comment the installer writes starts with this.
COMMENT_PREFIX = "trio_pgevents "
#: The payload format version (the ``v`` key); the decoder checks it.
FORMAT_VERSION = 1
#: NOTIFY payloads must be shorter than 8000 bytes (BLCKSZ - NAMEDATALEN - 128).
NOTIFY_MAX_BYTES = 7999

_TAG = "$trio_pgevents$"
_ROW_EVENTS = "AFTER INSERT OR UPDATE OR DELETE"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def comment_for(definition: str) -> str:
    """The ``COMMENT`` an object with this definition carries."""
    return COMMENT_PREFIX + _digest(definition)


@dataclass(frozen=True)
class ObjectNames:
    """Names of the objects one installer creates (derived, never truncated)."""

    row_trigger: str
    truncate_trigger: str
    ddl_end_trigger: str
    sql_drop_trigger: str
    auto_rebuild_trigger: str


def object_names(schema: str) -> ObjectNames:
    """Short names derived from a hash of the library schema.

    Trigger names never contain the table name: two tables whose long names
    share a 63-byte prefix cannot collide, and nothing is silently truncated.
    Event trigger names are database-wide, so the hash keeps two installers
    (two library schemas) apart.
    """
    h = hashlib.sha256(schema.encode("utf-8")).hexdigest()[:8]
    base = f"trio_pgevents_{h}"
    return ObjectNames(
        row_trigger=f"{base}_row",
        truncate_trigger=f"{base}_truncate",
        ddl_end_trigger=f"{base}_ddl_end",
        sql_drop_trigger=f"{base}_sql_drop",
        auto_rebuild_trigger=f"{base}_auto_rebuild",
    )


@dataclass(frozen=True)
class Definition:
    """One object's SQL: the statement that creates it and its COMMENT statement."""

    kind: str
    name: str
    create: str
    comment_sql: str
    comment: str
    key: str = ""

    @property
    def sql(self) -> str:
        """Create and comment, as one script."""
        return f"{self.create};\n{self.comment_sql};\n"


class SqlBuilder:
    """Renders the installer's SQL for one (schema, channel, include_query).

    Args:
        context: a psycopg2 connection or cursor (used only for quoting).
        schema: the library schema.
        channel: the NOTIFY channel.
        include_query: put ``current_query()`` into row payloads.
    """

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

    def _function(self, name: str, signature: str, returns: str, body: str, *, extra: str = "") -> Definition:
        if _TAG in body:
            raise ConfigurationError(
                f"schema or channel name contains {_TAG!r}, which the installer uses as a quote"
            )
        qualified = self._fmt("{S}.{name}", name=sql.Identifier(name))
        create = (
            f"CREATE OR REPLACE FUNCTION {qualified}({signature}) RETURNS {returns} "
            f"LANGUAGE plpgsql {extra}AS {_TAG}{body}{_TAG}"
        )
        comment = comment_for(create)
        types = ", ".join(_arg_type(arg) for arg in signature.split(",")) if signature else ""
        comment_sql = f"COMMENT ON FUNCTION {qualified}({types}) IS {self.render(sql.Literal(comment))}"
        return Definition("function", f"{self.schema}.{name}({types})", create, comment_sql, comment, name)

    # -- the payload ---------------------------------------------------------------------------------

    def _query_expr(self) -> str:
        return "pg_catalog.current_query()" if self.include_query else "NULL::pg_catalog.text"

    def _row_function(self) -> Definition:
        body = self._fmt(
            """
DECLARE
    payload text;
BEGIN
    -- One expression on the hot path. OLD is NULL for INSERT, NEW for DELETE, both for
    -- TRUNCATE (statement level), and row_to_json(NULL) is NULL.
    payload := pg_catalog.json_build_object(
        'v', {version}, 'kind', 'row', 'table_schema', TG_TABLE_SCHEMA, 'table_name', TG_TABLE_NAME,
        'session_user', session_user, 'method', TG_OP, 'old_data', pg_catalog.row_to_json(OLD),
        'new_data', pg_catalog.row_to_json(NEW), 'query', {query}, 'truncated', false)::text;
    IF pg_catalog.octet_length(payload) > {limit} THEN
        payload := {S}.fit_payload(TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, TG_RELID,
                                   pg_catalog.row_to_json(OLD), pg_catalog.row_to_json(NEW), {query});
    END IF;
    PERFORM pg_catalog.pg_notify({channel}, payload);
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    -- Last resort: the user's write must commit, whatever went wrong here.
    BEGIN
        PERFORM pg_catalog.pg_notify({channel}, pg_catalog.json_build_object(
            'v', {version}, 'kind', 'row', 'table_schema', TG_TABLE_SCHEMA, 'table_name', TG_TABLE_NAME,
            'session_user', session_user, 'method', TG_OP, 'old_data', NULL, 'new_data', NULL,
            'query', NULL, 'truncated', true, 'error', pg_catalog.left(SQLERRM, 1000))::text);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'trio_pgevents: event for %.% not sent: %', TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM;
    END;
    RETURN NULL;
END
""",
            query=sql.SQL(self._query_expr()),
            version=sql.Literal(FORMAT_VERSION),
            limit=sql.Literal(NOTIFY_MAX_BYTES),
            channel=sql.Literal(self.channel),
        )
        return self._function("notify_row", "", "trigger", body)

    def _fit_function(self) -> Definition:
        # Slow path only (payload over the limit): cut the query first, then reduce
        # the row to its primary-key columns, then leave the row out.
        body = self._fmt(
            """
DECLARE
    pk text[];
    stage int;
    o json;
    n json;
    base text;
    cut text;
    payload text;
    excess int;
    quoted int;
BEGIN
    FOR stage IN 1..3 LOOP
        IF stage = 1 THEN
            o := old_j; n := new_j;
        ELSIF stage = 2 THEN
            SELECT pg_catalog.array_agg(a.attname::text) INTO pk
              FROM pg_catalog.pg_index i
              JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = relid AND i.indisprimary;
            IF pk IS NULL THEN CONTINUE; END IF;
            o := (SELECT pg_catalog.json_object_agg(e.key, e.value) FROM pg_catalog.json_each(old_j) e
                   WHERE e.key = ANY (pk));
            n := (SELECT pg_catalog.json_object_agg(e.key, e.value) FROM pg_catalog.json_each(new_j) e
                   WHERE e.key = ANY (pk));
        ELSE
            o := NULL; n := NULL;
        END IF;
        base := pg_catalog.json_build_object(
            'v', {version}, 'kind', 'row', 'table_schema', t_schema, 'table_name', t_name,
            'session_user', session_user, 'method', op, 'old_data', o, 'new_data', n,
            'query', NULL, 'truncated', true)::text;
        IF pg_catalog.octet_length(base) > {limit} THEN
            CONTINUE;
        END IF;
        IF q IS NULL THEN
            RETURN base;
        END IF;
        -- Put back as much of the query as fits (each pass removes at least the excess).
        cut := pg_catalog.left(q, {limit} - pg_catalog.octet_length(base));
        LOOP
            payload := pg_catalog.json_build_object(
                'v', {version}, 'kind', 'row', 'table_schema', t_schema, 'table_name', t_name,
                'session_user', session_user, 'method', op, 'old_data', o, 'new_data', n,
                'query', cut, 'truncated', true)::text;
            excess := pg_catalog.octet_length(payload) - {limit};
            EXIT WHEN excess <= 0;
            -- Shrink in proportion to the bytes each character takes (UTF-8, JSON escapes).
            quoted := pg_catalog.octet_length(pg_catalog.to_json(cut)::text);
            cut := pg_catalog.left(cut, GREATEST(0, LEAST(pg_catalog.length(cut) - 1,
                (pg_catalog.length(cut)::bigint * (quoted - excess) / quoted)::int)));
        END LOOP;
        RETURN payload;
    END LOOP;
    RETURN base;
END
""",
            version=sql.Literal(FORMAT_VERSION),
            limit=sql.Literal(NOTIFY_MAX_BYTES),
        )
        return self._function(
            "fit_payload",
            "t_schema name, t_name name, op text, relid oid, old_j json, new_j json, q text",
            "text",
            body,
        )

    def _outbox_function(self) -> Definition:
        body = self._fmt(
            """
BEGIN
    INSERT INTO {S}.events (channel, payload) VALUES ({channel}, pg_catalog.jsonb_build_object(
        'v', {version}, 'kind', 'row', 'table_schema', TG_TABLE_SCHEMA, 'table_name', TG_TABLE_NAME,
        'session_user', session_user, 'method', TG_OP,
        'old_data', pg_catalog.to_jsonb(OLD), 'new_data', pg_catalog.to_jsonb(NEW),
        'query', {query}, 'truncated', false));
    -- Identical for the whole transaction: the server folds them into one notification.
    -- Only one transaction at a time sends it: a NOTIFY takes a database-wide lock at
    -- commit, held through the WAL flush, which serialises every notifying commit
    -- (measured: 16 single-row writers fall to ~0.2x of their TPS with fsync=on). One
    -- that finds another notifying skips; durable consumers re-read shortly after every
    -- wake-up and every poll_interval, so its events are read all the same.
    IF pg_catalog.pg_try_advisory_xact_lock({wake_key}) THEN
        PERFORM pg_catalog.pg_notify({wake}, pg_catalog.pg_current_xact_id()::pg_catalog.text);
    END IF;
    RETURN NULL;
END
""",
            channel=sql.Literal(self.channel),
            wake=sql.Literal(self.channel + ".durable"),
            wake_key=sql.Literal(
                int.from_bytes(
                    hashlib.sha256(f"trio_pgevents:wake:{self.schema}:{self.channel}".encode()).digest()[:8],
                    "big",
                    signed=True,
                )
            ),
            version=sql.Literal(FORMAT_VERSION),
            query=sql.SQL(self._query_expr()),
        )
        # SECURITY DEFINER: writers need no privilege on the outbox table. No SET search_path
        # (it cost every write ~15% in a pgbench run here): instead the body resolves nothing
        # through the caller's search_path - every function, type and table is
        # schema-qualified, and it uses no operator (OLD/NEW are NULL when absent, and
        # to_jsonb(NULL) is NULL).
        return self._function("outbox_row", "", "trigger", body, extra="SECURITY DEFINER ")

    # -- DDL event triggers ------------------------------------------------------------------------

    def _own_trigger_pattern(self) -> str:
        # LIKE pattern of our table triggers' identities ("<name> on <table>"); "_" escaped.
        prefix = self.names.row_trigger.rsplit("_", 1)[0] + "_"
        return prefix.replace("_", "\\_") + "%"

    def _ddl_end_function(self) -> Definition:
        body = self._fmt(
            """
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM pg_catalog.pg_event_trigger_ddl_commands() LOOP
        -- Our own triggers (attached by auto-rebuild or watch_*) are not the user's DDL.
        CONTINUE WHEN r.object_type = 'trigger' AND r.object_identity LIKE {own};
        BEGIN
            PERFORM pg_catalog.pg_notify({channel}, pg_catalog.json_build_object(
                'v', {version}, 'kind', 'ddl', 'classid', r.classid, 'objid', r.objid,
                'objsubid', r.objsubid, 'command_tag', r.command_tag, 'object_type', r.object_type,
                'object_name', (pg_catalog.pg_identify_object(r.classid, r.objid, r.objsubid)).name,
                'object_identity', r.object_identity, 'schema_name', r.schema_name,
                'original', NULL::boolean, 'normal', NULL::boolean, 'in_extension', r.in_extension,
                'is_temporary', NULL::boolean, 'session_user', session_user)::text);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trio_pgevents: DDL event not sent: %', SQLERRM;
        END;
    END LOOP;
END
""",
            channel=sql.Literal(self.channel),
            version=sql.Literal(FORMAT_VERSION),
            own=sql.Literal(self._own_trigger_pattern()),
        )
        return self._function("ddl_end", "", "event_trigger", body)

    def _sql_drop_function(self) -> Definition:
        body = self._fmt(
            """
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        CONTINUE WHEN r.object_type = 'trigger' AND r.object_identity LIKE {own};
        BEGIN
            PERFORM pg_catalog.pg_notify({channel}, pg_catalog.json_build_object(
                'v', {version}, 'kind', 'ddl', 'classid', r.classid, 'objid', r.objid,
                'objsubid', r.objsubid, 'command_tag', TG_TAG, 'object_type', r.object_type,
                'object_name', r.object_name, 'object_identity', r.object_identity,
                'schema_name', r.schema_name, 'original', r.original, 'normal', r.normal,
                'in_extension', NULL::boolean, 'is_temporary', r.is_temporary,
                'session_user', session_user)::text);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trio_pgevents: DDL event not sent: %', SQLERRM;
        END;
    END LOOP;
END
""",
            channel=sql.Literal(self.channel),
            version=sql.Literal(FORMAT_VERSION),
            own=sql.Literal(self._own_trigger_pattern()),
        )
        return self._function("sql_drop", "", "event_trigger", body)

    def _auto_rebuild_function(self) -> Definition:
        body = self._fmt(
            """
DECLARE
    r record;
    mode text;
    explicit boolean;
    label text;
BEGIN
    FOR r IN
        SELECT c.objid, n.nspname, cl.relname, cl.relispartition
          FROM pg_catalog.pg_event_trigger_ddl_commands() c
          JOIN pg_catalog.pg_class cl ON cl.oid = c.objid
          JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
         WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND c.objsubid = 0
           AND cl.relkind IN ('r', 'p') AND n.nspname <> {schema}
    LOOP
        -- Whatever happens here, the user's DDL must not fail because of us.
        BEGIN
            -- The table's own entry (if any) wins over its schema's.
            SELECT w.mode, w.table_name <> '' INTO mode, explicit FROM {S}.watched w
             WHERE w.schema_name = r.nspname AND w.table_name IN (r.relname, '')
             ORDER BY w.table_name DESC LIMIT 1;
            IF FOUND AND mode <> 'excluded' AND (explicit OR NOT r.relispartition) THEN
                IF r.relispartition THEN
                    PERFORM {S}.watch_relation(r.objid, mode = 'durable');
                ELSE
                    -- A table just created has no triggers: attach them in one go (this
                    -- runs inside the user's CREATE TABLE, so it is kept lean).
                    label := pg_catalog.format('%I.%I', r.nspname, r.relname);
                    IF mode = 'durable' THEN
                        EXECUTE pg_catalog.format({durable_script}, label);
                    ELSE
                        EXECUTE pg_catalog.format({notify_script}, label);
                    END IF;
                END IF;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trio_pgevents: could not watch new table %.%: %', r.nspname, r.relname, SQLERRM;
        END;
    END LOOP;
END
""",
            schema=sql.Literal(self.schema),
            notify_script=sql.Literal(self._attach_script(durable=False)),
            durable_script=sql.Literal(self._attach_script(durable=True)),
        )
        # SECURITY DEFINER: a role that may create tables in a watched schema but cannot
        # read the registry still gets its new tables watched (the function does nothing else).
        return self._function(
            "auto_rebuild",
            "",
            "event_trigger",
            body,
            extra="SECURITY DEFINER SET search_path = pg_catalog, pg_temp ",
        )

    def _attach_script(self, durable: bool) -> str:
        """A ``format()`` template creating and commenting both triggers on table ``%1$s``.

        The same statements as ``watch_relation`` runs for a table without triggers.
        """
        fn = self._fmt("{S}.{fn}()", fn=sql.Identifier("outbox_row" if durable else "notify_row"))
        statements = []
        for name, events, level, truncate in (
            (self.names.row_trigger, _ROW_EVENTS, "ROW", False),
            (self.names.truncate_trigger, "AFTER TRUNCATE", "STATEMENT", True),
        ):
            trigger = self.render(sql.Identifier(name)).replace("%", "%%")
            comment = self.render(sql.Literal(self.trigger_comment(durable, truncate))).replace("%", "%%")
            statements.append(
                f"CREATE TRIGGER {trigger} {events} ON %1$s FOR EACH {level} "
                f"EXECUTE FUNCTION {fn.replace('%', '%%')}"
            )
            statements.append(f"COMMENT ON TRIGGER {trigger} ON %1$s IS {comment}")
        return "; ".join(statements)

    # -- attaching triggers (shared by Python, migrations and auto-rebuild) --------------------------

    def trigger_comment(self, durable: bool, truncate: bool) -> str:
        """The comment a table trigger carries (depends on its function's definition)."""
        fn = self.functions()["outbox_row" if durable else "notify_row"]
        name = self.names.truncate_trigger if truncate else self.names.row_trigger
        events = "AFTER TRUNCATE FOR EACH STATEMENT" if truncate else f"{_ROW_EVENTS} FOR EACH ROW"
        return comment_for(f"{name} {events} {fn.comment}")

    def _watch_relation_function(self) -> Definition:
        body = self._fmt(
            """
DECLARE
    c record;
    t record;
    spec record;
    label text;
    fn text;
BEGIN
    SELECT cl.relkind, cl.relname, n.nspname INTO c
      FROM pg_catalog.pg_class cl JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
     WHERE cl.oid = rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = pg_catalog.format('relation %s does not exist', rel);
    END IF;
    label := pg_catalog.format('%I.%I', c.nspname, c.relname);
    kind := 'table'; name := label;
    IF c.relkind NOT IN ('r', 'p') THEN
        action := 'skipped';
        reason := CASE c.relkind
            WHEN 'v' THEN 'a view: it has no rows of its own; watch the tables it reads'
            WHEN 'm' THEN 'a materialized view: row triggers are not possible on it'
            WHEN 'f' THEN 'a foreign table: its changes happen on another server'
            ELSE 'not a table (relkind ' || c.relkind::text || ')' END;
        RETURN NEXT;
        RETURN;
    END IF;
    IF c.nspname = {schema} THEN
        action := 'skipped'; reason := 'belongs to the library schema';
        RETURN NEXT;
        RETURN;
    END IF;
    fn := pg_catalog.format('%I.%I()', {schema}, CASE WHEN durable THEN 'outbox_row' ELSE 'notify_row' END);
    FOR spec IN
        SELECT * FROM (VALUES
            ({row_name}, {row_events}, 'ROW', CASE WHEN durable THEN {row_durable} ELSE {row_notify} END),
            ({trunc_name}, 'AFTER TRUNCATE', 'STATEMENT',
             CASE WHEN durable THEN {trunc_durable} ELSE {trunc_notify} END)
        ) AS v(tgname, events, level, want)
    LOOP
        kind := 'trigger';
        name := spec.tgname || ' on ' || label;
        reason := NULL;
        SELECT tg.tgparentid, d.description INTO t
          FROM pg_catalog.pg_trigger tg
          LEFT JOIN pg_catalog.pg_description d
            ON d.objoid = tg.oid AND d.classoid = 'pg_catalog.pg_trigger'::pg_catalog.regclass
         WHERE tg.tgrelid = rel AND tg.tgname = spec.tgname;
        IF FOUND AND t.tgparentid <> 0 THEN
            action := 'skipped'; reason := 'inherited from the partitioned parent table';
        ELSIF FOUND AND t.description IS NOT DISTINCT FROM spec.want THEN
            action := 'unchanged';
        ELSE
            IF FOUND THEN
                -- Same transaction as the CREATE below: no write can slip between them.
                EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', spec.tgname, label);
                action := 'replaced';
            ELSE
                action := 'installed';
            END IF;
            EXECUTE pg_catalog.format('CREATE TRIGGER %I %s ON %s FOR EACH %s EXECUTE FUNCTION %s',
                                      spec.tgname, spec.events, label, spec.level, fn);
            EXECUTE pg_catalog.format('COMMENT ON TRIGGER %I ON %s IS %L', spec.tgname, label, spec.want);
        END IF;
        RETURN NEXT;
    END LOOP;
END
""",
            schema=sql.Literal(self.schema),
            row_name=sql.Literal(self.names.row_trigger),
            trunc_name=sql.Literal(self.names.truncate_trigger),
            row_events=sql.Literal(_ROW_EVENTS),
            row_durable=sql.Literal(self.trigger_comment(True, False)),
            row_notify=sql.Literal(self.trigger_comment(False, False)),
            trunc_durable=sql.Literal(self.trigger_comment(True, True)),
            trunc_notify=sql.Literal(self.trigger_comment(False, True)),
        )
        return self._function(
            "watch_relation",
            "rel pg_catalog.regclass, durable boolean",
            "TABLE(kind text, name text, action text, reason text)",
            body,
        )

    def _watch_table_function(self) -> Definition:
        body = self._fmt(
            """
DECLARE
    rel oid;
    want text := CASE WHEN durable THEN 'durable' ELSE 'notify' END;
BEGIN
    SELECT cl.oid INTO rel FROM pg_catalog.pg_class cl
      JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
     WHERE n.nspname = p_schema AND cl.relname = p_table;
    IF rel IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = pg_catalog.format('table %I.%I does not exist', p_schema, p_table);
    END IF;
    INSERT INTO {S}.watched AS w (schema_name, table_name, mode) VALUES (p_schema, p_table, want)
        ON CONFLICT ON CONSTRAINT watched_pkey DO UPDATE SET mode = EXCLUDED.mode
        WHERE w.mode IS DISTINCT FROM EXCLUDED.mode;
    RETURN QUERY SELECT * FROM {S}.watch_relation(rel, durable);
END
"""
        )
        return self._function(
            "watch_table",
            "p_schema text, p_table text, durable boolean DEFAULT false",
            "TABLE(kind text, name text, action text, reason text)",
            body,
        )

    def _watch_schema_function(self) -> Definition:
        body = self._fmt(
            """
DECLARE
    nsp oid;
    r record;
    want text := CASE WHEN durable THEN 'durable' ELSE 'notify' END;
BEGIN
    SELECT n.oid INTO nsp FROM pg_catalog.pg_namespace n WHERE n.nspname = target;
    IF nsp IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_schema_name',
            MESSAGE = pg_catalog.format('schema %I does not exist', target);
    END IF;
    IF target = {schema} THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('schema %I is the library schema and cannot be watched', target);
    END IF;
    INSERT INTO {S}.watched AS w (schema_name, table_name, mode) VALUES (target, '', want)
        ON CONFLICT ON CONSTRAINT watched_pkey DO UPDATE SET mode = EXCLUDED.mode
        WHERE w.mode IS DISTINCT FROM EXCLUDED.mode;
    FOR r IN
        SELECT cl.oid, w.mode FROM pg_catalog.pg_class cl
          LEFT JOIN {S}.watched w ON w.schema_name = target AND w.table_name = cl.relname
         WHERE cl.relnamespace = nsp AND cl.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT cl.relispartition
         ORDER BY cl.relname
    LOOP
        CONTINUE WHEN r.mode = 'excluded';
        RETURN QUERY SELECT * FROM {S}.watch_relation(r.oid, coalesce(r.mode, want) = 'durable');
    END LOOP;
END
""",
            schema=sql.Literal(self.schema),
        )
        return self._function(
            "watch_schema",
            "target text, durable boolean DEFAULT false",
            "TABLE(kind text, name text, action text, reason text)",
            body,
        )

    def _unwatch_table_function(self) -> Definition:
        body = self._fmt(
            """
DECLARE
    rel oid;
    tg text;
    label text := pg_catalog.format('%I.%I', p_schema, p_table);
BEGIN
    DELETE FROM {S}.watched w WHERE w.schema_name = p_schema AND w.table_name = p_table;
    IF EXISTS (SELECT FROM {S}.watched w WHERE w.schema_name = p_schema AND w.table_name = '') THEN
        -- The schema stays watched: remember that this one table is not.
        INSERT INTO {S}.watched (schema_name, table_name, mode) VALUES (p_schema, p_table, 'excluded');
    END IF;
    SELECT cl.oid INTO rel FROM pg_catalog.pg_class cl
      JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
     WHERE n.nspname = p_schema AND cl.relname = p_table;
    FOREACH tg IN ARRAY ARRAY[{row_name}, {trunc_name}] LOOP
        kind := 'trigger'; name := tg || ' on ' || label; reason := NULL;
        IF rel IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.pg_trigger t
                                        WHERE t.tgrelid = rel AND t.tgname = tg AND t.tgparentid = 0) THEN
            EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', tg, label);
            action := 'removed';
        ELSE
            action := 'unchanged'; reason := 'not installed';
        END IF;
        RETURN NEXT;
    END LOOP;
END
""",
            row_name=sql.Literal(self.names.row_trigger),
            trunc_name=sql.Literal(self.names.truncate_trigger),
        )
        return self._function(
            "unwatch_table",
            "p_schema text, p_table text",
            "TABLE(kind text, name text, action text, reason text)",
            body,
        )

    # -- all functions -------------------------------------------------------------------------------

    #: Functions every install has (the durable and DDL ones are created on demand).
    BASE_FUNCTIONS = (
        "notify_row",
        "fit_payload",
        "watch_relation",
        "watch_table",
        "watch_schema",
        "unwatch_table",
    )
    DURABLE_FUNCTIONS = ("outbox_row",)
    DDL_FUNCTIONS = ("ddl_end", "sql_drop")
    AUTO_REBUILD_FUNCTIONS = ("auto_rebuild",)

    def functions(self) -> dict[str, Definition]:
        """Every function definition, by name (built once)."""
        if self._functions is None:
            self._functions = {}
            for build in (
                self._row_function,
                self._fit_function,
                self._outbox_function,
                self._ddl_end_function,
                self._sql_drop_function,
                self._auto_rebuild_function,
            ):
                d = build()
                self._functions[d.key] = d
            for build in (
                self._watch_relation_function,
                self._watch_table_function,
                self._watch_schema_function,
                self._unwatch_table_function,
            ):
                d = build()
                self._functions[d.key] = d
        return self._functions

    # -- schema and tables ---------------------------------------------------------------------------

    def schema_definition(self) -> Definition:
        """The library schema, created (and marked as ours) only when absent."""
        comment = comment_for(f"schema {self.schema}")
        create = self._fmt(
            """DO {tag_open}
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = {name}) THEN
        CREATE SCHEMA {S};
        COMMENT ON SCHEMA {S} IS {comment};
        -- Writers of watched tables call its functions (the tables stay private).
        GRANT USAGE ON SCHEMA {S} TO PUBLIC;
    END IF;
END
{tag_close}""",
            name=sql.Literal(self.schema),
            comment=sql.Literal(comment),
            tag_open=sql.SQL(_TAG),
            tag_close=sql.SQL(_TAG),
        )
        return Definition("schema", self.schema, create, "SELECT 1", comment)

    def _table(self, name: str, columns: str, extra: str = "") -> Definition:
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
        return Definition("table", f"{self.schema}.{name}", create, comment_sql, comment, name)

    def base_tables(self) -> list[Definition]:
        """The registry of watched schemas and tables."""
        return [
            self._table(
                "watched",
                "schema_name text NOT NULL, table_name text NOT NULL DEFAULT '', "
                "mode text NOT NULL CHECK (mode IN ('notify', 'durable', 'excluded')), "
                "created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (schema_name, table_name)",
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

    #: Functions nothing depends on: replaced by DROP + CREATE (their signature may change).
    HELPER_FUNCTIONS = ("watch_schema", "watch_table", "unwatch_table", "watch_relation", "fit_payload")

    def drop_function(self, name: str) -> str:
        """``DROP FUNCTION IF EXISTS`` one of the installer's functions (by its signature)."""
        # Definition names are "<schema>.<function>(<argument types>)".
        types = self.functions()[name].name[len(f"{self.schema}.{name}(") : -1]
        return self._fmt("DROP FUNCTION IF EXISTS {S}.{fn}(" + types + ")", fn=sql.Identifier(name))

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
        """
        parts = [drop for _, drop in self.event_triggers().values()]
        for name in ("auto_rebuild", "ddl_end", "sql_drop", "notify_row", "outbox_row"):
            parts.append(self._fmt("DROP FUNCTION IF EXISTS {S}.{fn}() CASCADE", fn=sql.Identifier(name)))
        for name in self.HELPER_FUNCTIONS:
            parts.append(self.drop_function(name))
        for name in ("dead_letters", "consumers", "events", "watched"):
            parts.append(self._fmt("DROP TABLE IF EXISTS {S}.{t}", t=sql.Identifier(name)))
        parts.append(
            self._fmt(
                """DO {tag_open}
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace n
                 JOIN pg_catalog.pg_description d
                   ON d.objoid = n.oid AND d.classoid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                WHERE n.nspname = {name} AND d.description = {comment})
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend dep
                        WHERE dep.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                          AND dep.refobjid = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = {name}))
    THEN
        DROP SCHEMA {S};
    END IF;
END
{tag_close}""",
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
