"""The pytest plugin's fixtures and the examples, run for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_listen_example_runs_against_embedded_server() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRIO_PGEVENTS_TEST_DSN"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "listen.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [line.split("  ")[0] for line in result.stdout.splitlines()] == [
        f"demo: hello #{n}" for n in range(1, 6)
    ]
