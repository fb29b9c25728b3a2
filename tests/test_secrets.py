"""No password in any output (issue 13, point 5).

A password can reach the library in the URL, in its query string
(``?password=``, ``?sslpassword=``), in a libpq DSN, or in a URL whose
password was not escaped. The test server trusts local connections, so any
password works, and every output is searched for it: event sources, reprs,
statistics, gap events, log records, errors, the CLI's lines and the pytest
plugin's failure report.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
import sqlalchemy
import trio

from trio_pgevents import (
    ConnectError,
    Installer,
    InstallError,
    StreamGap,
    TrioPgEventsError,
    open_durable_stream,
    open_event_stream,
)
from trio_pgevents._secrets import Redactor, safe_url, scrub

from .conftest import Query, run_sql

SECRET = "Tr0ub4dor-s3cret-8hq2"

Unique = Callable[[str], str]


def urls(pg_url: str) -> dict[str, str]:
    """The test server's URL with the secret given each way a user may give it."""
    base = sqlalchemy.make_url(pg_url)
    plain = base.set(password=None).render_as_string(hide_password=False)
    return {
        "url_password": base.set(password=SECRET).render_as_string(hide_password=False),
        "query_password": f"{plain}?password={SECRET}",
        "query_sslpassword": f"{plain}?sslpassword={SECRET}",
    }


def unreachable(url: str) -> str:
    """The same URL on a port nothing listens on."""
    return sqlalchemy.make_url(url).set(port=1).render_as_string(hide_password=False)


def assert_clean(*texts: object) -> None:
    for text in texts:
        assert SECRET not in str(text), text
        assert SECRET not in repr(text), text


@pytest.fixture
def records() -> Any:
    """Every trio_pgevents log record (DEBUG and up) of the test, rendered."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(self.format(record))

    handler = Keep(logging.DEBUG)
    names = ["trio_pgevents", "trio_pgevents.cli", "trio_pgevents.worker"]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield messages
    for name in names:
        logging.getLogger(name).removeHandler(handler)
        logging.getLogger(name).setLevel(levels[name])


@pytest.mark.parametrize("how", ["url_password", "query_password", "query_sslpassword"])
async def test_streams_say_nothing_of_the_password(
    pg_url: str, query: Query, unique: Unique, records: list[str], how: str
) -> None:
    url = urls(pg_url)[how]
    channel = unique("sec_ch")
    async with open_event_stream(url, [channel], backoff_max=0.1) as stream:
        await query("SELECT pg_notify(%s, 'x')", (channel,))
        with trio.fail_after(10):
            event = await stream.receive()
        pid = stream.statistics().sources[0].backend_pid
        await query("SELECT pg_terminate_backend(%s)", (pid,))
        with trio.fail_after(10):
            gap = await stream.receive()
        assert isinstance(gap, StreamGap)
        assert_clean(event, event.source, stream, stream.statistics(), gap, gap.reason, stream.sources)
    with pytest.raises(ConnectError) as raised:
        async with open_event_stream(unreachable(url), [channel], connect_timeout=2):
            pass
    assert_clean(raised.value, raised.value.args, *records)
    assert records  # the reconnect was logged


async def test_durable_stream_and_installer_say_nothing_of_the_password(
    pg_url: str, pg_dsn: str, unique: Unique, records: list[str]
) -> None:
    url = urls(pg_url)["query_password"]
    installer = Installer(url, schema=unique("secschema"), channel=unique("secch"))
    table = unique("sec_t")
    run_sql(pg_dsn, f"CREATE TABLE {table} (id int PRIMARY KEY)")
    try:
        installer.watch_table(table, durable=True)
        async with open_durable_stream(
            url, "c", schema=installer.schema, channel=installer.channel
        ) as events:
            run_sql(pg_dsn, f"INSERT INTO {table} VALUES (1)")
            with trio.fail_after(10):
                event = await events.receive()
            assert_clean(events, events.statistics(), event, event.source, installer, installer.status())
        with pytest.raises(InstallError) as raised:
            Installer(unreachable(url), connect_timeout=2).status()
        assert_clean(raised.value, *records)
    finally:
        installer.uninstall()


def test_an_unescaped_password_is_never_shown(records: list[str]) -> None:
    # "p@ss..." was not escaped: SQLAlchemy reads a password "p" and a host "ss...@127.0.0.1".
    url = f"postgresql+psycopg2://postgres:p@ss{SECRET}@127.0.0.1:1/postgres"
    installer = Installer(url, connect_timeout=2)
    with pytest.raises(InstallError) as raised:
        installer.status()
    assert_clean(installer, raised.value, safe_url(url), Redactor(url).source, *records)


def test_redaction_of_each_form() -> None:
    # (given, shown, the password in it)
    forms = [
        (f"postgresql://u:{SECRET}@h/d", "postgresql://u:***@h/d", SECRET),
        (
            f"postgresql://u@h/d?password={SECRET}&sslmode=require",
            "postgresql://u@h/d?password=***&sslmode=require",
            SECRET,
        ),
        (f"postgresql://u@h/d?sslpassword={SECRET}", "postgresql://u@h/d?sslpassword=***", SECRET),
        (f"postgresql://u:a@b{SECRET}@h:5/d", "postgresql://u:***@h:5/d", f"a@b{SECRET}"),
        (f"postgresql://u:a/b@{SECRET}@h/d", "postgresql://u:***@h/d", f"a/b@{SECRET}"),
        (f"host=h user=u password={SECRET} dbname=d", "host=h user=u password=*** dbname=d", SECRET),
        (f"host=h password='{SECRET} x' dbname=d", "host=h password=*** dbname=d", f"{SECRET} x"),
    ]
    for given, shown, password in forms:
        assert safe_url(given) == shown, given
        redacted = Redactor(given).redact(f"error: could not use {given}\n(password: {password})")
        assert password not in redacted, redacted
        assert redacted.endswith("(password: ***)"), redacted  # masking stops where the secret ends
        assert password not in scrub(f"after registering, anywhere: {password}")
    # Errors of the library are scrubbed of every secret it was given.
    assert_clean(TrioPgEventsError(f"driver said: {SECRET}"))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_pgevents", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("how", ["url_password", "query_password", "query_sslpassword", "dsn"])
def test_cli_says_nothing_of_the_password(pg_url: str, pg_dsn: str, unique: Unique, how: str) -> None:
    url = psycopg2.extensions.make_dsn(pg_dsn, password=SECRET) if how == "dsn" else urls(pg_url)[how]
    bad_url = "port=1 " + url if how == "dsn" else unreachable(url)
    channel = unique("sec_cli")
    listen = subprocess.Popen(
        [sys.executable, "-m", "trio_pgevents", "listen", "--database-url", url, "--count", "1", channel],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert listen.stderr is not None
        # "listening on ..." says it LISTENs: then the NOTIFY is sure to arrive.
        for line in listen.stderr:
            assert_clean(line)
            if "listening on" in line:
                break
        run_sql(pg_dsn, "SELECT pg_notify(%s, 'x')", (channel,))
        out, err = listen.communicate(timeout=30)
    finally:
        listen.kill()
    assert listen.returncode == 0, err
    assert channel in out
    assert_clean(out, err)
    failed = cli(
        "status", "--database-url", unreachable(url) if how != "dsn" else url.replace("port=", "port=1")
    )
    assert failed.returncode != 0
    assert "cannot connect" in failed.stderr
    assert_clean(failed.stdout, failed.stderr)
    debug = cli("status", "--debug", "--database-url", bad_url)
    assert_clean(debug.stdout, debug.stderr)


def test_the_pytest_plugin_report_says_nothing_of_the_password(pg_url: str, tmp_path: Path) -> None:
    test_file = tmp_path / "test_leak.py"
    test_file.write_text(
        textwrap.dedent(
            """
            def test_fails(pg_url, pg_dsn, pg_engine):
                local_url = str(pg_url)
                assert pg_url == "something else", (pg_dsn, pg_engine, local_url)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-l", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "TRIO_PGEVENTS_TEST_DSN": urls(pg_url)["query_password"]},
    )
    assert "1 failed" in result.stdout, result.stdout + result.stderr
    assert_clean(result.stdout, result.stderr)
