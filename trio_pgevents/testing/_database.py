"""Finding the test database: the embedded server, or ``TRIO_PGEVENTS_TEST_DSN``."""

from __future__ import annotations

import os
from typing import Any

import psycopg2.extensions
import sqlalchemy
from sqlalchemy.engine import Engine

from .._errors import ConfigurationError
from .._secrets import SECRET_PARAMETERS, Redactor, redact_dsn, safe_url, scrub

__all__ = ["TEST_DSN_VARIABLE", "SecretStr", "engine_for_url", "libpq_dsn", "scrub_report", "url_from_dsn"]

TEST_DSN_VARIABLE = "TRIO_PGEVENTS_TEST_DSN"


class SecretStr(str):
    """A URL or DSN whose ``repr()`` (what pytest shows of a fixture value) masks its secrets."""

    def __repr__(self) -> str:
        return repr(safe_url(str(self)))


def url_from_dsn(dsn: str) -> str:
    """A SQLAlchemy psycopg2 URL from a URL or a libpq ``key=value`` DSN.

    A password given in the URL's query string moves to the URL's password,
    where SQLAlchemy hides it (e.g. in an engine's repr).
    """
    Redactor(dsn)  # its secrets are masked in every message from now on
    if "://" in dsn:
        url = sqlalchemy.make_url(dsn)
        if url.drivername in ("postgres", "postgresql"):
            url = url.set(drivername="postgresql+psycopg2")
        if "password" in url.query and url.password is None:
            query = dict(url.query)
            password = query.pop("password")
            url = url.set(password=password if isinstance(password, str) else password[-1], query=query)
        return SecretStr(url.render_as_string(hide_password=False))
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise ConfigurationError(f"{TEST_DSN_VARIABLE} is not a valid DSN: {redact_dsn(str(exc))}") from exc
    query = {k: v for k, v in params.items() if k not in ("user", "password", "host", "port", "dbname")}
    port = params.get("port")
    url = sqlalchemy.URL.create(
        "postgresql+psycopg2",
        username=params.get("user"),
        password=params.get("password"),
        host=params.get("host"),
        port=int(port) if port else None,
        database=params.get("dbname"),
        query=query,
    )
    return SecretStr(url.render_as_string(hide_password=False))


def libpq_dsn(url_text: str) -> str:
    """A libpq DSN (for psycopg2.connect) from a SQLAlchemy URL."""
    url = sqlalchemy.make_url(url_text)
    parts: dict[str, object] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
        **{k: v for k, v in url.query.items() if isinstance(v, str)},
    }
    return SecretStr(psycopg2.extensions.make_dsn(**{k: str(v) for k, v in parts.items() if v is not None}))


def configured_test_dsn() -> str | None:
    """The test DSN from the environment, if set (as a SQLAlchemy URL)."""
    value = os.environ.get(TEST_DSN_VARIABLE, "").strip()
    return url_from_dsn(value) if value else None


def engine_for_url(url_text: str, **kwargs: Any) -> Engine:
    """An engine whose repr shows no secret: secret query parameters go to ``connect_args``."""
    url = sqlalchemy.make_url(url_text)
    secret = {k: v for k, v in url.query.items() if k.lower() in SECRET_PARAMETERS}
    if secret:
        url = url.set(query={k: v for k, v in url.query.items() if k not in secret})
        kwargs["connect_args"] = {**kwargs.get("connect_args", {}), **secret}
    return sqlalchemy.create_engine(url, **kwargs)


def scrub_report(text: str) -> str | None:
    """A test report's text with every known secret masked, or None when it holds none."""
    safe = scrub(text)
    return None if safe == text else safe
