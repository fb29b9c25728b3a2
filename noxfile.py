"""Developer tasks: ``nox -s tests lint typecheck docs package`` (what CI runs) and ``nox -s bench``."""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs", "package"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against an embedded Postgres (or $TRIO_PGEVENTS_TEST_DSN)."""
    session.install("-e", ".[test]")
    # The originals, for the side-by-side tests (tests/test_compat_side_by_side.py,
    # tests/test_pgevents_compat.py), without their pins: psycopg2-pgevents pins pytest<6,
    # pg_events psycopg2<2.8 (does not build on 3.11); both run fine on psycopg2-binary.
    session.install("--no-deps", "psycopg2-pgevents==0.2.2", "pg_events==0.1.6")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint rules and formatting."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples and benchmarks."""
    session.install("-e", ".[dev,bench]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: figures as ratios to baselines measured in the same run."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (Sphinx): every warning, and every broken reference, is an error.

    Links to Python's, Trio's, SQLAlchemy's and psycopg2's documentation are
    checked against the inventories in docs/_inventories (no network needed);
    ``TRIO_PGEVENTS_DOCS_ONLINE=1`` checks them against the live sites instead.
    """
    session.install("-e", ".[docs]")
    doctrees = Path(session.create_tmp()) / "doctrees"
    session.run(
        "sphinx-build", "-W", "--keep-going", "-n", "-q", "-b", "html", "-d", str(doctrees),
        "docs", "docs/_build/html", *session.posargs,
    )  # fmt: skip


#: Type-checked in a scratch project against an editable install: fails if
#: mypy cannot see the package (every name would be Any).
_USER_PROJECT = """\
from typing import Any, assert_type

from trio_pgevents import InstallStatus, Method, RowChange, StreamGap


def check(event: RowChange, gap: StreamGap, status: InstallStatus) -> None:
    assert_type(event.method, Method)
    assert_type(event.new_data, dict[str, Any] | None)
    assert_type(gap.duration, float)
    assert_type(status.ok, bool)
"""

_IMPORT_CHECK = """\
import importlib.metadata, importlib.resources, trio_pgevents, trio_pgevents.testing
files = importlib.resources.files("trio_pgevents")
assert files.joinpath("py.typed").is_file(), "py.typed missing"
sql = files.joinpath("_installer", "sql")
assert any(p.name.endswith(".sql") for p in sql.iterdir()), "SQL templates missing"
assert importlib.metadata.version("trio-pgevents") == trio_pgevents.__version__
print("imported trio_pgevents", trio_pgevents.__version__, "with", len(trio_pgevents.__all__), "public names")
"""


@nox.session
def package(session: nox.Session) -> None:
    """Build the wheel and sdist; twine check; install each in a fresh venv and import it.

    Then install the project editable in another fresh venv and type-check a
    scratch project that uses it (the editable install must be visible to mypy).
    """
    session.install("build", "twine")
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    artifacts = sorted(dist.glob("trio_pgevents-*"))
    assert sorted(a.suffix for a in artifacts) == [".gz", ".whl"], artifacts
    session.run("twine", "check", "--strict", *map(str, artifacts))
    for artifact in artifacts:
        python = _fresh_venv(session, tmp / f"venv-{artifact.suffix[1:]}")
        session.run(python, "-m", "pip", "install", "-q", str(artifact), external=True)
        session.run(python, "-c", _IMPORT_CHECK, external=True)
        session.run(str(Path(python).parent / "trio-pgevents"), "--help", external=True, silent=True)
    python = _fresh_venv(session, tmp / "venv-editable")
    session.run(python, "-m", "pip", "install", "-q", "-e", ".", "mypy>=1.10", external=True)
    project = tmp / "user-project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    (project / "app.py").write_text(_USER_PROJECT)
    with session.chdir(project):  # not the repository: mypy must find the package through the install
        session.run(python, "-m", "mypy", "--strict", "--no-incremental", "app.py", external=True)


def _fresh_venv(session: nox.Session, path: Path) -> str:
    """A new virtual environment at ``path``; its python."""
    shutil.rmtree(path, ignore_errors=True)
    session.run("python", "-m", "venv", str(path))
    return str(path / "bin" / "python")
