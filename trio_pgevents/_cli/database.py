"""From the command's options to a checked database connection: settings, engine, first connect."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy
import trio
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from .._connection import as_engine
from .._errors import ConfigurationError
from .._secrets import safe_url
from .defaults import PROG
from .settings import DATABASE_URL, Settings, load_settings

__all__ = ["CONNECT_TIMEOUT", "command_settings", "connected"]

#: Seconds the first connection may take (libpq's ``connect_timeout``, a whole number).
CONNECT_TIMEOUT = 10


def command_settings(
    args: argparse.Namespace, *, need_callbacks: bool = False, schema_callback: bool = True
) -> Settings:
    """The settings for this command; its connections are named ``trio-pgevents-COMMAND``."""
    return load_settings(
        args.settings,
        database_url=args.database_url,
        need_callbacks=need_callbacks,
        application_name=f"{PROG}-{args.command}",
        schema_callback=schema_callback,
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


@asynccontextmanager
async def connected(args: argparse.Namespace, settings: Settings) -> AsyncIterator[Engine]:
    """An engine that has connected once, disposed of on the way out.

    Raises:
        ConfigurationError: naming the setting the URL came from, when the
            server cannot be reached.
    """
    engine = _make_engine(settings)
    setting = "--database-url" if args.database_url else DATABASE_URL
    try:
        await trio.to_thread.run_sync(_check_connection, engine, setting)
        yield engine
    finally:
        engine.dispose()
