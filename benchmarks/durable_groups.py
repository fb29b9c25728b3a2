"""Durable consumer groups (issue 15): do members scale out, and do the writers pay for it?

``python -m benchmarks.durable_groups`` (alone) or ``python -m benchmarks --only durable_groups``.

(1) Throughput. A table ``(id int PRIMARY KEY, v int, t text)`` watched with
``Installer.watch_table(t, durable=True)`` gets N rows (N distinct keys, in
1000-row transactions) before anything is timed; the outbox then holds N
events. Each repetition drains that same backlog three times, each under a
fresh consumer name (``group=True, partitions=16``, ``auto_ack=False``, one
:class:`~trio_pgevents.DurableWorker` per member) with an I/O-bound handler,
``async def handler(event): await trio.sleep(0.002)``:

- (A) one member (the baseline);
- (B) four members of one group, each a task in this process (the handler
  only awaits, so one Trio loop hosts them all);
- (B') four members as in B, but the clock starts once the members have
  also *read* their events (all N waiting in their buffers), not as soon as
  they hold their partitions;
- (C1), (C4) no library: one task awaiting ``trio.sleep(0.002)`` N times,
  and four tasks N/4 times each, in one Trio loop. C4/C1 is what the machine
  allows B/A to reach at best (each sleep overshoots by the loop's and the
  OS's wake-up latency, more so with four times the wake-ups on a shared
  2-core machine).

The members open together and their workers wait; the clock starts once
every member holds its fair share (16 partitions for A, 4 each for B) and
stops when the N-th distinct event has been handled. The time from opening
to that balance (B: members joining, surplus partitions handed back) is
reported on its own line, and B's rate counting it is in the JSON
(``extra``). A member that does not consume yet has delivered nothing, so
the hand-backs need not wait for anything. After the N-th event the members
run on for a moment; every event must have been handled exactly once
(counted by key across members), else the benchmark fails. Target: B >= 3.5x A.

A member that gains partitions reads the whole outbox from their stored
position and keeps their events: in B the three members that gain theirs at
the rebalance each read all N rows, in one process, inside B's clock (the
first member read them before it); A's clock includes its one member's read
of N rows. B' leaves that read out: the gap
between B and B' is what the members' reading costs. The order of the three
cases alternates between repetitions (A B B' C1 C4, then C4 C1 B' B A).

(2) Writers. pgbench single-row INSERTs (``-c 16 -j 2``) into a
durable-watched table while (w0) nobody consumes, (w1) an exclusive consumer
reads along, (w2) a group of 4 members (16 partitions) reads along, cases
interleaved per repetition. The trigger is the same in every case
(``watch_table`` has no group option: the partition is derived when an event
is read); the consumers read with ``batches()`` (auto-ack), from ``latest``,
in this process, and keep up with the writers. Target: (w2) >= 0.9x (w1),
i.e. equal within what a shared 2-core machine allows; (w1) and (w2) against
(w0) show what reading along costs the writers at all. The table's trigger
and its function are compared before and after (they must not change), and
the notes give the events each reader got per row written (did it keep up)
and this process's CPU per row written (the readers' own cost: every member
of a group looks at every outbox row, but the server computes each row's
partition and sends the member only its own partitions' rows).
Without ``--dsn`` the writers' server is its own embedded one with
``fsync=on`` (as in ``durable``).

On a machine of 2+ CPUs without ``--dsn``, the three writer cases run once
more on a fresh embedded server with the server's processes and pgbench
pinned to the first CPU and this process (every reader) to the second:
there the writers pay only the server's share of the reading (its queries),
as when the members run on other machines than the database -- what the
claim "writers pay nothing for groups" is about. Both placements are
reported, each with the same 0.9x target.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from psycopg2 import sql

from trio_pgevents import DurableStream, DurableWorker, Installer, RowChange, open_durable_stream

from ._common import (
    BenchContext,
    Result,
    Server,
    Split,
    log_to_stderr,
    median,
    open_server,
    pgbench_tps,
    print_results,
    unique_name,
    with_ratio,
)

__all__ = ["main", "run"]

#: Partitions of every group here (the library's default).
PARTITIONS = 16
#: Members of the scaled-out group.
MEMBERS = 4
#: What the handler awaits per event (seconds): its "I/O".
HANDLER_IO = 0.002
#: After the last event: how long the members run on, to catch a duplicate delivery.
_GRACE = 0.3
#: Lease timeout of the members (the default; a tick is a second).
_LEASE_TIMEOUT = 10.0

Log = Callable[[str], None]


@dataclass
class _Installed:
    """A fresh library schema with one durable-watched table."""

    server: Server
    table: str
    schema: str
    channel: str
    installer: Installer

    @classmethod
    def create(cls, server: Server, prefix: str, key: str) -> _Installed:
        table, schema, channel = (unique_name(prefix), unique_name(prefix + "_s"), unique_name(prefix + "_c"))
        server.execute(
            sql.SQL("CREATE TABLE {} (id {}, v int, t text)").format(sql.Identifier(table), sql.SQL(key))
        )
        installer = Installer(server.sa_url, schema=schema, channel=channel)
        installer.install(durable=True)
        installer.watch_table(table, durable=True)
        return cls(server, table, schema, channel, installer)

    def drop(self) -> None:
        self.installer.uninstall()
        self.server.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.table)))
        self.server.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

    def options(self) -> dict[str, Any]:
        return {"schema": self.schema, "channel": self.channel}


async def _wait_balanced(streams: Sequence[DurableStream], partitions: int) -> None:
    """Until the streams hold every partition between them, each its fair share."""
    fair = math.ceil(partitions / len(streams))
    while True:
        held = [set(stream.statistics().partitions_held) for stream in streams]
        if all(len(parts) == fair for parts in held) and len(set().union(*held)) == partitions:
            return
        await trio.sleep(0.005)


# ---- (1) throughput -------------------------------------------------------------------------------


@dataclass
class _Drain:
    """One drain of the backlog by ``members`` members."""

    balance_s: float  # opening the members -> each holds its share
    ready_s: float  # opening the members -> the clock starts (balanced, and read if asked)
    process_s: float  # the clock's start -> the N-th distinct event handled
    per_member: list[int] = field(default_factory=list)

    def rate(self, total: int) -> float:
        return total / self.process_s

    def rate_with_balance(self, total: int) -> float:
        return total / (self.ready_s + self.process_s)


async def _drain(
    db: _Installed, consumer: str, members: int, total: int, timeout: float, read_first: bool = False
) -> _Drain:
    """Open ``members`` members of ``consumer``, balance, then handle the ``total`` events.

    ``read_first``: start the clock only once the members have also read their
    partitions' events (all ``total`` waiting in their buffers), not when they
    hold them.
    """
    streams: list[DurableStream] = []
    workers: list[DurableWorker] = []
    counts = [0] * members
    seen: set[int] = set()
    duplicates: list[int] = []
    go, done = trio.Event(), trio.Event()

    def handler_of(index: int) -> Callable[[RowChange], Any]:
        async def handler(event: RowChange) -> None:
            await trio.sleep(HANDLER_IO)
            counts[index] += 1
            key = int((event.new_data or {})["id"])
            if key in seen:
                duplicates.append(key)
            seen.add(key)
            if len(seen) >= total:
                done.set()

        return handler

    async def member(index: int, opened: Callable[[], None]) -> None:
        async with open_durable_stream(
            db.server.sa_url,
            consumer,
            **db.options(),
            group=True,
            partitions=PARTITIONS,
            lease_timeout=_LEASE_TIMEOUT,
            auto_ack=False,
        ) as stream:
            worker = DurableWorker(handler_of(index))
            streams.append(stream)
            workers.append(worker)
            opened()
            await go.wait()
            await worker.run(stream)

    all_open = trio.Event()

    def opened() -> None:
        if len(streams) == members:
            all_open.set()

    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            started = time.perf_counter()
            for index in range(members):
                nursery.start_soon(member, index, opened)
            await all_open.wait()
            await _wait_balanced(streams, PARTITIONS)
            balanced = time.perf_counter()
            while read_first and sum(stream.statistics().buffered for stream in streams) < total:
                await trio.sleep(0.005)
            ready = time.perf_counter()
            go.set()
            await done.wait()
            finished = time.perf_counter()
            await trio.sleep(_GRACE)  # a duplicate delivery would show up now
            for worker in workers:
                worker.stop()
    if duplicates or sum(counts) != total or len(seen) != total:
        raise RuntimeError(
            f"{consumer}: {sum(counts)} events handled ({len(seen)} distinct, duplicates "
            f"{sorted(duplicates)[:10]}), expected each of {total} exactly once"
        )
    return _Drain(balanced - started, ready - started, finished - ready, counts)


async def _bare(tasks: int, total: int) -> float:
    """No library: ``tasks`` tasks await the handler's sleep ``total / tasks`` times each; seconds."""
    started = time.perf_counter()

    async def one() -> None:
        for _ in range(total // tasks):
            await trio.sleep(HANDLER_IO)

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(one)
    return time.perf_counter() - started


def measure_throughput(server: Server, *, total: int, reps: int, log: Log) -> list[Result]:
    """(A) one member vs (B) four vs (B') four timed after their read, same backlog, ``reps`` times each."""
    db = _Installed.create(server, "bench_grp", "int PRIMARY KEY")
    drains: dict[str, list[_Drain]] = {"A": [], "B": [], "B'": []}
    variants = {"A": (1, False), "B": (MEMBERS, False), "B'": (MEMBERS, True)}
    bare_tasks = {"C1": 1, "C4": MEMBERS}
    bare: dict[str, list[float]] = {key: [] for key in bare_tasks}  # ev/s
    try:
        for start in range(1, total + 1, 1000):
            server.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT g, g %% 1000, 'row-' || g FROM generate_series(%s, %s) g"
                ).format(sql.Identifier(db.table)),
                (start, min(total, start + 999)),
            )
        timeout = 60 + 3 * total * HANDLER_IO
        for rep in range(reps):
            order = [*variants, *bare_tasks]
            if rep % 2:
                order.reverse()  # drift hits all alike
            for variant in order:
                if variant in bare_tasks:
                    bare[variant].append(total / trio.run(_bare, bare_tasks[variant], total))
                    log(
                        f"durable_groups rep {rep + 1}/{reps}, ({variant}) no library, "
                        f"{bare_tasks[variant]} task(s): {bare[variant][-1]:,.0f}/s"
                    )
                    continue
                members, read_first = variants[variant]
                consumer = unique_name(f"bench_grp{members}")
                result = trio.run(_drain, db, consumer, members, total, timeout, read_first)
                drains[variant].append(result)
                log(
                    f"durable_groups rep {rep + 1}/{reps}, ({variant}) {members} member(s): balanced in "
                    f"{result.balance_s:.2f}s, clock from {result.ready_s:.2f}s, {total} events in "
                    f"{result.process_s:.2f}s = {result.rate(total):,.0f}/s (per member {result.per_member})"
                )
    finally:
        db.drop()

    one, group, read = drains["A"], drains["B"], drains["B'"]
    handler = f"async handler awaiting trio.sleep({HANDLER_IO * 1000:g} ms)"
    base = Result(
        "durable_groups",
        f"(A) 1 member, {handler}",
        median([d.rate(total) for d in one]),
        "ev/s",
        samples=[d.rate(total) for d in one],
        note=(
            f"throughput: {total} INSERT events (distinct keys, 1000-row transactions) in the outbox "
            f"before timing; each drain a fresh consumer (group=True, partitions={PARTITIONS}, "
            "auto_ack=False, one DurableWorker per member, members are tasks of one Trio loop); "
            "clock from every member holding its fair share (A: 16, B: 4 each; B': and having read its "
            "events) to the last distinct event handled; open-to-balanced timed apart; every event "
            "handled exactly once (checked)"
        ),
        extra={
            "open_to_balanced_s": [d.balance_s for d in one],
            "ideal_ev_s": 1 / HANDLER_IO,
        },
    )
    scaled = Result(
        "durable_groups",
        f"(B) group of {MEMBERS} members, same handler",
        median([d.rate(total) for d in group]),
        "ev/s",
        samples=[d.rate(total) for d in group],
        extra={
            "per_member_events": [d.per_member for d in group],
            "rate_counting_balance_ev_s": [d.rate_with_balance(total) for d in group],
            "open_to_balanced_s": [d.balance_s for d in group],
        },
    )
    with_ratio(scaled, base, target=3.5)
    # What the key spread allows: the largest member's share bounds B (N / its share x A).
    largest = [max(d.per_member) for d in group]
    paired = [b.rate(total) / a.rate(total) for a, b in zip(one, group, strict=True)]
    ceiling = [c4 / c1 for c1, c4 in zip(bare["C1"], bare["C4"], strict=True)]
    scaled.note = (
        f"scaling: B/A paired by repetition {', '.join(f'{r:.2f}x' for r in paired)}; the partition "
        "is a hash of table and key, so members' shares differ: largest member's share "
        + ", ".join(f"{m}/{total}" for m in largest)
        + " (B could reach at most "
        + ", ".join(f"{total / m:.2f}x" for m in largest)
        + f" with no overhead); one member: {median([d.process_s for d in one]) / total * 1e3:.2f} ms "
        f"per event, group: {median([d.process_s / max(d.per_member) for d in group]) * 1e3:.2f} ms "
        "per event of the largest member; the machine's ceiling C4/C1 paired: "
        + ", ".join(f"{c:.2f}x" for c in ceiling)
    )
    scaled.extra["paired_ratios"] = paired
    scaled.extra["largest_member_events"] = largest
    read_row = Result(
        "durable_groups",
        f"(B') group of {MEMBERS}, clock once the members have also read their events",
        median([d.rate(total) for d in read]),
        "ev/s",
        samples=[d.rate(total) for d in read],
        note=(
            "(B') is (B) with the clock started once the members have read their partitions' events "
            "(all in their buffers) too: a member that gains partitions reads the whole outbox and keeps "
            f"their events, and here the {MEMBERS} members do that in one process; the gap between (B) "
            "and (B') is what that reading costs (A's clock includes its one member's read of the "
            f"{total} rows). Paired B'/A: "
            + ", ".join(f"{b.rate(total) / a.rate(total):.2f}x" for a, b in zip(one, read, strict=True))
        ),
        extra={
            "per_member_events": [d.per_member for d in read],
            "largest_member_events": [max(d.per_member) for d in read],
            "open_to_read_s": [d.ready_s for d in read],
        },
    )
    with_ratio(read_row, base)
    balance = [d.balance_s for d in group]
    balance_row = Result(
        "durable_groups",
        f"(B) open {MEMBERS} members -> {PARTITIONS // MEMBERS} partitions each",
        median(balance),
        "s",
        samples=balance,
        note=(
            f"rebalance: {MEMBERS} members opened at once (lease_timeout={_LEASE_TIMEOUT:g}s, a tick "
            "a second); the first takes all partitions and hands the surplus back at its next tick; "
            "B counting this time: "
            + ", ".join(f"{d.rate_with_balance(total):,.0f}" for d in group)
            + " ev/s"
        ),
    )
    bare_one = Result(
        "durable_groups",
        f"(C1) no library: 1 task awaiting trio.sleep({HANDLER_IO * 1000:g} ms) {total} times",
        median(bare["C1"]),
        "ev/s",
        samples=bare["C1"],
        note=(
            f"ceiling: (C1) one task, (C4) {MEMBERS} tasks ({total // MEMBERS} sleeps each) in one Trio "
            "loop, no database, no library, interleaved with A/B/B'; C4/C1 is what this machine lets "
            "B/A reach at best with an even split (every sleep overshoots by the wake-up latency; C4 "
            "has four times the wake-ups): paired C4/C1 " + ", ".join(f"{c:.2f}x" for c in ceiling)
        ),
    )
    bare_four = Result(
        "durable_groups",
        f"(C4) no library: {MEMBERS} tasks, same sleeps",
        median(bare["C4"]),
        "ev/s",
        samples=bare["C4"],
        extra={"paired_ratios": ceiling},
    )
    with_ratio(bare_four, bare_one)
    return [base, scaled, read_row, balance_row, bare_one, bare_four]


# ---- (2) writers ----------------------------------------------------------------------------------

WRITER_CASES = {
    "w0": "(w0) writers, no consumer",
    "w1": "(w1) writers, exclusive consumer reading along",
    "w2": f"(w2) writers, group of {MEMBERS} reading along",
}


async def _writers_case(
    db: _Installed, script: Path, seconds: int, members: int, cpus: set[int] | None
) -> tuple[float, int, float]:
    """pgbench TPS while ``members`` members (0: none; 1: exclusive; more: a group) read along.

    Also the events the members read, and this process's CPU seconds meanwhile (the readers').
    ``cpus``: where pgbench runs (None: anywhere).
    """
    run_pgbench = functools.partial(pgbench_tps, db.server.uri, script, seconds, cpus=cpus)
    if members == 0:
        cpu = time.process_time()
        tps = await trio.to_thread.run_sync(run_pgbench)
        return tps, 0, time.process_time() - cpu
    consumer = unique_name(f"bench_grpw{members}")
    group = members > 1
    options: dict[str, Any] = {**db.options(), "start": "latest", "group": group}
    if group:
        options["partitions"] = PARTITIONS
    streams: list[DurableStream] = []
    counts = [0] * members
    all_open = trio.Event()

    async def member(index: int) -> None:
        async with open_durable_stream(db.server.sa_url, consumer, **options) as stream:
            streams.append(stream)
            if len(streams) == members:
                all_open.set()
            async for batch in stream.batches():
                counts[index] += len(batch)

    with trio.fail_after(seconds + 180):
        async with trio.open_nursery() as nursery:
            for index in range(members):
                nursery.start_soon(member, index)
            await all_open.wait()
            await _wait_balanced(streams, PARTITIONS if group else 1)
            cpu = time.process_time()
            tps = await trio.to_thread.run_sync(run_pgbench)
            await trio.sleep(0.5)  # let the readers finish what was just written
            cpu = time.process_time() - cpu
            nursery.cancel_scope.cancel()
    return tps, sum(counts), cpu


def _triggers(db: _Installed) -> list[Any]:
    """The table's triggers and their functions' source (what the writers run)."""
    return db.server.execute(
        "SELECT t.tgname, pg_catalog.pg_get_triggerdef(t.oid), pg_catalog.pg_get_functiondef(t.tgfoid) "
        "FROM pg_catalog.pg_trigger t WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal "
        "ORDER BY t.tgname",
        [db.table],  # unique_name(): lower case, no quoting needed
    )


def measure_writers(
    server: Server, *, seconds: int, reps: int, log: Log, split: Split | None = None
) -> list[Result]:
    """The three writer cases on ``server``, ``reps`` interleaved repetitions each.

    With ``split``, the server and pgbench run on one CPU and the readers (this
    process) on the other: what reading costs the writers when the members
    run on other machines than the database, as they would in production.
    """
    fsync = server.execute("SHOW fsync")[0][0]
    db = _Installed.create(server, "bench_grpw", "bigserial PRIMARY KEY")
    members = {"w0": 0, "w1": 1, "w2": MEMBERS}
    samples: dict[str, list[float]] = {key: [] for key in WRITER_CASES}
    kept_up: dict[str, list[float]] = {key: [] for key in WRITER_CASES}
    reader_cpu: dict[str, list[float]] = {key: [] for key in WRITER_CASES}  # microseconds per row written
    count_rows = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(db.table))
    triggers = _triggers(db)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "insert.sql"
            script.write_text(f"INSERT INTO {db.table} (v, t) VALUES (1, 'x');\n")
            script.chmod(0o644)
            for rep in range(reps):
                for key in WRITER_CASES:
                    before = int(server.execute(count_rows)[0][0])
                    with contextlib.ExitStack() as stack:
                        if split is not None:
                            stack.enter_context(split.client_process())
                        cpus = None if split is None else split.writers
                        tps, consumed, cpu = trio.run(_writers_case, db, script, seconds, members[key], cpus)
                    written = int(server.execute(count_rows)[0][0]) - before
                    samples[key].append(tps)
                    reader_cpu[key].append(cpu / written * 1e6 if written else float("nan"))
                    if members[key]:
                        kept_up[key].append(consumed / written if written else float("nan"))
                log(
                    f"durable_groups writers{'' if split is None else ' (split CPUs)'} rep {rep + 1}/{reps}: "
                    + ", ".join(f"{key}={samples[key][-1]:.0f}" for key in WRITER_CASES)
                    + " tps; consumed/written "
                    + ", ".join(f"{key}={kept_up[key][-1]:.3f}" for key in ("w1", "w2"))
                    + "; reader CPU per row written "
                    + ", ".join(f"{key}={reader_cpu[key][-1]:.0f}us" for key in WRITER_CASES)
                )
        same_trigger = "yes" if _triggers(db) == triggers and triggers else "NO"
    finally:
        db.drop()
    placement = (
        ""
        if split is None
        else f" [server+pgbench: CPU {min(split.writers)}, readers: CPU {min(split.stream)}]"
    )
    results = {
        key: Result(
            "durable_groups",
            label + placement,
            median(samples[key]),
            "tps",
            samples=samples[key],
            extra={
                "fsync": fsync,
                "consumed_over_written": kept_up[key],
                "reader_cpu_us_per_row": reader_cpu[key],
            },
        )
        for key, label in WRITER_CASES.items()
    }
    results["w0"].note = (
        f"writers: pgbench -n -c 16 -j 2 -T {seconds}, single-row INSERT into one durable-watched table "
        f"(same trigger in every case), fsync={fsync}; readers: batches(), auto-ack, start=latest, "
        f"in this process; (w2) is {MEMBERS} members, {PARTITIONS} partitions, balanced before pgbench; "
        "events consumed / rows written: w1 "
        + ", ".join(f"{x:.3f}" for x in kept_up["w1"])
        + "; w2 "
        + ", ".join(f"{x:.3f}" for x in kept_up["w2"])
        + "; CPU of the reading process per row written (median): "
        + ", ".join(f"{key} {median(reader_cpu[key]):.0f} us" for key in WRITER_CASES)
    )
    with_ratio(results["w1"], results["w0"])
    group_vs_none = Result(
        "durable_groups",
        results["w2"].case + " (against w0)",
        results["w2"].value,
        "tps",
        samples=results["w2"].samples,
        extra=results["w2"].extra,
    )
    with_ratio(group_vs_none, results["w0"])
    results["w2"].case += " (against w1: the target)"
    with_ratio(results["w2"], results["w1"], target=0.9)
    paired = [g / e for g, e in zip(samples["w2"], samples["w1"], strict=True)]
    results["w2"].extra["paired_ratios"] = paired
    results["w2"].note = (
        f"group vs exclusive: (w2)/(w1) paired by repetition {', '.join(f'{r:.2f}x' for r in paired)}; "
        f"trigger and its function identical before and after the group ran: {same_trigger}; what "
        "differs is the reading: for every member the server looks at each outbox row (computes its "
        "partition from the payload) and sends the member its partitions' rows, "
        + (
            "on the same 2 CPUs as the server and pgbench"
            if split is None
            else "on a CPU of its own: the server's share of the reading (its queries) is all the "
            "writers pay, as with members on other machines than the database"
        )
    )
    return [results["w0"], results["w1"], group_vs_none, results["w2"]]


# ---- entry points ---------------------------------------------------------------------------------


def run(ctx: BenchContext) -> list[Result]:
    """Throughput on the suite's server; the writers on their own fsync=on server unless ``--dsn``."""
    total = ctx.scale(4000, 1000)
    seconds = ctx.scale(10, 5)
    results = measure_throughput(ctx.server, total=total, reps=ctx.reps, log=ctx.log)
    writer_reps = max(1, min(ctx.reps, 1 if ctx.quick else 3))
    if ctx.dsn is not None:
        results += measure_writers(ctx.server, seconds=seconds, reps=writer_reps, log=ctx.log)
    else:
        with open_server(None, settings={"fsync": "on", "full_page_writes": "on"}) as server:
            ctx.log(f"durable_groups writers on their own server: {server.description}")
            results += measure_writers(server, seconds=seconds, reps=writer_reps, log=ctx.log)
        if Split.possible(ctx):
            results += _writers_split(seconds=seconds, reps=writer_reps, log=ctx.log)
    return results


def _writers_split(*, seconds: int, reps: int, log: Log) -> list[Result]:
    """The writer cases on a fresh fsync=on server: it and pgbench on one CPU, the readers on another."""
    with open_server(None, settings={"fsync": "on", "full_page_writes": "on"}) as server:
        log(f"durable_groups writers, split CPUs, on their own server: {server.description}")
        split = Split(server, *Split.halves())
        return measure_writers(server, seconds=seconds, reps=reps, log=log, split=split)


def main(argv: list[str] | None = None) -> int:
    """Run this benchmark alone and print the table."""

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.durable_groups", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=4000, help="backlog drained per case (default 4000)")
    parser.add_argument("--seconds", type=int, default=10, help="pgbench -T per writer case (default 10)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median reported)")
    parser.add_argument("--fsync", choices=["on", "off"], default="on", help="embedded server's fsync")
    parser.add_argument("--dsn", default=None, help="server to use (default: an embedded one)")
    args = parser.parse_args(argv)

    log = log_to_stderr

    settings = None if args.dsn else {"fsync": args.fsync, "full_page_writes": args.fsync}
    with open_server(args.dsn, settings=settings) as server:
        log(f"server: {server.description}")
        results = measure_throughput(server, total=args.events, reps=args.reps, log=log)
        results += measure_writers(server, seconds=args.seconds, reps=args.reps, log=log)
    if args.dsn is None and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
        results += _writers_split(seconds=args.seconds, reps=args.reps, log=log)
    given = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"python -m benchmarks.durable_groups {given}".strip())
    print(f"server: {server.description}")
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
