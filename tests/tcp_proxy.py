"""A small Trio TCP proxy on 127.0.0.1 that fault tests can break on purpose.

``pause()`` stops forwarding in both directions while keeping every socket
open: a silently dead peer (the client's kernel still ACKs, keepalives are
answered, nothing arrives). While paused the proxy still *reads* both sides
and holds the bytes (delivered in order on ``resume()``), so it notices when
the client gives up on a connection (``clients_closed``) without the client
getting any answer. New connections made while paused are accepted and held
until ``resume()``. ``pause_on`` pauses by itself when the client sends a
given byte string (e.g. ``b"LISTEN"``: the peer goes silent mid-handshake).
``drop_all()`` closes every proxied connection.
"""

from __future__ import annotations

import math

import trio

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target_host:target_port``.

    Run it with ``port = await nursery.start(proxy.run)``.
    """

    def __init__(self, target_host: str, target_port: int, *, pause_on: bytes | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.pause_on = pause_on
        self.port = 0
        self._forwarding = trio.Event()
        self._forwarding.set()
        self._connections: set[trio.CancelScope] = set()
        #: Connections accepted since the proxy started.
        self.accepted = 0
        #: Connections whose client closed (or reset) its side, seen even while paused.
        self.clients_closed = 0

    @property
    def forwarding(self) -> bool:
        """True unless paused."""
        return self._forwarding.is_set()

    def pause(self) -> None:
        """Stop forwarding bytes (both directions); keep every socket open."""
        if self._forwarding.is_set():
            self._forwarding = trio.Event()

    def resume(self) -> None:
        """Forward again, starting with whatever was held while paused."""
        self._forwarding.set()

    def drop_all(self) -> None:
        """Close every proxied connection now (new ones are still accepted)."""
        for scope in list(self._connections):
            scope.cancel()

    @property
    def open_connections(self) -> int:
        """Proxied connections currently open."""
        return len(self._connections)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward until cancelled; reports the listening port."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _wait_forwarding(self) -> None:
        while not self._forwarding.is_set():
            await self._forwarding.wait()  # pause() may have replaced the event meanwhile

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                async with client, trio.open_nursery() as nursery:
                    to_server, from_client = trio.open_memory_channel[bytes](math.inf)
                    nursery.start_soon(self._read, client, to_server, True)
                    await self._wait_forwarding()
                    try:
                        server = await trio.open_tcp_stream(self.target_host, self.target_port)
                    except OSError:
                        nursery.cancel_scope.cancel()
                        return
                    async with server:
                        to_client, from_server = trio.open_memory_channel[bytes](math.inf)
                        nursery.start_soon(self._read, server, to_client, False)
                        async with trio.open_nursery() as writers:
                            writers.start_soon(self._write, from_client, server, writers.cancel_scope)
                            writers.start_soon(self._write, from_server, client, writers.cancel_scope)
                        # One side closed and its bytes were delivered: end the
                        # whole proxied connection, like a real hop.
                        nursery.cancel_scope.cancel()
            finally:
                self._connections.discard(scope)

    async def _read(
        self, source: trio.SocketStream, channel: trio.MemorySendChannel[bytes], from_client: bool
    ) -> None:
        with channel:
            try:
                while True:
                    data = await source.receive_some(65536)
                    if not data:
                        break
                    if from_client and self.pause_on is not None and self.pause_on in data:
                        self.pause()
                    channel.send_nowait(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            if from_client:
                self.clients_closed += 1

    async def _write(
        self, channel: trio.MemoryReceiveChannel[bytes], sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for data in channel:
                await self._wait_forwarding()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()
