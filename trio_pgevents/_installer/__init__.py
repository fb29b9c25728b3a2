"""The installer: trigger functions, table triggers, DDL event triggers, the outbox.

``Installer(engine)`` prepares a database so that changes arrive as events:

- ``install()`` creates the library schema (``pgevents``), its functions and
  the registry of watched tables; ``install(ddl=True)`` adds DDL event
  triggers (superuser only), ``auto_rebuild=True`` an event trigger that
  watches tables created later in a watched schema, ``durable=True`` the
  outbox tables of durable mode.
- ``watch_table`` / ``watch_schema`` attach an AFTER INSERT/UPDATE/DELETE row
  trigger and an AFTER TRUNCATE statement trigger; ``unwatch_table`` detaches;
  ``watch_all_schemas`` watches every user schema, those created later too.
- ``status()`` compares what is in the database with what this version would
  create (hashes in ``COMMENT``\\ s); ``prune()`` removes ORPHANED leftovers;
  ``uninstall()`` removes everything the installer created, nothing else.
- ``change_streams()`` lists the database's change stream slots (logical
  replication, ``pgoutput``) with their lag; ``drop_change_stream()`` drops
  one with its publication (a forgotten slot keeps WAL forever).
- Every operation runs in one transaction (nothing half done, no window
  where a replaced trigger is missing) under an advisory lock, and each has a
  ``*_sql`` twin returning the SQL for a migration instead of running it.

Everything here is synchronous (for scripts and migrations);
:attr:`Installer.aio` gives the same methods as coroutines that run in a
worker thread, for Trio code.

How the package is laid out (each module imports only those above it; :mod:`.aio`
names ``Installer`` for type checkers only):

- :mod:`.sql`: the SQL, as ``*.sql`` templates and the code rendering them
  (``SqlBuilder``), with the hashes ``status()`` compares.
- :mod:`.reports`: what operations return (``InstallReport``,
  ``InstallStatus``...).
- :mod:`.base`: the options and their checks; one transaction per operation.
- :mod:`.pgevents`: finding and removing the original pg_events' objects.
- :mod:`.catalog`: reading the database's current state (read only).
- :mod:`.ensure`: bringing one object at a time up to date.
- :mod:`.install`, :mod:`.watch` (:mod:`.schemas`), :mod:`.maintenance`, :mod:`.streams`,
  :mod:`.outbox`: the operations, one mixin each.
- :mod:`.aio`: ``AsyncInstaller``, each operation's coroutine twin.
- :mod:`.installer`: ``Installer``, the mixins composed.
"""

from .aio import AsyncInstaller
from .installer import Installer
from .reports import (
    ActionKind,
    ConsumerInfo,
    ConsumerMember,
    InstallAction,
    InstallReport,
    InstallStatus,
    TableStatus,
)

__all__ = [
    "ActionKind",
    "AsyncInstaller",
    "ConsumerInfo",
    "ConsumerMember",
    "InstallAction",
    "InstallReport",
    "InstallStatus",
    "Installer",
    "TableStatus",
]
