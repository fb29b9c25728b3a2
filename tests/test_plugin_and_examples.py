"""The pytest plugin's fixtures; the listen example's Ctrl-C (tests/test_examples.py runs each example)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy
import trio

from trio_pgevents import EventStream

ROOT = Path(__file__).resolve().parent.parent


async def test_open_stream_and_notify_fixtures(open_stream: Any, notify: Any, unique: Any) -> None:
    channel = unique("fixture")
    stream: EventStream = await open_stream([channel])
    await notify(channel, "42")
    with trio.fail_after(10):
        event = await stream.receive()
    assert event.payload == "42"


async def test_readme_plugin_example(open_stream: Any, notify: Any) -> None:
    stream = await open_stream(["orders"])
    await notify("orders", "42")
    assert (await stream.receive()).payload == "42"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_listen_example_stops_gracefully_on_ctrl_c(pg_url: str, query: Any, notify: Any) -> None:
    url = sqlalchemy.make_url(pg_url).update_query_dict({"application_name": "listen-example-ki"})
    example = str(ROOT / "examples" / "listen.py")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-u", example, url.render_as_string(hide_password=False)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl-C as in a terminal: a suite started in the background (`pytest &`, a CI job
        # runner) has SIGINT ignored, and a child inherits that: it would never see the signal.
        preexec_fn=_default_sigint,
    )
    assert process.stdout is not None
    output = b""

    async def read_until(marker: bytes | None, seconds: float, what: str) -> None:
        """Read stdout until ``marker`` (None: until it closes), within ``seconds``."""
        nonlocal output
        try:
            with trio.fail_after(seconds):
                while marker is None or marker not in output:
                    chunk = await process.stdout.receive_some()  # type: ignore[union-attr]
                    if not chunk and marker is None:
                        return
                    assert chunk, f"the example ended before {what}: {output!r}"
                    output += chunk
        except trio.TooSlowError:
            raise AssertionError(f"not within {seconds}s: {what}; output so far: {output!r}") from None

    try:
        # Generous bounds: a busy machine takes a while to start Python and import the stack.
        await read_until(b"listening", 120, "listening")
        await notify("demo", "ping")
        await read_until(b"demo: ping", 30, "the ping")
        process.send_signal(signal.SIGINT)
        await read_until(None, 30, "exit after SIGINT")
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert b"interrupted; connection closed" in output
    with trio.fail_after(30):  # the backend exits asynchronously after the client closes
        while await query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'listen-example-ki'"):
            await trio.sleep(0.02)
