"""A small Trio TCP proxy on 127.0.0.1 that fault tests can break on purpose.

``pause()`` stops forwarding in both directions while keeping every socket
open (a silently dead peer: the client's kernel still ACKs, keepalives are
answered, nothing arrives). New connections made while paused are accepted
and held until ``resume()``. ``drop_all()`` closes every proxied connection.
"""

from __future__ import annotations

import trio

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target_host:target_port``.

    Run it with ``port = await nursery.start(proxy.run)``.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._forwarding = trio.Event()
        self._forwarding.set()
        self._connections: set[trio.CancelScope] = set()
        #: Connections accepted since the proxy started.
        self.accepted = 0

    @property
    def forwarding(self) -> bool:
        """True unless paused."""
        return self._forwarding.is_set()

    def pause(self) -> None:
        """Stop forwarding bytes (both directions); keep every socket open."""
        if self._forwarding.is_set():
            self._forwarding = trio.Event()

    def resume(self) -> None:
        """Forward again, including whatever was held while paused."""
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

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                async with client:
                    await self._forwarding.wait()
                    try:
                        server = await trio.open_tcp_stream(self.target_host, self.target_port)
                    except OSError:
                        return
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
            finally:
                self._connections.discard(scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                await self._forwarding.wait()
                data = await source.receive_some(65536)
                if not data:
                    break
                # Bytes read just before a pause are held, not delivered.
                await self._forwarding.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # One side closed: close the whole proxied connection, like a real hop.
        scope.cancel()
