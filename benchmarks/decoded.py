"""Decoded trigger events: RowChange/s from a watched table vs raw notifications/s.

The :class:`~trio_pgevents.Installer` watches a table (notify mode); a
separate process inserts rows in transactions of 10k (``INSERT ... SELECT
FROM generate_series``), so each commit delivers 10k row events of the
installer's JSON format (``row_to_json`` of the row plus the statement).
Every run re-inserts, so every client sees the same kind of payloads. As
in the throughput benchmark the inserts complete (the event loop held by a
blocking wait) before the clock starts, so the figure is the client's rate,
not the trigger's:

- ``raw loop``: psycopg2 + ``wait_readable``, reading each payload (baseline);
- ``raw loop + json.loads``: the same, parsing each payload;
- ``trio_pgevents RowChange (payload only)``: typed events (each payload
  parsed and checked on delivery: a payload anyone may NOTIFY is trusted
  only once checked), the consumer checks the type and reads the payload;
- ``trio_pgevents RowChange + new_data``: the consumer reads ``.method``
  and ``.new_data`` (values typed by column on that first access).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import psycopg2
import sqlalchemy
import trio
from psycopg2 import sql

from trio_pgevents import RowChange, decode_trigger_payload, open_event_stream

from ._common import BenchContext, Clock, Figures, Producer, Result, median, unique_name, with_ratio

__all__ = ["run"]

ROWS_PER_TRANSACTION = 10_000
SCHEMA = "bench_pgevents"


def _insert_statements(table: str, rows: int) -> list[sql.Composable]:
    statement = sql.SQL(
        "INSERT INTO {} (account, amount, note) "
        "SELECT g, g * 1.5, 'order ' || g FROM generate_series({}, {}) g"
    )
    return [
        statement.format(
            sql.Identifier(table), sql.Literal(start), sql.Literal(start + ROWS_PER_TRANSACTION - 1)
        )
        for start in range(1, rows + 1, ROWS_PER_TRANSACTION)
    ]


async def _raw(
    uri: str, channel: str, statements: list[sql.Composable], count: int, producer: Producer, parse: bool
) -> Figures:
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        fd = conn.fileno()
        producer.run("sql", statements=statements)
        clock = Clock()
        got = 0
        length = 0
        loads = json.loads
        with trio.fail_after(120):
            while got < count:
                await trio.lowlevel.wait_readable(fd)
                conn.poll()
                notifies = conn.notifies
                if not notifies:
                    continue
                conn.notifies = []
                if parse:
                    for note in notifies:
                        length += len(loads(note.payload)["new_data"])
                else:
                    for note in notifies:
                        length += len(note.payload)
                got += len(notifies)
        return clock.stop(count)
    finally:
        conn.close()


async def _stream(
    uri: str, channel: str, statements: list[sql.Composable], count: int, producer: Producer, parse: bool
) -> Figures:
    engine = sqlalchemy.create_engine(sqlalchemy.make_url(uri).set(drivername="postgresql+psycopg2"))
    try:
        async with open_event_stream(engine, [channel], decoders={channel: decode_trigger_payload}) as events:
            producer.run("sql", statements=statements)
            clock = Clock()
            got = 0
            length = 0
            with trio.fail_after(120):
                async for event in events:
                    if type(event) is not RowChange:
                        raise RuntimeError(f"expected a RowChange, got {event!r}")
                    if parse:
                        length += len(event.method) + len(event.new_data or ())
                    else:
                        length += len(event.payload)
                    got += 1
                    if got == count:
                        break
            return clock.stop(count)
    finally:
        engine.dispose()


Client = Callable[[str, str, list[sql.Composable], int, Producer, bool], Awaitable[Figures]]
CASES: dict[str, tuple[Client, bool]] = {
    "raw loop": (_raw, False),
    "trio_pgevents RowChange (payload only)": (_stream, False),
    "raw loop + json.loads": (_raw, True),
    "trio_pgevents RowChange + .new_data": (_stream, True),
}


def _installer(ctx: BenchContext, table: str, channel: str) -> str:
    """Watch ``table`` with the library's installer; describes what was used."""
    from trio_pgevents import Installer

    engine = sqlalchemy.create_engine(ctx.server.sa_url)
    try:
        installer = Installer(engine, schema=SCHEMA, channel=channel)
        installer.install()
        installer.watch_table(table, "public")
    finally:
        engine.dispose()
    return "Installer notify mode"


def run(ctx: BenchContext) -> list[Result]:
    """RowChange/s (payload only, and with new_data read) with ratios to the raw loop on the same payloads."""
    rows = ctx.scale(100_000, 30_000)
    table = unique_name("bench_orders")
    channel = unique_name("bench_rows")
    ctx.server.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigserial PRIMARY KEY, account int NOT NULL, amount numeric(12, 2), "
            "note text, created timestamptz NOT NULL DEFAULT now())"
        ).format(sql.Identifier(table))
    )
    how = _installer(ctx, table, channel)
    statements = _insert_statements(table, rows)
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    cpu: dict[str, list[float]] = {name: [] for name in CASES}
    with Producer(ctx.server.uri) as producer:
        for rep in range(ctx.reps):
            names = list(CASES)
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                client, parse = CASES[name]
                figures = trio.run(client, ctx.server.uri, channel, statements, rows, producer, parse)
                samples[name].append(figures.rate)
                cpu[name].append(figures.cpu_ns)
                ctx.log(
                    f"decoded rep {rep + 1}/{ctx.reps}: {name}: {figures.rate:,.0f} ev/s, "
                    f"{figures.cpu_ns:,.0f} ns CPU/event"
                )
    ctx.server.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    ctx.server.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
    note = f"{rows:,} rows inserted in transactions of {ROWS_PER_TRANSACTION:,}; triggers by {how}"
    results = {
        name: Result("decoded", name, median(values), "ev/s", values, note=note)
        for name, values in samples.items()
    }
    raw, raw_parsed = results["raw loop"], results["raw loop + json.loads"]
    cpu_rows = []
    for name, base in (
        ("trio_pgevents RowChange (payload only)", "raw loop"),
        ("trio_pgevents RowChange + .new_data", "raw loop + json.loads"),
    ):
        row = Result("decoded", f"CPU per event: {name}", median(cpu[name]), "ns", cpu[name])
        row.baseline = f"CPU per event: {base} (speed ratio: its cost / this cost)"
        row.ratio = median(cpu[base]) / row.value if row.value else float("nan")
        cpu_rows.append(row)
    for name in ("raw loop", "raw loop + json.loads"):
        cpu_rows.append(Result("decoded", f"CPU per event: {name}", median(cpu[name]), "ns", cpu[name]))
    return [
        raw,
        with_ratio(results["trio_pgevents RowChange (payload only)"], raw),
        raw_parsed,
        with_ratio(results["trio_pgevents RowChange + .new_data"], raw_parsed),
        *cpu_rows,
    ]
