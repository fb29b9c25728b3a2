"""What auto-rebuild costs a ``CREATE TABLE``, with 1,000 tables already watched.

``Installer.install(auto_rebuild=True)`` adds an event trigger (``WHEN TAG IN
('CREATE TABLE', ...)``) that attaches the row and TRUNCATE triggers to a
table created in a watched schema, in the DDL's own transaction, touching only
that table. This measures a single-statement, autocommit ``CREATE TABLE``
(with a primary key) in a schema whose 1,000 tables are watched:

- ``without auto-rebuild`` (the baseline): the schema is watched, no event trigger;
- ``with auto-rebuild``: the same DDL, which now also creates two triggers
  and their comments and registers nothing else.

Event triggers are per database, so the two modes live in two identical
databases on the same server and DDLs alternate between them one by one
(paired samples under the same machine load, both in steady state); the new
tables are dropped between blocks, untimed. The figure is the median time per DDL;
target: with / without <= 1.5x.

Run alone: ``python -m benchmarks.installer_ddl [--dsn URL] [--quick]``
(the DSN's role must be a superuser: event triggers need one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import psycopg2
import sqlalchemy
from psycopg2 import sql

from trio_pgevents import Installer

from ._common import BenchContext, Result, median, open_server, unique_name, with_ratio

__all__ = ["main", "run"]

WATCHED_TABLES = 1000
TARGET = 1.5


def _prepare(uri: str, schema: str, lib: str, auto_rebuild: bool, log: Any) -> Installer:
    """In the database at ``uri``: 1,000 tables in ``schema``, all watched."""
    url = sqlalchemy.make_url(uri).set(drivername="postgresql+psycopg2")
    installer = Installer(url.render_as_string(hide_password=False), schema=lib, channel=lib)
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            for i in range(WATCHED_TABLES):
                cur.execute(
                    sql.SQL("CREATE TABLE {}.{} (id bigint PRIMARY KEY, v text)").format(
                        sql.Identifier(schema), sql.Identifier(f"t{i:04d}")
                    )
                )
    finally:
        conn.close()
    installer.install(auto_rebuild=auto_rebuild)
    installer.watch_schema(schema)
    status = installer.status()
    watched = sum(1 for t in status.tables if t.state == "INSTALLED")
    if watched != WATCHED_TABLES or (status.auto_rebuild_state == "INSTALLED") != auto_rebuild:
        raise RuntimeError(
            f"setup failed: {watched} watched tables, auto-rebuild {status.auto_rebuild_state}"
        )
    log(f"installer_ddl: {WATCHED_TABLES} watched tables ready (auto-rebuild {auto_rebuild})")
    return installer


def run(ctx: BenchContext) -> list[Result]:
    """Measure CREATE TABLE with and without auto-rebuild; return both, with the ratio.

    Event triggers are per database, so each mode gets its own database on the
    same server, set up identically; DDLs alternate between the two (paired
    samples under the same machine load, both in steady state).
    """
    server = ctx.server
    schema, lib = "bench_ddl", "bench_ddl_lib"
    databases = {"without": unique_name("bench_ddl_without"), "with": unique_name("bench_ddl_with")}
    uris = {
        mode: sqlalchemy.make_url(server.uri).set(database=name).render_as_string(hide_password=False)
        for mode, name in databases.items()
    }
    per_block = ctx.scale(50, 20)
    blocks = max(ctx.reps, 3)
    installers: list[Installer] = []
    conns: dict[str, Any] = {}
    for name in databases.values():
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        for mode in ("without", "with"):
            installers.append(_prepare(uris[mode], schema, lib, mode == "with", ctx.log))
            conns[mode] = psycopg2.connect(uris[mode])
            conns[mode].autocommit = True
        samples: dict[str, list[float]] = {"without": [], "with": []}
        block_medians: dict[str, list[float]] = {"without": [], "with": []}
        for block in range(blocks):
            times: dict[str, list[float]] = {"without": [], "with": []}
            for i in range(per_block):
                for mode in ("without", "with") if i % 2 == 0 else ("with", "without"):
                    statement = sql.SQL(
                        "CREATE TABLE {}.{} (id bigint PRIMARY KEY, name text, at timestamptz)"
                    )
                    with conns[mode].cursor() as cur:
                        started = time.perf_counter()
                        cur.execute(
                            statement.format(sql.Identifier(schema), sql.Identifier(f"new_{block}_{i}"))
                        )
                        times[mode].append(time.perf_counter() - started)
            for mode in ("without", "with"):
                with conns[mode].cursor() as cur:
                    # Check the work was really done (or not): two triggers per new table with it.
                    cur.execute(
                        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                        "WHERE c.relnamespace = %s::regnamespace AND c.relname LIKE %s",
                        (schema, f"new\\_{block}\\_%"),
                    )
                    made = cur.fetchone()[0]
                    expected = 2 * per_block if mode == "with" else 0
                    if made != expected:
                        raise RuntimeError(f"{mode} auto-rebuild: {made} triggers, expected {expected}")
                    for i in range(per_block):
                        cur.execute(
                            sql.SQL("DROP TABLE {}.{}").format(
                                sql.Identifier(schema), sql.Identifier(f"new_{block}_{i}")
                            )
                        )
                samples[mode].extend(times[mode])
                block_medians[mode].append(median(times[mode]) * 1000)
        without = Result(
            "installer_ddl",
            f"CREATE TABLE, {WATCHED_TABLES} watched, without auto-rebuild",
            median(samples["without"]) * 1000,
            "ms",
            samples=block_medians["without"],
        )
        with_auto = Result(
            "installer_ddl",
            f"CREATE TABLE, {WATCHED_TABLES} watched, with auto-rebuild",
            median(samples["with"]) * 1000,
            "ms",
            samples=block_medians["with"],
            note=f"{len(samples['with'])} DDLs per mode, alternating between two identical databases",
        )
        with_ratio(with_auto, without, target=TARGET, higher_is_better=False)
        # Each "with" DDL ran right next to a "without" one: the median of those pairs'
        # ratios is the figure least disturbed by load changes during the run.
        pairs = [w / o for w, o in zip(samples["with"], samples["without"], strict=True) if o > 0]
        with_auto.extra["paired_ratio_median"] = median(pairs)
        with_auto.note += f"; median of paired ratios {median(pairs):.2f}x"
        return [without, with_auto]
    finally:
        for conn in conns.values():
            conn.close()
        for installer in installers:
            installer.engine.dispose()
        for name in databases.values():
            server.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.installer_ddl``: print both figures and the ratio."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.installer_ddl", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dsn", default=os.environ.get("TRIO_PGEVENTS_BENCH_DSN"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None, help="alternating blocks per mode")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    with open_server(args.dsn) as server:
        log(f"server: {server.description}")
        ctx = BenchContext(server, args.dsn, args.quick, args.reps or (3 if args.quick else 6), log)
        without, with_auto = run(ctx)
    for result in (without, with_auto):
        blocks = [round(sample, 3) for sample in result.samples]
        print(f"{result.case}: {result.value:.3f} ms per DDL (block medians {blocks})")
    print(f"median of per-pair ratios: {with_auto.extra['paired_ratio_median']:.2f}x")
    verdict = "met" if with_auto.met else "NOT met"
    print(f"ratio with/without: {with_auto.ratio:.2f}x (target <= {TARGET}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
