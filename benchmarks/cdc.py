"""Change data capture: what a change stream costs the writers, and how fast it reads.

``python -m benchmarks.cdc`` (alone) or ``python -m benchmarks --only cdc``.

1. Writer TPS: ``pgbench -n -c 16 -j 2 -T 10`` with a single-row INSERT
   script, with no listener at all, then while a change stream (in this
   process) consumes every change; reported as a ratio (target >= 0.9x).
   Runs alternate (baseline, stream, baseline, ...) so drift hits both.
2. Change events consumed per second: N rows are written first (1000-row
   transactions, a 3-column row), then a change stream reads them all with
   ``batches()``; timed from opening the stream to the last event
   (target >= 100k events/s).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy
import trio
from sqlalchemy.pool import NullPool

from trio_pgevents import ChangeStream, RowChange, drop_change_stream, open_change_stream
from trio_pgevents._embedded import _bin_dir

from ._common import BenchContext, Result, median, open_server, unique_name, with_ratio

__all__ = ["run", "main"]

_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def _pgbench(uri: str, script: Path, seconds: int, clients: int = 16, threads: int = 2) -> float:
    """Run pgbench; return its TPS (without initial connection time)."""
    command = [
        str(_bin_dir() / "pgbench"),
        "-n",
        "-c",
        str(clients),
        "-j",
        str(threads),
        "-T",
        str(seconds),
        "-f",
        str(script),
        uri,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 120)
    match = _TPS.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed ({result.returncode}): {result.stdout}\n{result.stderr}")
    return float(match.group(1))


async def _drain(changes: ChangeStream, until: int) -> int:
    """Consume until ``until`` row changes were read; return how many."""
    count = 0
    async for batch in changes.batches():
        count += len(batch)
        if count >= until:
            break
    return count


def _writer_run(ctx: BenchContext, engine: Any, table: str, script: Path, seconds: int) -> dict[str, Any]:
    """One pgbench run while a change stream consumes."""
    slot, publication = unique_name("bench_slot"), unique_name("bench_pub")
    report: dict[str, Any] = {}

    async def main() -> None:
        async with open_change_stream(engine, slot=slot, publication=publication, tables=[table]) as changes:
            before = ctx.server.execute(f"SELECT count(*) FROM {table}")[0][0]
            consumed = 0

            async def consume(scope: trio.CancelScope) -> None:
                nonlocal consumed
                with scope:
                    async for batch in changes.batches():
                        consumed += len(batch)

            scope = trio.CancelScope()
            cpu_started = time.process_time()
            walsender_started = _cpu_seconds(changes.backend_pid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume, scope)
                report["tps"] = await trio.to_thread.run_sync(_pgbench, ctx.server.uri, script, seconds)
                scope.cancel()
            # Where the stream's cost goes: CPU of this process and of its walsender.
            report["consumer_cpu_s"] = round(time.process_time() - cpu_started, 2)
            walsender_now = _cpu_seconds(changes.backend_pid)
            if walsender_started is not None and walsender_now is not None:
                report["walsender_cpu_s"] = round(walsender_now - walsender_started, 2)
            written = ctx.server.execute(f"SELECT count(*) FROM {table}")[0][0] - before
            report["consumed_during"] = consumed
            report["written"] = written
            started = time.perf_counter()
            with trio.fail_after(300):
                consumed += await _drain(changes, written - consumed) if written > consumed else 0
            report["catch_up_s"] = time.perf_counter() - started

    try:
        trio.run(main)
    finally:
        drop_change_stream(engine, slot, publication)
    return report


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) used so far by a local process, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _consume_run(engine: Any, slot: str, publication: str, table: str, total: int) -> dict[str, float]:
    """Read ``total`` row changes from an existing slot: wall seconds and CPU seconds used."""
    report: dict[str, float] = {}

    async def main() -> None:
        started = time.perf_counter()
        cpu_started = time.process_time()
        async with open_change_stream(engine, slot=slot, publication=publication, tables=[table]) as changes:
            walsender = changes.backend_pid
            walsender_started = _cpu_seconds(walsender)
            count = 0
            async for batch in changes.batches():
                for event in batch:
                    if type(event) is RowChange:
                        count += 1
                if count >= total:
                    break
            report["seconds"] = time.perf_counter() - started
            report["consumer_cpu"] = time.process_time() - cpu_started
            walsender_now = _cpu_seconds(walsender)
            if walsender_started is not None and walsender_now is not None:
                report["walsender_cpu"] = walsender_now - walsender_started

    trio.run(main)
    return report


def run(ctx: BenchContext) -> list[Result]:
    """Both figures (see the module docstring)."""
    engine = sqlalchemy.create_engine(ctx.server.sa_url, poolclass=NullPool)
    results: list[Result] = []
    try:
        results.extend(_writers(ctx, engine))
        results.extend(_throughput(ctx, engine))
    finally:
        engine.dispose()
    return results


def _writers(ctx: BenchContext, engine: Any) -> list[Result]:
    seconds = ctx.scale(10, 5)
    reps = max(1, min(ctx.reps, 3 if ctx.quick else 5))
    table = unique_name("bench_cdc_w")
    ctx.server.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v int, t text)")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "insert.sql"
        script.write_text(f"INSERT INTO {table} (v, t) VALUES (1, 'x');\n")
        script.chmod(0o644)
        base: list[float] = []
        streamed: list[float] = []
        reports: list[dict[str, Any]] = []
        for rep in range(reps):
            base.append(_pgbench(ctx.server.uri, script, seconds))
            report = _writer_run(ctx, engine, table, script, seconds)
            streamed.append(report["tps"])
            reports.append(report)
            ctx.log(
                f"cdc writers rep {rep + 1}/{reps}: no listener {base[-1]:.0f} tps, "
                f"change stream {streamed[-1]:.0f} tps (consumed {report['consumed_during']} of "
                f"{report['written']} during the run, caught up in {report['catch_up_s']:.2f}s; "
                f"CPU: consumer {report['consumer_cpu_s']}s, walsender {report.get('walsender_cpu_s')}s)"
            )
    ctx.server.execute(f"DROP TABLE {table}")
    baseline = Result(
        "cdc",
        "pgbench 16 clients INSERT, no listener",
        median(base),
        "tps",
        samples=base,
        note="",
    )
    with_stream = Result(
        "cdc",
        "pgbench 16 clients INSERT, change stream consuming",
        median(streamed),
        "tps",
        samples=streamed,
        note=(
            f"pgbench -n -c 16 -j 2 -T {seconds}, single-row INSERT; the change stream runs in the "
            "benchmark process on the same machine; wal_level=logical in both cases"
        ),
        extra={"runs": reports},
    )
    with_ratio(with_stream, baseline, target=0.9)
    return [baseline, with_stream]


def _throughput(ctx: BenchContext, engine: Any) -> list[Result]:
    total = ctx.scale(500_000, 100_000)
    reps = max(1, min(ctx.reps, 3 if ctx.quick else 5))
    table = unique_name("bench_cdc_r")
    ctx.server.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, v int, t text)")
    names = [(unique_name("bench_slot"), unique_name("bench_pub")) for _ in range(reps)]
    try:
        # One slot per repetition, all created before the writes: each reads the same WAL.
        for slot, publication in names:

            async def create(slot: str = slot, publication: str = publication) -> None:
                async with open_change_stream(engine, slot=slot, publication=publication, tables=[table]):
                    pass

            trio.run(create)
        per_txn = 1000
        statements = [
            f"INSERT INTO {table} SELECT g, g % 1000, 'row-' || g "
            f"FROM generate_series({start}, {min(total, start + per_txn - 1)}) AS g"
            for start in range(1, total + 1, per_txn)
        ]
        conn = ctx.server.connect()
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()
        rates: list[float] = []
        cpu_rates: list[float] = []
        runs: list[dict[str, float]] = []
        for rep, (slot, publication) in enumerate(names):
            report = _consume_run(engine, slot, publication, table, total)
            runs.append(report)
            rates.append(total / report["seconds"])
            cpu_rates.append(total / report["consumer_cpu"])
            ctx.log(
                f"cdc consume rep {rep + 1}/{reps}: {total} changes in {report['seconds']:.2f}s = "
                f"{rates[-1]:,.0f}/s; consumer CPU {report['consumer_cpu']:.2f}s "
                f"({cpu_rates[-1]:,.0f} changes per CPU-second), walsender CPU "
                f"{report.get('walsender_cpu', float('nan')):.2f}s"
            )
    finally:
        for slot, publication in names:
            drop_change_stream(engine, slot, publication)
        ctx.server.execute(f"DROP TABLE {table}")
    value = median(rates)
    per_cpu = Result(
        "cdc",
        "change events per consumer CPU-second",
        median(cpu_rates),
        "ev/s",
        samples=cpu_rates,
        note=(
            "the same runs, divided by the CPU time the consuming process used: its rate on an idle "
            "core, less sensitive to other load on the machine than the wall-clock figure"
        ),
        extra={"runs": runs},
    )
    result = Result(
        "cdc",
        "change events consumed (batches())",
        value,
        "ev/s",
        samples=rates,
        target=">= 100000",
        met=value >= 100_000,
        note=(
            f"{total} INSERTs in {per_txn}-row transactions (id bigint, v int, t text) read from a "
            "slot, timed from opening the stream (connect, START_REPLICATION) to the last event"
        ),
    )
    return [result, per_cpu]


def main(argv: list[str] | None = None) -> int:
    """Run the CDC benchmark alone on an embedded server and print the table."""
    import argparse

    from .__main__ import format_table

    parser = argparse.ArgumentParser(prog="python -m benchmarks.cdc", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--dsn", default=None, help="server to use (default: an embedded one)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    with open_server(args.dsn) as server:
        ctx = BenchContext(
            server=server, dsn=args.dsn, quick=args.quick, reps=args.reps or (3 if args.quick else 5), log=log
        )
        results = run(ctx)
        print(f"server: {server.description}")
    print(format_table(results))
    for result in results:
        if result.note:
            print(f"  {result.case}: {result.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
