"""The README is a small front door whose links all resolve; the docs cover every public name.

The documentation site itself is built with every warning as an error by
``nox -s docs`` (which CI runs); these checks need no Sphinx.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import trio_pgevents
import trio_pgevents.testing

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors a page has: its headings' slugs (GitHub's and MyST's rule) and MyST labels."""
    found: set[str] = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6} (.*)", line)):
            text = re.sub(r"[`*]", "", heading.group(1)).strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
        elif label := re.match(r"\(([\w-]+)\)=$", line):
            found.add(label.group(1))
    return found


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not in code blocks
    return [target for target in LINK.findall(text) if ":" not in target.split("/")[0]]  # no URL, no mailto:


def test_the_readme_is_under_12_kb() -> None:
    assert README.stat().st_size < 12 * 1024, README.stat().st_size


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading or label {anchor!r} in {resolved.name}")
    assert not broken


def test_the_readme_links_into_the_docs_and_its_external_links_are_https() -> None:
    text = README.read_text()
    assert {"docs/tutorial.md", "docs/howto.md", "docs/api.md", "CHANGELOG.md"} <= set(relative_links(README))
    assert all(url.startswith("https://") for url in re.findall(r"\]\(([a-z]+://[^)]+)\)", text))


def test_the_readme_example_is_the_quickstart_program_the_tests_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks[0] == (EXAMPLES / "quickstart.py").read_text()
    assert len(blocks[0].splitlines()) <= 30


def test_the_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "nox" in line and not line.startswith("#"))
    assert command in README.read_text()
    assert "-s tests lint typecheck docs package" in command


def api_entries() -> set[str]:
    """Names with an autodoc entry (``.. autoclass:: trio_pgevents.Name`` ...) on the API page."""
    text = (DOCS / "api.md").read_text()
    return set(re.findall(r"^\.\. auto(?:class|function|exception|data):: ([\w.]+)$", text, flags=re.M))


@pytest.mark.parametrize(
    "name",
    [f"trio_pgevents.{n}" for n in trio_pgevents.__all__]
    + [f"trio_pgevents.testing.{n}" for n in trio_pgevents.testing.__all__],
)
def test_every_public_name_has_a_reference_entry(name: str) -> None:
    assert name in api_entries()


def test_the_reference_documents_only_public_names() -> None:
    public = {f"trio_pgevents.{n}" for n in trio_pgevents.__all__} | {
        f"trio_pgevents.testing.{n}" for n in trio_pgevents.testing.__all__
    }
    assert api_entries() <= public


def test_every_example_program_is_shown_from_its_file() -> None:
    """Examples in the docs are included from examples/ (no copy that can drift)."""
    included = {
        Path(match).name
        for page in DOCS.rglob("*.md")  # docs/_recipes: recipes shown once their example exists
        if "_build" not in page.parts
        for match in re.findall(r"```\{literalinclude\} \.\./examples/(\S+)", page.read_text())
    }
    programs = {p.name for p in EXAMPLES.glob("*.py")} - {"quickstart.py"}  # quickstart: the README's
    assert programs <= included, programs - included


def test_every_docs_page_is_in_the_table_of_contents() -> None:
    index = (DOCS / "index.md").read_text()
    listed = set(re.findall(r"^([\w-]+)$", index, flags=re.M))
    pages = {p.stem for p in DOCS.glob("*.md")} - {"index"}
    assert pages <= listed, pages - listed
