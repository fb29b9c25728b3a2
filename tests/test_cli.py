"""The ``trio-pgevents`` console script, run for real in subprocesses against real Postgres."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import trio

from trio_pgevents import ConfigurationError, Event, Notification, RowChange, SchemaChange
from trio_pgevents._cli.dispatch import CallbackRouter, Dispatcher

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
    """``proc = await start_cli(args, env=..., program=...)``: run the console script; killed at teardown."""
    procs: list[CliProcess] = []
    async with trio.open_nursery() as nursery:

        async def start(
            args: Sequence[str], *, env: dict[str, str] | None = None, program: Sequence[str] = (CLI,)
        ) -> CliProcess:
            process = await trio.lowlevel.open_process(
                [*program, *args],
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
        # A settings module that calls sys.exit() while being imported.
        (["--settings", "tests.cli_settings.exits"], {}, "--settings"),
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


async def test_bad_channel_exits_2_naming_it(pg_url: str) -> None:
    result = await arun_cli(
        ["worker", "--settings", SETTINGS, "--database-url", pg_url, "--channel", "x" * 64]
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("trio-pgevents: error: channel name")


async def test_listen_into_a_closed_pipe_exits_quietly(pg_url: str, query: Query, unique: Any) -> None:
    channel = unique("pipe")

    def run() -> tuple[int, str]:
        process = subprocess.Popen(
            [CLI, "listen", channel, "--database-url", pg_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=_env(),
        )
        assert process.stdout is not None
        assert process.stderr is not None
        for line in process.stderr:  # wait until it listens
            if b"listening on" in line:
                break
        process.stdout.close()  # like `| head -0`: the reader goes away
        run_sql_notify()
        try:
            status = process.wait(timeout=TIMEOUT)
        finally:
            process.kill()
        err = process.stderr.read().decode()
        process.stderr.close()
        return status, err

    def run_sql_notify() -> None:
        trio.from_thread.run(notify_all, query, channel, ["x"] * 50)

    status, err = await trio.to_thread.run_sync(run)
    assert status == 0, err
    assert "Traceback" not in err
    assert "BrokenPipe" not in err


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
    # pg_events accepted "module.settings.py" for a dotted path too.
    proc = await start_cli(["worker", "--settings", f"{SETTINGS}.py", "--database-url", pg_url])
    await proc.wait_for("worker listening on pgevents", where="err")
    row, ddl = row_payload(table, 1), ddl_payload(table)
    await notify_all(query, "pgevents", [row, ddl])
    (data_line,) = await proc.wait_for(f'"table_name" : "{table}"')
    (schema_line,) = await proc.wait_for(f'"object_identity" : "public.{table}"')
    # pg_events passed the payload, a JSON string in its own shape (no "v"/"kind"/"truncated", no
    # null "old_data" on INSERT; a DDL command's 8 keys in its order); plain functions run in a
    # worker thread.
    new = json.dumps({"id": 1, "note": ""})
    assert data_line == (
        f'DATA thread=worker type=str {{"table_schema" : "public", "table_name" : "{table}", '
        f'"session_user" : "postgres", "method" : "INSERT", "new_data" : {new}, "query" : "INSERT ..."}}'
    )
    assert schema_line == (
        'ASCHEMA thread=main type=str {"classid" : 1259, "objid" : 1, "objsubid" : 0, '
        '"command_tag" : "ALTER TABLE", "object_type" : "table", "schema_name" : "public", '
        f'"object_identity" : "public.{table}", "in_extension" : false}}'
    )
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


async def test_worker_reads_a_database_built_by_pg_events(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    # pg_events' own triggers notify on these channels, with its payloads (no "v"/"kind" keys).
    table = unique("legacy")
    data = json.dumps(
        {
            "table_schema": "public",
            "table_name": table,
            "session_user": "app",
            "method": "UPDATE",
            "old_data": {"id": 1},
            "new_data": {"id": 1},
            "query": "UPDATE ...",
        }
    )
    dropped = json.dumps(
        {
            "classid": 1259,
            "objid": 5,
            "objsubid": 0,
            "original": True,
            "normal": False,
            "is_temporary": False,
            "object_type": "table",
            "schema_name": "public",
            "object_name": table,
            "object_identity": f"public.{table}",
        }
    )
    channels = ["pgevents_data_update", "pgevents_table_alter", "pgevents_table_drop"]
    proc = await start_cli(
        ["worker", "--settings", SETTINGS, "--database-url", pg_url]
        + [arg for channel in channels for arg in ("--channel", channel)]
    )
    await proc.wait_for("worker listening on pgevents_data_update, pgevents_table_alter", where="err")
    await notify_all(query, "pgevents_data_update", [data])
    await notify_all(query, "pgevents_table_drop", [dropped])
    (data_line,) = await proc.wait_for(f'"table_name": "{table}"')
    (drop_line,) = await proc.wait_for(f'"object_name": "{table}"')
    assert data_line == f"DATA thread=worker type=str {data}"
    assert drop_line == f"ASCHEMA thread=main type=str {dropped}"
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
    running = peak = 0
    for line in proc.out:
        running += line.startswith("START ") - line.startswith("END ")
        peak = max(peak, running)
    assert peak == 3  # --concurrency 3: never more at once
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


async def _events(events: Sequence[Event]) -> AsyncIterator[Event]:
    for event in events:
        await trio.lowlevel.checkpoint()
        yield event


async def test_dispatcher_in_process_order_threads_and_hook() -> None:
    seen: list[tuple[str, Any, bool]] = []
    done: list[tuple[int, bool]] = []

    def sync_cb(payload: Any) -> None:
        if payload.endswith('"boom"}'):
            raise RuntimeError("boom")
        seen.append(("sync", payload, threading.current_thread() is threading.main_thread()))

    async def async_cb(event: Any) -> None:
        await trio.lowlevel.checkpoint()
        seen.append(("async", event, threading.current_thread() is threading.main_thread()))

    rows = [RowChange.from_data("c", {"n": n}, 1, "db") for n in range(5)]
    rows.insert(2, RowChange.from_data("c", {"n": "boom"}, 1, "db"))
    ddl = SchemaChange.from_data("c", {"command_tag": "ALTER TABLE"}, 1, "db")
    router = CallbackRouter(sync_cb, async_cb, arg="json")
    dispatcher = Dispatcher(router, on_done=lambda e, ok: done.append((e.pid, ok)))
    stats = await dispatcher.run(_events([*rows, Notification("other", "x", 1, "db"), ddl]))
    # concurrency=1: one at a time, in order; plain functions off the Trio thread.
    assert [item[1] for item in seen[:-1]] == [r.payload for r in rows if "boom" not in r.payload]
    assert all(kind == "sync" and not on_main for kind, _, on_main in seen[:-1])
    assert seen[-1] == ("async", ddl.payload, True)
    assert (stats.received, stats.succeeded, stats.failed, stats.skipped) == (8, 6, 1, 1)
    assert [ok for _, ok in done] == [True, True, False, True, True, True, True]


async def test_dispatcher_rejects_bad_options() -> None:
    router = CallbackRouter(None, None)
    with pytest.raises(ConfigurationError, match="concurrency"):
        Dispatcher(router, concurrency=0)
    with pytest.raises(ConfigurationError, match="shutdown_timeout"):
        Dispatcher(router, shutdown_timeout=-1)
    with pytest.raises(ConfigurationError, match="callback argument"):
        CallbackRouter(None, None, arg="xml")  # type: ignore[arg-type]
    await trio.lowlevel.checkpoint()


async def test_second_signal_stops_the_worker_at_once(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    table = unique("impatient")
    env = _env(
        PG_EVENTS_DATA_UPDATE_CALLBACK="tests.cli_settings.callbacks.on_data_slow", CLI_TEST_SLOW="120"
    )
    proc = await start_cli(
        ["worker", "--settings", SETTINGS, "--database-url", pg_url, "--shutdown-timeout", "300"], env=env
    )
    await proc.wait_for("worker listening", where="err")
    await notify_all(query, "pgevents", [row_payload(table, 1)])
    await proc.wait_for("START ")
    proc.send_signal(signal.SIGTERM)
    await proc.wait_for("waiting up to 300s for 1 running callback", where="err")
    proc.send_signal(signal.SIGINT)
    assert await proc.wait(timeout=30) == 130, proc.transcript()
    assert any("received SIGINT again: stopping now" in line for line in proc.err)


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


async def test_database_url_option_overrides_the_environment(
    start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    channel = unique("override")
    proc = await start_cli(
        ["listen", channel, "--count", "1", "--database-url", pg_url],
        env=_env(PG_EVENTS_DATABASE_URL=BOGUS_URL),
    )
    await proc.wait_for("listening on", where="err")
    await notify_all(query, channel, ["over"])
    assert await proc.wait() == 0, proc.transcript()
    assert json.loads(proc.out[0])["payload"] == "over"


async def test_listen_stops_on_sigint_with_status_0(start_cli: StartCli, pg_url: str, unique: Any) -> None:
    proc = await start_cli(["listen", unique("quiet"), "--database-url", pg_url])
    await proc.wait_for("listening on", where="err")
    proc.send_signal(signal.SIGINT)
    assert await proc.wait() == 0, proc.transcript()


# ---- build / status / uninstall (the real installer) ----------------------------------------------------


@pytest.fixture
def installed(pg_url: str, unique: Any) -> Iterator[list[str]]:
    """Installer options naming a private installer schema and channel; uninstalled at teardown."""
    options = ["--installer-schema", unique("cli_lib"), "--channel", unique("cli_ch")]
    yield options
    result = run_cli(["uninstall", "--yes", "--database-url", pg_url, *options])
    assert result.returncode == 0, result.stderr


def _rows(stdout: str) -> dict[str, tuple[str, str]]:
    """build/uninstall's table, parsed by its header's columns: name -> (action, reason)."""
    lines = stdout.splitlines()
    header = lines[0]
    name_at, reason_at = header.index("NAME"), header.index("REASON")
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[1:]:
        action = line[: header.index("KIND")].strip()
        if action in ("installed", "replaced", "unchanged", "removed", "skipped"):
            rows[line[name_at:reason_at].strip()] = (action, line[reason_at:].strip())
    return rows


def _on(name: str, schema: str, table: str) -> bool:
    """Does a trigger row's name (``trg on schema.table``, quoted where needed) name this table?"""
    qualified = name.rpartition(" on ")[2]
    return qualified.replace('"', "") == f"{schema}.{table}"


async def _make_schema(query: Query, schema: str, tables: Sequence[str], *, view: str | None = None) -> None:
    await query(f'CREATE SCHEMA "{schema}"')
    for table in tables:
        await query(f'CREATE TABLE "{schema}"."{table}" (id serial PRIMARY KEY, note text)')
    if view is not None:
        await query(f'CREATE VIEW "{schema}"."{view}" AS SELECT 1 AS one')


async def _drop_triggers(query: Query, schema: str, table: str) -> int:
    rows = await query(
        """SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s AND t.tgname LIKE 'trio\\_pgevents\\_%%'""",
        (schema, table),
    )
    for (name,) in rows:
        await query(f'DROP TRIGGER "{name}" ON "{schema}"."{table}"')
    return len(rows)


async def test_build_is_idempotent_and_status_gates_on_missing_triggers(
    installed: list[str], pg_url: str, query: Query, unique: Any
) -> None:
    schema = unique("Shop Schema")
    await _make_schema(query, schema, ["orders", "Line Items"], view="summary")
    db = ["--database-url", pg_url, *installed]

    before = await arun_cli(["status", *db])
    assert before.returncode == 1, before.stdout  # nothing installed yet: MISSING
    assert "MISSING" in before.stdout

    first = await arun_cli(["build", "--schema", schema, *db])
    assert first.returncode == 0, first.stderr
    rows = _rows(first.stdout)
    for table in ("orders", "Line Items"):
        triggers = [(name, row) for name, row in rows.items() if _on(name, schema, table)]
        assert triggers, first.stdout
        assert all(action == "installed" for name, (action, _) in triggers), first.stdout
    assert any(name.endswith("_ddl_end") and action == "installed" for name, (action, _) in rows.items())
    (view,) = [row for name, row in rows.items() if name.replace('"', "").endswith(f"{schema}.summary")]
    assert view[0] == "skipped"
    assert "view" in view[1]  # with its reason
    assert "installed" in first.stdout.splitlines()[-1]

    assert "INFO trio_pgevents.cli: built in" in first.stderr
    second = await arun_cli(["build", "--schema", schema, "--log-level", "warning", *db])
    assert second.returncode == 0, second.stderr
    assert second.stderr == ""  # --log-level WARNING: the INFO summary line is not logged
    assert {action for action, _ in _rows(second.stdout).values()} == {"unchanged", "skipped"}, second.stdout

    ok = await arun_cli(["status", "--json", *db])
    assert ok.returncode == 0, ok.stdout
    status = json.loads(ok.stdout)
    assert status["ok"] is True
    assert {(t["table"], t["state"]) for t in status["tables"] if t["schema"] == schema} == {
        ("orders", "INSTALLED"),
        ("Line Items", "INSTALLED"),
        ("summary", "SKIPPED"),  # a view: skipped, and not a reason to fail the deploy
    }

    # auto-rebuild (pg_events' default): a new table in a watched schema gets its triggers at once.
    await query(f'CREATE TABLE "{schema}".later (id int)')
    assert (await arun_cli(["status", *db])).returncode == 0

    # Someone drops a table's triggers: status says MISSING and exits 1, build repairs it.
    assert await _drop_triggers(query, schema, "orders") > 0
    broken = await arun_cli(["status", *db])
    assert broken.returncode == 1, broken.stdout
    assert any(
        line.startswith(f"{schema}.orders") and "MISSING" in line for line in broken.stdout.splitlines()
    )
    assert "NOT OK" in broken.stdout
    repaired = await arun_cli(["build", "--schema", schema, *db])
    assert repaired.returncode == 0, repaired.stderr
    assert any(action in ("installed", "replaced") for action, _ in _rows(repaired.stdout).values())
    assert (await arun_cli(["status", *db])).returncode == 0


async def test_build_without_superuser_skips_ddl_triggers_and_installs_the_rest(
    installed: list[str], pg_url: str, query: Query, unique: Any
) -> None:
    role = unique("cli_app")
    schema = unique("app_data")
    await query(f"CREATE ROLE \"{role}\" LOGIN NOSUPERUSER PASSWORD 'cli-pw'")
    try:
        await query(f'GRANT CREATE ON DATABASE "{sqlalchemy.make_url(pg_url).database}" TO "{role}"')
        await query(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"')
        await query(f'SET ROLE "{role}"; CREATE TABLE "{schema}".items (id int PRIMARY KEY); RESET ROLE')
        role_url = (
            sqlalchemy.make_url(pg_url)
            .set(username=role, password="cli-pw")
            .render_as_string(hide_password=False)
        )
        db = ["--database-url", role_url, *installed]
        result = await arun_cli(["build", "--schema", schema, *db])
        assert result.returncode == 0, result.stderr
        rows = _rows(result.stdout)
        action, reason = rows["DDL event triggers"]
        assert action == "skipped"
        assert "superuser" in reason
        assert [action for n, (action, _) in rows.items() if _on(n, schema, "items")] == ["installed"] * 2
        assert "DDL event triggers skipped" in result.stderr
        status = await arun_cli(["status", "--json", *db])
        assert status.returncode == 0, status.stdout
        assert json.loads(status.stdout)["ddl_state"] is None
    finally:
        await query(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        uninstall = await arun_cli(["uninstall", "--yes", "--database-url", pg_url, *installed])
        assert uninstall.returncode == 0, uninstall.stderr
        await query(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


async def test_worker_gets_real_trigger_events_after_build(
    installed: list[str], start_cli: StartCli, pg_url: str, query: Query, unique: Any
) -> None:
    schema = unique("live")
    await _make_schema(query, schema, ["orders"])
    built = await arun_cli(["build", "--schema", schema, "--database-url", pg_url, *installed])
    assert built.returncode == 0, built.stderr
    channel = installed[installed.index("--channel") + 1]
    proc = await start_cli(["worker", "--settings", SETTINGS, "--database-url", pg_url, "--channel", channel])
    await proc.wait_for("worker listening", where="err")
    await query(f"INSERT INTO \"{schema}\".orders (note) VALUES ('first order')")
    (data_line,) = await proc.wait_for("first order")
    assert data_line.startswith("DATA thread=worker type=str ")
    data = json.loads(data_line.split(" ", 3)[3])
    # pg_events' keys for an INSERT, in its order, and nothing else.
    assert list(data) == ["table_schema", "table_name", "session_user", "method", "new_data", "query"]
    assert (data["table_schema"], data["table_name"], data["method"]) == (schema, "orders", "INSERT")
    assert data["new_data"]["note"] == "first order"
    await query(f'ALTER TABLE "{schema}".orders ADD COLUMN extra int')
    (ddl_line,) = await proc.wait_for("ALTER TABLE")
    assert ddl_line.startswith("ASCHEMA thread=main type=str ")
    ddl = json.loads(ddl_line.split(" ", 3)[3])
    assert ddl["command_tag"] == "ALTER TABLE"
    assert ddl["object_identity"] == f'"{schema}".orders' or ddl["object_identity"] == f"{schema}.orders"
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.transcript()


async def test_uninstall_asks_first_and_refuses_without_a_terminal(
    installed: list[str], pg_url: str, query: Query, unique: Any
) -> None:
    schema = unique("gone")
    await _make_schema(query, schema, ["t"])
    db = ["--database-url", pg_url, *installed]
    assert (await arun_cli(["build", "--schema", schema, *db])).returncode == 0

    refused = await arun_cli(["uninstall", *db])  # stdin is /dev/null: no one to ask
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "trio-pgevents: error: uninstall: refusing without confirmation (stdin is not a terminal): pass --yes"
    ]

    def answer(text: str) -> subprocess.CompletedProcess[str]:
        controller, terminal = os.openpty()
        try:
            process = subprocess.Popen(
                [CLI, "uninstall", *db],
                stdin=terminal,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env=_env(),
                text=True,
            )
            os.write(controller, text.encode())
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            os.close(controller)
            os.close(terminal)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    declined = await trio.to_thread.run_sync(answer, "n\n")
    assert declined.returncode == 1
    assert "[y/N]" in declined.stderr
    assert (await arun_cli(["status", *db])).returncode == 0  # nothing was removed

    accepted = await trio.to_thread.run_sync(answer, "y\n")
    assert accepted.returncode == 0, accepted.stderr
    removed = _rows(accepted.stdout)
    assert any(
        name == f"triggers on {schema}.t" and action == "removed" for name, (action, _) in removed.items()
    )
    after = await arun_cli(["status", *db])
    assert after.returncode == 1
    assert "MISSING" in after.stdout
    remaining = await query(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal",
        (schema,),
    )
    assert remaining == [(0,)]


async def test_build_shows_a_progress_bar_on_a_terminal(
    installed: list[str], pg_url: str, query: Query, unique: Any
) -> None:
    schema = unique("many")
    await _make_schema(query, schema, [f"t{n}" for n in range(25)])

    def run() -> tuple[int, str, str]:
        controller, terminal = os.openpty()
        try:
            process = subprocess.Popen(
                [CLI, "build", "--schema", schema, "--database-url", pg_url, *installed],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=terminal,
                cwd=ROOT,
                env=_env(),
                text=True,
            )
            os.close(terminal)
            terminal = -1
            chunks: list[bytes] = []
            while True:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            out, _ = process.communicate(timeout=TIMEOUT)
        finally:
            os.close(controller)
            if terminal != -1:
                os.close(terminal)
        return process.returncode, out, b"".join(chunks).decode("utf-8", "replace")

    status, out, err = await trio.to_thread.run_sync(run)
    assert status == 0, err
    assert "\r[" in err
    assert "25/25 tables" in err
    assert "25/25" not in out  # the bar never pollutes stdout
    assert len([name for name in _rows(out) if name.endswith("_row on " + schema + ".t0")]) == 1


async def test_default_schemas_are_the_user_schemas(pg_url: str, query: Query, unique: Any) -> None:
    from trio_pgevents._cli.commands.installer import schemas_to_watch as _schemas

    schema = unique("mine")
    await _make_schema(query, schema, ["a", "b"])
    engine = sqlalchemy.create_engine(pg_url)
    try:
        found = dict(await trio.to_thread.run_sync(_schemas, engine, None, "pgevents"))
    finally:
        engine.dispose()
    assert found[schema] == 2
    assert "public" in found
    assert not {"pg_catalog", "information_schema", "pg_toast", "pgevents"} & set(found)


# ---- demo --------------------------------------------------------------------------------------------


async def test_demo_with_no_arguments_exits_0_in_well_under_a_minute() -> None:
    started = trio.current_time()
    result = await arun_cli(["demo"])
    elapsed = trio.current_time() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < 60
    lines = result.stdout.splitlines()
    assert sum(1 for line in lines if line.strip().startswith("INSERT")) == 120
    assert any(line.strip().startswith("DDL") and "CREATE TABLE public.demo_orders" in line for line in lines)
    summary = "\n".join(lines[lines.index("summary") :])
    assert "events/s" in summary
    assert "p50" in summary
    assert "p99" in summary
    assert "\x1b[" not in result.stdout  # no colour when not on a terminal
    assert "embedded PostgreSQL stopped and its directory removed" in result.stdout
