"""``Installer``: the installer's public class, composed of one mixin per kind of operation.

:class:`~.base.InstallerBase` holds the options and runs each operation in
one transaction; the operations come from :class:`~.install.InstallOps`,
:class:`~.watch.WatchOps` (with :class:`~.schemas.AllSchemasOps`), :class:`~.maintenance.MaintenanceOps`,
:class:`~.streams.ChangeStreamOps` and :class:`~.outbox.OutboxOps`, and
:attr:`Installer.aio` gives all of them as coroutines
(:class:`~.aio.AsyncInstaller`).
"""

from __future__ import annotations

from .aio import AsyncInstaller
from .install import InstallOps
from .maintenance import MaintenanceOps
from .outbox import OutboxOps
from .schemas import AllSchemasOps
from .streams import ChangeStreamOps

__all__ = ["Installer"]


class Installer(InstallOps, AllSchemasOps, MaintenanceOps, ChangeStreamOps, OutboxOps):
    """Installs, inspects and removes the triggers that turn changes into events.

    Args:
        engine: a SQLAlchemy engine (psycopg2 driver) or a database URL.
        schema: the schema holding the library's functions and tables.
        channel: the NOTIFY channel of row and DDL events (the durable
            wake-ups use ``<channel>.durable``).
        include_query: put the statement text (``current_query()``) into row
            events. It can leak data to every listener: turn it off when
            listeners should see only rows.
        connect_timeout: bound on connecting, seconds (libpq's, unless the
            engine sets its own).
        payload: what row events of the tables this installer watches carry
            (each ``watch_*`` call may choose otherwise): ``"row"`` (default,
            the whole row) or ``"keys"`` (table, operation and primary key
            only). Any role that can connect may LISTEN on the channel and
            read NOTIFY payloads; with ``"keys"`` no row data reaches it
            (consumers re-read the row, or use durable mode, whose outbox only
            granted roles can read).

    Raises:
        ConfigurationError: a name Postgres would reject or truncate, or a bad option.
    """

    @property
    def aio(self) -> AsyncInstaller:
        """The same operations as coroutines (run in a worker thread), for Trio code."""
        return AsyncInstaller(self)
