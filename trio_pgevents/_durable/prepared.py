"""Statements a reader runs on every read, prepared once per connection.

A durable reader's queries are small and frequent (every wake-up, every
member of a group): parsing and planning them each time cost the server more
than running them (pg_stat_statements with a group of 4 reading along
single-row writers: ~0.2 ms per query outside execution). Each statement is
``PREPARE``d on a connection the first time it runs there, then ``EXECUTE``d.
A connection that lost its prepared statements (``DEALLOCATE``, ``DISCARD``
by other code sharing the pool) gets them again; one that already has it
(handed back to the pool and out again) keeps it.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg2.errors
from psycopg2 import sql

__all__ = ["Prepared"]

#: The prepared statements of each connection (by name).
_ON_CONNECTION: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


class Prepared:
    """One statement (``%s`` parameters, none of them inside literals), prepared where it runs."""

    def __init__(self, statement: sql.Composable) -> None:
        self._statement = statement
        self._prepare = ""
        self._execute = ""
        self.name = ""

    def _texts(self, connection: Any) -> None:
        text = self._statement.as_string(connection)
        parts = text.split("%s")
        if any("%" in part for part in parts):
            raise ValueError("a statement to prepare may use '%' only for its %s parameters")
        self.name = "trio_pgevents_" + hashlib.sha1(text.encode()).hexdigest()[:24]
        self._prepare = f"PREPARE {self.name} AS " + "".join(
            part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, 1)
        )
        count = len(parts) - 1
        self._execute = f"EXECUTE {self.name}" + (f" ({', '.join(['%s'] * count)})" if count else "")

    def execute(self, cursor: Any, params: Sequence[Any]) -> None:
        """Run the statement with ``params`` on ``cursor`` (preparing it on its connection first)."""
        connection = cursor.connection
        if not self._prepare:
            self._texts(connection)
        names = _ON_CONNECTION.setdefault(connection, set())
        if self.name not in names:
            self._prepare_on(cursor, names)
        try:
            cursor.execute(self._execute, params)
        except psycopg2.errors.InvalidSqlStatementName:
            # Deallocated behind our back: prepare it again.
            names.discard(self.name)
            self._prepare_on(cursor, names)
            cursor.execute(self._execute, params)

    def _prepare_on(self, cursor: Any, names: set[str]) -> None:
        # Prepared already by an earlier user of this pooled connection: same text, same name.
        with contextlib.suppress(psycopg2.errors.DuplicatePreparedStatement):
            cursor.execute(self._prepare)
        names.add(self.name)
