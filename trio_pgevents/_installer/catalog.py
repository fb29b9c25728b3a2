"""Reading what the database holds now, and comparing it with what this version would install.

Every operation starts from :func:`read_state` (the library schema's
functions and tables, and the event triggers, each with its ``COMMENT``
hash). :func:`read_status` turns it into an :class:`InstallStatus`:
:func:`table_statuses` compares each watched table's triggers with what
``trigger_specs`` would attach, :func:`privilege_problems` lists grants that
let a role do more than it should. Nothing here changes the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from psycopg2 import sql

from .base import Cursor
from .pgevents import find_pg_events
from .reports import InstallStatus, ObjectState, TableStatus
from .sql import DDL_EVENTS, DEFAULT_DDL_EVENTS, DdlEvents, SqlBuilder
from .sql.base import user_schema_sql

__all__ = [
    "TABLE_GONE",
    "State",
    "durable_exists",
    "has_outbox",
    "match_ddl_events",
    "privilege_problems",
    "read_state",
    "read_status",
    "table_statuses",
]


#: The purposes of the DDL event triggers.
_DDL = ("ddl_end", "sql_drop")

#: The reason of an ORPHANED registry entry whose table was dropped (prune forgets it).
TABLE_GONE = "the table no longer exists"


@dataclass
class State:
    """What the library schema holds now (read at the start of an operation)."""

    schema_exists: bool = False
    functions: dict[str, str | None] = field(default_factory=dict)
    tables: dict[str, str | None] = field(default_factory=dict)
    event_triggers: dict[str, str | None] = field(default_factory=dict)


def has_outbox(state: State) -> bool:
    """Whether durable mode was installed (its function or its events table is there)."""
    return "outbox_row" in state.functions or "events" in state.tables


def durable_exists(cur: Cursor, schema: str) -> bool:
    """Whether the outbox tables a durable consumer needs (events, consumers) exist."""
    cur.execute(
        "SELECT pg_catalog.to_regclass(%s) IS NOT NULL AND pg_catalog.to_regclass(%s) IS NOT NULL",
        (
            sql.SQL("{}.events").format(sql.Identifier(schema)).as_string(cur),
            sql.SQL("{}.consumers").format(sql.Identifier(schema)).as_string(cur),
        ),
    )
    row = cur.fetchone()
    return bool(row and row[0])


def read_state(cur: Cursor, b: SqlBuilder) -> State:
    """What the library schema holds now, and which of this installer's event triggers exist."""
    state = State()
    cur.execute("SELECT true FROM pg_catalog.pg_namespace WHERE nspname = %s", (b.schema,))
    state.schema_exists = cur.fetchone() is not None
    if state.schema_exists:
        cur.execute(
            """SELECT p.proname, d.description FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
               LEFT JOIN pg_catalog.pg_description d
                 ON d.objoid = p.oid AND d.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass
              WHERE n.nspname = %s""",
            (b.schema,),
        )
        state.functions = {name: comment for name, comment in cur.fetchall()}
        cur.execute(
            """SELECT c.relname, d.description FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_catalog.pg_description d
                 ON d.objoid = c.oid AND d.objsubid = 0
                AND d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
              WHERE n.nspname = %s AND c.relkind IN ('r', 'p')""",
            (b.schema,),
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


def match_ddl_events(b: SqlBuilder, state: State) -> DdlEvents | None:
    """Which ``ddl_events`` the installed DDL event triggers were made with (None: neither).

    Leaves ``b`` rendering that choice (the default when none matches).
    """
    for mode in DDL_EVENTS:
        b.ddl_events = mode
        triggers = b.event_triggers()
        if all(state.event_triggers.get(triggers[p][0].name) == triggers[p][0].comment for p in _DDL):
            return mode
    b.ddl_events = DEFAULT_DDL_EVENTS
    return None


def _object_state(wanted: dict[str, str], current: dict[str, str | None]) -> ObjectState:
    if any(name not in current for name in wanted):
        return "MISSING"
    if any(current[name] != comment for name, comment in wanted.items()):
        return "OUTDATED"
    return "INSTALLED"


def read_status(cur: Cursor, b: SqlBuilder) -> InstallStatus:
    """Everything ``status()`` reports but the change streams."""
    state = read_state(cur, b)
    ddl_events = match_ddl_events(b, state)
    fns = b.functions()
    base = {name: fns[name].comment for name in b.BASE_FUNCTIONS}
    base_tables = {d.key: d.comment for d in b.base_tables()}
    function_state = _object_state(base, state.functions)
    if function_state == "INSTALLED" and any(t not in state.tables for t in base_tables):
        function_state = "MISSING"

    durable_state: ObjectState | None = None
    if has_outbox(state):
        durable_state = _object_state(
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
        result = _object_state(wanted, state.event_triggers)
        if result == "INSTALLED":
            result = _object_state({p: fns[p].comment for p in purposes}, state.functions)
        return result

    tables = table_statuses(cur, b, state)
    all_schemas = False
    if "watched" in state.tables:
        cur.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {S}.watched WHERE schema_name = '' AND table_name = '')")
            .format(S=b.S)
            .as_string(cur)
        )
        all_schemas = bool(cur.fetchone()[0])
    return InstallStatus(
        function_state=function_state,
        ddl_state=event_state(_DDL),
        ddl_events=ddl_events,
        tables=tables,
        auto_rebuild_state=event_state(("auto_rebuild",)),
        durable_state=durable_state,
        problems=privilege_problems(cur, b, state) if state.schema_exists else (),
        all_schemas=all_schemas,
        pg_events=tuple(
            name if kind == "trigger" else f"{kind.replace('_', ' ')} {name}"
            for kind, name in find_pg_events(cur)
        ),
    )


def privilege_problems(cur: Cursor, b: SqlBuilder, state: State) -> tuple[str, ...]:
    """What in the library schema lets a role do more than it should (see docs/security.md)."""
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
        (b.schema,),
    )
    for name, definer, owner, owner_super, public in cur.fetchall():
        if public and name not in public_functions:
            problems.append(f"EXECUTE on {b.schema}.{name}() is granted to PUBLIC")
        if definer and name not in b.WRITER_FUNCTIONS:
            problems.append(f"{b.schema}.{name}() is SECURITY DEFINER")
        if definer and owner_super:
            problems.append(
                f"{b.schema}.{name}() is SECURITY DEFINER owned by superuser {owner!r} "
                f"(install() hands it to {b.names.writer_role!r})"
            )
    cur.execute(
        """SELECT a.privilege_type FROM pg_catalog.pg_namespace n,
                  pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
            WHERE n.nspname = %s AND a.grantee = 0 ORDER BY 1""",
        (b.schema,),
    )
    for (privilege,) in cur.fetchall():
        if privilege != "USAGE" or not auto_rebuild:
            problems.append(f"{privilege} on schema {b.schema} is granted to PUBLIC")
    cur.execute(
        """SELECT c.relname, a.privilege_type FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
                  pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
            WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'S') AND a.grantee = 0 ORDER BY 1, 2""",
        (b.schema,),
    )
    for table, privilege in cur.fetchall():
        if not (auto_rebuild and table == "watched" and privilege == "SELECT"):
            problems.append(f"{privilege} on {b.schema}.{table} is granted to PUBLIC")
    return tuple(problems)


def _skips_underscore(options: str) -> bool:
    """Whether a schema watch's options (JSON text) leave out tables named ``_...``."""
    try:
        return json.loads(options).get("skip_underscore") is True
    except (ValueError, AttributeError):
        return False


def table_statuses(cur: Cursor, b: SqlBuilder, state: State) -> tuple[TableStatus, ...]:
    """Each watched table's triggers compared with what this version attaches, and orphans."""
    registry: list[tuple[str, str, str, str]] = []
    if "watched" in state.tables:
        # to_jsonb(w): works before the registry's upgrade too (0.1.0 had no options).
        cur.execute(
            sql.SQL(
                "SELECT w.schema_name, w.table_name, w.mode, "
                "coalesce((pg_catalog.to_jsonb(w) -> 'options')::text, '{{}}') FROM {S}.watched w"
            )
            .format(S=b.S)
            .as_string(cur)
        )
        registry = list(cur.fetchall())
    schema_modes = {s: (m, o) for s, t, m, o in registry if t == "" and s != ""}
    table_modes = {(s, t): (m, o) for s, t, m, o in registry if t != ""}
    # The "every user schema" entry: it covers each user schema that has no entry of its own.
    everywhere = next(((m, o) for s, t, m, o in registry if s == "" and t == ""), None)
    # Relations that matter: every one in a watched schema, and explicitly registered ones.
    user_schema = user_schema_sql(b.literal(b.schema)).replace("%", "%%")
    cur.execute(
        f"""SELECT n.nspname, c.relname, c.relkind, c.relispartition,
                   %s AND NOT (n.nspname = ANY (%s)) AND {user_schema}
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND (((n.nspname = ANY (%s) OR (%s AND {user_schema})) AND NOT c.relispartition)
                    OR (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[])))""",
        (
            everywhere is not None,
            list(schema_modes),
            list(schema_modes),
            everywhere is not None,
            [s for s, _ in table_modes],
            [t for _, t in table_modes],
        ),
    )
    rows = cur.fetchall()
    relations = {(s, t): (kind, part) for s, t, kind, part, _ in rows}
    # In a schema watched only as one of every user schema: one created after the watch.
    late = {(s, t) for s, t, _, _, later in rows if later}
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
        entry = table_modes.get((s, t))
        if entry is None and not part:
            entry = everywhere if (s, t) in late else schema_modes.get(s)
            if entry is not None and t.startswith("_") and _skips_underscore(entry[1]):
                entry = None  # pg_events' rule: left out unless watched by name
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
            result.append(TableStatus(s, t, "ORPHANED", TABLE_GONE, durable))
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
        if s == b.schema:
            result.append(TableStatus(s, t, "SKIPPED", "belongs to the library schema", durable))
            continue
        have = found.get((s, t), {})
        want = wanted(durable, options)
        problems: list[str] = []
        for tgname, comment in want.items():
            if tgname not in have:
                problems.append(f"{tgname} missing")
            elif not have[tgname][0] and have[tgname][2] != comment:
                problems.append(f"{tgname} was made by another version, or for another mode or filter")
        for tgname, (inherited, fn_name, _) in have.items():
            if tgname not in want and not inherited:
                problems.append(f"{tgname} (calling {fn_name}()) is not used in {mode} mode")
        if not have and (s, t) in late:
            reason = (
                f"schema {s} was created after every user schema was watched: auto-rebuild "
                "attaches new tables' triggers, or the next install() / trio-pgevents build"
            )
            result.append(TableStatus(s, t, "MISSING", reason, durable))
        elif not have:
            result.append(TableStatus(s, t, "MISSING", "watched but no trigger installed", durable))
        elif problems:
            result.append(TableStatus(s, t, "OUTDATED", "; ".join(problems), durable))
        else:
            result.append(TableStatus(s, t, "INSTALLED", None, durable))
    for (s, t), have in sorted(found.items()):
        if (s, t) in watched or all(inherited for inherited, _, _ in have.values()):
            continue
        durable = any(fn in b.DURABLE_FUNCTIONS for _, fn, _ in have.values())
        result.append(TableStatus(s, t, "ORPHANED", "triggers left on a table that is not watched", durable))
    return tuple(result)
