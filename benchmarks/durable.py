"""Durable mode: what it costs the writers, compared with the other trigger styles.

``python -m benchmarks.durable`` (alone) or ``python -m benchmarks --only durable``.

Writer TPS of ``pgbench -n -c 16 -j 2 -T 10`` running a single-row INSERT
script against four identical tables (``id bigserial PRIMARY KEY, v int, t
text``), all in one run, repetitions interleaved (a, b, c, d, a, b, ...) so
machine drift hits every case alike:

(a) no trigger;
(b) a pg_events-style row trigger: ``pg_notify(ch, row_to_json(NEW)::text || current_query())``;
(c) our notify mode: ``Installer.watch_table(t)``;
(d) our durable mode: ``Installer.watch_table(t, durable=True)`` (outbox row + one
    wake-up NOTIFY per transaction).

Ratios are to (a). Targets: (d) >= 0.6x (a), and (d) better than (b).
A second figure: how fast a durable consumer reads a pre-filled outbox.
Nobody listens or consumes during the runs (the same for every case), so the
figure is the trigger's cost alone. Without ``--dsn`` the benchmark starts
its own embedded server with ``fsync=on`` (commits really reach the disk, as
in production); ``--fsync off`` measures the CPU cost alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from psycopg2 import sql

from ._common import (
    BenchContext,
    Result,
    Server,
    log_to_stderr,
    median,
    open_server,
    pgbench_tps,
    print_results,
    unique_name,
    with_ratio,
)

__all__ = ["main", "run"]


CASES = {
    "a": "(a) no trigger",
    "b": "(b) pg_events-style pg_notify(row_to_json(NEW) || current_query())",
    "c": "(c) trio_pgevents notify mode",
    "d": "(d) trio_pgevents durable mode",
}

_PG_EVENTS_TRIGGER = """
CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify({channel}, row_to_json(NEW)::text || current_query());
  RETURN NULL;
END $$;
CREATE TRIGGER pg_events_style AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {fn}();
"""


def _setup(server: Server, tables: dict[str, str], schema: str, channel: str) -> None:
    for table in tables.values():
        server.execute(
            sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, v int, t text)").format(sql.Identifier(table))
        )
    server.execute(
        sql.SQL(_PG_EVENTS_TRIGGER).format(
            fn=sql.Identifier(tables["b"] + "_fn"),
            channel=sql.Literal(channel + "_b"),
            table=sql.Identifier(tables["b"]),
        )
    )
    installer_cls: Any = importlib.import_module("trio_pgevents._installer").Installer
    installer = installer_cls(server.sa_url, schema=schema, channel=channel)
    installer.install(durable=True)
    installer.watch_table(tables["c"])
    installer.watch_table(tables["d"], durable=True)


def _teardown(server: Server, tables: dict[str, str], schema: str, channel: str) -> None:
    installer_cls: Any = importlib.import_module("trio_pgevents._installer").Installer
    installer_cls(server.sa_url, schema=schema, channel=channel).uninstall()
    for table in tables.values():
        server.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    server.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(tables["b"] + "_fn")))
    server.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def measure(server: Server, *, seconds: int, reps: int, log: Any) -> list[Result]:
    """The four cases on ``server``, ``reps`` interleaved repetitions each."""
    fsync = server.execute("SHOW fsync")[0][0]
    tables = {key: unique_name(f"bench_dur_{key}") for key in CASES}
    schema, channel = unique_name("bench_dur_s"), unique_name("bench_dur_ch")
    samples: dict[str, list[float]] = {key: [] for key in CASES}
    _setup(server, tables, schema, channel)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scripts = {}
            for key, table in tables.items():
                scripts[key] = Path(tmp) / f"insert_{key}.sql"
                scripts[key].write_text(f"INSERT INTO {table} (v, t) VALUES (1, 'x');\n")
                scripts[key].chmod(0o644)
            for rep in range(reps):
                for key in CASES:
                    samples[key].append(pgbench_tps(server.uri, scripts[key], seconds))
                log(
                    f"durable writers rep {rep + 1}/{reps}: "
                    + ", ".join(f"{key}={samples[key][-1]:.0f}" for key in CASES)
                    + " tps"
                )
        events = server.execute(sql.SQL("SELECT count(*) FROM {}.events").format(sql.Identifier(schema)))
        rows_d = server.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(tables["d"])))
    finally:
        _teardown(server, tables, schema, channel)
    note = (
        f"pgbench -n -c 16 -j 2 -T {seconds}, single-row INSERT (id bigserial, v int, t text), "
        f"fsync={fsync}, nobody listening; one outbox row per INSERT in (d) "
        f"({events[0][0]} events for {rows_d[0][0]} rows)"
    )
    results = {
        key: Result("durable", f"writers {label}", median(samples[key]), "tps", samples=samples[key])
        for key, label in CASES.items()
    }
    base = results["a"]
    base.note = note
    with_ratio(results["b"], base)
    with_ratio(results["c"], base)
    with_ratio(results["d"], base, target=0.6)
    d_beats_b = results["d"].value > results["b"].value
    results["d"].met = bool(results["d"].met) and d_beats_b
    results["d"].target = ">= 0.6x and > (b)"
    results["d"].extra = {"d_over_b": results["d"].value / results["b"].value, "fsync": fsync}
    return list(results.values())


def _read_raw(server: Server, schema: str, total: int) -> float:
    """Seconds the stream's own read statement takes to read ``total`` rows, one query after another.

    The baseline of the read rate: psycopg2 alone running the statement the
    durable reader runs, prepared as it is (same batch size and byte budget),
    each batch fetched and dropped -- no events, no positions stored.
    """
    from trio_pgevents._durable.outbox import OutboxSql
    from trio_pgevents._options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BUFFER_BYTES

    conn = server.connect()
    try:
        conn.autocommit = True
        statement = OutboxSql(schema).prepared_read  # prepared, as the reader runs it
        with conn.cursor() as cursor:
            started = time.perf_counter()
            after, count = ("0", 0), 0
            while count < total:
                statement.execute(cursor, (*after, DEFAULT_BATCH_SIZE, DEFAULT_MAX_BUFFER_BYTES // 4))
                rows = cursor.fetchall()
                if not rows:
                    raise RuntimeError(f"the outbox held {count} rows, not {total}")
                count += len(rows)
                after = (str(rows[-1][1]), rows[-1][0])
            return time.perf_counter() - started
    finally:
        conn.close()


def measure_reading(server: Server, *, total: int, reps: int, log: Any) -> list[Result]:
    """Events/s a durable consumer reads (``batches()``, auto-ack) from a pre-filled outbox.

    Each repetition first times the read statement alone (:func:`_read_raw`,
    the baseline), then a new consumer reading the same rows.
    """
    import trio

    from trio_pgevents import Installer, open_durable_stream

    table, schema, channel = (
        unique_name("bench_dur_r"),
        unique_name("bench_dur_rs"),
        unique_name("bench_dur_rc"),
    )
    server.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v int, t text)").format(sql.Identifier(table))
    )
    installer = Installer(server.sa_url, schema=schema, channel=channel)
    installer.install(durable=True)
    installer.watch_table(table, durable=True)
    rates: list[float] = []
    raw_rates: list[float] = []
    try:
        for start in range(1, total + 1, 1000):
            server.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT g, g %% 1000, 'row-' || g FROM generate_series(%s, %s) g"
                ).format(sql.Identifier(table)),
                (start, min(total, start + 999)),
            )

        async def consume(consumer: str) -> float:
            started = time.perf_counter()
            count = 0
            async with open_durable_stream(server.sa_url, consumer, schema=schema, channel=channel) as events:
                async for batch in events.batches():
                    count += len(batch)
                    if count >= total:
                        break
            return time.perf_counter() - started

        for rep in range(reps):
            raw_rates.append(total / _read_raw(server, schema, total))
            seconds = trio.run(consume, f"reader{rep}")
            rates.append(total / seconds)
            log(
                f"durable read rep {rep + 1}/{reps}: {total} events in {seconds:.2f}s = {rates[-1]:,.0f}/s "
                f"(the read statement alone: {raw_rates[-1]:,.0f} rows/s)"
            )
    finally:
        installer.uninstall()
        server.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
        server.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    raw = Result(
        "durable",
        "durable read statement alone (psycopg2, fetch and drop)",
        median(raw_rates),
        "rows/s",
        samples=raw_rates,
        note="the baseline of the read rate: the reader's own statement, one query after another",
    )
    stream = with_ratio(
        Result(
            "durable",
            "durable consumer read rate (batches(), auto-ack)",
            median(rates),
            "ev/s",
            samples=rates,
            note=(
                f"{total} INSERT events (1000-row transactions, 3 columns) already in the outbox; timed "
                "from opening the stream (register, LISTEN) to the last event; batch_size=1000, each a "
                "new consumer"
            ),
        ),
        raw,
    )
    stream.target = ">= 200000 ev/s"
    stream.met = stream.value >= 200_000
    return [raw, stream]


def run(ctx: BenchContext) -> list[Result]:
    """The writer-cost figures (own fsync=on server unless ``--dsn``), then the read rate."""
    seconds = ctx.scale(10, 5)
    reps = max(1, min(ctx.reps, 1 if ctx.quick else 3))
    total = ctx.scale(100_000, 20_000)
    if ctx.dsn is not None:
        results = measure(ctx.server, seconds=seconds, reps=reps, log=ctx.log)
    else:
        with open_server(None, settings={"fsync": "on", "full_page_writes": "on"}) as server:
            ctx.log(f"durable writers on their own server: {server.description}")
            results = measure(server, seconds=seconds, reps=reps, log=ctx.log)
    results.extend(measure_reading(ctx.server, total=total, reps=reps, log=ctx.log))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the durable writer benchmark alone and print the table."""

    parser = argparse.ArgumentParser(prog="python -m benchmarks.durable", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="pgbench -T per run (default 10)")
    parser.add_argument("--reps", type=int, default=1, help="interleaved repetitions (median reported)")
    parser.add_argument("--fsync", choices=["on", "off"], default="on", help="embedded server's fsync")
    parser.add_argument("--dsn", default=None, help="server to use (default: an embedded one)")
    parser.add_argument("--read-events", type=int, default=100_000, help="events for the read-rate figure")
    args = parser.parse_args(argv)

    log = log_to_stderr

    settings = None if args.dsn else {"fsync": args.fsync, "full_page_writes": args.fsync}
    with open_server(args.dsn, settings=settings) as server:
        log(f"server: {server.description}")
        results = measure(server, seconds=args.seconds, reps=args.reps, log=log)
        results.extend(measure_reading(server, total=args.read_events, reps=args.reps, log=log))
    print(f"python -m benchmarks.durable {' '.join(argv if argv is not None else sys.argv[1:])}".strip())
    print(f"server: {server.description}")
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
