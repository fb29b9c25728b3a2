"""``AsyncInstaller``: every :class:`~trio_pgevents.Installer` operation as a coroutine, for Trio code.

Each coroutine is derived from the synchronous method by :func:`_async_twin`
(as ``trio.Path`` derives its own): same name, same signature, run in a
worker thread the caller can give up on. ``tests/test_installer_package.py``
checks that every public method of ``Installer`` has its twin here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .._threads import run_abandonable
from .install import InstallOps
from .maintenance import MaintenanceOps
from .outbox import OutboxOps
from .schemas import AllSchemasOps
from .streams import ChangeStreamOps
from .watch import WatchOps

if TYPE_CHECKING:
    from .installer import Installer

__all__ = ["AsyncInstaller"]

P = ParamSpec("P")
S = TypeVar("S")
T = TypeVar("T")


def _async_twin(
    method: Callable[Concatenate[S, P], T],
) -> Callable[Concatenate[AsyncInstaller, P], Coroutine[Any, Any, T]]:
    """The coroutine version of an :class:`Installer` method (as ``trio.Path`` derives its own)."""

    async def twin(self: AsyncInstaller, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._call(method, *args, **kwargs)

    twin.__name__ = twin.__qualname__ = method.__name__
    twin.__doc__ = (
        f"Like :meth:`Installer.{method.__name__}`, run in a worker thread the caller can give up on."
    )
    twin.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return twin


class AsyncInstaller:
    """:class:`Installer`'s operations as coroutines, for Trio code.

    Each runs the synchronous method in a worker thread, so the event loop
    never blocks on DDL. A cancelled call returns at once: its connection is
    shut down, so the server rolls its one transaction back -- nothing is
    half done, and a silent server cannot hold the caller.
    """

    def __init__(self, installer: Installer) -> None:
        self.installer = installer

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_abandonable(
            functools.partial(method, self.installer, *args, **kwargs), timeout=None, what=method.__name__
        )

    install = _async_twin(InstallOps.install)
    install_sql = _async_twin(InstallOps.install_sql)
    watch_table = _async_twin(WatchOps.watch_table)
    watch_table_sql = _async_twin(WatchOps.watch_table_sql)
    watch_schema = _async_twin(WatchOps.watch_schema)
    watch_schema_sql = _async_twin(WatchOps.watch_schema_sql)
    unwatch_table = _async_twin(WatchOps.unwatch_table)
    watch_all_schemas = _async_twin(AllSchemasOps.watch_all_schemas)
    watch_all_schemas_sql = _async_twin(AllSchemasOps.watch_all_schemas_sql)
    unwatch_all_schemas = _async_twin(AllSchemasOps.unwatch_all_schemas)
    unwatch_table_sql = _async_twin(WatchOps.unwatch_table_sql)
    status = _async_twin(MaintenanceOps.status)
    change_streams = _async_twin(ChangeStreamOps.change_streams)
    drop_change_stream = _async_twin(ChangeStreamOps.drop_change_stream)
    drop_change_stream_sql = _async_twin(ChangeStreamOps.drop_change_stream_sql)
    prune = _async_twin(MaintenanceOps.prune)
    prune_sql = _async_twin(MaintenanceOps.prune_sql)
    uninstall = _async_twin(MaintenanceOps.uninstall)
    uninstall_sql = _async_twin(MaintenanceOps.uninstall_sql)
    delete_acknowledged = _async_twin(OutboxOps.delete_acknowledged)
    list_consumers = _async_twin(OutboxOps.list_consumers)
    drop_consumer = _async_twin(OutboxOps.drop_consumer)
