"""The ``trio-pgevents`` command line (also ``python -m trio_pgevents``).

Commands: ``build``, ``worker``, ``listen``, ``status``, ``uninstall``,
``drop-change-stream``, ``demo``.
Settings follow pg_events (see :mod:`trio_pgevents._cli.settings`). Exit status:
0 success, 1 failure (or ``status`` found something OUTDATED/MISSING),
2 bad usage or settings (one line naming what was wrong; ``--debug`` adds the
traceback), 3 ``status`` found a change stream slot past ``--max-slot-lag``
(or lost) and nothing OUTDATED/MISSING (1 wins when both), 130 interrupted
before the command could stop gracefully.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO, TypeVar

import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

# The library, from its root (capabilities) and its core modules; never the reverse.
from .. import (
    ChangeStreamStatus,
    DurableWorker,
    Event,
    InstallAction,
    Installer,
    InstallStatus,
    Overflow,
    RowChange,
    SchemaChange,
    StreamGap,
    change_stream_status,
    open_durable_stream,
    open_event_stream,
)
from .._connection import as_engine
from .._decode import decode_trigger_payload
from .._errors import ConfigurationError, InsufficientPrivilegeError, ReplicationError, TrioPgEventsError
from .._secrets import RedactingFilter, get_logger, safe_url, scrub
from .dispatch import CallbackRouter, Dispatcher
from .settings import DATABASE_URL, Settings, load_settings

__all__ = ["main", "build_parser"]

logger = get_logger("trio_pgevents.cli")

T = TypeVar("T")

PROG = "trio-pgevents"
DEFAULT_CHANNEL = "pgevents"
CONNECT_TIMEOUT = 10
#: ``build`` shows a progress bar (on a terminal) from this many tables on.
PROGRESS_THRESHOLD = 20
#: ``status`` exits with this when a change stream slot is past ``--max-slot-lag``.
EXIT_SLOT_LAG = 3
#: ``--max-slot-lag`` default: 1 GiB of WAL not yet confirmed by the slot's consumer.
DEFAULT_MAX_SLOT_LAG = 1 << 30


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


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0")
    return value


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


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


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _byte_size(text: str) -> int:
    """``--max-slot-lag``: bytes, or with a unit as Postgres counts them (512MB, 1GB, 64kB; x1024)."""
    value = text.strip().lower().replace(" ", "")
    number = value.rstrip("kmgtib")
    unit = value[len(number) :]
    if unit.endswith("ib"):
        unit = unit[:-2]
    elif unit.endswith("b") and unit != "b":
        unit = unit[:-1]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _SIZE_UNITS or not 0 <= amount < float("inf"):
        raise argparse.ArgumentTypeError(f"expected bytes, or a size such as 512MB or 1GB, not {text!r}")
    return int(amount * _SIZE_UNITS[unit])


def _human_bytes(amount: int) -> str:
    """``1610612736`` -> ``1.5 GiB``."""
    size = float(amount)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{amount} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _slot_name(text: str) -> str:
    # One rule for slot names, the change stream's; the library has no public check of a name
    # alone (change_stream_status checks it, then connects).
    from .. import _cdc

    try:
        return _cdc._check_slot_name(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        raise ConfigurationError(f"{setting}: cannot connect to {safe_url(engine.url)}: {reason}") from exc


async def _connect(args: argparse.Namespace, settings: Settings) -> Engine:
    engine = _make_engine(settings)
    setting = "--database-url" if args.database_url else DATABASE_URL
    try:
        await trio.to_thread.run_sync(_check_connection, engine, setting)
    except BaseException:
        engine.dispose()
        raise
    return engine


class _Signals:
    """First SIGINT/SIGTERM: graceful stop (``on_first``). Second one: cancel ``scope`` now."""

    def __init__(self, on_first: Callable[[str], None], scope: trio.CancelScope) -> None:
        self.on_first = on_first
        self.scope = scope
        self.forced = False

    async def watch(self, receiver: Any) -> None:
        first = True
        async for signum in receiver:
            name = signal.Signals(signum).name
            if first:
                first = False
                self.on_first(name)
            else:
                logger.warning("received %s again: stopping now", name)
                self.forced = True
                self.scope.cancel()


def _signal_receiver() -> Any:
    return trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)


async def _serve_until_signalled(
    args: argparse.Namespace,
    settings: Settings,
    on_signal: Callable[[str, trio.CancelScope], None],
    body: Callable[[Engine], Awaitable[None]],
) -> bool:
    """Connect, run ``body(engine)`` while watching SIGINT/SIGTERM, dispose the engine.

    The first signal calls ``on_signal(name, scope)`` (stop gracefully, or cancel
    ``scope``); a second one cancels at once. Returns True if a second signal
    forced the stop.
    """
    with _signal_receiver() as signals:
        engine = await _connect(args, settings)
        try:
            async with trio.open_nursery() as nursery:
                scope = nursery.cancel_scope
                watcher = _Signals(lambda name: on_signal(name, scope), scope)
                nursery.start_soon(watcher.watch, signals)
                await body(engine)
                scope.cancel()
        finally:
            engine.dispose()
    return watcher.forced


# ---- worker --------------------------------------------------------------------------------------


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

    forced = await _serve_until_signalled(args, settings, stop, body)
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

    forced = await _serve_until_signalled(args, settings, stop, body)
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
        out["data"] = event.data  # never raises: {} for a hand-built event whose payload is not JSON
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


def event_line(event: Event, *, ascii_only: bool = False) -> str:
    """One event as one line of JSON, newline included. Never raises.

    Should the event's data not serialise (nesting past what ``json.dumps``
    recurses into), the line is printed without ``data``: the payload is in it.
    """
    fields = event_to_json(event)
    try:
        text = json.dumps(fields, ensure_ascii=ascii_only, default=str)
    except Exception:  # RecursionError, ...: whatever a payload's data can cause
        fields.pop("data", None)
        text = json.dumps(fields, ensure_ascii=ascii_only, default=str)
    return text + "\n"


def _print_event(out: TextIO, event: Event) -> None:
    try:
        out.write(event_line(event))
    except UnicodeEncodeError:
        # Text the output cannot encode (a lone surrogate; a terminal that is not UTF-8):
        # the same JSON with \u escapes. The encoding failed before anything was written.
        out.write(event_line(event, ascii_only=True))


async def _run_listen(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    printed = 0

    def stop(name: str, scope: trio.CancelScope) -> None:
        logger.info("received %s: stopping", name)
        scope.cancel()

    async def body(engine: Engine) -> None:
        nonlocal printed
        async with open_event_stream(engine, args.channels) as stream:
            logger.info("listening on %s at %s", ", ".join(args.channels), settings.safe_url)
            async for batch in stream.batches():
                for event in batch:
                    # Any payload prints as a line: a bad one is a Notification by now.
                    _print_event(out, event)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        break
                out.flush()
                if args.count is not None and printed >= args.count:
                    break

    await _serve_until_signalled(args, settings, stop, body)
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    """``listen``: print each event as one JSON line."""
    settings = _settings(args)
    return trio.run(_run_listen, args, settings, sys.stdout)


# ---- installer commands: build, status, uninstall -----------------------------------------------------


def _format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _installer(args: argparse.Namespace, engine: Engine) -> Installer:
    return Installer(engine, schema=args.installer_schema, channel=args.channel)


_USER_SCHEMAS = """
SELECT n.nspname,
       (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p'))
FROM pg_namespace n
WHERE n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema' AND n.nspname <> %(own)s
  AND NOT EXISTS (SELECT 1 FROM pg_depend d  -- schemas created by extensions
                  WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
ORDER BY n.nspname
"""

_SCHEMA_TABLES = """
SELECT n.nspname, count(c.oid)
FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
WHERE n.nspname = ANY(%(names)s)
GROUP BY n.nspname
"""


def _schemas(engine: Engine, wanted: Sequence[str] | None, own: str) -> list[tuple[str, int]]:
    """(schema, number of tables) for the chosen schemas, or for every user schema."""
    with engine.connect() as connection:
        cursor = connection.connection.cursor()
        if wanted:
            cursor.execute(_SCHEMA_TABLES, {"names": list(wanted)})
            found = {name: int(count) for name, count in cursor.fetchall()}
            missing = [name for name in wanted if name not in found]
            if missing:
                raise ConfigurationError(f"--schema: no such schema: {', '.join(map(repr, missing))}")
            return [(name, found[name]) for name in dict.fromkeys(wanted)]
        cursor.execute(_USER_SCHEMAS, {"own": own})
        return [(name, int(count)) for name, count in cursor.fetchall()]


class _Progress:
    """A progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, unit: str) -> None:
        self.total = total
        self.unit = unit
        self.done = 0
        self.enabled = sys.stderr.isatty() and total > 0

    def show(self, label: str) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {self.unit}  {label[:40]:<40}")
        sys.stderr.flush()

    def advance(self, amount: int, label: str) -> None:
        self.done += amount
        self.show(label)

    async def while_waiting(self, label: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work``; meanwhile redraw the bar with the time spent, so a long step shows life."""
        if not self.enabled:
            return await work()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def tick() -> None:
                while True:
                    self.show(f"{label} {trio.current_time() - started:.1f}s")
                    await trio.sleep(0.2)  # a display refresh rate, not a wait for a condition

            nursery.start_soon(tick)
            result = await work()
            nursery.cancel_scope.cancel()
        return result

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def _print_actions(actions: Sequence[InstallAction], out: TextIO) -> None:
    rows = [(a.action, a.kind, a.name, a.reason or "") for a in actions]
    out.write(_format_table(("ACTION", "KIND", "NAME", "REASON"), rows) + "\n")
    counts = {name: sum(1 for a in actions if a.action == name) for name in _ACTIONS}
    out.write(", ".join(f"{n} {name}" for name, n in counts.items() if n or name != "removed") + "\n")


_ACTIONS = ("installed", "replaced", "unchanged", "removed", "skipped")


def _merge(actions: list[InstallAction], more: Sequence[InstallAction]) -> None:
    """Add ``more`` to ``actions``; a repeat of an object counts only if it did something."""
    index = {(a.kind, a.name): i for i, a in enumerate(actions)}
    for action in more:
        i = index.get((action.kind, action.name))
        if i is None:
            index[(action.kind, action.name)] = len(actions)
            actions.append(action)
        elif actions[i].action == "unchanged" and action.action != "unchanged":
            actions[i] = action


async def _run_build(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = await _connect(args, settings)
    try:
        installer = _installer(args, engine)
        actions: list[InstallAction] = []
        # First what any role may install, so the report shows it even if DDL triggers are denied.
        _merge(actions, (await installer.aio.install(durable=args.durable)).actions)
        if not args.no_ddl:
            try:
                report = await installer.aio.install(
                    ddl=True, auto_rebuild=args.auto_rebuild, durable=args.durable
                )
            except InsufficientPrivilegeError as exc:
                logger.warning("DDL event triggers skipped: %s", exc)
                _merge(actions, [InstallAction("event_trigger", "DDL event triggers", "skipped", str(exc))])
            else:
                _merge(actions, report.actions)
        schemas = await trio.to_thread.run_sync(_schemas, engine, args.schema, args.installer_schema)
        total_tables = sum(count for _, count in schemas)
        progress = _Progress(total_tables, "tables")
        progress.enabled = progress.enabled and total_tables >= PROGRESS_THRESHOLD
        try:
            for name, count in schemas:
                report = await progress.while_waiting(
                    f"schema {name} ({count} tables)",
                    functools.partial(
                        installer.aio.watch_schema, name, durable=args.durable, payload=args.payload
                    ),
                )
                _merge(actions, report.actions)
                progress.advance(count, f"schema {name} done")
        finally:
            progress.close()
    finally:
        engine.dispose()
    logger.info("built in %s: %d schema(s), %d table(s)", settings.safe_url, len(schemas), total_tables)
    _print_actions(actions, out)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """``build``: install the trigger function, watch every table, add DDL triggers where permitted."""
    settings = _settings(args)
    return trio.run(_run_build, args, settings, sys.stdout)


def status_to_json(status: InstallStatus) -> dict[str, Any]:
    """The installer's status as a JSON-ready dict (``status --json``).

    ``change_streams`` lists every change stream slot (with ``lag_bytes`` and
    ``warning``); ``lagging_change_streams`` names those with a warning.
    """
    data = dataclasses.asdict(status)
    data["ok"] = status.ok
    data["lagging_change_streams"] = [s.slot for s in status.lagging_change_streams]
    return data


def _change_stream_rows(streams: Sequence[ChangeStreamStatus]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for s in streams:
        lag = "unknown" if s.lag_bytes is None else f"{_human_bytes(s.lag_bytes)} ({s.lag_bytes} bytes)"
        if s.warning is None:
            flag = ""
        elif s.wal_status == "lost":
            flag = "LOST"
        else:
            flag = "LAGGING"
        active = f"yes (pid {s.active_pid})" if s.active else "no"
        rows.append((s.slot, active, lag, s.wal_status or "", flag))
    return rows


async def _run_status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = await _connect(args, settings)
    try:
        status = await _installer(args, engine).aio.status(lag_warning_bytes=args.max_slot_lag)
    finally:
        engine.dispose()
    if args.json:
        out.write(json.dumps(status_to_json(status), default=str) + "\n")
    else:
        for label, state in (
            ("functions", status.function_state),
            ("ddl triggers", status.ddl_state),
            ("auto-rebuild", status.auto_rebuild_state),
            ("durable", status.durable_state),
        ):
            out.write(f"{label:<14}{state or 'not installed'}\n")
        rows = [
            (f"{t.schema}.{t.table}", t.state, "yes" if t.durable else "no", t.reason or "")
            for t in status.tables
        ]
        if rows:
            out.write(_format_table(("TABLE", "STATE", "DURABLE", "REASON"), rows) + "\n")
        else:
            out.write("no watched tables\n")
        if status.change_streams:
            out.write("change streams\n")
            headers = ("SLOT", "ACTIVE", "LAG", "WAL STATUS", "WARNING")
            out.write(_format_table(headers, _change_stream_rows(status.change_streams)) + "\n")
        for problem in status.problems:
            out.write(f"privileges: {problem}\n")
        if status.ok:
            out.write("ok\n")
        elif status.problems:
            out.write(
                "NOT OK: privileges left by an earlier install, or something OUTDATED/MISSING (run build)\n"
            )
        else:
            out.write("NOT OK: something is OUTDATED or MISSING (run build)\n")
    for lagging in status.lagging_change_streams:
        hint = f"To drop it: {PROG} drop-change-stream --slot {lagging.slot}"
        sys.stderr.write(f"{PROG}: WARNING: {lagging.warning} {hint}\n")
    if not status.ok:
        return 1
    return EXIT_SLOT_LAG if status.lagging_change_streams else 0


def cmd_status(args: argparse.Namespace) -> int:
    """``status``: what is installed, and the change stream slots with their lag.

    Exit status 1 when something is OUTDATED or MISSING; else 3 when a change
    stream slot is past --max-slot-lag (or lost): a slot nobody consumes keeps
    WAL on the server forever.
    """
    settings = _settings(args)
    return trio.run(_run_status, args, settings, sys.stdout)


def _confirm(question: str, command: str = "uninstall") -> bool:
    if not sys.stdin.isatty():
        raise ExitStatus(2, f"{command}: refusing without confirmation (stdin is not a terminal): pass --yes")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


async def _run_uninstall(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = await _connect(args, settings)
    try:
        installer = _installer(args, engine)
        report = await installer.aio.uninstall()
    finally:
        engine.dispose()
    _print_actions(report.actions, out)
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    """``uninstall``: remove everything trio_pgevents installed (asks first; ``--yes`` skips)."""
    settings = _settings(args)
    if not args.yes and not _confirm(
        f"Remove every trigger, function and table trio_pgevents installed in {settings.safe_url}?"
    ):
        print("uninstall: cancelled, nothing changed", file=sys.stderr)
        return 1
    return trio.run(_run_uninstall, args, settings, sys.stdout)


async def _run_drop_change_stream(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    command = "drop-change-stream"
    engine = await _connect(args, settings)
    try:
        found = await trio.to_thread.run_sync(change_stream_status, engine, args.slot)
        if not found.exists:
            raise ExitStatus(
                2, f"{command}: no replication slot {args.slot!r} in {settings.safe_url}; nothing changed"
            )
        try:
            report = await Installer(engine).aio.drop_change_stream(args.slot, args.publication)
        except ReplicationError as exc:
            raise ExitStatus(2, f"{command}: {exc}; nothing changed") from exc
    finally:
        engine.dispose()
    _print_actions(report.actions, out)
    return 0


def cmd_drop_change_stream(args: argparse.Namespace) -> int:
    """``drop-change-stream``: drop a change stream's replication slot (and publication).

    Asks first (``--yes`` skips). A slot nobody consumes keeps WAL forever; a
    slot in use by a running change stream is refused (exit 2): stop it first.
    """
    settings = _settings(args)
    what = f"replication slot {args.slot!r}" + (
        f" and publication {args.publication!r}" if args.publication else ""
    )
    if not args.yes and not _confirm(
        f"Drop {what} in {settings.safe_url}? Its consumer cannot resume afterwards.", "drop-change-stream"
    ):
        print("drop-change-stream: cancelled, nothing changed", file=sys.stderr)
        return 1
    return trio.run(_run_drop_change_stream, args, settings, sys.stdout)


# ---- demo ----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: an embedded Postgres, a table, triggers, a writer, live events and a summary."""
    from .demo import DemoOptions
    from .demo import main as demo_main

    options = DemoOptions(rows=args.rows, rate=args.rate, burst=args.burst, timeout=args.timeout)
    return demo_main(options)


# ---- the parser ----------------------------------------------------------------------------------


def _describe(command: Callable[..., Any]) -> str:
    return (command.__doc__ or "").replace("``", "")


def _log_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("logging")
    group.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default INFO); logs go to stderr",
    )
    group.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parent


def _db_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, parents=[_log_options()])
    group = parent.add_argument_group("settings")
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
    return parent


def _installer_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("installer")
    group.add_argument(
        "--installer-schema",
        default="pgevents",
        metavar="NAME",
        help="schema holding trio_pgevents' own functions and tables (default 'pgevents')",
    )
    group.add_argument(
        "--channel",
        default=DEFAULT_CHANNEL,
        metavar="NAME",
        help=f"NOTIFY channel (default {DEFAULT_CHANNEL!r})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every command and option)."""
    db = _db_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PostgreSQL change events for Trio: install triggers, run callbacks, listen.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    build = sub.add_parser(
        "build",
        parents=[db],
        help="install triggers on every table (idempotent)",
        description=_describe(cmd_build),
    )
    build.add_argument(
        "--schema",
        action="append",
        metavar="NAME",
        help="schema whose tables to watch; repeatable (default: every user schema)",
    )
    build.add_argument(
        "--auto-rebuild",
        type=_bool_arg,
        default=True,
        metavar="true|false",
        help="new tables in watched schemas get triggers automatically (needs superuser; default true)",
    )
    build.add_argument("--no-ddl", action="store_true", help="do not install DDL event triggers")
    build.add_argument(
        "--durable", action="store_true", help="durable (outbox) triggers instead of NOTIFY only"
    )
    build.add_argument(
        "--payload",
        choices=["row", "keys"],
        default="row",
        help="what row events carry: the whole row (default), or only the table, operation and "
        "primary key (any role that can connect can LISTEN and read NOTIFY payloads)",
    )
    _installer_options(build)
    build.set_defaults(func=cmd_build)

    worker = sub.add_parser(
        "worker",
        parents=[db],
        help="listen and call the settings' callbacks",
        description=_describe(cmd_worker),
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
    durable = worker.add_argument_group("durable mode (tables built with --durable)")
    durable.add_argument(
        "--consumer",
        metavar="NAME",
        help="read the durable outbox as this named consumer: nothing is lost across restarts; "
        "callbacks run one at a time, in order; an event is acknowledged after its callback returned",
    )
    durable.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=5,
        metavar="N",
        help="with --consumer: calls per event (with backoff) before it goes to the dead-letter table "
        "(default 5)",
    )
    durable.add_argument(
        "--installer-schema",
        default="pgevents",
        metavar="NAME",
        help="with --consumer: the installer's schema holding the outbox (default 'pgevents')",
    )
    durable.add_argument(
        "--retention-interval",
        type=_non_negative_float,
        default=60.0,
        metavar="SECONDS",
        help="with --consumer: delete events every registered consumer acknowledged this often "
        "(default 60; 0: never)",
    )
    worker.set_defaults(func=cmd_worker)

    listen = sub.add_parser(
        "listen", parents=[db], help="print each event as one JSON line", description=_describe(cmd_listen)
    )
    listen.add_argument("channels", nargs="+", metavar="CHANNEL", help="channels to listen on")
    listen.add_argument("--count", type=_positive_int, metavar="N", help="exit after N events")
    listen.set_defaults(func=cmd_listen)

    status = sub.add_parser(
        "status",
        parents=[db],
        help="what is installed (exit 1 if OUTDATED/MISSING)",
        description=_describe(cmd_status),
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--max-slot-lag",
        type=_byte_size,
        default=DEFAULT_MAX_SLOT_LAG,
        metavar="BYTES",
        help="warn (and exit 3) when a change stream slot is more than this far behind: bytes, "
        "or 512MB, 1GB... (default 1GB)",
    )
    _installer_options(status)
    status.set_defaults(func=cmd_status)

    uninstall = sub.add_parser(
        "uninstall",
        parents=[db],
        help="remove everything trio_pgevents installed",
        description=_describe(cmd_uninstall),
    )
    uninstall.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    _installer_options(uninstall)
    uninstall.set_defaults(func=cmd_uninstall)

    drop_stream = sub.add_parser(
        "drop-change-stream",
        parents=[db],
        help="drop a change stream's replication slot and publication",
        description=_describe(cmd_drop_change_stream),
    )
    drop_stream.add_argument(
        "--slot", required=True, type=_slot_name, metavar="NAME", help="the replication slot to drop"
    )
    drop_stream.add_argument(
        "--publication", metavar="NAME", help="also drop this publication (default: keep publications)"
    )
    drop_stream.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    drop_stream.set_defaults(func=cmd_drop_change_stream)

    demo = sub.add_parser(
        "demo",
        parents=[_log_options()],
        help="see it work: embedded Postgres, triggers, live events",
        description=_describe(cmd_demo),
    )
    demo.add_argument("--rows", type=_positive_int, default=120, help="rows written one by one (default 120)")
    demo.add_argument(
        "--rate", type=_positive_float, default=80.0, help="statements per second while pacing (default 80)"
    )
    demo.add_argument(
        "--burst",
        type=int,
        default=5000,
        help="rows then inserted in one transaction (default 5000; 0: none)",
    )
    demo.add_argument(
        "--timeout", type=_non_negative_float, default=40.0, help="give up waiting after SECONDS (default 40)"
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def _fail(message: str, status: int) -> int:
    line = scrub(" ".join(message.split()))  # one line, always, and no secret in it
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return status


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (nurseries wrap errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        # Other libraries' records too (SQLAlchemy logs URLs): no secret reaches stderr.
        handler.addFilter(RedactingFilter())
    try:
        return int(args.func(args))
    except BaseException as raised:
        exc = _leaf(raised)
        if isinstance(exc, ExitStatus):
            return _fail(exc.message, exc.status) if exc.message else exc.status
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, BrokenPipeError):
            # Piped into `head` or similar: the reader went away; that is not an error.
            # Point stdout at /dev/null so the interpreter's final flush stays quiet.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if args.debug:
            sys.stderr.write(scrub("".join(traceback.format_exception(raised))))
        if isinstance(exc, TrioPgEventsError):
            return _fail(str(exc), 2 if isinstance(exc, ConfigurationError) else 1)
        if isinstance(exc, SystemExit):
            return exc.code if isinstance(exc.code, int) else 1
        hint = "" if args.debug else " (--debug shows the traceback)"
        return _fail(f"unexpected {type(exc).__name__}: {exc}{hint}", 1)
