"""A change stream's publication: which tables, operations, columns and rows it publishes.

:func:`ensure_publication` checks that every table can be published without
breaking its writers, then creates the publication, or checks that an
existing one is exactly what is asked (it is never altered: a publication of
that name made for something else is an error).

Filters (:class:`PublicationFilters`) map to the publication's definition:
``operations`` to ``WITH (publish = ...)``, ``columns`` to a column list and
``where`` to a row filter on every table (PostgreSQL 15 or later for those
two). Postgres refuses an UPDATE or DELETE on a table whose publication's
column list leaves out, or whose row filter reads, a column outside the
table's replica identity: the writer's statement fails. So both are checked
here, inside the transaction that creates the publication, and refused
before anything is committed.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from .._errors import ConfigurationError, ReplicationError
from .._filters import OPERATIONS, check_columns, check_condition, check_operations
from .._secrets import get_logger

__all__ = ["NO_FILTERS", "PublicationFilters", "ensure_publication"]

logger = get_logger("trio_pgevents")

Tables = list[tuple[str, str]] | None

#: Column lists and row filters in publications: PostgreSQL 15.
FILTERS_SINCE = 150000


@dataclass(frozen=True)
class PublicationFilters:
    """What a change stream's publication keeps (see :func:`~trio_pgevents.open_change_stream`)."""

    operations: tuple[str, ...] = OPERATIONS
    columns: tuple[str, ...] | None = None
    where: str | None = None

    @classmethod
    def parse(cls, operations: object, columns: object, where: object, tables: Tables) -> PublicationFilters:
        """The filters, checked (:class:`ConfigurationError` naming the bad option)."""
        cols = check_columns("columns", columns)
        cond = check_condition("where", where)
        if tables is None and (cols is not None or cond is not None):
            raise ConfigurationError(
                "columns and where need tables=[...]: a publication FOR ALL TABLES has no column "
                "list or row filter"
            )
        return cls(check_operations("operations", operations) or OPERATIONS, cols, cond)

    @property
    def publish(self) -> str:
        """The ``publish`` parameter: ``"insert, update"``..."""
        return ", ".join(op.lower() for op in self.operations)

    @property
    def needs_identity(self) -> bool:
        """Whether UPDATE or DELETE are published (they need each table's replica identity)."""
        return "UPDATE" in self.operations or "DELETE" in self.operations

    @property
    def per_table(self) -> bool:
        """Whether there is a column list or a row filter (PostgreSQL 15+)."""
        return self.columns is not None or self.where is not None


NO_FILTERS = PublicationFilters()

#: Per table: its replica identity ('d', 'f', 'i', 'n'), the identity's columns, every column.
_TABLE_SQL = """
SELECT c.relreplident,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                AND (c.relreplident = 'f' OR a.attnum = ANY (ARRAY(
                     SELECT pg_catalog.unnest(i.indkey::int2[]) FROM pg_catalog.pg_index i
                      WHERE i.indrelid = c.oid
                        AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END)))
              ORDER BY a.attnum),
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""

#: Columns a publication's row filters read that are outside their table's replica identity.
_ROW_FILTER_SQL = r"""
SELECT DISTINCT n.nspname, c.relname, a.attname
FROM pg_catalog.pg_publication_rel pr
JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_catalog.regexp_matches(pr.prqual::text, ':varattno (\d+)', 'g') AS m
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = m[1]::int2
WHERE p.pubname = %s AND c.relreplident <> 'f'
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i
                   WHERE i.indrelid = c.oid AND a.attnum = ANY (i.indkey::int2[])
                     AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END)
ORDER BY 1, 2, 3
"""

#: A publication's definition: its flags, and per table its row filter and column list.
_DEFINITION_SQL = """
SELECT p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, {per_table}
FROM pg_catalog.pg_publication p WHERE p.pubname = %s
"""
_PER_TABLE = """ARRAY(
    SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname)
           || coalesce(' (' || (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', '
                                                            ORDER BY a.attnum)
                                  FROM pg_catalog.pg_attribute a
                                 WHERE a.attrelid = c.oid AND a.attnum = ANY (pr.prattrs::int2[])) || ')', '')
           || coalesce(' WHERE ' || pg_catalog.pg_get_expr(pr.prqual, pr.prrelid), '')
      FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE pr.prpubid = p.oid AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL) ORDER BY 1)"""


def _describe(tables: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{s}.{t}" for s, t in tables)


def _check_tables(cursor: Any, tables: list[tuple[str, str]], filters: PublicationFilters) -> None:
    """Each table exists, and publishing it as asked cannot make an UPDATE or DELETE on it fail."""
    for schema, table in tables:
        cursor.execute(_TABLE_SQL, (schema, table))
        row = cursor.fetchone()
        if row is None:
            raise ConfigurationError(f"table {schema}.{table} does not exist")
        identity, key, every = row
        if filters.needs_identity and (identity == "n" or not key):
            # Publishing it would make every UPDATE/DELETE on it fail.
            raise ConfigurationError(
                f"table {schema}.{table} has no primary key (no replica identity): UPDATE and "
                "DELETE on it would fail once published; call set_replica_identity(engine, "
                f"{table!r}, {schema!r}, full=True) or add a primary key (or publish only "
                "operations=['INSERT', 'TRUNCATE'])"
            )
        if filters.columns is None:
            continue
        missing = [c for c in filters.columns if c not in every]
        if missing:
            raise ConfigurationError(f"columns: table {schema}.{table} has no column {', '.join(missing)}")
        left_out = [c for c in key if c not in filters.columns]
        if filters.needs_identity and left_out:
            raise ConfigurationError(
                f"columns must include the replica identity of {schema}.{table} ({', '.join(key)}) "
                f"while UPDATE or DELETE are published, else they fail on it; add {', '.join(left_out)}"
            )


def _server_version(cursor: Any) -> int:
    cursor.execute("SELECT pg_catalog.current_setting('server_version_num')::int")
    return int(cursor.fetchone()[0])


def _create_statement(name: str, tables: Tables, filters: PublicationFilters) -> sql.Composable:
    """``CREATE PUBLICATION name FOR ...`` with the filters."""
    if tables is None:
        target: sql.Composable = sql.SQL("ALL TABLES")
    else:
        columns: sql.Composable = sql.SQL("")
        if filters.columns is not None:
            columns = sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, filters.columns)))
        where: sql.Composable = sql.SQL("")
        if filters.where is not None:
            where = sql.Composed([sql.SQL(" WHERE ("), sql.SQL(filters.where), sql.SQL(")")])
        target = sql.SQL("TABLE {}").format(
            sql.SQL(", ").join(
                sql.Composed([sql.SQL("{}.{}").format(sql.Identifier(s), sql.Identifier(t)), columns, where])
                for s, t in tables
            )
        )
    statement = sql.SQL("CREATE PUBLICATION {} FOR {}").format(sql.Identifier(name), target)
    if filters.operations != OPERATIONS:
        statement = sql.Composed(
            [statement, sql.SQL(" WITH (publish = {})").format(sql.Literal(filters.publish))]
        )
    return statement


def _create(cursor: Any, name: str, publication: str, tables: Tables, filters: PublicationFilters) -> None:
    """Run the CREATE PUBLICATION (``name`` is ``publication`` or a probe of it)."""
    try:
        cursor.execute(_create_statement(name, tables, filters))
    except psycopg2.errors.DuplicateObject:
        raise
    except psycopg2.errors.InsufficientPrivilege as exc:
        raise ReplicationError(
            f"could not create publication {publication!r}: {exc}".strip()
            + (" (FOR ALL TABLES needs a superuser; pass tables=[...])" if tables is None else "")
        ) from exc
    except psycopg2.Error as exc:
        if filters.per_table and (exc.pgcode or "").startswith(("42", "22", "0A")):
            message = " ".join(str(exc).split())
            raise ConfigurationError(
                f"publication {publication!r}: the filter was refused: {message}"
            ) from exc
        raise ReplicationError(f"could not create publication {publication!r}: {exc}".strip()) from exc


def _definition(cursor: Any, name: str, version: int) -> tuple[Any, ...] | None:
    per_table = _PER_TABLE if version >= FILTERS_SINCE else "ARRAY[]::text[]"
    cursor.execute(_DEFINITION_SQL.format(per_table=per_table), (name,))
    row = cursor.fetchone()
    return None if row is None else tuple(row)


def _describe_definition(definition: tuple[Any, ...]) -> str:
    _, *flags, per_table = definition
    publish = ", ".join(op.lower() for op, on in zip(OPERATIONS, flags, strict=True) if on) or "nothing"
    return f"publish = '{publish}'" + "".join(f"; {entry}" for entry in per_table)


def _check_row_filter(cursor: Any, name: str, publication: str, filters: PublicationFilters) -> None:
    """Refuse a row filter reading columns outside the replica identity (UPDATE/DELETE would fail)."""
    if filters.where is None or not filters.needs_identity:
        return
    cursor.execute(_ROW_FILTER_SQL, (name,))
    outside = cursor.fetchall()
    if outside:
        named = ", ".join(f"{s}.{t}.{c}" for s, t, c in outside)
        raise ConfigurationError(
            f"publication {publication!r}: where reads {named}, outside the replica identity, while "
            "UPDATE or DELETE are published: they would fail on the table. Filter on key columns, "
            "or call set_replica_identity(..., full=True), or publish operations=['INSERT']"
        )


def _check_existing(
    cursor: Any, publication: str, tables: Tables, wanted: tuple[Any, ...], found: tuple[Any, ...]
) -> None:
    all_tables = bool(found[0])
    if tables is None and not all_tables:
        raise ReplicationError(
            f"publication {publication!r} exists but is not FOR ALL TABLES; pass its tables, "
            "or drop it with drop_change_stream()"
        )
    if tables is not None and all_tables:
        raise ReplicationError(
            f"publication {publication!r} exists FOR ALL TABLES, not for {_describe(tables)}; "
            "pass tables=None, or use another publication name"
        )
    if tables is not None:
        cursor.execute(
            "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = %s",
            (publication,),
        )
        existing = {(s, t) for s, t in cursor.fetchall()}
        if existing != set(tables):
            raise ReplicationError(
                f"publication {publication!r} exists for {_describe(sorted(existing)) or 'no tables'}, "
                f"not for {_describe(tables)}; use another publication name or drop it first"
            )
    if found[1:] != wanted[1:]:
        raise ReplicationError(
            f"publication {publication!r} exists with {_describe_definition(found)}, not "
            f"{_describe_definition(wanted)}; use another publication name, or drop it first "
            "(drop_change_stream())"
        )


def _rollback(cursor: Any) -> None:
    with contextlib.suppress(psycopg2.Error):
        cursor.execute("ROLLBACK")


def ensure_publication(
    cursor: Any, publication: str, tables: Tables, create: bool, filters: PublicationFilters = NO_FILTERS
) -> bool:
    """Check the tables, then create the publication or check the existing one: whether it was created.

    ``cursor`` is on an autocommit connection; a publication with a column
    list or row filter is made (or, to compare with an existing one, probed
    under another name) in a transaction that is committed only once checked.
    """
    if tables is not None:
        _check_tables(cursor, tables, filters)
    version = _server_version(cursor)
    if filters.per_table and version < FILTERS_SINCE:
        raise ReplicationError(
            f"columns and where need PostgreSQL 15 or later (column lists and row filters of "
            f"publications); the server is {version // 10000}.{version % 10000}"
        )
    found = _definition(cursor, publication, version)
    if found is None and not create:
        raise ReplicationError(f"publication {publication!r} does not exist (and create=False)")
    wanted: tuple[Any, ...] = (
        tables is None,
        *(op in filters.operations for op in OPERATIONS),
        [],
    )
    name = publication if found is None else f"trio_pgevents_probe_{secrets.token_hex(8)}"
    if found is not None and not filters.per_table:
        _check_existing(cursor, publication, tables, wanted, found)
        return False
    cursor.execute("BEGIN")
    try:
        _create(cursor, name, publication, tables, filters)
        _check_row_filter(cursor, name, publication, filters)
        if found is not None:
            probed = _definition(cursor, name, version)
            assert probed is not None
            _check_existing(cursor, publication, tables, probed, found)
            cursor.execute("ROLLBACK")
            return False
        cursor.execute("COMMIT")
    except psycopg2.errors.DuplicateObject:
        _rollback(cursor)
        return False  # created concurrently
    except BaseException:
        _rollback(cursor)
        raise
    if tables is None and filters.needs_identity:
        _warn_keyless_tables(cursor, publication)
    return True


_KEYLESS_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
  AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (
        SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
ORDER BY 1, 2
"""


def _warn_keyless_tables(cursor: Any, publication: str) -> None:
    """FOR ALL TABLES includes tables whose UPDATE/DELETE now fail: say which, loudly."""
    cursor.execute(_KEYLESS_SQL)
    keyless = [f"{schema}.{table}" for schema, table in cursor.fetchall()]
    if keyless:
        shown = ", ".join(keyless[:20]) + (f" and {len(keyless) - 20} more" if len(keyless) > 20 else "")
        logger.warning(
            "publication %r publishes all tables, but %d have no primary key or replica identity: "
            "UPDATE and DELETE on them now fail until set_replica_identity(..., full=True) is "
            "called for them: %s",
            publication,
            len(keyless),
            shown,
        )
