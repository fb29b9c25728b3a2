"""The ``trio-pgevents`` console script, run for real in subprocesses against real Postgres."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import trio

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "trio-pgevents")
SETTINGS = "tests.cli_settings.basic"
BOGUS_URL = "postgres://nobody:secret@127.0.0.1:1/nowhere"
TIMEOUT = 60

Query = Callable[..., Awaitable[list[tuple[Any, ...]]]]


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_EVENTS_")}
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def row_payload(table: str, n: int, *, method: str = "INSERT", extra: str = "") -> str:
    """A data payload in the installer's format (json_build_object's text form)."""
    new = json.dumps({"id": n, "note": extra})
    return (
        f'{{"v" : 1, "kind" : "row", "table_schema" : "public", "table_name" : "{table}", '
        f'"session_user" : "postgres", "method" : "{method}", "old_data" : null, '
        f'"new_data" : {new}, "query" : "INSERT ..."}}'
    )


def ddl_payload(table: str) -> str:
    """A DDL payload in the installer's format."""
    return (
        '{"v" : 1, "kind" : "ddl", "classid" : 1259, "objid" : 1, "objsubid" : 0, '
        f'"command_tag" : "ALTER TABLE", "object_type" : "table", "object_name" : null, '
        f'"object_identity" : "public.{table}", "schema_name" : "public", "original" : null, '
        '"normal" : null, "in_extension" : false, "is_temporary" : null}'
    )


class CliProcess:
    """A running ``trio-pgevents`` whose stdout/stderr lines are collected as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.out: list[str] = []
        self.err: list[str] = []
        self._arrived = trio.Event()

    async def pump(self, stream: Any, lines: list[str]) -> None:
        pending = b""
        async for chunk in stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if complete:
                lines.extend(part.decode("utf-8", "replace") for part in complete)
                self._arrived.set()
                self._arrived = trio.Event()
        if pending:
            lines.append(pending.decode("utf-8", "replace"))
        self._arrived.set()

    async def wait_for(
        self, text: str, *, where: str = "out", count: int = 1, timeout: float = TIMEOUT
    ) -> list[str]:
        """Wait until ``count`` lines of stdout (or stderr) contain ``text``; return them."""
        lines = self.out if where == "out" else self.err
        with trio.fail_after(timeout):
            while True:
                found = [line for line in lines if text in line]
                if len(found) >= count:
                    return found
                if self.process.returncode is not None and self._drained:
                    raise AssertionError(
                        f"process exited ({self.process.returncode}) before {count}x {text!r}:\n"
                        + "\n".join(self.out + self.err)
                    )
                await self._arrived.wait()

    _drained = False

    async def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the exit status."""
        with trio.fail_after(timeout):
            return await self.process.wait()

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def transcript(self) -> str:
        return "\n".join(["--- stdout", *self.out, "--- stderr", *self.err])


StartCli = Callable[..., Awaitable[CliProcess]]


@pytest.fixture
async def start_cli() -> AsyncIterator[StartCli]:
    """``proc = await start_cli(args, env=...)``: run the console script; killed at teardown."""
    procs: list[CliProcess] = []
    async with trio.open_nursery() as nursery:

        async def start(args: Sequence[str], *, env: dict[str, str] | None = None) -> CliProcess:
            process = await trio.lowlevel.open_process(
                [CLI, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env=env or _env(),
            )
            proc = CliProcess(process)
            procs.append(proc)

            async def pump_both() -> None:
                assert process.stdout is not None
                assert process.stderr is not None
                async with trio.open_nursery() as inner:
                    inner.start_soon(proc.pump, process.stdout, proc.out)
                    inner.start_soon(proc.pump, process.stderr, proc.err)
                await process.stdout.aclose()
                await process.stderr.aclose()
                proc._drained = True
                await process.wait()
                proc._arrived.set()

            nursery.start_soon(pump_both)
            return proc

        try:
            yield start
        finally:
            for proc in procs:
                if proc.process.returncode is None:
                    proc.process.kill()
                await proc.process.wait()


def run_cli(
    args: Sequence[str], *, env: dict[str, str] | None = None, module: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (in a thread from async tests)."""
    command = [sys.executable, "-m", "trio_pgevents"] if module else [CLI]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env or _env(),
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


async def arun_cli(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: run_cli(args, **kwargs))


def with_app_name(url: str, name: str) -> str:
    return (
        sqlalchemy.make_url(url)
        .update_query_dict({"application_name": name})
        .render_as_string(hide_password=False)
    )


async def notify_all(query: Query, channel: str, payloads: Sequence[str]) -> None:
    """NOTIFY every payload, in order, from one transaction."""
    values = ", ".join(["(%s, %s)"] * len(payloads))
    params: list[str] = []
    for payload in payloads:
        params += [channel, payload]
    await query(
        f"SELECT pg_notify(c, p) FROM (VALUES {values}) AS v(c, p)",
        params,
    )


async def backends(query: Query, application_name: str) -> int:
    rows = await query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    )
    return int(rows[0][0])


# ---- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--settings", "tests.cli_settings.no_such_module"], {}, "--settings"),
        (["--settings", "tests/cli_settings/no_such_file.py"], {}, "--settings"),
        (["--settings", "tests.cli_settings.broken"], {}, "--settings"),
        (
            ["--settings", "tests.cli_settings.missing_schema_callback"],
            {},
            "PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK",
        ),
        (
            ["--settings", SETTINGS],
            {"PG_EVENTS_DATA_UPDATE_CALLBACK": "tests.cli_settings.nowhere.on_data"},
            "PG_EVENTS_DATA_UPDATE_CALLBACK",
        ),
        (
            ["--settings", SETTINGS],
            {"PG_EVENTS_DATA_UPDATE_CALLBACK": "tests.cli_settings.callbacks.no_such_function"},
            "PG_EVENTS_DATA_UPDATE_CALLBACK",
        ),
        (
            ["--settings", SETTINGS],
            {"PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK": "tests.cli_settings.callbacks.NOT_CALLABLE"},
            "PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK",
        ),
        (
            ["--settings", SETTINGS],
            {"PG_EVENTS_DATABASE_URL": "postgresql://user:pw@localhost:notaport/db"},
            "PG_EVENTS_DATABASE_URL",
        ),
        (
            ["--settings", SETTINGS],
            {"PG_EVENTS_DATABASE_URL": "mysql://user@localhost/db"},
            "PG_EVENTS_DATABASE_URL",
        ),
        # Unreachable: the module's own URL points at port 1.
        (["--settings", SETTINGS], {}, "PG_EVENTS_DATABASE_URL"),
        (["--settings", SETTINGS, "--database-url", BOGUS_URL], {}, "--database-url"),
        (
            [],
            {"PG_EVENTS_DATA_UPDATE_CALLBACK": "tests.cli_settings.callbacks.on_data"},
            "PG_EVENTS_DATABASE_URL",
        ),
    ],
)
async def test_bad_settings_exit_2_with_one_line_naming_the_setting(
    args: list[str], env: dict[str, str], setting: str
) -> None:
    result = await arun_cli(["worker", *args], env=_env(**env))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"trio-pgevents: error: {setting}"), lines[0]
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr  # the module's password never shows


async def test_debug_shows_the_traceback() -> None:
    result = await arun_cli(["worker", "--settings", "tests.cli_settings.broken", "--debug"])
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "broken on purpose" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("trio-pgevents: error: --settings")


async def test_python_dash_m_works_the_same() -> None:
    result = await arun_cli(["worker", "--settings", "tests.cli_settings.no_such_module"], module=True)
    assert result.returncode == 2
    assert result.stderr.startswith("trio-pgevents: error: --settings")
    help_result = await arun_cli(["--help"], module=True)
    assert help_result.returncode == 0
    for command in ("worker", "listen"):
        assert command in help_result.stdout


# ---- worker ------------------------------------------------------------------------------------------


async def test_worker_calls_sync_and_async_callbacks_with_json_payloads(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    table = unique("orders")
    proc = await start_cli(["worker", "--settings", SETTINGS, "--database-url", pg_url])
    await proc.wait_for("worker listening on pgevents", where="err")
    row, ddl = row_payload(table, 1), ddl_payload(table)
    await notify_all(query, "pgevents", [row, ddl])
    (data_line,) = await proc.wait_for(f'"table_name" : "{table}"')
    (schema_line,) = await proc.wait_for(f'"object_identity" : "public.{table}"')
    # pg_events passed the payload, a JSON string; plain functions run in a worker thread.
    assert data_line == f"DATA thread=worker type=str {row}"
    assert schema_line == f"ASCHEMA thread=main type=str {ddl}"
    proc.send_signal(signal.SIGINT)
    assert await proc.wait() == 0, proc.transcript()


async def test_worker_passes_event_objects_and_takes_callables_from_env_and_py_file(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    table = unique("orders")
    env = _env(
        PG_EVENTS_DATABASE_URL=pg_url,  # the environment overrides the file's URL
        PG_EVENTS_DB_SCHEMA_UPDATE_CALLBACK="tests.cli_settings.callbacks.on_schema_async",
    )
    proc = await start_cli(
        ["worker", "--settings", "tests/cli_settings/callables.py", "--callback-arg", "event"], env=env
    )
    await proc.wait_for("worker listening", where="err")
    await notify_all(query, "pgevents", [row_payload(table, 1), ddl_payload(table)])
    (data_line,) = await proc.wait_for(f'"table_name" : "{table}"')
    (schema_line,) = await proc.wait_for(f'"object_identity" : "public.{table}"')
    assert data_line.startswith("ADATA thread=main type=RowChange ")
    assert schema_line.startswith("ASCHEMA thread=main type=SchemaChange ")
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.transcript()


async def test_raising_callback_is_logged_and_worker_goes_on(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    table = unique("orders")
    env = _env(PG_EVENTS_DATA_UPDATE_CALLBACK="tests.cli_settings.callbacks.on_data_raises")
    proc = await start_cli(["worker", "--settings", SETTINGS, "--database-url", pg_url], env=env)
    await proc.wait_for("worker listening", where="err")
    await notify_all(query, "pgevents", [row_payload(table, 1, extra="boom")])
    (error_line,) = await proc.wait_for("raised for", where="err")
    assert "on_data_raises" in error_line
    assert table in error_line  # the event is in the log
    await proc.wait_for("callback exploded on purpose", where="err")
    # The next event is still handled: the worker did not stop.
    await notify_all(query, "pgevents", [row_payload(table, 2, extra="fine")])
    (line,) = await proc.wait_for('"note": "fine"')
    assert line.startswith("DATA ")
    assert proc.process.returncode is None
    proc.send_signal(signal.SIGINT)
    assert await proc.wait() == 0, proc.transcript()
    assert any("1 failed" in line for line in proc.err)


async def test_sigterm_during_busy_worker_finishes_callbacks_and_leaves_no_backend(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    table = unique("busy")
    app = unique("cli_worker")
    env = _env(
        PG_EVENTS_DATA_UPDATE_CALLBACK="tests.cli_settings.callbacks.on_data_slow", CLI_TEST_SLOW="1.0"
    )
    proc = await start_cli(
        [
            "worker",
            "--settings",
            SETTINGS,
            "--database-url",
            with_app_name(pg_url, app),
            "--concurrency",
            "3",
        ],
        env=env,
    )
    await proc.wait_for("worker listening", where="err")
    with trio.fail_after(TIMEOUT):
        while await backends(query, app) != 1:  # the worker's LISTEN connection, by name
            await trio.sleep(0.05)
    total = 40
    await notify_all(query, "pgevents", [row_payload(table, n) for n in range(total)])
    await proc.wait_for("START ", count=3)  # three callbacks are running now
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.transcript()
    starts = {line.split(" ", 3)[3] for line in proc.out if line.startswith("START ")}
    ends = {line.split(" ", 3)[3] for line in proc.out if line.startswith("END ")}
    assert starts == ends, proc.transcript()  # every running callback finished
    assert 3 <= len(ends) < total  # ...and reading stopped: the rest were not started
    assert any("received SIGTERM" in line for line in proc.err)
    with trio.fail_after(TIMEOUT):
        while await backends(query, app) != 0:
            await trio.sleep(0.05)


async def test_shutdown_timeout_cancels_stuck_callbacks(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    table = unique("stuck")
    env = _env(
        PG_EVENTS_DATA_UPDATE_CALLBACK="tests.cli_settings.callbacks.on_data_slow", CLI_TEST_SLOW="120"
    )
    proc = await start_cli(
        ["worker", "--settings", SETTINGS, "--database-url", pg_url, "--shutdown-timeout", "0.5"], env=env
    )
    await proc.wait_for("worker listening", where="err")
    await notify_all(query, "pgevents", [row_payload(table, 1)])
    await proc.wait_for("START ")
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(timeout=30) == 0, proc.transcript()
    assert any("did not finish in 0.5s" in line for line in proc.err), proc.transcript()


# ---- listen ------------------------------------------------------------------------------------------


async def test_listen_prints_json_lines_and_stops_after_count(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    channel = unique("Listen Me")
    table = unique("orders")
    proc = await start_cli(["listen", channel, "pgevents", "--count", "3", "--database-url", pg_url])
    await proc.wait_for("listening on", where="err")
    await notify_all(query, channel, ["one", "two"])
    await notify_all(query, "pgevents", [row_payload(table, 7), row_payload(table, 8)])
    assert await proc.wait() == 0, proc.transcript()
    events = [json.loads(line) for line in proc.out]
    assert len(events) == 3  # the fourth was not printed
    assert [(e["type"], e["channel"], e["payload"]) for e in events[:2]] == [
        ("Notification", channel, "one"),
        ("Notification", channel, "two"),
    ]
    assert events[2]["type"] == "RowChange"
    assert events[2]["data"]["table_name"] == table
    assert events[2]["data"]["new_data"] == {"id": 7, "note": ""}
    assert isinstance(events[0]["pid"], int)


async def test_listen_takes_the_url_from_the_environment_over_the_module(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    channel = unique("envurl")
    proc = await start_cli(
        ["listen", channel, "--count", "1", "--settings", SETTINGS], env=_env(PG_EVENTS_DATABASE_URL=pg_url)
    )
    await proc.wait_for("listening on", where="err")
    await notify_all(query, channel, ["hello"])
    assert await proc.wait() == 0, proc.transcript()
    assert json.loads(proc.out[0])["payload"] == "hello"


async def test_listen_stops_on_sigint_with_status_0(start_cli: StartCli, pg_url: str, unique: Any) -> None:
    proc = await start_cli(["listen", unique("quiet"), "--database-url", pg_url])
    await proc.wait_for("listening on", where="err")
    proc.send_signal(signal.SIGINT)
    assert await proc.wait() == 0, proc.transcript()
