"""The durable reader's connection: queries in threads it can give up on, reconnecting by the stream's rules.

Every query runs in a worker thread with a time limit (``query_timeout``);
a query given up on has its socket shut down, so no thread is left behind
and a silent server cannot hold the stream. A lost connection is replaced
following the stream's options -- the same backoff, ``max_reconnect_attempts``,
``reconnect_timeout`` and ``connect_timeout`` as every other stream (one
:func:`~trio_pgevents._source.reconnect` per outage).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import trio
from sqlalchemy.engine import Engine

from .. import _connection as conn_mod
from .._errors import ConnectionLostError, StreamClosedError, TrioPgEventsError
from .._options import StreamOptions
from .._secrets import get_logger, redactor_for
from .._source import DB_ERRORS, SourceHealth
from .._source import reconnect as reconnect_with_backoff
from .._threads import CallTimeout, Handoff, run_abandonable

__all__ = ["OutboxConnection"]

logger = get_logger("trio_pgevents")

#: Errors after which the connection cannot be used again.
_CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
#: How long a cancelled query may still finish before its connection is given up (seconds).
_QUERY_GRACE = 0.25


class OutboxConnection(SourceHealth):
    """The one connection a durable stream reads and stores positions on.

    Args:
        engine: where to connect.
        options: the stream's options (reconnecting, timeouts, keepalive).
        what: names the reader in log lines ("durable consumer 'billing'").
    """

    def __init__(self, engine: Engine, options: StreamOptions, what: str) -> None:
        super().__init__(conn_mod.describe_source(engine))
        self.engine = engine
        self._redactor = redactor_for(engine)
        self._options = options
        self._what = what
        self._proxy: Any = None
        self._lock = trio.Lock()
        self._closed = False

    def describe(self, exc: BaseException) -> str:
        """A driver error as one line, without any secret."""
        return self._redactor.describe(exc)

    async def connect(self) -> None:
        """The first connection (raises what connecting raised)."""
        await self._connect(self._options.connect_timeout)

    async def _connect(self, limit: float) -> None:
        """Take a connection from the engine (autocommit, keepalive), within ``limit`` seconds."""
        engine, keepalive = self.engine, self._options.keepalive
        handoff = Handoff(close=lambda proxy: conn_mod.release(proxy, broken=True))

        def work() -> Any:
            return handoff.deliver(conn_mod.checkout(engine, (), keepalive, handoff, limit))

        self._proxy = await run_abandonable(
            work, timeout=limit, handoff=handoff, what=f"connect (connect_timeout={limit:g}s)"
        )
        self.backend_pid = self._proxy.dbapi_connection.get_backend_pid()
        self.connected = True

    async def release(self, *, broken: bool) -> None:
        """Give the connection back (or discard it), within ``close_timeout``; never raises."""
        proxy, self._proxy = self._proxy, None
        self.connected = False
        if proxy is None:
            return
        handoff = Handoff()
        with contextlib.suppress(Exception):
            handoff.attach(proxy.dbapi_connection.fileno())
        with trio.CancelScope(shield=True), contextlib.suppress(CallTimeout):
            # Past the limit the socket is shut down, and release() discards it.
            await run_abandonable(
                functools.partial(conn_mod.release, proxy, broken=broken),
                timeout=self._options.close_timeout,
                handoff=handoff,
            )

    def close(self) -> None:
        """No more queries (those waiting get :class:`StreamClosedError`)."""
        self._closed = True

    async def _query(self, fn: Callable[[Any], Any], started: trio.Event | None) -> Any:
        """``fn(cursor)`` on the connection in a thread, within ``query_timeout``."""
        conn = self._proxy.dbapi_connection
        handoff = Handoff()
        handoff.attach(conn.fileno())
        timeout = self._options.query_timeout
        token = trio.lowlevel.current_trio_token()
        say_started = started.set if started is not None else None

        def work() -> Any:
            if say_started is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(say_started)
            with conn.cursor() as cursor:
                return fn(cursor)

        return await run_abandonable(
            work,
            timeout=timeout,
            handoff=handoff,
            what=f"durable reader query (query_timeout={timeout:g}s)",
            # Cancelled mid-query (closing, a caller's deadline): let a healthy server
            # answer, so the connection stays usable (the position can still be stored).
            grace=min(_QUERY_GRACE, self._options.close_timeout),
        )

    async def run(
        self, fn: Callable[[Any], Any], *, reconnect: bool = True, started: trio.Event | None = None
    ) -> Any:
        """Run ``fn(cursor)`` on the connection, reconnecting on loss (one query at a time).

        ``started`` is set once the query is under way in its thread (or is
        not going to start soon: the connection is being restored, or the
        call ended): a task that started this one in the background waits
        for it, so that the query runs while that task goes on working.

        Raises:
            ConnectionLostError: the connection is gone and may not (or could not) be restored.
            StreamClosedError: the stream is closed.
            TrioPgEventsError: the query failed (the connection is fine).
        """
        try:
            return await self._run(fn, reconnect, started)
        finally:
            if started is not None:
                started.set()

    async def _run(self, fn: Callable[[Any], Any], reconnect: bool, started: trio.Event | None) -> Any:
        """:meth:`run`'s work (``started`` set only by the thread or before reconnecting)."""
        options = self._options
        lost: str | None = None
        async with self._lock:
            while True:
                if self._closed and reconnect:
                    raise StreamClosedError(f"{self._what} is closed")
                if self._proxy is None:
                    if started is not None:
                        started.set()  # no query soon
                    if not (reconnect and options.reconnect):
                        raise ConnectionLostError(f"lost connection to {self.source}: {lost or 'closed'}")
                    await reconnect_with_backoff(
                        self._connect,
                        options,
                        source=self.source,
                        reason=lost or "not connected",
                        describe=self.describe,
                    )
                    self.reconnects += 1
                try:
                    result = await self._query(fn, started)
                    self.last_event_at = time.time()
                    return result
                except DB_ERRORS as exc:
                    if isinstance(exc, psycopg2.Error) and not isinstance(exc, _CONNECTION_ERRORS):
                        raise TrioPgEventsError(
                            f"{self._what} on {self.source}: {self.describe(exc)}"
                        ) from exc
                    lost = self.describe(exc)
                    logger.warning("%s lost its connection to %s: %s", self._what, self.source, lost)
                    await self.release(broken=True)
