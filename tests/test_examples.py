"""Every example program runs, with no arguments, on an embedded server, and prints what it should.

The how-to pages include these files (``literalinclude``): what the docs
show is what runs here. A program is a file of ``examples/`` with a
``__main__`` block; an example without its own check below must at least
run and exit 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROGRAMS = sorted(p.name for p in EXAMPLES.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def run(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRIO_PGEVENTS_TEST_DSN"}  # their own server
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,  # each starts a server: slow on a busy machine, never hangs
        env=env,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def check_equal(lines: list[str], expected: list[str]) -> None:
    assert lines == expected


def check_listen(lines: list[str]) -> None:
    assert [line.split("  ")[0] for line in lines] == [f"demo: hello #{n}" for n in range(1, 6)]


def check_cache_sync(lines: list[str]) -> None:
    assert lines[:4] == [
        "loaded 2 products",
        "INSERT {'id': 3, 'name': 'lamp'}",
        "UPDATE {'id': 2, 'name': 'big chair'}",
        "DELETE {'id': 1, 'name': 'table'}",
    ]
    # 'desk' is inserted while the connection is down or just after: in the
    # reload, or delivered as an event (or both); the cache is right either way.
    assert lines[4] in ("gap: reloaded 3 products", "gap: reloaded 4 products"), lines
    assert lines[-2:] == [
        "INSERT {'id': 99, 'name': 'the end'}",
        "cache == table: True (['big chair', 'desk', 'lamp', 'the end'])",
    ]


def check_exactly_once(lines: list[str]) -> None:
    assert lines == ["first run billed 5", "second run billed 1", "invoices: 6, total 269.94"]


def check_cli_worker(lines: list[str]) -> None:
    assert lines[-4:] == [
        "INSERT orders {'id': 1, 'status': 'new'}",
        "UPDATE orders {'id': 1, 'status': 'paid'}",
        "DELETE orders {'id': 1, 'status': 'paid'}",
        "worker exit status: 0",
    ]
    assert [line.split()[-1] for line in lines[:2]] == ["public.orders", "public.orders"]


def check_change_stream_to_file(lines: list[str]) -> None:
    assert lines == [
        "wrote changes.jsonl:",
        "INSERT public.readings old: None new: {'sensor': 'a', 'value': '20.5'}",
        "UPDATE public.readings old: {'sensor': 'a'} new: {'sensor': 'a', 'value': '21.25'}",
        "DELETE public.readings old: {'sensor': 'a'} new: None",
    ]


def check_tutorial(lines: list[str]) -> None:
    assert lines == [
        "INSERT orders None -> {'id': 1, 'status': 'new', 'total': Decimal('19.90')}",
        "UPDATE orders {'id': 1, 'status': 'new', 'total': Decimal('19.90')} -> "
        "{'id': 1, 'status': 'paid', 'total': Decimal('19.90')}",
        "DELETE orders {'id': 1, 'status': 'paid', 'total': Decimal('19.90')} -> None",
    ]


def check_pytest_example(lines: list[str]) -> None:
    assert lines[-1].startswith("3 passed"), lines


CHECKS: dict[str, Callable[[list[str]], None]] = {
    "listen.py": check_listen,
    "cache_sync.py": check_cache_sync,
    "exactly_once.py": check_exactly_once,
    "cli_worker.py": check_cli_worker,
    "change_stream_to_file.py": check_change_stream_to_file,
    "pytest_example.py": check_pytest_example,
    "tutorial.py": check_tutorial,
    "quickstart.py": lambda lines: check_equal(lines, ["INSERT orders {'id': 1, 'total': Decimal('19.90')}"]),
}


def test_the_examples_are_the_expected_programs() -> None:
    assert set(CHECKS) <= set(PROGRAMS), set(CHECKS) - set(PROGRAMS)
    assert "cli_worker_settings.py" not in PROGRAMS  # a settings module, used by cli_worker.py


@pytest.mark.parametrize("name", PROGRAMS)
def test_example_runs_with_no_arguments(name: str, tmp_path: Path) -> None:
    result = run(name, cwd=tmp_path)
    check = CHECKS.get(name)
    if check is not None:
        check(result.stdout.splitlines())


def test_change_stream_to_file_appends_json_lines_to_the_file_given(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    run("change_stream_to_file.py", str(target), cwd=tmp_path)
    lines = target.read_text().splitlines()
    assert [line.split('"method": ')[1][:8] for line in lines] == ['"INSERT"', '"UPDATE"', '"DELETE"']
