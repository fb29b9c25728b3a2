"""What auto-rebuild costs a ``CREATE TABLE``, with 1,000 tables already watched.

``Installer.install(auto_rebuild=True)`` adds an event trigger (``WHEN TAG IN
('CREATE TABLE', ...)``) that attaches the row and TRUNCATE triggers to a
table created in a watched schema, in the DDL's own transaction, touching only
that table. This measures a single-statement, autocommit ``CREATE TABLE``
(with a primary key) in a schema whose 1,000 tables are watched:

- ``without auto-rebuild`` (the baseline): the schema is watched, no event trigger;
- ``with auto-rebuild``: the same DDL, which now also creates two triggers
  and their comments and registers nothing else.

Blocks of each mode alternate (so drift hits both alike); the new tables are
dropped between blocks, untimed. The figure is the median time per DDL;
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

from psycopg2 import sql

from trio_pgevents import Installer

from ._common import BenchContext, Result, median, open_server, unique_name, with_ratio

__all__ = ["main", "run"]

WATCHED_TABLES = 1000
TARGET = 1.5


def _create_block(conn: Any, schema: str, prefix: str, count: int) -> list[float]:
    """Time ``count`` CREATE TABLEs (each its own transaction); return seconds per DDL."""
    times = []
    with conn.cursor() as cur:
        for i in range(count):
            statement = sql.SQL(
                "CREATE TABLE {}.{} (id bigint PRIMARY KEY, name text, at timestamptz)"
            ).format(sql.Identifier(schema), sql.Identifier(f"{prefix}_{i}"))
            started = time.perf_counter()
            cur.execute(statement)
            times.append(time.perf_counter() - started)
    return times


def _drop_block(conn: Any, schema: str, prefix: str, count: int) -> None:
    with conn.cursor() as cur:
        for i in range(count):
            cur.execute(
                sql.SQL("DROP TABLE {}.{}").format(sql.Identifier(schema), sql.Identifier(f"{prefix}_{i}"))
            )


def run(ctx: BenchContext) -> list[Result]:
    """Measure CREATE TABLE with and without auto-rebuild; return both, with the ratio."""
    server = ctx.server
    schema = unique_name("bench_ddl")
    lib = unique_name("bench_ddl_lib")
    installer = Installer(server.sa_url, schema=lib, channel=unique_name("bench_ddl"))
    per_block = ctx.scale(50, 20)
    blocks = max(ctx.reps, 3)
    conn = server.connect()
    try:
        ctx.log(f"installer_ddl: creating {WATCHED_TABLES} watched tables")
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            for i in range(WATCHED_TABLES):
                cur.execute(
                    sql.SQL("CREATE TABLE {}.{} (id bigint PRIMARY KEY, v text)").format(
                        sql.Identifier(schema), sql.Identifier(f"t{i:04d}")
                    )
                )
        installer.install()
        installer.watch_schema(schema)
        watched = sum(1 for t in installer.status().tables if t.state == "INSTALLED")
        if watched != WATCHED_TABLES:
            raise RuntimeError(f"expected {WATCHED_TABLES} watched tables, status shows {watched}")
        auto_rebuild_trigger = sql.Identifier(
            next(a.name for a in installer.install(auto_rebuild=True).actions if a.kind == "event_trigger")
        )
        samples: dict[str, list[float]] = {"without": [], "with": []}
        block_medians: dict[str, list[float]] = {"without": [], "with": []}
        for block in range(blocks):
            for mode in ("without", "with") if block % 2 == 0 else ("with", "without"):
                if mode == "with":
                    installer.install(auto_rebuild=True)
                else:
                    with conn.cursor() as cur:
                        cur.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(auto_rebuild_trigger))
                prefix = f"new_{mode}_{block}"
                times = _create_block(conn, schema, prefix, per_block)
                if mode == "with":
                    # Check the work was really done: every new table has its two triggers.
                    with conn.cursor() as cur:
                        cur.execute(
                            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                            "WHERE c.relnamespace = %s::regnamespace AND c.relname LIKE %s",
                            (sql.Identifier(schema).as_string(conn), prefix + "\\_%"),
                        )
                        triggers = cur.fetchone()[0]
                    if triggers != 2 * per_block:
                        raise RuntimeError(f"auto-rebuild made {triggers} triggers for {per_block} tables")
                _drop_block(conn, schema, prefix, per_block)
                samples[mode].extend(times)
                block_medians[mode].append(median(times) * 1000)
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
            note=f"{len(samples['with'])} DDLs per mode in {blocks} alternating blocks",
        )
        with_ratio(with_auto, without, target=TARGET, higher_is_better=False)
        return [without, with_auto]
    finally:
        try:
            installer.uninstall()
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        finally:
            conn.close()
            installer.engine.dispose()


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
    verdict = "met" if with_auto.met else "NOT met"
    print(f"ratio with/without: {with_auto.ratio:.2f}x (target <= {TARGET}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
