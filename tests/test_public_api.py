"""The public surface is exactly what docs/api.md documents (as trio and httpx pin theirs)."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import trio_pgevents
import trio_pgevents.testing

API_PAGE = Path(__file__).parent.parent / "docs" / "api.md"


def documented(section: str | None = None) -> set[str]:
    """The names in the first column of docs/api.md's tables (of one ``## `` section, or all but testing)."""
    names: set[str] = set()
    current = ""
    for line in API_PAGE.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:]
        match = re.match(r"\| `(\w+)` \|", line)
        if match and ((section is None and "testing" not in current) or current == section):
            names.add(match.group(1))
    return names


def test_the_package_exports_exactly_the_documented_names() -> None:
    exported = set(trio_pgevents.__all__)
    assert len(trio_pgevents.__all__) == len(exported), "a name is listed twice in __all__"
    assert exported == documented(), {
        "exported, not documented": exported - documented(),
        "documented, not exported": documented() - exported,
    }


def test_the_testing_namespace_exports_exactly_the_documented_names() -> None:
    assert set(trio_pgevents.testing.__all__) == documented("Testing (`trio_pgevents.testing`)")


def test_star_import_gives_the_public_names_and_nothing_private() -> None:
    namespace: dict[str, object] = {}
    exec("from trio_pgevents import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(trio_pgevents.__all__)


@pytest.mark.parametrize("name", trio_pgevents.__all__)
def test_every_public_name_has_a_docstring_and_a_private_home(name: str) -> None:
    obj = getattr(trio_pgevents, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        assert name in {"AnyEvent", "Method"}, f"{name}: a type alias? document it and list it here"
        return  # type aliases: documented in docs/api.md (and by a comment at their definition)
    assert inspect.getdoc(obj), name
    assert obj.__module__.startswith("trio_pgevents._"), (name, obj.__module__)


def test_public_names_of_public_classes_have_docstrings() -> None:
    missing = [
        f"{name}.{attribute}"
        for name in trio_pgevents.__all__
        if inspect.isclass(obj := getattr(trio_pgevents, name))
        for attribute, value in vars(obj).items()
        if not attribute.startswith("_") and callable(value) and not inspect.getdoc(value)
    ]
    assert not missing


def test_the_old_embedded_postgres_import_works_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="trio_pgevents.testing"):
        old = trio_pgevents.EmbeddedPostgres  # type: ignore[attr-defined]
    assert old is trio_pgevents.testing.EmbeddedPostgres
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.warns(DeprecationWarning, match="moved"):
            from trio_pgevents import EmbeddedPostgres  # type: ignore[attr-defined]  # noqa: F401


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        trio_pgevents.nothing_here  # type: ignore[attr-defined]  # noqa: B018


def test_the_pytest_plugin_is_the_registered_entry_point() -> None:
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "trio_pgevents"]
    assert plugin.value == "trio_pgevents.testing.pytest_plugin"
    assert importlib.import_module(plugin.value).pg_url


def test_importing_the_package_loads_no_test_tooling() -> None:
    # The library must not pull in pytest or the embedded server to be used.
    code = (
        "import sys, trio_pgevents; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pytest', 'embedded_postgres') or m.startswith('trio_pgevents.testing')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
