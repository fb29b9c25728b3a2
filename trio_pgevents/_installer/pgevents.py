"""The original pg_events' objects in a database: finding them, and removing them.

A database built by pg_events (0.1.x) holds, in the schema first on the
search path of whoever built it (usually ``public``):

- the event triggers ``pgevents_notice_alter_table`` (ddl_command_end) and
  ``pgevents_notice_drop_table`` (sql_drop), whose functions
  ``pgevents_table_alter_event()`` and ``pgevents_table_drop_event()`` notify
  ``pgevents_table_alter`` / ``pgevents_table_drop`` and then re-create a
  trigger on every table of the database (``pgevents_create_db_triggers()``)
  -- trio_pgevents' own tables included;
- a trigger ``pgevents_<schema>__<table>`` on every table, calling
  ``pgevents_data_update_notify()``.

Left in place beside trio_pgevents' triggers, every CREATE/ALTER/DROP TABLE
runs pg_events' rebuild (its nested DROP/CREATE TRIGGER statements are DDL
too), and every write is notified twice. :func:`find_pg_events` lists them
(``status()``), :func:`drop_pg_events_script` removes them
(``install(replace_pg_events=True)``): the event triggers first, then the
functions, the trigger functions with CASCADE (that removes the table
triggers: nothing but triggers can depend on a trigger function).
"""

from __future__ import annotations

from .base import Cursor
from .sql.base import TAG

__all__ = ["PG_EVENTS_EVENT_TRIGGERS", "PG_EVENTS_FUNCTIONS", "drop_pg_events_script", "find_pg_events"]

#: pg_events' event trigger names.
PG_EVENTS_EVENT_TRIGGERS = ("pgevents_notice_alter_table", "pgevents_notice_drop_table")
#: pg_events' functions (no arguments), with what each returns.
PG_EVENTS_FUNCTIONS = {
    "pgevents_table_alter_event": "event_trigger",
    "pgevents_table_drop_event": "event_trigger",
    "pgevents_data_update_notify": "trigger",
    "pgevents_create_db_triggers": "text",
}

_NAMES = ", ".join(f"'{name}'" for name in PG_EVENTS_EVENT_TRIGGERS)
#: pg_proc rows (alias p) that are pg_events' functions.
_IS_FUNCTION = (
    "p.pronargs = 0 AND (p.proname, p.prorettype) IN ("
    + ", ".join(
        f"('{name}', 'pg_catalog.{rettype}'::pg_catalog.regtype)"
        for name, rettype in PG_EVENTS_FUNCTIONS.items()
    )
    + ")"
)
#: pg_event_trigger rows (alias e, its function p) that are pg_events'.
_IS_EVENT_TRIGGER = (
    f"(e.evtname IN ({_NAMES}) "
    f"OR ({_IS_FUNCTION} AND p.prorettype = 'pg_catalog.event_trigger'::pg_catalog.regtype))"
)

_FIND = f"""
SELECT 'event_trigger', e.evtname::text, 0
  FROM pg_catalog.pg_event_trigger e JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
 WHERE {_IS_EVENT_TRIGGER}
UNION ALL
SELECT 'function', p.oid::pg_catalog.regprocedure::text,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid)::int
  FROM pg_catalog.pg_proc p
 WHERE {_IS_FUNCTION}
ORDER BY 1, 2
"""

_DROP = f"""DO {TAG}
DECLARE
    r record;
BEGIN
    FOR r IN SELECT e.evtname FROM pg_catalog.pg_event_trigger e
               JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
              WHERE {_IS_EVENT_TRIGGER}
    LOOP
        EXECUTE pg_catalog.format('DROP EVENT TRIGGER %I', r.evtname);
    END LOOP;
    FOR r IN SELECT p.oid::pg_catalog.regprocedure AS fn,
                    p.prorettype <> 'pg_catalog.text'::pg_catalog.regtype AS trigger_function
               FROM pg_catalog.pg_proc p WHERE {_IS_FUNCTION}
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s%s', r.fn,
                                  CASE WHEN r.trigger_function THEN ' CASCADE' ELSE '' END);
    END LOOP;
END
{TAG}"""


def find_pg_events(cur: Cursor) -> list[tuple[str, str]]:
    """pg_events' objects in the database, as (kind, description): read only."""
    cur.execute(_FIND)
    found: list[tuple[str, str]] = []
    for kind, name, triggers in cur.fetchall():
        found.append((kind, name))
        if triggers:
            found.append(("trigger", f"{triggers} table trigger(s) calling {name}"))
    return found


def drop_pg_events_script() -> str:
    """A DO block removing pg_events' objects, whatever of them exists (idempotent)."""
    return _DROP
