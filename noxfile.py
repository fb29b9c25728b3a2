"""Developer tasks: ``nox -s tests lint typecheck`` (what CI runs) and ``nox -s bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
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
