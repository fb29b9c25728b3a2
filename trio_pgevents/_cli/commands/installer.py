"""The installer's commands: ``build``, ``status``, ``uninstall``, ``drop-change-stream``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import trio
from sqlalchemy.engine import Engine

from ... import InstallAction, Installer, change_stream_status
from ..._cdc.admin import split_table
from ..._errors import ConfigurationError, InsufficientPrivilegeError, ReplicationError
from ..._installer.filters import watch_options
from ..._installer.sql.base import user_schema_sql
from ..._secrets import get_logger
from ..database import command_settings, connected
from ..exits import EXIT_FAILURE, EXIT_LAG, EXIT_OK, EXIT_USAGE, ExitStatus
from ..output import (
    lagging_consumers,
    print_actions,
    print_status,
    status_to_json,
    warn_lagging_consumers,
    warn_lagging_slots,
)
from ..progress import Progress
from ..settings import Settings

__all__ = [
    "build_filters",
    "cmd_build",
    "cmd_drop_change_stream",
    "cmd_status",
    "cmd_uninstall",
    "schemas_to_watch",
]

logger = get_logger("trio_pgevents.cli")

#: ``build`` shows a progress bar (on a terminal) from this many tables on.
PROGRESS_THRESHOLD = 20


def _installer(args: argparse.Namespace, engine: Engine) -> Installer:
    return Installer(engine, schema=args.installer_schema, channel=args.channel)


# ---- build ---------------------------------------------------------------------------------------

#: Every user schema (see ``user_schema_sql``) with its number of tables.
_USER_SCHEMAS = (
    "SELECT n.nspname, (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid "
    "AND c.relkind IN ('r', 'p')) FROM pg_namespace n WHERE "
    + user_schema_sql("@OWN@").replace("%", "%%").replace("@OWN@", "%(own)s")
    + " ORDER BY n.nspname"
)

_SCHEMA_TABLES = """
SELECT n.nspname, count(c.oid)
FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
WHERE n.nspname = ANY(%(names)s)
GROUP BY n.nspname
"""


def schemas_to_watch(engine: Engine, wanted: Sequence[str] | None, own: str) -> list[tuple[str, int]]:
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


def _replace_pg_events(args: argparse.Namespace, found: Sequence[str], safe_url: str) -> bool:
    """Whether to remove pg_events' objects: ``--replace-pg-events``, or the user said yes.

    Raises:
        ExitStatus: (2) pg_events' objects are there and are to stay: building
            beside them cannot work (nothing was changed).
    """
    if not found:
        return False
    listing = "; ".join(found)
    if args.replace_pg_events:
        logger.info("removing pg_events' objects: %s", listing)
        return True
    if sys.stdin.isatty():
        sys.stderr.write(
            f"{safe_url} was built by pg_events ({listing}). Left in place, its DDL triggers "
            "re-create a trigger on every table at each CREATE/ALTER/DROP TABLE (trio-pgevents' "
            "tables too) and every change is notified twice. Remove them, in the same transaction "
            "as trio-pgevents' DDL triggers? [y/N] "
        )
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() in ("y", "yes"):
            return True
    raise ExitStatus(
        EXIT_USAGE,
        f"build: {safe_url} was built by pg_events ({listing}). Its event triggers would run on "
        "trio-pgevents' own DDL (they call its functions unqualified: the install fails) and on every "
        "CREATE/ALTER/DROP TABLE re-create a trigger on every table, so every change is notified "
        "twice. Pass --replace-pg-events to remove them in the same transaction as trio-pgevents' "
        "DDL triggers; nothing was changed",
    )


async def _install(installer: Installer, args: argparse.Namespace, replace: bool) -> list[InstallAction]:
    """The install steps of ``build``: the base, then what needs a superuser (reported if denied).

    pg_events' objects are removed in the transaction that installs the DDL
    event triggers, before anything is created (pg_events' event triggers would
    run on trio-pgevents' own CREATE TABLEs).
    """
    actions: list[InstallAction] = []
    if not replace:
        # First what any role may install, so the report shows it even if DDL triggers are denied.
        _merge(actions, (await installer.aio.install(durable=args.durable)).actions)
    if args.no_ddl and not replace:
        return actions
    try:
        report = await installer.aio.install(
            durable=args.durable,
            ddl=not args.no_ddl,
            auto_rebuild=args.auto_rebuild and not args.no_ddl,
            ddl_events=args.ddl_events,
            replace_pg_events=replace,
        )
    except InsufficientPrivilegeError as exc:
        what = "DDL event triggers" if not args.no_ddl else "removing pg_events' objects"
        logger.warning("%s skipped: %s", what, exc)
        if replace:
            _merge(actions, (await installer.aio.install(durable=args.durable)).actions)
        _merge(actions, [InstallAction("event_trigger", what, "skipped", str(exc))])
    else:
        _merge(actions, report.actions)
    return actions


def build_filters(args: argparse.Namespace) -> dict[str, Any]:
    """``build``'s filter options as ``watch_*`` keywords, checked before anything connects.

    Raises:
        ConfigurationError: they contradict each other (``--columns`` without
            UPDATE), or a name or condition is malformed.
    """
    filters: dict[str, Any] = {
        "operations": args.operations,
        "columns": args.columns,
        "when": args.when,
        "channel": args.table_channel,
    }
    try:
        watch_options(args.payload, **filters)
    except ConfigurationError as exc:
        raise ConfigurationError(f"build: {exc}") from None
    return filters


def _tables_to_watch(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``--table`` entries as (schema, table), each once."""
    return list(dict.fromkeys(split_table(name) for name in args.table or ()))


async def _run_build(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    filters = build_filters(args)
    tables = _tables_to_watch(args)
    if any(value is not None for value in filters.values()) and not (tables or args.schema):
        raise ConfigurationError(
            "build: --operations/--columns/--when/--table-channel apply to the tables watched: "
            "name them with --table or --schema (every user schema is watched without filters)"
        )
    async with connected(args, settings) as engine:
        installer = _installer(args, engine)
        found = (await installer.aio.status()).pg_events
        actions = await _install(installer, args, _replace_pg_events(args, found, settings.safe_url))
        schemas: list[tuple[str, int]] = []
        if args.schema or not tables:
            schemas = await trio.to_thread.run_sync(
                schemas_to_watch, engine, args.schema, args.installer_schema
            )
        options = {
            "durable": args.durable,
            "payload": args.payload,
        }
        for schema, table in tables:
            report = await installer.aio.watch_table(table, schema, **options, **filters)
            _merge(actions, report.actions)
        total_tables = sum(count for _, count in schemas)
        progress = Progress(total_tables, "tables")
        progress.enabled = progress.enabled and total_tables >= PROGRESS_THRESHOLD
        skip = not args.include_underscore_tables
        try:
            if not args.schema and not tables:
                # Every user schema, and those created later (pg_events watched every table).
                report = await progress.while_waiting(
                    f"every user schema ({total_tables} tables)",
                    functools.partial(installer.aio.watch_all_schemas, **options, skip_underscore=skip),
                )
                _merge(actions, report.actions)
                progress.advance(total_tables, "done")
            for name, count in schemas if args.schema else ():
                report = await progress.while_waiting(
                    f"schema {name} ({count} tables)",
                    functools.partial(
                        installer.aio.watch_schema, name, **options, **filters, skip_underscore=skip
                    ),
                )
                _merge(actions, report.actions)
                progress.advance(count, f"schema {name} done")
        finally:
            progress.close()
    logger.info(
        "built in %s: %d schema(s), %d table(s)", settings.safe_url, len(schemas), total_tables + len(tables)
    )
    print_actions(actions, out)
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    """``build``: install the trigger function, watch every table, add DDL triggers where permitted.

    Without --schema every user schema is watched, those created later too
    (auto-rebuild attaches their tables' triggers; else status reports them).
    Tables named _... are left out, as pg_events did. A database built by
    pg_events: its objects are removed with --replace-pg-events (or when the
    user says yes on a terminal), else build refuses (exit 2).
    With --table, only those tables are watched (and --schema's, if given).
    The filter options apply to every table watched; building again without
    them removes them. A filter that does not fit a table (a --when naming
    a column it lacks) stops the build at that table with exit status 2; the
    schemas and tables before it are built.
    """
    settings = command_settings(args)
    return trio.run(_run_build, args, settings, sys.stdout)


# ---- status --------------------------------------------------------------------------------------


async def _run_status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    async with connected(args, settings) as engine:
        installer = _installer(args, engine)
        status = await installer.aio.status(lag_warning_bytes=args.max_slot_lag)
        consumers = await installer.aio.list_consumers()
    lagging = lagging_consumers(consumers, args.max_consumer_lag)
    if args.json:
        out.write(json.dumps(status_to_json(status, consumers, lagging), default=str) + "\n")
    else:
        print_status(status, out, consumers, lagging)
    if status.pg_events:
        logger.warning(
            "pg_events' objects are installed in this database (%s): run build --replace-pg-events",
            "; ".join(status.pg_events),
        )
    warn_lagging_slots(status, sys.stderr)
    warn_lagging_consumers(lagging, args.max_consumer_lag, sys.stderr)
    if not status.ok:
        return EXIT_FAILURE
    return EXIT_LAG if status.lagging_change_streams or lagging else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """``status``: what is installed, the change stream slots and the durable consumers, with their lag.

    Exit status 1 when something is OUTDATED or MISSING; else 3 when a change
    stream slot is past --max-slot-lag (or lost): a slot nobody consumes keeps
    WAL on the server forever; or when a durable consumer's oldest
    unacknowledged event is older than --max-consumer-lag.
    """
    settings = command_settings(args)
    return trio.run(_run_status, args, settings, sys.stdout)


# ---- uninstall, drop-change-stream ---------------------------------------------------------------


def _confirmed(args: argparse.Namespace, question: str) -> bool:
    """``--yes``, or the user said yes on the terminal; else say nothing changed.

    Raises:
        ExitStatus: (2) with no ``--yes`` and no terminal to ask on.
    """
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise ExitStatus(
            EXIT_USAGE, f"{args.command}: refusing without confirmation (stdin is not a terminal): pass --yes"
        )
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() in ("y", "yes"):
        return True
    print(f"{args.command}: cancelled, nothing changed", file=sys.stderr)
    return False


async def _run_uninstall(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    async with connected(args, settings) as engine:
        report = await _installer(args, engine).aio.uninstall()
    print_actions(report.actions, out)
    return EXIT_OK


def cmd_uninstall(args: argparse.Namespace) -> int:
    """``uninstall``: remove everything trio_pgevents installed (asks first; ``--yes`` skips)."""
    settings = command_settings(args)
    question = f"Remove every trigger, function and table trio_pgevents installed in {settings.safe_url}?"
    if not _confirmed(args, question):
        return EXIT_FAILURE
    return trio.run(_run_uninstall, args, settings, sys.stdout)


async def _run_drop_change_stream(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    command = args.command
    async with connected(args, settings) as engine:
        found = await trio.to_thread.run_sync(change_stream_status, engine, args.slot)
        if not found.exists:
            raise ExitStatus(
                EXIT_USAGE,
                f"{command}: no replication slot {args.slot!r} in {settings.safe_url}; nothing changed",
            )
        try:
            report = await Installer(engine).aio.drop_change_stream(args.slot, args.publication)
        except ReplicationError as exc:
            raise ExitStatus(EXIT_USAGE, f"{command}: {exc}; nothing changed") from exc
    print_actions(report.actions, out)
    return EXIT_OK


def cmd_drop_change_stream(args: argparse.Namespace) -> int:
    """``drop-change-stream``: drop a change stream's replication slot (and publication).

    Asks first (``--yes`` skips). A slot nobody consumes keeps WAL forever; a
    slot in use by a running change stream is refused (exit 2): stop it first.
    """
    settings = command_settings(args)
    what = f"replication slot {args.slot!r}" + (
        f" and publication {args.publication!r}" if args.publication else ""
    )
    if not _confirmed(args, f"Drop {what} in {settings.safe_url}? Its consumer cannot resume afterwards."):
        return EXIT_FAILURE
    return trio.run(_run_drop_change_stream, args, settings, sys.stdout)
