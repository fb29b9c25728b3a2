"""One LISTEN connection: the pump of a :class:`~trio_pgevents._source.ReconnectingSource`.

The hot loop is ``wait_readable(fd)`` -> ``conn.poll()`` -> swap out
``conn.notifies`` -> one list comprehension -> one buffer put. Everything
else (connect, LISTEN, the liveness probe) runs in worker threads while the
loop is held off by ``_exclusive()``, so the event loop never blocks on I/O.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any

import psycopg2
import trio
from psycopg2 import sql
from sqlalchemy.engine import Engine

from .. import _connection as conn_mod
from .._buffer import EventBuffer
from .._consumer import NotifyBatch
from .._decode import Decoder
from .._errors import TrioPgEventsError
from .._options import StreamOptions
from .._secrets import get_logger, redactor_for
from .._source import DB_ERRORS, Lost, ReconnectingSource
from .._threads import CallTimeout, Handoff, run_abandonable, shutdown_socket

__all__ = ["Listener"]

logger = get_logger("trio_pgevents")


class Listener(ReconnectingSource):
    """Reads one engine's LISTEN connection into the shared buffer, reconnecting on loss."""

    connecting = "connect and LISTEN on"

    def __init__(
        self,
        engine: Engine,
        channels: Collection[str],
        buffer: EventBuffer,
        options: StreamOptions,
        decoders_for: Callable[[], Mapping[str, Decoder] | None],
    ) -> None:
        super().__init__(
            conn_mod.describe_source(engine), redactor_for(engine), buffer, options, replayed=False
        )
        self.engine = engine
        self._channels = channels  # the stream's live set, shared by all listeners
        self._decoders_for = decoders_for
        self._proxy: Any = None
        self._command_lock = trio.Lock()
        self._command_running = False
        self._command_done = trio.Event()
        self._next_probe = 0.0
        self._queue_read_at = -math_inf
        self._listened: list[str] = []  # the channels the current connection LISTENed to
        self._tainted = False  # a thread was abandoned mid-command: do not reuse the connection
        self._unsent: list[NotifyBatch] = []  # the pump's batches not queued yet (see _send_unsent)

    async def _after_connect(self) -> None:
        await self._sync_channels()

    async def _close(self, *, broken: bool) -> None:
        await self._close_connection(broken=broken or self._tainted)

    async def _connect(self, limit: float) -> None:
        """One attempt: check a connection out and LISTEN, within ``limit`` seconds."""
        self._listened = list(self._channels)
        keepalive = self._options.keepalive
        handoff = Handoff(close=lambda proxy: conn_mod.release(proxy, broken=True))
        channels = self._listened
        timeout = limit

        def work() -> Any:
            return handoff.deliver(conn_mod.checkout(self.engine, channels, keepalive, handoff, timeout))

        proxy = await run_abandonable(
            work, timeout=timeout, handoff=handoff, what=f"connect and LISTEN (connect_timeout={timeout}s)"
        )
        self._proxy = proxy
        self._tainted = False
        self.backend_pid = proxy.dbapi_connection.get_backend_pid()
        self.connected = True
        self._next_probe = trio.current_time() + self._options.probe_interval

    async def _sync_channels(self) -> None:
        """LISTEN/UNLISTEN what changed while we were connecting."""
        channels = self._listened
        current = list(self._channels)
        added = [ch for ch in current if ch not in channels]
        removed = [ch for ch in channels if ch not in current]
        if added:
            await self._run_command(conn_mod.listen_sql(added))
        if removed:
            await self._run_command(conn_mod.unlisten_sql(removed))

    async def _close_connection(self, *, broken: bool) -> None:
        """Give the connection back (reset) or discard it; bounded by ``close_timeout``.

        Two steps so that a silent peer cannot keep it: the reset (UNLISTEN,
        which needs the server) runs in a thread that never closes the
        connection, so if it does not finish in time the socket -- still ours --
        can be shut down to free that thread; then the connection is discarded.
        """
        proxy, self._proxy = self._proxy, None
        self.connected = False
        if proxy is None:
            return
        with trio.CancelScope(shield=True):
            try:
                fd: int | None = proxy.dbapi_connection.fileno()
            except (ValueError, psycopg2.Error, OSError, AttributeError):
                fd = None  # already closed
            if fd is not None:
                trio.lowlevel.notify_closing(fd)
            # One close_timeout for both steps (plus a moment to discard).
            deadline = trio.current_time() + self._options.close_timeout
            reset = False
            if not broken and fd is not None and not conn_mod.has_unread_data(fd):
                with trio.move_on_at(deadline):
                    error = await trio.to_thread.run_sync(_reset_sync, proxy, abandon_on_cancel=True)
                    reset = error is None
            if fd is not None and not reset:
                # Unblocks any thread still reading it (an abandoned probe or
                # reset); the server sees EOF and ends the backend.
                shutdown_socket(fd)
            with trio.move_on_at(max(deadline, trio.current_time() + 0.1)):
                if reset:
                    await trio.to_thread.run_sync(proxy.close, abandon_on_cancel=True)
                else:
                    await trio.to_thread.run_sync(conn_mod.discard, proxy, abandon_on_cancel=True)

    # ---- the hot loop ------------------------------------------------------

    async def _pump(self) -> None:
        proxy = self._proxy
        conn = proxy.dbapi_connection
        fd = conn.fileno()
        wait_readable = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        more = False  # the last poll read notifications: more are probably waiting
        while True:
            if trio.current_time() >= self._next_probe:
                if more:
                    # Data is flowing: the link is alive. A probe now would be
                    # a query, and the server answers one only after sending
                    # this listener's whole backlog, which libpq would read
                    # into memory past max_buffer_size (measured: a 200k-event
                    # batch, +80 MB RSS, benchmarks/memory.py). Probe when idle.
                    self._next_probe = trio.current_time() + self._options.probe_interval
                else:
                    await self._probe(conn, fd)
            # One cancel scope per probe period, not one per wait: entering and
            # leaving a scope costs several us, ~10% of a wake-up's CPU at low
            # rates (py-spy, benchmarks/latency.py). Its deadline ends an idle
            # wait when the probe is due; reached while data flows, it ends
            # the read at the next checkpoint, and the probe is postponed.
            try:
                with trio.CancelScope(deadline=self._next_probe):
                    while True:
                        if more:
                            # Under a flood the next data is usually there already:
                            # yield (the consumer runs) and poll without blocking.
                            # Cheaper per batch than an epoll registration.
                            await checkpoint()
                        else:
                            await wait_readable(fd)
                        more = await self._read(conn)
            except Lost:
                await self._send_unsent()  # read before the loss: delivered before the gap
                raise
            # The deadline may have interrupted a put: queue what it left, in order.
            await self._send_unsent()

    async def _read(self, conn: Any) -> bool:
        """Poll and queue what arrived; True if more is probably waiting (poll again at once)."""
        while self._command_running:
            await self._command_done.wait()
        try:
            _poll(conn)
        except psycopg2.Error as exc:
            # Notifications read in the same packet as the error were sent
            # while connected: queued (by _pump) before the loss is reported.
            if conn.notifies:
                self._unsent.extend(self._take_notifies(conn))
            raise Lost(" ".join(str(exc).split()) or type(exc).__name__) from exc
        if not conn.notifies:
            if conn.closed:
                raise Lost("connection closed")
            return False
        self._unsent.extend(self._take_notifies(conn))
        await self._send_unsent()
        return True

    async def _send_unsent(self) -> None:
        """Queue the pump's batches not queued yet, oldest first (a cancelled put queued nothing)."""
        unsent = self._unsent
        while unsent:
            await self._buffer.put(unsent[0])
            del unsent[0]

    def _take_notifies(self, conn: Any) -> list[NotifyBatch]:
        """What the connection read, as batches to queue (``conn.notifies`` is emptied)."""
        notifies, conn.notifies = conn.notifies, []
        self.last_event_at = time.time()
        return _batches(notifies, self.source, self._decoders_for())

    async def _drain(self, conn: Any) -> None:
        """Queue what a command on the connection read (``conn.notifies``)."""
        for batch in self._take_notifies(conn):
            await self._buffer.put(batch)

    # ---- commands on the listening connection -----------------------------

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        async with self._command_lock:
            self._command_done = trio.Event()
            self._command_running = True
            try:
                yield
            finally:
                self._command_running = False
                self._command_done.set()

    async def _run_command(self, statement: sql.Composable | str) -> None:
        proxy = self._proxy
        if proxy is None:
            return  # reconnecting: the new connection LISTENs to the current set
        conn = proxy.dbapi_connection
        async with self._exclusive():
            result = await self._in_thread(conn, _execute_sync, conn, statement)
            if result is _TIMED_OUT:
                # A dead peer: the pump finds the socket shut and reconnects with
                # the current channel set, announcing the gap.
                return
            if isinstance(result, (psycopg2.OperationalError, psycopg2.InterfaceError)):
                # The connection died: the pump finds out and reconnects with
                # the current channel set, so nothing is lost by ignoring it.
                return
            if isinstance(result, psycopg2.Error):
                raise TrioPgEventsError(
                    f"{statement!r} failed on {self.source}: {self.describe(result)}"
                ) from result
            if conn.notifies:
                await self._drain(conn)

    async def _in_thread(self, conn: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the listening connection in a thread, within ``probe_timeout``.

        Returns ``fn``'s result, or ``_TIMED_OUT``. If the server does not answer
        in time, or the caller is cancelled meanwhile, the thread is abandoned
        and the socket shut down, so the thread returns at once and the
        connection is never reused (a half-open peer is found this way).
        """
        handoff = Handoff()
        handoff.attach(conn.fileno())
        try:
            return await run_abandonable(
                functools.partial(fn, *args), timeout=self._options.probe_timeout, handoff=handoff
            )
        except CallTimeout:
            self._tainted = True
            return _TIMED_OUT
        except trio.Cancelled:
            self._tainted = True
            raise

    async def listen(self, channels: list[str]) -> None:
        """LISTEN on more channels (the shared set is already updated)."""
        await self._run_command(conn_mod.listen_sql(channels))

    async def unlisten(self, channels: list[str]) -> None:
        """UNLISTEN channels (the shared set is already updated)."""
        await self._run_command(conn_mod.unlisten_sql(channels))

    def _record_queue_usage(self, usage: float) -> None:
        self.queue_usage = usage
        self._queue_read_at = trio.current_time()
        if usage >= self._options.queue_usage_warning:
            logger.warning(
                "notification queue of %s is %.3g%% full: a listener is not reading; "
                "when it is full every NOTIFYing transaction fails",
                self.source,
                usage * 100,
            )

    async def watch_queue(self) -> None:
        """Read the server's notification queue usage while the listening connection can't.

        The probe reads it when the stream is idle; while notifications flow,
        or while a slow consumer holds the listener back (exactly when the
        queue fills), the probe waits. This task then asks on a separate
        pooled connection, every ``probe_interval``. Runs until cancelled;
        failures are left to the listener's own fault handling.
        """
        interval = self._options.probe_interval
        while True:
            await trio.sleep(interval)
            if trio.current_time() - self._queue_read_at < interval:
                continue
            with trio.move_on_after(self._options.probe_timeout):
                try:
                    usage = await trio.to_thread.run_sync(
                        conn_mod.queue_usage, self.engine, abandon_on_cancel=True
                    )
                except DB_ERRORS as exc:
                    logger.debug("queue usage of %s not read: %s", self.source, self.describe(exc))
                    continue
                self._record_queue_usage(usage)

    async def _probe(self, conn: Any, fd: int) -> None:
        """Ask the server something cheap: proves the link is alive, reads queue usage."""
        async with self._exclusive():
            usage = await self._in_thread(conn, _probe_sync, conn)
            if usage is _TIMED_OUT:
                raise Lost(
                    f"liveness probe got no answer within probe_timeout={self._options.probe_timeout}s"
                )
            if isinstance(usage, BaseException):
                raise Lost(f"liveness probe failed: {self.describe(usage)}") from usage
            self._record_queue_usage(usage)
            if conn.notifies:
                await self._drain(conn)
        self._next_probe = trio.current_time() + self._options.probe_interval


_TIMED_OUT: Any = object()


def _poll(conn: Any) -> None:
    """Read what the socket has into ``conn.notifies``.

    One poll() is one recv() of at most ~16 KB: some 40 row events. Read on
    while data is there, up to _BATCH_TARGET events: a recv() is far cheaper
    than a scheduler round per batch (measured: benchmarks/decoded.py). No
    larger: a batch is built into events at once, and more than ~700 new
    objects at a time wake the garbage collector.
    """
    conn.poll()
    notifies = conn.notifies
    if notifies:
        count = len(notifies)
        for _ in range(_MAX_EXTRA_POLLS):
            if count >= _BATCH_TARGET:
                break
            conn.poll()  # appends to the same list
            if len(notifies) == count:
                break
            count = len(notifies)


def _batches(notifies: list[Any], source: str, decoders: Mapping[str, Decoder] | None) -> list[NotifyBatch]:
    """Notifications one read took, as the batches to queue.

    Queued as psycopg2's Notify objects; the consumer builds the events when
    it takes the batch (see NotifyBatch: keeps the GC quiet).
    """
    if len(notifies) <= 4 * _BATCH_TARGET:
        return [NotifyBatch(notifies, source, decoders)]
    # A command on the connection (LISTEN, a probe) made libpq read a
    # backlog at once: hand it over in pieces, so the buffer's bound and
    # the batch size the consumer builds at once still hold.
    return [
        NotifyBatch(notifies[start : start + _BATCH_TARGET], source, decoders)
        for start in range(0, len(notifies), _BATCH_TARGET)
    ]


#: The pump reads on (extra non-blocking polls) until a batch has this many events...
_BATCH_TARGET = 256
#: ...or this many extra polls were made.
_MAX_EXTRA_POLLS = 32


def _reset_sync(proxy: Any) -> BaseException | None:
    try:
        conn_mod.reset_for_pool(proxy)
    except Exception as exc:
        return exc
    return None


def _execute_sync(conn: Any, statement: sql.Composable | str) -> BaseException | None:
    try:
        conn_mod.execute(conn, statement)
    except psycopg2.Error as exc:
        return exc
    return None


math_inf = float("inf")


def _probe_sync(conn: Any) -> float | BaseException:
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_catalog.pg_notification_queue_usage()")
            row = cursor.fetchone()
        return float(row[0])
    except psycopg2.Error as exc:
        return exc
