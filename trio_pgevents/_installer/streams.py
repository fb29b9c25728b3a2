"""Administering change streams (logical replication slots using ``pgoutput``) from the installer.

Listing them with their lag, and dropping one with its publication: a slot
nobody consumes keeps WAL forever. The slot work itself belongs to the change
stream module (:mod:`trio_pgevents._cdc`); this is the installer's face of it.
"""

from __future__ import annotations

from psycopg2 import sql

from .._cdc import (
    DEFAULT_LAG_WARNING_BYTES,
    ChangeStreamStatus,
    drop_change_stream,
    read_slot_statuses,
)
from .._errors import ConfigurationError
from .._names import check_identifier, check_slot_name
from .base import Cursor, InstallerBase, check_lag_warning
from .reports import InstallAction, InstallReport
from .sql import SqlBuilder

__all__ = ["ChangeStreamOps"]


def _check_names(slot: str, publication: str | None) -> None:
    """Raise :class:`ConfigurationError` for a bad slot or publication name."""
    check_slot_name(slot)
    if publication is not None:
        check_identifier("publication", publication)


def _dropped(kind: str, name: str, existed: bool, absent: str) -> InstallAction:
    return InstallAction(kind, name, "removed" if existed else "unchanged", None if existed else absent)


class ChangeStreamOps(InstallerBase):
    """``change_streams``, ``drop_change_stream`` and ``drop_change_stream_sql`` (a mixin)."""

    def change_streams(
        self, *, lag_warning_bytes: int = DEFAULT_LAG_WARNING_BYTES
    ) -> tuple[ChangeStreamStatus, ...]:
        """Every change stream slot of the database, with its lag.

        Lists the logical replication slots using the ``pgoutput`` plugin in
        the current database (whoever made them), each as
        :func:`~trio_pgevents.change_stream_status` reports it. A slot more
        than ``lag_warning_bytes`` of WAL behind (default 1 GiB), or lost,
        carries a ``warning``: a slot nobody consumes keeps WAL forever.
        """
        check_lag_warning(lag_warning_bytes)
        return self._run(
            "change_streams",
            lambda cur, b: tuple(read_slot_statuses(cur, lag_warning_bytes=lag_warning_bytes)),
            lock=False,
        )

    def drop_change_stream(self, slot: str, publication: str | None = None) -> InstallReport:
        """Drop a change stream's replication slot and (if given) its publication.

        Delegates to :func:`~trio_pgevents.drop_change_stream`. Each object is
        reported ``removed``, or ``unchanged`` when it did not exist.

        Raises:
            ConfigurationError: a bad name, or ``slot`` is not a change stream
                slot of this database (another plugin, a physical slot, or
                another database's): it is left alone.
            ReplicationError: the slot is in use by a connected consumer (stop
                it first), or the role may not drop it.
        """
        _check_names(slot, publication)

        def work(cur: Cursor, b: SqlBuilder) -> tuple[tuple[str, str, str] | None, bool]:
            cur.execute(
                "SELECT slot_type::text, coalesce(plugin::text, ''), coalesce(database::text, '') = "
                "current_database() FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
            found = cur.fetchone()
            cur.execute("SELECT true FROM pg_catalog.pg_publication WHERE pubname = %s", (publication,))
            return found, cur.fetchone() is not None

        found, publication_exists = self._run("drop_change_stream", work, lock=False)
        if found is not None and (found[0] != "logical" or found[1] != "pgoutput" or not found[2]):
            kind, plugin, _ = found
            raise ConfigurationError(
                f"replication slot {slot!r} is not a change stream slot of this database "
                f"({kind} slot{f', plugin {plugin}' if plugin else ''}): not dropping it"
            )
        drop_change_stream(self._engine, slot, publication)
        actions = [_dropped("slot", slot, found is not None, "no such replication slot")]
        if publication is not None:
            actions.append(_dropped("publication", publication, publication_exists, "no such publication"))
        return InstallReport(tuple(actions))

    def drop_change_stream_sql(self, slot: str, publication: str | None = None) -> str:
        """The SQL of ``drop_change_stream(...)``, for a migration.

        It drops the slot if it exists (and fails while a consumer holds it),
        then the publication if given and it exists.
        """
        _check_names(slot, publication)
        statements = [
            sql.SQL(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots "
                "WHERE slot_name = {} AND slot_type = 'logical' AND plugin = 'pgoutput' "
                "AND database = current_database()"
            ).format(sql.Literal(slot))
        ]
        if publication is not None:
            statements.append(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
        return self._run(
            "building SQL",
            lambda cur, b: "".join(s.as_string(cur) + ";\n" for s in statements),
            lock=False,
        )
