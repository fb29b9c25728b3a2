"""The package's layout shows its architecture (issue 14), and stays that way.

- Imports flow one way: core modules (``trio_pgevents/_*.py``) import no
  capability; a capability imports the core and only the capabilities below
  it (the durable stream listens for wake-ups, the installer reads slot
  statuses, the CLI and the test tools use the library); no cycles.
- No module over 500 lines, no class over 300.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import trio_pgevents

PACKAGE = Path(trio_pgevents.__file__).parent
#: Each capability package and the capabilities it may import.
CAPABILITIES: dict[str, set[str]] = {
    "_listen": set(),
    "_cdc": set(),
    "_durable": {"_listen"},
    "_installer": {"_cdc"},
    "testing": {"_listen"},
    "_cli": {"_listen", "_durable", "_cdc", "_installer", "testing", "__init__"},
}
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def part_of(path: Path) -> str:
    """The capability a module belongs to, ``"core"``, or ``"__init__"`` (the root re-exports)."""
    parts = path.relative_to(PACKAGE).parts
    if len(parts) > 1:
        return parts[0]
    return {"__init__.py": "__init__", "__main__.py": "_cli"}.get(parts[0], "core")


def imported_parts(path: Path) -> set[str]:
    """What ``path`` imports from the package: capability names, ``"core"`` or ``"__init__"``."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = ".".join(relative[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules: list[str] = []
        if isinstance(node, ast.ImportFrom):
            name = "." * node.level + (node.module or "")
            module = importlib.util.resolve_name(name, package) if node.level else name
            modules = [f"{module}.{a.name}" for a in node.names] if node.module is None else [module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        for module in modules:
            parts = module.split(".")
            if parts[0] != "trio_pgevents":
                continue
            if len(parts) == 1 or (not (PACKAGE / parts[1]).is_dir() and not parts[1].startswith("_")):
                found.add("__init__")  # names from the package root
            elif (PACKAGE / parts[1]).is_dir():
                found.add(parts[1])
            else:
                found.add("core")
    return found


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path: Path) -> None:
    me = part_of(path)
    imported = imported_parts(path) - {me, "core"}
    if me == "__init__":
        return  # the root re-exports everything
    allowed = set() if me == "core" else CAPABILITIES[me]
    assert imported <= allowed, f"{path.relative_to(PACKAGE)} imports {sorted(imported - allowed)}"


def test_core_modules_import_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[path.stem] = {
            (node.module or "").lstrip(".")
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        } & {p.stem for p in PACKAGE.glob("_*.py")}
    seen: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        if seen.get(module) == 1:
            pytest.fail(f"import cycle: {' -> '.join([*trail, module])}")
        if seen.get(module) == 2:
            return
        seen[module] = 1
        for target in sorted(graph[module]):
            visit(target, [*trail, module])
        seen[module] = 2

    for module in sorted(graph):
        visit(module, [])


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_classes_stay_small(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{path.name}: class {node.name} is {size} lines"
