"""Change data capture: what a change stream costs the writers, and how fast it reads.

``python -m benchmarks.cdc`` (alone) or ``python -m benchmarks --only cdc``.

1. Writer TPS: ``pgbench -n -c 16 -j 2 -T 10`` with a single-row INSERT
   script, in three cases taken in turn (so drift hits all of them):

   - no listener at all (the baseline);
   - ``pg_recvlogical`` (PostgreSQL's own C client, from the same wheel)
     reading the same pgoutput stream into ``/dev/null``: the cost of logical
     decoding itself (the server's walsender) with the cheapest possible
     client: about the best any client can do on the same machine;
   - the raw psycopg2 loop: ``read_message()`` in a ``wait_readable`` loop,
     nothing decoded, a status update every 10 s (as ``pg_recvlogical``):
     the best any client built on psycopg2 and Trio can do, the change
     stream's own floor;
   - a trio_pgevents change stream consuming every change (target >= 0.9x
     of the baseline).

   On a machine where the writers use every core, the walsender and the
   consumer take CPU from them. So, with an embedded server on a Linux
   machine of 2 or more CPUs, the three cases are run
   once more on a separate server with the writers (the postmaster, its
   backends and pgbench) pinned to CPU 0, and the walsender and the
   client pinned to CPU 1: the cost when the stream has a core to itself,
   as when the consumer runs on another host and the server has a spare
   core. The writers have one core in every case, the baseline included.
2. Change events consumed per second: N rows are written first (1000-row
   transactions, a 3-column row), then a change stream reads them all with
   ``batches()``; timed from opening the stream to the last event
   (target >= 100k events/s).
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import sqlalchemy
import trio
from sqlalchemy.pool import NullPool

from trio_pgevents import ChangeStream, RowChange, drop_change_stream, open_change_stream
from trio_pgevents.testing import postgres_bin_dir

from ._common import (
    BenchContext,
    Result,
    Server,
    Split,
    cpu_seconds,
    log_to_stderr,
    median,
    open_server,
    pgbench_tps,
    print_results,
    unique_name,
    with_ratio,
)

__all__ = ["run", "main"]

CLIENTS = 16


async def _drain(changes: ChangeStream, until: int) -> int:
    """Consume until ``until`` row changes were read; return how many."""
    count = 0
    async for batch in changes.batches():
        count += len(batch)
        if count >= until:
            break
    return count


async def _pgbench_beside(
    consume: Callable[[], Awaitable[None]],
    walsender: int | None,
    server: Server,
    script: Path,
    seconds: int,
    split: Split | None,
    report: dict[str, Any],
) -> None:
    """One pgbench run (on the writers' CPUs) while ``consume`` reads: its TPS and what reading cost.

    Sets ``tps``, and the CPU seconds this process (the consumer) and the
    ``walsender`` used meanwhile. ``consume`` is cancelled once pgbench ends.
    """
    cpu_started = time.process_time()
    walsender_started = cpu_seconds(walsender)
    cpus = None if split is None else split.writers
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        report["tps"] = await trio.to_thread.run_sync(
            functools.partial(pgbench_tps, server.uri, script, seconds, cpus=cpus)
        )
        nursery.cancel_scope.cancel()
    # Where the stream's cost goes: CPU of this process and of its walsender.
    report["consumer_cpu_s"] = round(time.process_time() - cpu_started, 2)
    walsender_now = cpu_seconds(walsender)
    if walsender_started is not None and walsender_now is not None:
        report["walsender_cpu_s"] = round(walsender_now - walsender_started, 2)


def _run_placed(main: Callable[[], Awaitable[None]], split: Split | None) -> None:
    """``trio.run(main)``, on the stream's CPU if ``split``."""
    with contextlib.ExitStack() as stack:
        if split is not None:
            stack.enter_context(split.stream_thread())
        trio.run(main)


def _writer_run(
    server: Server, engine: Any, table: str, script: Path, seconds: int, *, split: Split | None = None
) -> dict[str, Any]:
    """One pgbench run while a change stream (in this process) consumes.

    With ``split``, pgbench runs on the writers' CPUs and this thread and the
    walsender on the stream's.
    """
    slot, publication = unique_name("bench_slot"), unique_name("bench_pub")
    report: dict[str, Any] = {}

    async def main() -> None:
        async with open_change_stream(engine, slot=slot, publication=publication, tables=[table]) as changes:
            if split is not None:
                split.pin_stream(changes.backend_pid)
            before = server.execute(f"SELECT count(*) FROM {table}")[0][0]
            consumed = 0

            async def consume() -> None:
                nonlocal consumed
                async for batch in changes.batches():
                    consumed += len(batch)

            await _pgbench_beside(consume, changes.backend_pid, server, script, seconds, split, report)
            written = server.execute(f"SELECT count(*) FROM {table}")[0][0] - before
            report["consumed_during"] = consumed
            report["written"] = written
            started = time.perf_counter()
            with trio.fail_after(300):
                consumed += await _drain(changes, written - consumed) if written > consumed else 0
            report["catch_up_s"] = time.perf_counter() - started

    try:
        _run_placed(main, split)
    finally:
        drop_change_stream(engine, slot, publication)
    return report


def _create_slot(engine: Any, table: str) -> tuple[str, str]:
    """A fresh slot and publication for ``table`` (made by a change stream opened and closed)."""
    slot, publication = unique_name("bench_slot"), unique_name("bench_pub")

    async def create() -> None:
        async with open_change_stream(engine, slot=slot, publication=publication, tables=[table]):
            pass

    trio.run(create)
    return slot, publication


def _raw_run(
    server: Server, engine: Any, table: str, script: Path, seconds: int, *, split: Split | None = None
) -> dict[str, Any]:
    """One pgbench run while the raw psycopg2 loop reads the pgoutput stream (in this process).

    ``read_message()`` until it returns None, then ``wait_readable``; each
    message counted and dropped; the flush position sent with psycopg2's
    rate limit (``status_interval`` 10 s, as ``pg_recvlogical``). With
    ``split``, placed as :func:`_writer_run`.
    """
    slot, publication = _create_slot(engine, table)
    report: dict[str, Any] = {}

    async def main() -> None:
        conn = psycopg2.connect(server.uri, connection_factory=psycopg2.extras.LogicalReplicationConnection)
        try:
            cursor: Any = conn.cursor()
            cursor.start_replication(
                slot_name=slot,
                decode=False,
                status_interval=10,
                options={"proto_version": "1", "publication_names": publication},
            )
            walsender = conn.get_backend_pid()
            if split is not None:
                split.pin_stream(walsender)
            fd = conn.fileno()
            messages = 0

            async def consume() -> None:
                nonlocal messages
                read = cursor.read_message
                while True:
                    await trio.lowlevel.wait_readable(fd)
                    last = None
                    while (message := read()) is not None:
                        messages += 1
                        last = message
                    if last is not None:
                        cursor.send_feedback(flush_lsn=last.data_start)

            await _pgbench_beside(consume, walsender, server, script, seconds, split, report)
            report["messages"] = messages
        finally:
            conn.close()

    try:
        _run_placed(main, split)
    finally:
        drop_change_stream(engine, slot, publication)
    return report


def _recvlogical_run(
    server: Server, engine: Any, table: str, script: Path, seconds: int, *, split: Split | None = None
) -> dict[str, Any]:
    """One pgbench run while ``pg_recvlogical`` reads the same pgoutput stream into /dev/null.

    With ``split``, pgbench runs on the writers' CPUs, pg_recvlogical and its walsender on the stream's.
    """
    slot, publication = _create_slot(engine, table)
    report: dict[str, Any] = {}
    command = [
        str(postgres_bin_dir() / "pg_recvlogical"),
        "--dbname",
        server.uri,
        "--slot",
        slot,
        "--start",
        "--option",
        "proto_version=1",
        "--option",
        f"publication_names={publication}",
        "--status-interval",
        "10",
        "--file",
        "/dev/null",
        "--no-loop",
    ]
    try:
        pin = None if split is None else (lambda: os.sched_setaffinity(0, split.stream))
        with subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pin
        ) as client:
            try:
                walsender = _wait_for_walsender(server, slot, client)
                if split is not None:
                    split.pin_stream(walsender)
                walsender_started = cpu_seconds(walsender)
                writers = None if split is None else split.writers
                report["tps"] = pgbench_tps(server.uri, script, seconds, cpus=writers)
                walsender_now = cpu_seconds(walsender)
                if walsender_started is not None and walsender_now is not None:
                    report["walsender_cpu_s"] = round(walsender_now - walsender_started, 2)
                report["consumer_cpu_s"] = cpu_seconds(client.pid)
            finally:
                client.terminate()
                client.wait(timeout=30)
    finally:
        drop_change_stream(engine, slot, publication)
    return report


def _wait_for_walsender(server: Server, slot: str, client: subprocess.Popen[bytes]) -> int:
    """The pid of the walsender serving ``slot`` once streaming (pg_recvlogical connected)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = server.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [slot])
        if rows and rows[0][0] is not None:
            return int(rows[0][0])
        if client.poll() is not None:
            error = client.stderr.read().decode(errors="replace") if client.stderr else ""
            raise RuntimeError(f"pg_recvlogical exited ({client.returncode}): {error}")
        time.sleep(0.05)
    raise RuntimeError("pg_recvlogical did not start streaming within 30 s")


def _consume_run(
    engine: Any, slot: str, publication: str, table: str, total: int, read: bool = False
) -> dict[str, float]:
    """Read ``total`` row changes from an existing slot: wall seconds and CPU seconds used.

    ``read``: also read every change's ``new_data`` (rows are decoded on first access).
    """
    report: dict[str, float] = {}

    async def main() -> None:
        started = time.perf_counter()
        cpu_started = time.process_time()
        async with open_change_stream(engine, slot=slot, publication=publication, tables=[table]) as changes:
            walsender = changes.backend_pid
            walsender_started = cpu_seconds(walsender)
            count = 0
            values = 0
            async for batch in changes.batches():
                for event in batch:
                    if type(event) is RowChange:
                        count += 1
                        if read:
                            values += len(event.new_data or ())
                if count >= total:
                    break
            report["seconds"] = time.perf_counter() - started
            report["consumer_cpu"] = time.process_time() - cpu_started
            walsender_now = cpu_seconds(walsender)
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
    with _insert_script(ctx.server) as (table, script):
        runs = _alternate(ctx, ctx.server, engine, table, script, seconds, reps, _CASES)
    results = _writer_results(
        runs,
        baseline_case=f"pgbench {CLIENTS} clients INSERT, no listener",
        reference_case=f"pgbench {CLIENTS} clients INSERT, pg_recvlogical reading (C reference client)",
        reference_note=(
            "the cost of logical decoding itself (the server's walsender) with PostgreSQL's own "
            "minimal C client writing to /dev/null: about the best ratio any client can reach here"
        ),
        raw_case=f"pgbench {CLIENTS} clients INSERT, raw psycopg2 loop reading",
        stream_case=f"pgbench {CLIENTS} clients INSERT, change stream consuming",
        stream_note=(
            f"pgbench -n -c {CLIENTS} -j 2 -T {seconds}, single-row INSERT; wal_level=logical in every "
            "case; the change stream runs in the benchmark process on the same machine"
        ),
    )
    if Split.possible(ctx):
        results.extend(_writers_spare_core(ctx, seconds, reps))
    return results


#: The writer-cost cases, run in turn in each repetition.
_CASES = ["none", "pg_recvlogical", "psycopg2", "stream"]


def _writers_spare_core(ctx: BenchContext, seconds: int, reps: int) -> list[Result]:
    """The same cases on a fresh server, writers on CPU 0, client and walsender on CPU 1."""
    cpus = sorted(os.sched_getaffinity(0))
    writers, stream = {cpus[0]}, {cpus[1]}
    with open_server(None) as server:
        engine = sqlalchemy.create_engine(server.sa_url, poolclass=NullPool)
        try:
            split = Split(server, writers, stream)
            with _insert_script(server) as (table, script):
                # A just-started server is slower at first (the first baseline
                # of an earlier run: 0.7x the others); warm it up unmeasured.
                pgbench_tps(server.uri, script, seconds, cpus=writers)
                runs = _alternate(ctx, server, engine, table, script, seconds, reps, _CASES, split)
        finally:
            engine.dispose()
    return _writer_results(
        runs,
        baseline_case=f"pgbench {CLIENTS} clients INSERT on 1 CPU, no listener",
        reference_case=f"pgbench {CLIENTS} clients INSERT on 1 CPU, pg_recvlogical + walsender on another",
        reference_note=(
            "the same placement with PostgreSQL's C client: the walsender's cost to the writers' core"
        ),
        raw_case=f"pgbench {CLIENTS} clients INSERT on 1 CPU, raw psycopg2 loop + walsender on another",
        stream_case=f"pgbench {CLIENTS} clients INSERT on 1 CPU, change stream + walsender on another",
        stream_note=(
            f"a separate embedded server; the postmaster, its backends and pgbench pinned to CPU {cpus[0]}, "
            f"the walsender and the consuming process to CPU {cpus[1]}: the writers' cost when the "
            "stream does not compete with them for CPU"
        ),
    )


def _writer_results(
    runs: dict[str, Any],
    *,
    baseline_case: str,
    reference_case: str,
    reference_note: str,
    raw_case: str,
    stream_case: str,
    stream_note: str,
) -> list[Result]:
    """Baseline, pg_recvlogical, raw psycopg2 and change-stream rows from one :func:`_alternate`'s runs."""

    def row(case: str, key: str, note: str = "") -> Result:
        return Result(
            "cdc",
            case,
            median(runs[key]),
            "tps",
            samples=runs[key],
            note=note,
            extra={"runs": runs[f"{key}_reports"]},
        )

    baseline = row(baseline_case, "none")
    reference = with_ratio(row(reference_case, "pg_recvlogical", reference_note), baseline)
    floor = with_ratio(
        row(
            raw_case,
            "psycopg2",
            "the same stream read by psycopg2 alone (read_message in a wait_readable loop, nothing "
            "decoded, status every 10 s): the best ratio a client built on psycopg2 and Trio can reach",
        ),
        baseline,
    )
    with_stream = with_ratio(row(stream_case, "stream", stream_note), baseline, target=0.9)
    for result in (floor, with_stream):
        result.extra["vs_pg_recvlogical"] = result.value / reference.value
    with_stream.extra["vs_psycopg2"] = with_stream.value / floor.value
    return [baseline, reference, floor, with_stream]


@contextlib.contextmanager
def _insert_script(server: Server) -> Iterator[tuple[str, Path]]:
    """A fresh table and a pgbench script inserting one row into it per transaction."""
    table = unique_name("bench_cdc_w")
    server.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v int, t text)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)  # the server's user (pgbench runs as us, but be safe)
            script = Path(tmp) / "insert.sql"
            script.write_text(f"INSERT INTO {table} (v, t) VALUES (1, 'x');\n")
            script.chmod(0o644)
            yield table, script
    finally:
        server.execute(f"DROP TABLE {table}")


def _alternate(
    ctx: BenchContext,
    server: Server,
    engine: Any,
    table: str,
    script: Path,
    seconds: int,
    reps: int,
    cases: list[str],
    split: Split | None = None,
) -> dict[str, Any]:
    """Run ``cases`` in turn ``reps`` times; TPS per case, and each case's reports."""
    runs: dict[str, Any] = {}
    where = " (writers on 1 CPU)" if split else ""
    writer_cpus = None if split is None else split.writers
    for rep in range(reps):
        line = []
        for case in cases:
            if case == "none":
                report: dict[str, Any] = {"tps": pgbench_tps(server.uri, script, seconds, cpus=writer_cpus)}
            elif case == "pg_recvlogical":
                report = _recvlogical_run(server, engine, table, script, seconds, split=split)
            elif case == "psycopg2":
                report = _raw_run(server, engine, table, script, seconds, split=split)
            else:
                report = _writer_run(server, engine, table, script, seconds, split=split)
            runs.setdefault(case, []).append(report["tps"])
            runs.setdefault(f"{case}_reports", []).append(report)
            cpu = ""
            if "walsender_cpu_s" in report:
                cpu = (
                    f" (CPU s: walsender {report['walsender_cpu_s']}, client {report.get('consumer_cpu_s')})"
                )
            line.append(f"{case} {report['tps']:.0f} tps{cpu}")
        ctx.log(f"cdc writers{where} rep {rep + 1}/{reps}: " + "; ".join(line))
    return runs


def _throughput(ctx: BenchContext, engine: Any) -> list[Result]:
    total = ctx.scale(500_000, 100_000)
    reps = max(1, min(ctx.reps, 3 if ctx.quick else 5))
    table = unique_name("bench_cdc_r")
    ctx.server.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, v int, t text)")
    # Two slots per repetition: changes counted only, and every row read as well.
    names = [(unique_name("bench_slot"), unique_name("bench_pub")) for _ in range(2 * reps)]
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
        read_cpu_us: list[float] = []
        runs: list[dict[str, float]] = []
        for rep, (slot, publication) in enumerate(names[:reps]):
            read_slot, read_publication = names[reps + rep]
            read_report = _consume_run(engine, read_slot, read_publication, table, total, read=True)
            read_cpu_us.append(read_report["consumer_cpu"] / total * 1e6)
            report = _consume_run(engine, slot, publication, table, total)
            runs.append(report)
            rates.append(total / report["seconds"])
            cpu_rates.append(total / report["consumer_cpu"])
            ctx.log(
                f"cdc consume rep {rep + 1}/{reps}: {total} changes in {report['seconds']:.2f}s = "
                f"{rates[-1]:,.0f}/s; consumer CPU {report['consumer_cpu']:.2f}s "
                f"({cpu_rates[-1]:,.0f} changes per CPU-second), walsender CPU "
                f"{report.get('walsender_cpu', float('nan')):.2f}s; "
                f"reading every row: {read_cpu_us[-1]:.2f} us CPU per change"
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
    cpu_us = [1e6 / rate for rate in cpu_rates]
    per_change = Result(
        "cdc",
        "consumer CPU per change",
        median(cpu_us),
        "us",
        samples=cpu_us,
        target="<= 3",
        met=median(cpu_us) <= 3,
        note="the runs above: changes counted (type checked), rows not read",
    )
    per_change_read = Result(
        "cdc",
        "consumer CPU per change, every new_data read",
        median(read_cpu_us),
        "us",
        samples=read_cpu_us,
        note="as above, on another slot of the same WAL, reading each change's new_data",
    )
    return [result, per_cpu, per_change, per_change_read]


def main(argv: list[str] | None = None) -> int:
    """Run the CDC benchmark alone on an embedded server and print the table."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.cdc", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--dsn", default=None, help="server to use (default: an embedded one)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure")
    args = parser.parse_args(argv)

    log = log_to_stderr

    with open_server(args.dsn) as server:
        ctx = BenchContext(
            server=server, dsn=args.dsn, quick=args.quick, reps=args.reps or (3 if args.quick else 5), log=log
        )
        results = run(ctx)
        print(f"server: {server.description}")
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
