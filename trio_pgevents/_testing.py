"""Finding the test database: the embedded server, or ``TRIO_PGEVENTS_TEST_DSN``."""

from __future__ import annotations

import os

import psycopg2.extensions
import sqlalchemy

from ._errors import ConfigurationError

__all__ = ["TEST_DSN_VARIABLE", "url_from_dsn", "libpq_dsn"]

TEST_DSN_VARIABLE = "TRIO_PGEVENTS_TEST_DSN"


def url_from_dsn(dsn: str) -> str:
    """A SQLAlchemy psycopg2 URL from a URL or a libpq ``key=value`` DSN."""
    if "://" in dsn:
        url = sqlalchemy.make_url(dsn)
        if url.drivername in ("postgres", "postgresql"):
            url = url.set(drivername="postgresql+psycopg2")
        return url.render_as_string(hide_password=False)
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise ConfigurationError(f"{TEST_DSN_VARIABLE} is not a valid DSN: {exc}") from exc
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
    return url.render_as_string(hide_password=False)


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
    return psycopg2.extensions.make_dsn(**{k: str(v) for k, v in parts.items() if v is not None})


def configured_test_dsn() -> str | None:
    """The test DSN from the environment, if set (as a SQLAlchemy URL)."""
    value = os.environ.get(TEST_DSN_VARIABLE, "").strip()
    return url_from_dsn(value) if value else None
