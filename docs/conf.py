"""Sphinx configuration of the trio_pgevents documentation (``nox -s docs``).

Pages are Markdown (MyST); the API reference is generated from the docstrings
(autodoc, Google-style sections through napoleon). The build runs with
``-W -n``: every warning, and every reference that does not resolve, fails it.

Links into Python's, Trio's, SQLAlchemy's and psycopg2's documentation
(intersphinx) are resolved against copies of their inventories in
``_inventories/`` (see its README for where each comes from), so the build
needs no network and checks every such link; the links themselves point at
the live sites. ``TRIO_PGEVENTS_DOCS_ONLINE=1`` fetches the live inventories
instead (where the network allows it).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import trio_pgevents  # noqa: E402  (after the path is set)

project = "trio_pgevents"
author = "the trio-pgevents contributors"
copyright = "2026, the trio-pgevents contributors"
release = trio_pgevents.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_inventories", "_recipes", "Thumbs.db", ".DS_Store"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"trio_pgevents {release}"

# Every reference must resolve (-n): a broken link to the API is a build error.
nitpicky = True

autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

_ONLINE = os.environ.get("TRIO_PGEVENTS_DOCS_ONLINE") == "1"
_SITES = {
    "python": "https://docs.python.org/3.11/",
    "trio": "https://trio.readthedocs.io/en/stable/",
    "sqlalchemy": "https://docs.sqlalchemy.org/en/20/",
    "psycopg2": "https://www.psycopg.org/docs/",
}
_INVENTORIES = HERE / "_inventories"
intersphinx_mapping = {
    name: (url, None if _ONLINE else str(_INVENTORIES / f"{name}.inv")) for name, url in _SITES.items()
}

# Annotations name things by where they are defined; the reference documents
# them where users import them. These are the same objects.
_ALIASES = {
    "sqlalchemy.engine.base.Engine": "sqlalchemy.engine.Engine",
    "sqlalchemy.engine.url.URL": "sqlalchemy.engine.URL",
    "trio._core._run.Nursery": "trio.Nursery",
    "contextlib._AsyncGeneratorContextManager": "contextlib.AbstractAsyncContextManager",
}
# Types private to the package (its ``_`` modules) have no entry of their own: a
# signature naming one shows it as text. A public class named by its private path
# is linked to its entry (``_resolve_alias`` below), so this hides no broken link.
# Bare names are private type aliases shown as written (each explained where used).
nitpick_ignore = [
    ("py:class", "PayloadMode"),  # Installer(payload=): "row" or "keys"
    ("py:class", "DdlEvents"),  # install(ddl_events=): "tables" or "all"
]
nitpick_ignore_regex = [
    ("py:class", r"trio_pgevents\._.*"),
    # Docstrings mention private modules by name (for contributors); they have no page.
    ("py:mod", r"trio_pgevents\._.*"),
    ("py:mod", r"ownership"),
]


def _public_name(target: str) -> str | None:
    """``trio_pgevents._x.y.Name`` -> ``trio_pgevents.Name`` when ``Name`` is public."""
    if target in _ALIASES:
        return _ALIASES[target]
    if target.startswith("trio_pgevents._"):
        head, _, attribute = target.rpartition(".")
        owner = head.rpartition(".")[2]
        if owner in trio_pgevents.__all__:  # a member: trio_pgevents._x.Owner.attr
            return f"trio_pgevents.{owner}.{attribute}"
        if attribute in trio_pgevents.__all__:
            return f"trio_pgevents.{attribute}"
    return None


def _resolve_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    target = node.get("reftarget", "")
    public = _public_name(target)
    if node.get("refdomain") != "py" or public is None:
        return None
    domain = env.get_domain("py")
    resolved = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], public, node, contnode)
    if resolved is not None:
        return resolved
    from sphinx.ext import intersphinx

    node["reftarget"] = public
    return intersphinx.missing_reference(app, env, node, contnode)


_CODE = re.compile(r"(``.*?``|`.*?`)")


def _no_type_in_first_line(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Napoleon reads ``"Durable mode: the event's id"`` (a property's docstring) as
    ``type: description``. Break the line after that colon, so it stays prose."""
    if what not in ("attribute", "property", "data") or not lines:
        return
    parts = _CODE.split(lines[0])
    for index in range(0, len(parts), 2):  # outside code spans only
        before, colon, after = parts[index].partition(": ")
        if colon:
            lines[0:1] = ["".join([*parts[:index], before, ":"]), "".join([after, *parts[index + 1 :]])]
            return


# Recipes whose example comes from another branch: shown once the example exists
# (a literalinclude of a missing file would fail the build).
_PENDING_RECIPES = {"load_then_follow": HERE.parent / "examples" / "load_then_follow.py"}


def _insert_pending_recipes(app: Any, docname: str, source: list[str]) -> None:
    if docname != "howto":
        return
    for name, example in _PENDING_RECIPES.items():
        if example.exists():
            text = (HERE / "_recipes" / f"{name}.md").read_text()
            source[0] = source[0].replace(f"<!-- recipe: {name} -->", text)


def setup(app: Any) -> None:
    app.connect("source-read", _insert_pending_recipes)
    app.connect("missing-reference", _resolve_alias, priority=400)
    app.connect("autodoc-process-docstring", _no_type_in_first_line, priority=100)
