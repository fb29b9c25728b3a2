"""Bringing the installer's objects up to date, one by one, inside an operation's transaction.

Each ``ensure_*`` function compares an object's ``COMMENT`` hash (from the
:class:`~.catalog.State` read at the start) with what this version would
create, creates or replaces it when they differ, and says what it did as an
:class:`InstallAction`. Tables hold data: they are never re-created, only
upgraded in place. :func:`finish` is the last step of every change.
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import Cursor, check_durable_channel
from .catalog import State, has_outbox
from .reports import InstallAction
from .sql import OBSOLETE_FUNCTIONS, Definition, SqlBuilder

__all__ = [
    "action_rows",
    "ensure_base",
    "ensure_event_triggers",
    "ensure_function",
    "finish",
]


def _ensure(cur: Cursor, d: Definition, current: dict[str, str | None], key: str) -> InstallAction:
    if key in current and current[key] == d.comment:
        return InstallAction(d.kind, d.name, "unchanged")
    cur.execute(d.create)
    cur.execute(d.comment_sql)
    return InstallAction(d.kind, d.name, "replaced" if key in current else "installed")


def ensure_function(cur: Cursor, b: SqlBuilder, name: str, state: State) -> InstallAction:
    """Create or replace one of the installer's functions unless it is up to date."""
    d = b.functions()[name]
    if name in state.functions and state.functions[name] != d.comment and name in b.HELPER_FUNCTIONS:
        cur.execute(b.drop_function(name))  # its signature may have changed
    action = _ensure(cur, d, state.functions, name)
    state.functions[name] = d.comment
    return action


def _ensure_table(cur: Cursor, d: Definition, state: State) -> InstallAction:
    key = d.key
    if key in state.tables:
        # Tables hold data: never re-created. Known earlier versions are upgraded in place.
        if state.tables[key] == d.comment:
            return InstallAction("table", d.name, "unchanged")
        if not d.upgrade:
            return InstallAction(
                "table", d.name, "skipped", "exists with another definition; migrate it by hand"
            )
        cur.execute(d.upgrade)
        cur.execute(d.comment_sql)
        state.tables[key] = d.comment
        return InstallAction("table", d.name, "replaced", "upgraded in place")
    cur.execute(d.create)
    cur.execute(d.comment_sql)
    state.tables[key] = d.comment
    return InstallAction("table", d.name, "installed")


def ensure_base(cur: Cursor, b: SqlBuilder, state: State, durable: bool) -> list[InstallAction]:
    """The library schema, the registry and base functions; the outbox too if ``durable`` or present."""
    actions: list[InstallAction] = []
    schema_def = b.schema_definition()
    if state.schema_exists:
        actions.append(InstallAction("schema", b.schema, "unchanged"))
    else:
        cur.execute(schema_def.create)
        state.schema_exists = True
        actions.append(InstallAction("schema", b.schema, "installed"))
    for table in b.base_tables():
        actions.append(_ensure_table(cur, table, state))
    for name in OBSOLETE_FUNCTIONS:
        if name in state.functions:
            cur.execute(b.drop_function(name))
            del state.functions[name]
            actions.append(InstallAction("function", f"{b.schema}.{name}", "removed", "no longer used"))
    if durable or has_outbox(state):
        check_durable_channel(b.channel)
        for table in b.durable_tables():
            actions.append(_ensure_table(cur, table, state))
        for name in b.DURABLE_FUNCTIONS:
            actions.append(ensure_function(cur, b, name, state))
    for name in b.BASE_FUNCTIONS:
        actions.append(ensure_function(cur, b, name, state))
    if has_outbox(state):
        # A superuser's install hands the outbox functions to the least-privileged writer role.
        cur.execute(b.writer_role_script())
    return actions


def ensure_event_triggers(
    cur: Cursor, b: SqlBuilder, state: State, purposes: Iterable[str]
) -> list[InstallAction]:
    """The event triggers of ``purposes`` and their functions (needs a superuser)."""
    actions: list[InstallAction] = []
    triggers = b.event_triggers()
    for purpose in purposes:
        fn = purpose
        actions.append(ensure_function(cur, b, fn, state))
        d, drop = triggers[purpose]
        if state.event_triggers.get(d.name, "") == d.comment and d.name in state.event_triggers:
            actions.append(InstallAction(d.kind, d.name, "unchanged"))
            continue
        existed = d.name in state.event_triggers
        cur.execute(drop)
        cur.execute(d.create)
        cur.execute(d.comment_sql)
        state.event_triggers[d.name] = d.comment
        actions.append(InstallAction(d.kind, d.name, "replaced" if existed else "installed"))
    return actions


def finish(cur: Cursor, b: SqlBuilder) -> None:
    """Last step of every change: PUBLIC gets nothing but what auto-rebuild needs."""
    cur.execute(b.privileges_script())


def action_rows(cur: Cursor) -> list[InstallAction]:
    """The actions an installer function returned (rows of kind, name, action, reason)."""
    return [InstallAction(kind, name, action, reason) for kind, name, action, reason in cur.fetchall()]
