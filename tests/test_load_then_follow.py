"""The LISTEN path's "load the table, then apply events" recipe (examples/load_then_follow.py), run for real.

The example runs four writers before, during and after the load and checks
that its copy of the table equals ``SELECT *``; these tests run it and read
its verdict.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy
import trio

from .conftest import Query

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "load_then_follow.py"


def check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("loaded ")
    assert any(line.startswith("the copy equals SELECT *") for line in lines), result.stdout
    changes = int(next(line for line in lines if line.startswith("writers made")).split()[2])
    assert changes >= 500  # 100 before LISTEN, 100 between LISTEN and the load, 300 after


def test_load_then_follow_example_runs_against_embedded_server() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRIO_PGEVENTS_TEST_DSN"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=180, env=env, check=False
    )
    check(result)


async def test_load_then_follow_example_on_a_server_given_by_url(pg_url: str, query: Query) -> None:
    url = sqlalchemy.make_url(pg_url).render_as_string(hide_password=False)
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, str(EXAMPLE), url], capture_output=True, text=True, timeout=180, check=False
        )
    )
    check(result)
    # It leaves nothing behind.
    assert not await query("SELECT 1 FROM pg_tables WHERE tablename LIKE 'lf_items_%'")
    assert not await query("SELECT 1 FROM pg_namespace WHERE nspname LIKE 'lf_items_%'")
