"""The ``trio-pgevents`` command line (also ``python -m trio_pgevents``).

Commands: ``build``, ``worker``, ``listen``, ``status``, ``uninstall``, ``demo``.
Settings follow pg_events (see :mod:`trio_pgevents._settings`). Exit status:
0 success, 1 failure (or ``status`` found something OUTDATED/MISSING),
2 bad usage or settings (one line naming what was wrong; ``--debug`` adds the
traceback), 130 interrupted before the command could stop gracefully.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from ._connection import as_engine
from ._decode import decode_trigger_payload
from ._errors import ConfigurationError, TrioPgEventsError
from ._events import Event, Overflow, RowChange, SchemaChange, StreamGap
from ._settings import DATABASE_URL, Settings, load_settings
from ._stream import open_event_stream
from ._worker import CallbackRouter, Dispatcher

__all__ = ["main", "build_parser"]

logger = logging.getLogger("trio_pgevents.cli")

PROG = "trio-pgevents"
DEFAULT_CHANNEL = "pgevents"
CONNECT_TIMEOUT = 10


class CommandError(TrioPgEventsError):
    """A command failed in a way already explained by its message (exit status 1)."""


class ExitStatus(Exception):
    """Raised to end a command with a given exit status after printing a message."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---- shared helpers ------------------------------------------------------------------------------


def _bool_arg(text: str) -> bool:
    """pg_events' ``--auto-rebuild`` values (strtobool)."""
    value = text.strip().lower()
    if value in ("y", "yes", "t", "true", "on", "1"):
        return True
    if value in ("n", "no", "f", "false", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, not {text}")
    return value


def _settings(args: argparse.Namespace, *, need_callbacks: bool = False) -> Settings:
    return load_settings(
        args.settings,
        database_url=args.database_url,
        need_callbacks=need_callbacks,
        application_name=f"{PROG}-{args.command}",
    )


def _make_engine(settings: Settings) -> Engine:
    engine = sqlalchemy.create_engine(
        settings.database_url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT}
    )
    return as_engine(engine)


def _check_connection(engine: Engine, setting: str) -> None:
    """Connect once, so an unreachable server is a settings error (exit 2), not a crash."""
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except Exception as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        reason = detail[0] if detail else type(exc).__name__
        raise ConfigurationError(
            f"{setting}: cannot connect to {engine.url.render_as_string(hide_password=True)}: {reason}"
        ) from exc


async def _connect(args: argparse.Namespace, settings: Settings) -> Engine:
    engine = _make_engine(settings)
    setting = "--database-url" if args.database_url else DATABASE_URL
    try:
        await trio.to_thread.run_sync(_check_connection, engine, setting)
    except BaseException:
        engine.dispose()
        raise
    return engine


async def _watch_signals(receiver: Any, on_first: Callable[[str], None], scope: trio.CancelScope) -> None:
    """First SIGINT/SIGTERM: graceful stop. Second one: stop now."""
    first = True
    async for signum in receiver:
        name = signal.Signals(signum).name
        if first:
            first = False
            on_first(name)
        else:
            logger.warning("received %s again: stopping now", name)
            scope.cancel()


def _signal_receiver() -> Any:
    return trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)


# ---- worker --------------------------------------------------------------------------------------


async def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    router = CallbackRouter(
        settings.data_update_callback, settings.db_schema_update_callback, arg=args.callback_arg
    )
    dispatcher = Dispatcher(router, concurrency=args.concurrency, shutdown_timeout=args.shutdown_timeout)
    channels = list(dict.fromkeys(args.channel or [DEFAULT_CHANNEL]))
    with _signal_receiver() as signals:
        engine = await _connect(args, settings)
        try:
            async with trio.open_nursery() as nursery:

                def stop(name: str) -> None:
                    logger.info("received %s: stopping (finishing running callbacks)", name)
                    dispatcher.stop()

                nursery.start_soon(_watch_signals, signals, stop, nursery.cancel_scope)
                decoders = dict.fromkeys(channels, decode_trigger_payload)
                async with open_event_stream(engine, channels, decoders=decoders) as stream:
                    logger.info(
                        "worker listening on %s at %s (concurrency %d, callbacks get %s)",
                        ", ".join(channels),
                        settings.safe_url,
                        args.concurrency,
                        "the event object" if args.callback_arg == "event" else "the JSON payload",
                    )
                    stats = await dispatcher.run(stream)
                nursery.cancel_scope.cancel()
        finally:
            engine.dispose()
    logger.info(
        "worker stopped: %d events, %d callbacks ok, %d failed, %d cancelled",
        stats.received,
        stats.succeeded,
        stats.failed,
        stats.cancelled,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """``worker``: listen and call the settings' callbacks."""
    settings = _settings(args, need_callbacks=True)
    return trio.run(_run_worker, args, settings)


# ---- listen --------------------------------------------------------------------------------------


def event_to_json(event: Event) -> dict[str, Any]:
    """One event as a JSON-ready dict (what ``listen`` prints, one per line)."""
    out: dict[str, Any] = {
        "type": type(event).__name__,
        "channel": event.channel,
        "payload": event.payload,
        "pid": event.pid,
        "source": event.source,
    }
    if isinstance(event, (RowChange, SchemaChange)):
        with contextlib.suppress(ValueError):  # not JSON after all: the payload says it all
            out["data"] = event.data
    elif isinstance(event, StreamGap):
        out.update(
            disconnected_at=event.disconnected_at.isoformat(),
            reconnected_at=event.reconnected_at.isoformat(),
            reason=event.reason,
            replayed=event.replayed,
        )
    elif isinstance(event, Overflow):
        out["dropped"] = event.dropped
    return out


async def _run_listen(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    printed = 0
    with _signal_receiver() as signals:
        engine = await _connect(args, settings)
        try:
            async with trio.open_nursery() as nursery:

                def stop(name: str) -> None:
                    logger.info("received %s: stopping", name)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(_watch_signals, signals, stop, nursery.cancel_scope)
                async with open_event_stream(engine, args.channels) as stream:
                    logger.info("listening on %s at %s", ", ".join(args.channels), settings.safe_url)
                    async for batch in stream.batches():
                        for event in batch:
                            out.write(json.dumps(event_to_json(event), ensure_ascii=False, default=str))
                            out.write("\n")
                            printed += 1
                            if args.count is not None and printed >= args.count:
                                break
                        out.flush()
                        if args.count is not None and printed >= args.count:
                            break
                nursery.cancel_scope.cancel()
        finally:
            engine.dispose()
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    """``listen``: print each event as one JSON line."""
    settings = _settings(args)
    return trio.run(_run_listen, args, settings, sys.stdout)


# ---- the parser ----------------------------------------------------------------------------------


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--settings",
        metavar="MODULE",
        help="pg_events-style settings: a dotted module path (my_app.settings) or a .py file",
    )
    group.add_argument(
        "--database-url",
        metavar="URL",
        help=f"database URL; overrides ${DATABASE_URL} and the settings module",
    )
    group.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default INFO); logs go to stderr",
    )
    group.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every command and option)."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PostgreSQL change events for Trio: install triggers, run callbacks, listen.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    worker = sub.add_parser(
        "worker",
        parents=[common],
        help="listen and call the settings' callbacks",
        description=cmd_worker.__doc__,
    )
    worker.add_argument(
        "--callback-arg",
        choices=["json", "event"],
        default="json",
        help="what callbacks receive: the JSON payload string as pg_events did (default), "
        "or the decoded RowChange/SchemaChange object",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive_int,
        default=1,
        metavar="N",
        help="how many callbacks may run at once (default 1: one after another, in order)",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=_non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long running callbacks may take to finish (default 30)",
    )
    worker.add_argument(
        "--channel",
        action="append",
        metavar="NAME",
        help=f"channel to listen on (default {DEFAULT_CHANNEL!r}, the installer's); repeatable",
    )
    worker.set_defaults(func=cmd_worker)

    listen = sub.add_parser(
        "listen", parents=[common], help="print each event as one JSON line", description=cmd_listen.__doc__
    )
    listen.add_argument("channels", nargs="+", metavar="CHANNEL", help="channels to listen on")
    listen.add_argument("--count", type=_positive_int, metavar="N", help="exit after N events")
    listen.set_defaults(func=cmd_listen)
    return parser


def _fail(message: str, status: int) -> int:
    line = " ".join(message.split())  # one line, always
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except ExitStatus as exc:
        if exc.message:
            return _fail(exc.message, exc.status)
        return exc.status
    except ConfigurationError as exc:
        if args.debug:
            traceback.print_exc()
        return _fail(str(exc), 2)
    except TrioPgEventsError as exc:
        if args.debug:
            traceback.print_exc()
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Piped into `head` or similar: the reader went away; that is not an error.
        return 0
