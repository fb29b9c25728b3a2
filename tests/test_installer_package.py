"""The installer package's shape: AsyncInstaller mirrors Installer, and imports flow one way.

These read classes and source files; the last one renders SQL (a connection
quotes it) and changes nothing in the database.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trio_pgevents._installer as installer_package
from trio_pgevents import AsyncInstaller, Installer

_URL = "postgresql+psycopg2://someone@localhost/nothing"


def _public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {name: fn for name, fn in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def test_every_installer_method_has_its_async_twin() -> None:
    sync = _public_methods(Installer)
    twins = _public_methods(AsyncInstaller)
    assert {"install", "status", "drop_consumer"} <= set(sync)
    assert sorted(twins) == sorted(sync), "AsyncInstaller must derive exactly Installer's public methods"
    installer = Installer(_URL)
    for name, method in sync.items():
        twin = twins[name]
        assert inspect.iscoroutinefunction(twin), f"AsyncInstaller.{name} is not a coroutine function"
        assert twin.__name__ == name, f"AsyncInstaller.{name} is the twin of {twin.__name__}"
        assert next(iter(inspect.signature(twin).parameters)) == "self"
        # Bound, both lose self: what a caller sees is the same.
        assert inspect.signature(getattr(installer.aio, name)) == inspect.signature(getattr(installer, name))
        assert list(inspect.signature(method).parameters)[1:] == list(
            inspect.signature(getattr(installer.aio, name)).parameters
        )


#: What the installer may import from the change stream module (kept importable there).
_CDC_NAMES = {
    "read_slot_statuses",
    "DEFAULT_LAG_WARNING_BYTES",
    "ChangeStreamStatus",
    "drop_change_stream",
    "_check_slot_name",
    "_check_identifier",
}
#: Library modules the installer must not import (they build on it, or are being rewritten).
_FORBIDDEN = {"_durable", "_stream", "_listener", "_cli"}


def _installer_sources() -> list[Path]:
    return sorted(Path(installer_package.__file__).parent.rglob("*.py"))


def _library_imports(path: Path) -> list[tuple[str, set[str]]]:
    """(library module, names imported from it) for every import of ``path`` outside the installer."""
    root = Path(installer_package.__file__).parent.parent.parent
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = ".".join(parts if parts[-1] != "__init__" else parts[:-1])
    if parts[-1] != "__init__":
        package = package.rpartition(".")[0]
    found: list[tuple[str, set[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            name = "." * node.level + (node.module or "")
            module = importlib.util.resolve_name(name, package) if node.level else name
            names = {alias.name for alias in node.names}
            if node.module is None:
                found.extend((f"{module}.{n}", set()) for n in names)
            else:
                found.append((module, names))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, set()) for alias in node.names)
    return [
        (m, n)
        for m, n in found
        if m.startswith("trio_pgevents.") and not m.startswith(installer_package.__name__)
    ]


@pytest.mark.parametrize("path", _installer_sources(), ids=lambda p: str(p.name))
def test_installer_imports_only_core_modules(path: Path) -> None:
    for module, names in _library_imports(path):
        top = module.split(".")[1]
        assert top not in _FORBIDDEN, f"{path.name} imports {module}"
        if top == "_cdc":
            assert module == "trio_pgevents._cdc", f"{path.name} imports {module}"
            assert names, f"{path.name}: import names from _cdc, not the module"
            assert names <= _CDC_NAMES, f"{path.name} imports {names - _CDC_NAMES} from _cdc"


@pytest.mark.parametrize("schema", ["a{b}", "a{{b", "a{}", "{0}"])
def test_privileges_name_the_library_schema_whatever_braces_it_has(pg_url: str, schema: str) -> None:
    # The grants were once pasted into the DO block's template before it was formatted:
    # "a{b}" failed, "a{{b" granted EXECUTE on another schema's functions ("a{b").
    script = Installer(pg_url, schema=schema).install_sql(auto_rebuild=True, durable=True)
    quoted = '"' + schema + '"'
    grants = [line for line in script.split(";") if "GRANT EXECUTE" in line and "TO PUBLIC" in line]
    assert len(grants) == 4
    assert all(f"ON FUNCTION {quoted}." in grant for grant in grants), grants
