"""Blocking database calls in worker threads that a Trio task can give up on.

psycopg2 and libpq block. Every call that may wait on the server runs in a
worker thread (``trio.to_thread.run_sync(..., abandon_on_cancel=True)``), so
the event loop never blocks and the caller can be cancelled at any moment.
Giving up on a thread does not stop it, though: against a server that
accepts TCP and never answers, the thread would sit in ``recv()`` forever,
holding its connection. :class:`Handoff` closes that hole:

- the thread registers the socket it is using (:meth:`Handoff.attach`);
  when the caller gives up, :meth:`Handoff.abandon` shuts that socket down,
  so the blocked ``recv()`` returns at once and the thread ends;
- a connection the thread finishes making after the caller gave up is
  closed (:meth:`Handoff.deliver`), never leaked.

:func:`run_abandonable` is the one way the library runs such a call: bounded
by a timeout, abandoned on cancellation, with the socket shut down either way.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

__all__ = ["CallTimeout", "Handoff", "call_callback", "run_abandonable", "shutdown_socket", "thread_handoff"]

T = TypeVar("T")


class CallTimeout(OSError):
    """A blocking call got no answer within its time limit (the server is silent).

    An ``OSError``, so the reconnect loops treat it as a connection failure.
    """


class Abandoned(Exception):
    """Raised in the worker thread: nobody waits for its result any more."""


def _dup_socket(fd: int) -> socket.socket | None:
    try:
        return socket.socket(fileno=os.dup(fd))
    except OSError:
        return None


def shutdown_socket(fd: int) -> None:
    """Shut a connection's socket down so that any read blocked on it returns (never raises)."""
    sock = _dup_socket(fd)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class Handoff:
    """What a worker thread and the task waiting for it share.

    Args:
        close: how to dispose of a connection delivered after the caller gave
            up (it must not raise).
    """

    def __init__(self, close: Callable[[Any], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._running = False  # the thread has begun the call (its socket may be in use)
        self._result: Any = None
        self._fd: int | None = None
        self._close = close

    def begin(self) -> None:
        """Thread: the call starts now.

        Raises:
            Abandoned: the caller gave up before the thread got to it: the
                call must not run (its connection is untouched and usable).
        """
        with self._lock:
            if self._abandoned:
                raise Abandoned("the caller gave up before the call began")
            self._running = True

    @property
    def abandoned(self) -> bool:
        """True once the waiting task gave up."""
        return self._abandoned

    def attach(self, fd: int) -> None:
        """Thread: ``fd`` is the socket in use; :meth:`abandon` may shut it down.

        Raises:
            Abandoned: the caller already gave up (the thread should stop).
        """
        with self._lock:
            if self._abandoned:
                raise Abandoned("the caller gave up")
            self._fd = fd

    def detach(self) -> None:
        """Thread: the socket is about to be closed (its number may be reused)."""
        with self._lock:
            self._fd = None

    def deliver(self, connection: Any) -> Any:
        """Thread: hand ``connection`` over; closed instead (and None returned) if abandoned."""
        with self._lock:
            self._fd = None
            if not self._abandoned:
                self._result = connection
                return connection
        if self._close is not None:
            self._close(connection)
        return None

    def finish(self) -> None:
        """Task: the thread ended after all; close anything it delivered that nobody took."""
        with self._lock:
            self._abandoned = True
            self._fd = None
            leaked, self._result = self._result, None
        if leaked is not None and self._close is not None:
            self._close(leaked)

    def abandon(self) -> None:
        """Task: give up. Shuts the attached socket down (if the call began), closes anything delivered."""
        with self._lock:
            self._abandoned = True
            leaked, self._result = self._result, None
            if self._fd is not None and self._running:
                # The thread is between attach() and deliver()/detach(): the fd is
                # still its connection's, so this cannot hit an unrelated socket.
                shutdown_socket(self._fd)
        if leaked is not None and self._close is not None:
            self._close(leaked)


_local = threading.local()


def thread_handoff() -> Handoff | None:
    """The :class:`Handoff` of the :func:`run_abandonable` call running in this thread, if any.

    Blocking code that connects (the installer, the change stream's helpers)
    attaches its socket to it, so a caller that gives up shuts that socket down.
    """
    handoff: Handoff | None = getattr(_local, "handoff", None)
    return handoff


async def run_abandonable(
    fn: Callable[[], T],
    *,
    timeout: float | None,  # noqa: ASYNC109 - ends in CallTimeout, an OSError the reconnect loops retry
    handoff: Handoff | None = None,
    what: str = "call",
    grace: float = 0.0,
) -> T:
    """Run ``fn()`` in a worker thread; give up after ``timeout`` seconds or when cancelled.

    On giving up, ``handoff.abandon()`` shuts down the socket the thread
    attached (so the thread returns promptly) and closes whatever it delivers
    later. ``fn`` should use ``handoff`` for any connection it makes or uses.

    Args:
        fn: the blocking call.
        timeout: seconds before giving up (None: only cancellation gives up).
        handoff: shared with ``fn`` (a fresh one by default).
        what: names the call in the :class:`CallTimeout` message.
        grace: when cancelled, wait (shielded) up to this long for the thread
            to finish before abandoning it: a query of a healthy server then
            leaves its connection usable (a stream closing mid-read can still
            store its position), while a silent one is cut off.

    Raises:
        CallTimeout: no result within ``timeout`` (``what`` names the call).
        trio.Cancelled: the caller was cancelled (the thread was abandoned).
    """
    handoff = handoff if handoff is not None else Handoff()
    token = trio.lowlevel.current_trio_token()
    ended = trio.Event()

    def work() -> T:
        _local.handoff = handoff
        try:
            handoff.begin()
            return fn()
        finally:
            _local.handoff = None
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(ended.set)

    # Given up on before anything started: nothing to wait for, nothing to undo.
    await trio.lowlevel.checkpoint_if_cancelled()
    answered = False  # the thread returned or raised: nothing to abandon
    returned = False  # ...and its result is ours
    result: Any = None
    try:
        with trio.move_on_after(math.inf if timeout is None else timeout):
            try:
                result = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
            except trio.Cancelled:
                if grace > 0:
                    with trio.CancelScope(shield=True), trio.move_on_after(grace):
                        await ended.wait()
                if ended.is_set():
                    answered = True
                    handoff.finish()  # closes what it delivered: nobody takes it now
                raise
            except BaseException:
                answered = True
                raise
            answered = returned = True
    finally:
        if not answered:
            handoff.abandon()
    if not returned:
        # Our own time limit fired (the thread may have ended at that same moment).
        raise CallTimeout(f"{what}: no answer within {timeout:g}s")
    return result  # type: ignore[no-any-return]


def _is_async(function: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    # A callable object with an ``async def __call__``.
    call = getattr(function, "__call__", None)  # noqa: B004 - the bound method is wanted
    return call is not None and inspect.iscoroutinefunction(call)


async def call_callback(callback: Callable[[Any], Any], argument: Any) -> None:
    """Call a user's callback: ``async def`` ones in the Trio loop, plain ones in a worker thread.

    A plain function's thread is abandoned when the caller is cancelled (a
    stuck callback cannot hold a shutdown past its deadline); it runs on
    until it returns, its result ignored.
    """
    if _is_async(callback):
        await callback(argument)
    else:
        await trio.to_thread.run_sync(callback, argument, abandon_on_cancel=True)
