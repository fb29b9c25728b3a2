"""What every piece of the installer's SQL stands on.

The constants of the payload format, the ``COMMENT`` hashes, loading the
``*.sql`` templates beside this module, the names of the objects an installer
creates (:func:`object_names`), :class:`Definition` (one object's SQL) and
:class:`Renderer`, which quotes with a live connection's rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

from psycopg2 import sql

__all__ = [
    "COMMENT_PREFIX",
    "DDL_EVENTS",
    "DDL_EVENT_TAGS",
    "DEFAULT_DDL_EVENTS",
    "NOTIFY_MAX_BYTES",
    "PAYLOAD_MODES",
    "TAG",
    "Definition",
    "DdlEvents",
    "ObjectNames",
    "Renderer",
    "comment_for",
    "digest",
    "object_names",
    "template",
    "user_schema_sql",
]

#: Every comment the installer writes starts with this.
COMMENT_PREFIX = "trio_pgevents "
#: NOTIFY payloads must be shorter than 8000 bytes (BLCKSZ - NAMEDATALEN - 128).
NOTIFY_MAX_BYTES = 7999
#: What a row event carries: the whole row, or only its primary key columns.
PAYLOAD_MODES = ("row", "keys")
#: Which DDL events the event triggers send: ``"tables"`` (pg_events' stream: CREATE,
#: ALTER and DROP TABLE; a drop is one event listing what was dropped along with it) or
#: ``"all"`` (every DDL command, and every dropped object an event of its own).
DdlEvents = Literal["tables", "all"]
DDL_EVENTS: tuple[DdlEvents, ...] = ("tables", "all")
DEFAULT_DDL_EVENTS: DdlEvents = "tables"
#: The command tags each event trigger fires on with ``"tables"`` (pg_events' own lists;
#: DROP TABLE reports nothing at ddl_command_end, so it is left out there).
DDL_EVENT_TAGS: dict[str, tuple[str, ...]] = {
    "ddl_end": ("CREATE TABLE", "ALTER TABLE"),
    "sql_drop": ("ALTER TABLE", "DROP TABLE"),
}
#: The dollar quote of every function body and DO block.
TAG = "$trio_pgevents$"

#: The package holding the ``*.sql`` templates (this module's).
_TEMPLATES = "trio_pgevents._installer.sql"


def digest(text: str) -> str:
    """A short SHA-256 of ``text`` (16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def comment_for(definition: str) -> str:
    """The ``COMMENT`` an object with this definition carries."""
    return COMMENT_PREFIX + digest(definition)


#: A pg_namespace row (alias ``n``) is a user schema: not the system's, not an
#: extension's, not the library schema (``{library}``, a quoted literal) nor another
#: installer's (its comment starts with ``trio_pgevents ``).
_USER_SCHEMA = (
    "(n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' AND n.nspname <> {library} "
    "AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d "
    "WHERE d.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.objid = n.oid "
    "AND d.deptype = 'e') "
    "AND coalesce(pg_catalog.obj_description(n.oid, 'pg_namespace'), '') NOT LIKE 'trio\\_pgevents %')"
)


def user_schema_sql(library: str) -> str:
    """SQL: the pg_namespace row ``n`` is a user schema (``library``: the library schema, quoted).

    What ``watch_all_schemas`` watches, and ``trio-pgevents build`` by default.
    """
    return _USER_SCHEMA.format(library=library)


@cache
def template(name: str) -> str:
    """The text of the template ``<name>.sql``, exactly as stored (its hash counts)."""
    return resources.files(_TEMPLATES).joinpath(f"{name}.sql").read_text(encoding="utf-8")


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
    def operation_triggers(self) -> dict[str, tuple[str, str]]:
        """A filtered watch's row triggers, one per operation: (capture or notify, outbox).

        A ``when`` condition may name ``OLD`` or ``NEW``, which an INSERT or a
        DELETE trigger cannot have: each operation gets a trigger of its own.
        """
        base = self.row_trigger.removesuffix("_row")
        return {
            op: (f"{base}_{op.lower()}", f"{base}_{op.lower()}_out") for op in ("INSERT", "UPDATE", "DELETE")
        }

    @property
    def table_triggers(self) -> tuple[str, ...]:
        """Every table trigger name an installer may create."""
        split = tuple(name for pair in self.operation_triggers.values() for name in pair)
        return (self.row_trigger, self.row_out_trigger, self.truncate_trigger, *split)


def object_names(schema: str) -> ObjectNames:
    """Short names derived from a hash of the library schema.

    Trigger names never contain the table name: two tables whose long names
    share a 63-byte prefix cannot collide, and nothing is silently truncated.
    Event trigger and role names are database- or cluster-wide, so the hash
    keeps two installers (two library schemas) apart. Table triggers fire in
    name order: ``_row`` (capture) before ``_row_out`` (outbox), and a
    filtered watch's ``_update`` before ``_update_out``.
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


class Renderer:
    """Quotes SQL for one (schema, channel, include_query) with a connection's rules.

    The arguments are :class:`~.builder.SqlBuilder`'s.
    """

    def __init__(self, context: Any, schema: str, channel: str, include_query: bool) -> None:
        self._ctx = context
        self.schema = schema
        self.channel = channel
        self.include_query = include_query
        self.names = object_names(schema)
        self.S = sql.Identifier(schema)

    def render(self, composable: sql.Composable) -> str:
        """The SQL text of ``composable`` (quoted with the connection's rules)."""
        return composable.as_string(self._ctx)

    def _fmt(self, template: str, **params: Any) -> str:
        return self.render(sql.SQL(template).format(S=self.S, **params))

    def _do(self, template: str, **params: Any) -> str:
        """A DO block (or any text quoted with ``{tag_open}``/``{tag_close}``), rendered."""
        return self._fmt(template, tag_open=sql.SQL(TAG), tag_close=sql.SQL(TAG), **params)

    def literal(self, value: Any) -> str:
        """``value`` as a quoted SQL literal."""
        return self.render(sql.Literal(value))
