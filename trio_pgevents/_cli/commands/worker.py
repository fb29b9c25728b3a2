"""``worker``: listen (or read the durable outbox) and call the settings' callbacks."""

from __future__ import annotations

import argparse
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import trio
from sqlalchemy.engine import Engine

from ... import DurableStream, DurableWorker, Installer, open_durable_stream, open_event_stream
from ..._decode import decode_trigger_payload
from ..._options import DEFAULT_PARTITIONS
from ..._secrets import get_logger
from ..database import command_settings
from ..defaults import DEFAULT_CHANNEL
from ..dispatch import CallbackRouter, Dispatcher
from ..exits import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ExitStatus
from ..metrics import WorkerFigures, require_prometheus, serving_metrics
from ..settings import Settings
from ..signals import serve_until_signalled

__all__ = ["cmd_worker"]

logger = get_logger("trio_pgevents.cli")


class _Worker(Protocol):
    """What both workers are: :class:`Dispatcher` and the library's ``DurableWorker``."""

    def stop(self) -> None: ...

    async def run(self, events: Any, /) -> object: ...


async def _serve(
    args: argparse.Namespace,
    settings: Settings,
    worker: _Worker,
    open_stream: Callable[[Engine], AbstractAsyncContextManager[Any]],
    *,
    started: Callable[[], str],
    finishing: str,
    summary: Callable[[], str],
    figures: WorkerFigures,
    on_open: Callable[[Engine, Any], None] = lambda engine, stream: None,
) -> int:
    """Run ``worker`` on the stream until it ends or a signal stops it; log ``summary()`` at the end.

    ``started()`` is logged once the stream is open (``on_open(engine, stream)``
    is called then); ``finishing`` says what a graceful stop waits for. With
    ``--metrics-port``, ``figures`` are served from before connecting until
    the worker stopped.
    """

    def on_signal(name: str, scope: trio.CancelScope) -> None:
        logger.info("received %s: stopping (%s)", name, finishing)
        worker.stop()

    async def body(engine: Engine) -> None:
        async with open_stream(engine) as stream:
            on_open(engine, stream)
            logger.info("%s", started())
            await worker.run(stream)

    async with AsyncExitStack() as serving:
        if args.metrics_port is not None:
            await serving.enter_async_context(serving_metrics(figures, args.metrics_host, args.metrics_port))
        forced = await serve_until_signalled(args, settings, on_signal, body)
    logger.info("worker stopped: %s", summary())
    return EXIT_INTERRUPTED if forced else EXIT_OK


async def _run_listening_worker(args: argparse.Namespace, settings: Settings, router: CallbackRouter) -> int:
    """``worker``: LISTEN on the channels; callbacks run up to ``--concurrency`` at once."""
    dispatcher = Dispatcher(router, concurrency=args.concurrency, shutdown_timeout=args.shutdown_timeout)
    channels = list(dict.fromkeys(args.channel or [DEFAULT_CHANNEL]))
    decoders = dict.fromkeys(channels, decode_trigger_payload)
    gets = {
        "event": "the event object",
        "json-full": "the full JSON payload",
        "json": "the JSON payload in pg_events' shape",
    }[args.callback_arg]
    figures = WorkerFigures(lambda: dispatcher.statistics)

    def summary() -> str:
        s = dispatcher.statistics
        return f"{s.received} events, {s.succeeded} callbacks ok, {s.failed} failed, {s.cancelled} cancelled"

    return await _serve(
        args,
        settings,
        dispatcher,
        lambda engine: open_event_stream(engine, channels, decoders=decoders),
        started=lambda: (
            f"worker listening on {', '.join(channels)} at {settings.safe_url} "
            f"(concurrency {args.concurrency}, callbacks get {gets})"
        ),
        finishing="finishing running callbacks",
        summary=summary,
        figures=figures,
        on_open=lambda engine, stream: figures.attach(stream),
    )


async def _run_durable_worker(args: argparse.Namespace, settings: Settings, router: CallbackRouter) -> int:
    """``worker --consumer NAME``: read the durable outbox; retry, then dead-letter, failing events."""
    worker = DurableWorker(router, max_attempts=args.max_attempts, shutdown_timeout=args.shutdown_timeout)
    channel = (args.channel or [DEFAULT_CHANNEL])[0]

    lease: dict[str, Any] = {}

    @asynccontextmanager
    async def open_stream(engine: Engine) -> AsyncIterator[DurableStream]:
        installer = Installer(engine, schema=args.installer_schema, channel=channel)
        lease.update(await _lease_options(args, installer))
        async with open_durable_stream(
            engine,
            args.consumer,
            schema=args.installer_schema,
            channel=channel,
            auto_ack=False,
            retention_interval=args.retention_interval or None,
            **lease,
        ) as stream:
            yield stream

    figures = WorkerFigures(lambda: worker.statistics, consumer=args.consumer)

    def on_open(engine: Engine, stream: DurableStream) -> None:
        installer = Installer(engine, schema=args.installer_schema, channel=channel)
        figures.attach(stream, functools.partial(installer.aio.list_consumers, args.consumer))

    def summary() -> str:
        s = worker.statistics
        return (
            f"{s.received} events, {s.succeeded} callbacks ok, {s.failed} failed attempts, "
            f"{s.dead_lettered} dead-lettered, {s.cancelled} cancelled"
        )

    return await _serve(
        args,
        settings,
        worker,
        open_stream,
        started=lambda: (
            f"worker consuming {args.installer_schema}.events as durable consumer "
            f"{args.consumer!r} ({_describe_mode(lease)}) at {settings.safe_url} (one at a time, up to "
            f"{args.max_attempts} attempts)"
        ),
        finishing="finishing the running callback",
        summary=summary,
        figures=figures,
        on_open=on_open,
    )


async def _lease_options(args: argparse.Namespace, installer: Installer) -> dict[str, Any]:
    """The durable options of the command line (``--group``, ``--partitions``...) for ``open_durable_stream``.

    A group's partitions are fixed when it is created: without ``--partitions``
    a worker joins an existing group with the group's own count (a new group
    gets the library's default).
    """
    options: dict[str, Any] = {"group": args.group}
    if args.lease_timeout is not None:
        options["lease_timeout"] = args.lease_timeout
    if args.min_read_interval is not None:
        options["min_read_interval"] = args.min_read_interval
    if args.partitions is not None:
        options["partitions"] = args.partitions
    elif args.group:
        existing = await installer.aio.list_consumers(args.consumer)
        if existing and existing[0].mode == "group":
            options["partitions"] = existing[0].partitions
    return options


def _describe_mode(lease: dict[str, Any]) -> str:
    if not lease.get("group"):
        return "exclusive: one worker active, the others stand by"
    return f"group of {lease.get('partitions', DEFAULT_PARTITIONS)} partitions"


def _check_options(args: argparse.Namespace) -> None:
    """Options that make no sense together: one line, exit 2, before anything connects."""
    if args.consumer is None:
        durable_only = {
            "--group": args.group,
            "--partitions": args.partitions is not None,
            "--lease-timeout": args.lease_timeout is not None,
            "--min-read-interval": args.min_read_interval is not None,
        }
        for flag, given in durable_only.items():
            if given:
                raise ExitStatus(EXIT_USAGE, f"worker: {flag} needs --consumer (durable mode)")
    if args.partitions is not None and not args.group:
        raise ExitStatus(
            EXIT_USAGE, "worker: --partitions needs --group (an exclusive consumer has one partition)"
        )
    if args.metrics_port is not None:
        require_prometheus()


async def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    router = CallbackRouter(
        settings.data_update_callback, settings.db_schema_update_callback, arg=args.callback_arg
    )
    if args.consumer is not None:
        return await _run_durable_worker(args, settings, router)
    return await _run_listening_worker(args, settings, router)


def cmd_worker(args: argparse.Namespace) -> int:
    """``worker``: listen and call the settings' callbacks."""
    _check_options(args)
    settings = command_settings(args, need_callbacks=True, schema_callback=args.auto_rebuild)
    return trio.run(_run_worker, args, settings)
