"""``worker``: listen (or read the durable outbox) and call the settings' callbacks."""

from __future__ import annotations

import argparse

import trio
from sqlalchemy.engine import Engine

from ... import DurableWorker, open_durable_stream, open_event_stream
from ..._decode import decode_trigger_payload
from ..._secrets import get_logger
from ..database import command_settings
from ..defaults import DEFAULT_CHANNEL
from ..dispatch import CallbackRouter, Dispatcher
from ..settings import Settings
from ..signals import serve_until_signalled

__all__ = ["cmd_worker"]

logger = get_logger("trio_pgevents.cli")


async def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    router = CallbackRouter(
        settings.data_update_callback, settings.db_schema_update_callback, arg=args.callback_arg
    )
    if args.consumer is not None:
        return await _run_durable_worker(args, settings, router)
    dispatcher = Dispatcher(router, concurrency=args.concurrency, shutdown_timeout=args.shutdown_timeout)
    channels = list(dict.fromkeys(args.channel or [DEFAULT_CHANNEL]))

    def stop(name: str, scope: trio.CancelScope) -> None:
        logger.info("received %s: stopping (finishing running callbacks)", name)
        dispatcher.stop()

    async def body(engine: Engine) -> None:
        decoders = dict.fromkeys(channels, decode_trigger_payload)
        async with open_event_stream(engine, channels, decoders=decoders) as stream:
            logger.info(
                "worker listening on %s at %s (concurrency %d, callbacks get %s)",
                ", ".join(channels),
                settings.safe_url,
                args.concurrency,
                "the event object" if args.callback_arg == "event" else "the JSON payload",
            )
            await dispatcher.run(stream)

    forced = await serve_until_signalled(args, settings, stop, body)
    stats = dispatcher.statistics
    logger.info(
        "worker stopped: %d events, %d callbacks ok, %d failed, %d cancelled",
        stats.received,
        stats.succeeded,
        stats.failed,
        stats.cancelled,
    )
    return 130 if forced else 0


async def _run_durable_worker(args: argparse.Namespace, settings: Settings, router: CallbackRouter) -> int:
    """``worker --consumer NAME``: read the durable outbox; retry, then dead-letter, failing events."""
    worker = DurableWorker(router, max_attempts=args.max_attempts, shutdown_timeout=args.shutdown_timeout)
    channel = (args.channel or [DEFAULT_CHANNEL])[0]

    def stop(name: str, scope: trio.CancelScope) -> None:
        logger.info("received %s: stopping (finishing the running callback)", name)
        worker.stop()

    async def body(engine: Engine) -> None:
        async with open_durable_stream(
            engine,
            args.consumer,
            schema=args.installer_schema,
            channel=channel,
            auto_ack=False,
            retention_interval=args.retention_interval or None,
        ) as stream:
            logger.info(
                "worker consuming %s.events as durable consumer %r at %s (one at a time, up to %d attempts)",
                args.installer_schema,
                args.consumer,
                settings.safe_url,
                args.max_attempts,
            )
            await worker.run(stream)

    forced = await serve_until_signalled(args, settings, stop, body)
    stats = worker.statistics
    logger.info(
        "worker stopped: %d events, %d callbacks ok, %d failed attempts, %d dead-lettered, %d cancelled",
        stats.received,
        stats.succeeded,
        stats.failed,
        stats.dead_lettered,
        stats.cancelled,
    )
    return 130 if forced else 0


def cmd_worker(args: argparse.Namespace) -> int:
    """``worker``: listen and call the settings' callbacks."""
    settings = command_settings(args, need_callbacks=True)
    return trio.run(_run_worker, args, settings)
