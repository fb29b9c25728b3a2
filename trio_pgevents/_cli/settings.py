"""Settings for the command line, compatible with pg_events' settings modules.

A pg_events settings module defines three names::

    PG_EVENTS_DATABASE_URL = "postgres://user:secret@host/db"
    PG_EVENTS_DATA_UPDATE_CALLBACK = "my_app.events.on_data"        # or the function itself
    PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK = "my_app.events.on_schema"

The module is named by a dotted path (``my_app.settings``, imported with the
current directory on ``sys.path`` as pg_events did; a trailing ``.py`` is
dropped as pg_events did) or by the path of a ``.py`` file. Environment
variables of the same names override the module; ``--database-url`` overrides
both. Every problem raises :class:`ConfigurationError` whose message starts
with the name of the setting that was wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg2.extensions
import sqlalchemy

from .._errors import ConfigurationError
from .._secrets import Redactor, safe_url

__all__ = [
    "DATABASE_URL",
    "DATA_CALLBACK",
    "SCHEMA_CALLBACK",
    "Settings",
    "load_settings",
    "load_settings_module",
    "resolve_callable",
    "resolve_database_url",
]

DATABASE_URL = "PG_EVENTS_DATABASE_URL"
DATA_CALLBACK = "PG_EVENTS_DATA_UPDATE_CALLBACK"
SCHEMA_CALLBACK = "PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK"

_MISSING: Any = object()


@dataclass(frozen=True)
class Settings:
    """Resolved settings: a usable database URL and the callbacks (or None)."""

    #: SQLAlchemy URL (psycopg2 driver), password included: never log it as is.
    database_url: str
    #: Called with each data (row) event; None when not configured.
    data_update_callback: Callable[..., Any] | None
    #: Called with each DDL event; None when not configured.
    db_schema_update_callback: Callable[..., Any] | None

    @property
    def safe_url(self) -> str:
        """The database URL with its password hidden, for messages and logs."""
        return safe_url(self.database_url)

    def __repr__(self) -> str:
        return (
            f"Settings(database_url={self.safe_url!r}, "
            f"data_update_callback={self.data_update_callback!r}, "
            f"db_schema_update_callback={self.db_schema_update_callback!r})"
        )


@contextmanager
def _on_sys_path(*directories: str) -> Iterator[None]:
    added = [d for d in directories if d not in sys.path]
    for directory in reversed(added):
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        for directory in added:
            with suppress(ValueError):  # someone else removed it
                sys.path.remove(directory)


def _import(name: str) -> ModuleType:
    # The current directory is searched, as pg_events did.
    with _on_sys_path(os.getcwd()):
        return importlib.import_module(name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_settings_module(spec: str) -> ModuleType:
    """Import a settings module by dotted path or ``.py`` file path.

    Raises:
        ConfigurationError: naming ``--settings`` when the module cannot be found
            or fails to import.
    """
    path = Path(spec)
    if spec.endswith(".py") and path.is_file():
        name = f"_trio_pgevents_settings_{path.stem}"
        file_spec = importlib.util.spec_from_file_location(name, path)
        if file_spec is None or file_spec.loader is None:
            raise ConfigurationError(f"--settings: cannot load {spec!r} as a Python file")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module
        try:
            # Callback paths in the file may name modules beside it.
            with _on_sys_path(os.getcwd(), str(path.resolve().parent)):
                file_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            del sys.modules[name]
            raise ConfigurationError(f"--settings: importing {spec!r} failed: {_first_line(exc)}") from exc
        # Keep the directory importable for callbacks resolved later.
        directory = str(path.resolve().parent)
        if directory not in sys.path:
            sys.path.append(directory)
        return module
    # pg_events accepted "my_module.settings.py" and dropped the suffix.
    dotted = spec.removesuffix(".py")
    if not dotted or "/" in dotted or "\\" in dotted:
        raise ConfigurationError(f"--settings: no such settings file or module: {spec!r}")
    try:
        return _import(dotted)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"--settings: settings module {dotted!r} not found ({_first_line(exc)})"
        ) from exc
    except (Exception, SystemExit) as exc:
        # SystemExit: a settings module that calls sys.exit() is a broken setting, not our exit.
        raise ConfigurationError(f"--settings: importing {dotted!r} failed: {_first_line(exc)}") from exc


def resolve_callable(setting: str, value: object) -> Callable[..., Any]:
    """Turn a setting's value (a dotted path or a callable) into a callable.

    ``"pkg.module.func"``, ``"pkg.module:func"`` and ``"pkg.module.Class.method"``
    are accepted.

    Raises:
        ConfigurationError: naming ``setting`` when the path cannot be imported
            or does not lead to a callable.
    """
    if callable(value):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"{setting}: must be a dotted path to a callable or a callable, not {value!r}"
        )
    path = value.strip()
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        candidates = [(module_name, attr_path.split("."))]
    else:
        parts = path.split(".")
        if len(parts) < 2:
            raise ConfigurationError(f"{setting}: {path!r} is not a dotted path like 'my_module.callback'")
        candidates = [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]
    not_found: ModuleNotFoundError | None = None
    for module_name, attrs in candidates:
        try:
            target: Any = _import(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if module_name == missing or module_name.startswith(missing + "."):
                # This prefix is not a module: try a shorter one ("pkg.Class.method").
                not_found = not_found or exc
                continue
            raise ConfigurationError(
                f"{setting}: importing {module_name!r} failed: {_first_line(exc)}"
            ) from exc
        except Exception as exc:
            raise ConfigurationError(
                f"{setting}: importing {module_name!r} failed: {_first_line(exc)}"
            ) from exc
        try:
            for attr in attrs:
                target = getattr(target, attr)
        except AttributeError as exc:
            if not_found is not None:  # "pkg.typo.func": the typo is the missing module
                raise ConfigurationError(
                    f"{setting}: cannot import {path!r}: no module named {not_found.name!r}"
                ) from not_found
            raise ConfigurationError(
                f"{setting}: {path!r}: module {module_name!r} has no attribute {'.'.join(attrs)!r}"
            ) from exc
        if not callable(target):
            raise ConfigurationError(f"{setting}: {path!r} is a {type(target).__name__}, not a callable")
        return target  # type: ignore[no-any-return]
    missing = (not_found.name if not_found is not None else None) or path
    raise ConfigurationError(f"{setting}: cannot import {path!r}: no module named {missing!r}") from not_found


def resolve_database_url(
    value: object, *, setting: str = DATABASE_URL, application_name: str | None = None
) -> str:
    """Validate a database URL (or libpq ``key=value`` DSN); return a psycopg2 URL.

    ``postgres://`` URLs (as Heroku and pg_events use) become
    ``postgresql+psycopg2://``. ``application_name`` is added unless the URL
    sets one, so the connections are easy to find in ``pg_stat_activity``.

    Raises:
        ConfigurationError: naming ``setting`` when the value is not a usable URL.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"{setting}: must be a database URL like postgresql://user@host/db, not {value!r}"
        )
    text = value.strip()
    Redactor(text)  # its secrets are masked in every message from now on
    try:
        if "://" in text:
            url = sqlalchemy.make_url(text)
        else:
            params = psycopg2.extensions.parse_dsn(text)
            port = params.pop("port", None)
            url = sqlalchemy.URL.create(
                "postgresql+psycopg2",
                username=params.pop("user", None),
                password=params.pop("password", None),
                host=params.pop("host", None),
                port=int(port) if port else None,
                database=params.pop("dbname", None),
                query=params,
            )
        if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
            url = url.set(drivername="postgresql+psycopg2")
        else:
            raise ConfigurationError(
                f"{setting}: {safe_url(url)!r} is not a PostgreSQL URL (postgresql://...)"
            )
        _ = url.port  # a non-numeric port fails here
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"{setting}: the database URL cannot be parsed ({type(exc).__name__})"
        ) from exc
    if application_name and "application_name" not in url.query:
        url = url.update_query_dict({"application_name": application_name})
    return url.render_as_string(hide_password=False)


def _lookup(module: ModuleType | None, environ: Mapping[str, str], name: str) -> Any:
    env_value = environ.get(name, "").strip()
    if env_value:
        return env_value
    if module is not None:
        return getattr(module, name, _MISSING)
    return _MISSING


def load_settings(
    settings: str | None,
    *,
    database_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    need_callbacks: bool = False,
    application_name: str | None = None,
    schema_callback: bool = True,
) -> Settings:
    """Resolve the settings the way the command line does.

    Precedence for each name: ``database_url`` argument (the URL only), then
    the environment variable of the same name, then the settings module.

    Args:
        settings: the ``--settings`` value, or None.
        database_url: the ``--database-url`` value, or None.
        environ: the environment (default ``os.environ``).
        need_callbacks: the worker needs both callbacks set; a callback
            explicitly set to ``None`` means "ignore those events".
        application_name: added to the URL unless it already has one.
        schema_callback: False (the worker's ``--auto-rebuild false``, as
            pg_events): the DDL callback is neither needed nor looked up.

    Raises:
        ConfigurationError: the message starts with the setting that was wrong.
    """
    env = os.environ if environ is None else environ
    module = load_settings_module(settings) if settings else None
    url_value: Any = database_url if database_url else _lookup(module, env, DATABASE_URL)
    if url_value is _MISSING:
        raise ConfigurationError(
            f"{DATABASE_URL}: not set (give --database-url, the environment variable, or --settings MODULE)"
        )
    setting = "--database-url" if database_url else DATABASE_URL
    url = resolve_database_url(url_value, setting=setting, application_name=application_name)
    callbacks: dict[str, Callable[..., Any] | None] = {}
    for name in (DATA_CALLBACK, SCHEMA_CALLBACK) if schema_callback else (DATA_CALLBACK,):
        value = _lookup(module, env, name)
        if value is _MISSING:
            if need_callbacks:
                hint = " or run the worker with --auto-rebuild false" if name == SCHEMA_CALLBACK else ""
                raise ConfigurationError(
                    f"{name}: not set (a dotted path to a callable; set it to None to ignore these "
                    f"events{hint})"
                )
            callbacks[name] = None
        elif value is None:
            callbacks[name] = None
        else:
            callbacks[name] = resolve_callable(name, value)
    schema = callbacks.get(SCHEMA_CALLBACK)
    if need_callbacks and callbacks[DATA_CALLBACK] is None and schema is None:
        raise ConfigurationError(
            f"{DATA_CALLBACK}: "
            + ("both callbacks are None" if schema_callback else "None, and --auto-rebuild false")
            + ": the worker would do nothing"
        )
    return Settings(url, callbacks[DATA_CALLBACK], schema)
