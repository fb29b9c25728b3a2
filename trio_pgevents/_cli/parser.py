"""The argument parser: every command, its options and their defaults."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeAlias

from .._options import DEFAULT_GROUP_READ_INTERVAL, DEFAULT_LEASE_TIMEOUT, DEFAULT_PARTITIONS
from .arguments import (
    bool_arg,
    byte_size,
    column_list,
    non_negative_float,
    operation_list,
    partition_count,
    port_number,
    positive_float,
    positive_int,
    read_interval,
    slot_name,
)
from .commands.demo import cmd_demo
from .commands.installer import cmd_build, cmd_drop_change_stream, cmd_status, cmd_uninstall
from .commands.listen import cmd_listen
from .commands.worker import cmd_worker
from .defaults import DEFAULT_CHANNEL, DEFAULT_INSTALLER_SCHEMA, DEFAULT_METRICS_HOST, PROG
from .settings import DATABASE_URL

__all__ = ["build_parser"]

#: What ``add_subparsers`` returns: each command is added to it.
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: ``--max-slot-lag`` default: 1 GiB of WAL not yet confirmed by the slot's consumer.
DEFAULT_MAX_SLOT_LAG = 1 << 30


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
        default=DEFAULT_INSTALLER_SCHEMA,
        metavar="NAME",
        help=f"schema holding trio_pgevents' own functions and tables (default {DEFAULT_INSTALLER_SCHEMA!r})",
    )
    group.add_argument(
        "--channel",
        default=DEFAULT_CHANNEL,
        metavar="NAME",
        help=f"NOTIFY channel (default {DEFAULT_CHANNEL!r})",
    )


def _yes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def _command(
    sub: _Commands,
    name: str,
    run: Callable[[argparse.Namespace], int],
    parent: argparse.ArgumentParser,
    summary: str,
) -> argparse.ArgumentParser:
    """Add command ``name``, run by ``run`` (whose docstring is its description)."""
    parser = sub.add_parser(name, parents=[parent], help=summary, description=_describe(run))
    parser.set_defaults(func=run)
    return parser


def _add_build(sub: _Commands, db: argparse.ArgumentParser) -> None:
    build = _command(sub, "build", cmd_build, db, "install triggers on every table (idempotent)")
    build.add_argument(
        "--schema",
        action="append",
        metavar="NAME",
        help="schema whose tables to watch; repeatable (default: every user schema, those created later too)",
    )
    build.add_argument(
        "--auto-rebuild",
        type=bool_arg,
        default=True,
        metavar="true|false",
        help="new tables in watched schemas get triggers automatically (needs superuser; default true)",
    )
    build.add_argument("--no-ddl", action="store_true", help="do not install DDL event triggers")
    build.add_argument(
        "--ddl-events",
        choices=["tables", "all"],
        help="which DDL events: 'tables' as pg_events (CREATE/ALTER/DROP TABLE; a drop is one event "
        "listing what went with it), or 'all' (every DDL command, every dropped object); "
        "default: what is installed, else tables",
    )
    build.add_argument(
        "--include-underscore-tables",
        action="store_true",
        help="also watch tables whose name starts with '_' (pg_events left them out)",
    )
    build.add_argument(
        "--replace-pg-events",
        action="store_true",
        help="remove the original pg_events' triggers and functions, in the same transaction as "
        "the DDL event triggers (asked on a terminal when they are found)",
    )
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
    build.add_argument(
        "--table",
        action="append",
        metavar="NAME",
        help="watch this table ('name' or 'schema.name'; default schema public) instead of whole "
        "schemas; repeatable (with --schema too: both)",
    )
    _filter_options(build)
    _installer_options(build)


def _filter_options(build: argparse.ArgumentParser) -> None:
    filters = build.add_argument_group(
        "filters at the source (every table this build watches; rows left out cost writers nothing)"
    )
    filters.add_argument(
        "--operations",
        type=operation_list,
        metavar="LIST",
        help="only these operations make events: comma-separated INSERT, UPDATE, DELETE, TRUNCATE "
        "(default: all)",
    )
    filters.add_argument(
        "--columns",
        type=column_list,
        metavar="LIST",
        help="an UPDATE makes an event only when one of these comma-separated columns changed",
    )
    filters.add_argument(
        "--when",
        metavar="SQL",
        help="only rows for which this SQL condition on OLD and NEW is true make events "
        '(e.g. "NEW.total > 1000"; needs --operations without DELETE when it names NEW, '
        "without INSERT when it names OLD)",
    )
    filters.add_argument(
        "--table-channel",
        metavar="NAME",
        help="NOTIFY the tables' events on this channel instead of --channel",
    )


def _add_worker(sub: _Commands, db: argparse.ArgumentParser) -> None:
    worker = _command(sub, "worker", cmd_worker, db, "listen and call the settings' callbacks")
    worker.add_argument(
        "--callback-arg",
        choices=["json", "json-full", "event"],
        default="json",
        help="what callbacks receive: the JSON payload string in pg_events' shape (default), the "
        "installer's full payload (json-full: format version, kind, every key), or the decoded "
        "RowChange/SchemaChange object",
    )
    worker.add_argument(
        "--auto-rebuild",
        type=bool_arg,
        default=True,
        metavar="true|false",
        help="as pg_events: false ignores DDL events, and PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK "
        "need not be set (default true)",
    )
    worker.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="N",
        help="how many callbacks may run at once (default 1: one after another, in order)",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=non_negative_float,
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
        type=positive_int,
        default=5,
        metavar="N",
        help="with --consumer: calls per event (with backoff) before it goes to the dead-letter table "
        "(default 5)",
    )
    durable.add_argument(
        "--installer-schema",
        default=DEFAULT_INSTALLER_SCHEMA,
        metavar="NAME",
        help="with --consumer: the installer's schema holding the outbox "
        f"(default {DEFAULT_INSTALLER_SCHEMA!r})",
    )
    durable.add_argument(
        "--retention-interval",
        type=non_negative_float,
        default=60.0,
        metavar="SECONDS",
        help="with --consumer: delete events every registered consumer acknowledged this often "
        "(default 60; 0: never)",
    )
    durable.add_argument(
        "--group",
        action="store_true",
        help="with --consumer: join a consumer group, the workers under the name share its partitions "
        "(default: exclusive, one worker active, the others stand by and take over)",
    )
    durable.add_argument(
        "--partitions",
        type=partition_count,
        metavar="N",
        help=f"with --group: how many partitions a new group has (1..1024, default "
        f"{DEFAULT_PARTITIONS}; fixed when the group is created)",
    )
    durable.add_argument(
        "--lease-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="with --consumer: a worker that stops renewing its lease (it hangs, or dies) loses it "
        f"after this long and another takes over (default {DEFAULT_LEASE_TIMEOUT:g}); a worker that "
        "stops gracefully hands over at once",
    )
    durable.add_argument(
        "--min-read-interval",
        type=read_interval,
        metavar="SECONDS",
        help="with --consumer: read the outbox at most this often (0..1; default 0, and "
        f"{DEFAULT_GROUP_READ_INTERVAL:g} with --group: every member reads on every wake-up)",
    )
    metrics = worker.add_argument_group("metrics (needs the prometheus_client package)")
    metrics.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP on this port, at /metrics (0: any free port, logged)",
    )
    metrics.add_argument(
        "--metrics-host",
        default=DEFAULT_METRICS_HOST,
        metavar="HOST",
        help=f"with --metrics-port: the address to listen on (default {DEFAULT_METRICS_HOST})",
    )


def _add_listen(sub: _Commands, db: argparse.ArgumentParser) -> None:
    listen = _command(sub, "listen", cmd_listen, db, "print each event as one JSON line")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL", help="channels to listen on")
    listen.add_argument("--count", type=positive_int, metavar="N", help="exit after N events")


def _add_status(sub: _Commands, db: argparse.ArgumentParser) -> None:
    status = _command(sub, "status", cmd_status, db, "what is installed (exit 1 if OUTDATED/MISSING)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--max-slot-lag",
        type=byte_size,
        default=DEFAULT_MAX_SLOT_LAG,
        metavar="BYTES",
        help="warn (and exit 3) when a change stream slot is more than this far behind: bytes, "
        "or 512MB, 1GB... (default 1GB)",
    )
    status.add_argument(
        "--max-consumer-lag",
        type=non_negative_float,
        metavar="SECONDS",
        help="warn (and exit 3) when a durable consumer's oldest unacknowledged event is older than "
        "this (default: no limit)",
    )
    _installer_options(status)


def _add_uninstall(sub: _Commands, db: argparse.ArgumentParser) -> None:
    uninstall = _command(sub, "uninstall", cmd_uninstall, db, "remove everything trio_pgevents installed")
    _yes_option(uninstall)
    _installer_options(uninstall)


def _add_drop_change_stream(sub: _Commands, db: argparse.ArgumentParser) -> None:
    drop_stream = _command(
        sub,
        "drop-change-stream",
        cmd_drop_change_stream,
        db,
        "drop a change stream's replication slot and publication",
    )
    drop_stream.add_argument(
        "--slot", required=True, type=slot_name, metavar="NAME", help="the replication slot to drop"
    )
    drop_stream.add_argument(
        "--publication", metavar="NAME", help="also drop this publication (default: keep publications)"
    )
    _yes_option(drop_stream)


def _add_demo(sub: _Commands) -> None:
    demo = _command(
        sub, "demo", cmd_demo, _log_options(), "see it work: embedded Postgres, triggers, live events"
    )
    demo.add_argument("--rows", type=positive_int, default=120, help="rows written one by one (default 120)")
    demo.add_argument(
        "--rate", type=positive_float, default=80.0, help="statements per second while pacing (default 80)"
    )
    demo.add_argument(
        "--burst",
        type=int,
        default=5000,
        help="rows then inserted in one transaction (default 5000; 0: none)",
    )
    demo.add_argument(
        "--timeout", type=non_negative_float, default=40.0, help="give up waiting after SECONDS (default 40)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every command and option)."""
    db = _db_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PostgreSQL change events for Trio: install triggers, run callbacks, listen.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_build(sub, db)
    _add_worker(sub, db)
    _add_listen(sub, db)
    _add_status(sub, db)
    _add_uninstall(sub, db)
    _add_drop_change_stream(sub, db)
    _add_demo(sub)
    return parser
