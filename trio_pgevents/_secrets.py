"""Keeping passwords out of every output: sources, reprs, logs, errors, CLI lines.

A password can reach the library in a URL (``user:pw@host``), in its query
string (``?password=...``, ``?sslpassword=...``), in a libpq ``key=value``
DSN, or in a URL whose password was not escaped (``user:p@ss@host``, which
SQLAlchemy parses into a host of ``ss@host``). :class:`Redactor` knows every
secret of one database and renders a safe description of it
(:attr:`Redactor.source`); :meth:`Redactor.redact` masks those secrets in any
text -- a driver's error message may echo them -- and :meth:`Redactor.describe`
turns an exception into one safe line. Every message the library writes about
a database goes through one of them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import sqlalchemy
from sqlalchemy.engine import URL, Engine

__all__ = [
    "MASK",
    "SECRET_PARAMETERS",
    "Redactor",
    "RedactingFilter",
    "describe_error",
    "get_logger",
    "redact_dsn",
    "redactor_for",
    "register_secrets",
    "safe_url",
    "scrub",
]

MASK = "***"
#: libpq connection parameters whose values are secrets.
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})

_DSN_SECRET = re.compile(
    r"(?P<key>\b(?:" + "|".join(SECRET_PARAMETERS) + r")\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s'\"&]*)",
    re.IGNORECASE,
)
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:" + "|".join(SECRET_PARAMETERS) + r")=)(?P<value>[^&#\s'\"]*)", re.IGNORECASE
)


def redact_dsn(text: str) -> str:
    """A libpq ``key=value`` DSN (or any text holding one) with secret values masked."""
    return _DSN_SECRET.sub(lambda m: m.group("key") + MASK, text)


def _split_unescaped(text: str) -> str:
    """Mask the userinfo's password of a URL text, trusting the *last* ``@`` of the authority."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return redact_dsn(text)
    before_query, qmark, query = rest.partition("?")
    at = before_query.rfind("@")
    if at >= 0:
        userinfo = before_query[:at]
        user, colon, _ = userinfo.partition(":")
        before_query = user + (":" + MASK if colon else "") + before_query[at:]
    masked = scheme + sep + before_query + (qmark + query if qmark else "")
    return _QUERY_SECRET.sub(lambda m: m.group("key") + MASK, masked)


def _url_secrets(url: URL) -> set[str]:
    secrets: set[str] = set()
    if url.password:
        secrets.add(str(url.password))
    for key, value in url.query.items():
        if key.lower() in SECRET_PARAMETERS:
            values = value if isinstance(value, tuple) else (value,)
            secrets.update(str(v) for v in values if v)
    if url.host and "@" in url.host:
        # An unescaped "@" in the password: the host holds the rest of it.
        secrets.add(url.host.rsplit("@", 1)[0])
    return secrets


def _safe_url(url: URL) -> str:
    query = {key: (MASK if key.lower() in SECRET_PARAMETERS else value) for key, value in url.query.items()}
    host = url.host
    if host and "@" in host:
        host = MASK + "@" + host.rsplit("@", 1)[1]
    safe = url.set(query=query, host=host)
    return safe.render_as_string(hide_password=True).replace(quote(MASK, safe=""), MASK)


def _ambiguous(text: str) -> bool:
    """True for a URL text with more than one ``@`` before its query: an unescaped password."""
    return text.partition("://")[2].partition("?")[0].count("@") > 1


def safe_url(value: URL | str) -> str:
    """A URL (object or text) or libpq DSN with every secret masked."""
    if isinstance(value, URL):
        return _safe_url(value)
    text = str(value)
    if "://" not in text:
        return redact_dsn(text)
    if _ambiguous(text):
        return _split_unescaped(text)
    try:
        url = sqlalchemy.make_url(text)
    except Exception:
        return _split_unescaped(text)
    return _safe_url(url)


class Redactor:
    """The secrets of one database, and how to keep them out of text.

    Args:
        url: the database's URL (object or text), or a libpq DSN.
        extra: more secret strings (e.g. a password passed in ``connect_args``).
    """

    def __init__(self, url: URL | str, extra: Iterable[str] = ()) -> None:
        secrets = {s for s in extra if s}
        if isinstance(url, URL):
            secrets |= _url_secrets(url)
        else:
            text = str(url)
            secrets.update(m.group("value").strip("'") for m in _DSN_SECRET.finditer(text))
            secrets.update(unquote(m.group("value")) for m in _QUERY_SECRET.finditer(text))
            if "://" in text:
                authority = text.partition("://")[2].partition("?")[0]
                userinfo = authority[: authority.rfind("@")] if "@" in authority else ""
                if ":" in userinfo:
                    secrets.add(unquote(userinfo.partition(":")[2]))
                if not _ambiguous(text):
                    with contextlib.suppress(Exception):
                        secrets |= _url_secrets(sqlalchemy.make_url(text))
        variants: set[str] = set()
        for secret in secrets:
            # The forms it may take in a message: as is, %-escaped, +-escaped.
            variants.update({secret, quote(secret, safe=""), quote_plus(secret)})
        # Longest first, so no part of a longer secret is left behind.
        self._secrets = sorted((v for v in variants if v), key=len, reverse=True)
        self.source = safe_url(url)
        register_secrets(self._secrets)

    @property
    def has_secrets(self) -> bool:
        """True when the database was given any secret."""
        return bool(self._secrets)

    def redact(self, text: str) -> str:
        """``text`` with every secret of this database (and any DSN password) masked."""
        return _mask(text, self._secrets)

    def describe(self, exc: BaseException) -> str:
        """An exception as one safe line: the driver's own error, secrets masked."""
        return self.redact(describe_error(exc))


#: Secrets shorter than this are masked only where they sit in a URL or DSN:
#: masking "pw" in free text would mangle every message.
_MIN_FREE_TEXT_SECRET = 4


def _mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret not in text:
            continue
        if len(secret) >= _MIN_FREE_TEXT_SECRET:
            text = text.replace(secret, MASK)
        else:
            text = text.replace(f":{secret}@", f":{MASK}@").replace(f'"{secret}@', f'"{MASK}@')
    return _QUERY_SECRET.sub(lambda m: m.group("key") + MASK, redact_dsn(text))


# Every secret the library has been given, in this process: errors and log records
# are scrubbed of all of them (a driver's message may echo one; a traceback may hold one).
_known: list[str] = []
_known_lock = threading.Lock()


def register_secrets(secrets: Iterable[str]) -> None:
    """Remember secrets so that :func:`scrub` masks them everywhere."""
    with _known_lock:
        fresh = [s for s in secrets if s and s not in _known]
        if fresh:
            _known.extend(fresh)
            _known.sort(key=len, reverse=True)


def scrub(text: str) -> str:
    """``text`` with every secret the library knows, and any DSN or URL-query password, masked."""
    return _mask(text, list(_known))


#: A line break and the indentation around it (a driver's error text has them).
_LINE_BREAK = re.compile(r"\s*[\r\n]+\s*")


class RedactingFilter(logging.Filter):
    """Masks known secrets in log records and makes each message one line.

    The message and its arguments are rendered once; a line break in them (a
    driver's error text, a payload) becomes one space, so one record is one line.
    A traceback (``exc_info``) is the handler's to format and stays as it is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = _LINE_BREAK.sub(" ", scrub(message)).strip()
        if safe != message or record.args:
            record.msg, record.args = safe, None
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """A library logger whose records never carry a secret."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def describe_error(exc: BaseException) -> str:
    """An exception as one line (the driver's own error when wrapped by SQLAlchemy).

    Does not redact: use :meth:`Redactor.describe` when the database is known.
    """
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


_redactors: weakref.WeakKeyDictionary[Engine, Redactor] = weakref.WeakKeyDictionary()


def redactor_for(engine: Engine, connect_args: dict[str, Any] | None = None) -> Redactor:
    """The :class:`Redactor` of an engine's database (cached per engine)."""
    redactor = _redactors.get(engine)
    if redactor is None:
        extra = [str(v) for k, v in (connect_args or {}).items() if k.lower() in SECRET_PARAMETERS and v]
        redactor = _redactors[engine] = Redactor(engine.url, extra)
    return redactor
