"""Fuzz: 10,000 random payloads on the installer channel never stop the stream.

Seeded, so a failure reproduces: random JSON of random depth (up to 10,000,
cut to the NOTIFY size limit), random bytes read as latin-1 text, huge
strings, the installer's prefix followed by junk, and installer-looking row
events with wrong field types. Between them, numbered valid row events:
every one must arrive, in order, typed; every event's typed fields must have
their documented types; and the log must not grow with the number of bad
payloads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Callable

import psycopg2
import pytest
import trio
from sqlalchemy.engine import Engine

from trio_pgevents import (
    Installer,
    Notification,
    OutboxNotification,
    RowChange,
    open_durable_stream,
    open_event_stream,
)

from .conftest import Query
from .test_payloads import ROW_PREFIX, assert_typed, row_text

SEED = 20240531
FUZZ_PAYLOADS = 10_000
#: One numbered valid event every this many random payloads.
VALID_EVERY = 5
#: Payloads per statement (one transaction): a few statements, each one batch of notifies.
PER_STATEMENT = 1_000
MAX_BYTES = 7999  # NOTIFY payloads must be shorter than 8000 bytes
CHANNEL = "pgevents"


def _fit(text: str) -> str:
    """``text`` cut to the NOTIFY limit (in UTF-8 bytes), with no NUL (Postgres refuses it)."""
    text = text.replace("\x00", "\x01")
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_BYTES:
        return text
    return data[:MAX_BYTES].decode("utf-8", "ignore")


class PayloadFuzzer:
    """Random payloads of the kinds a hostile or buggy sender could produce."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def scalar(self) -> str:
        rng = self.rng
        choice = rng.randrange(9)
        if choice == 0:
            return rng.choice(["null", "true", "false", "NaN", "Infinity", "-0", "1e400", "01"])
        if choice == 1:
            return str(rng.randint(-(10**30), 10**30))
        if choice == 2:
            return repr(rng.uniform(-1e300, 1e300))
        if choice == 3:
            return rng.choice(['"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\x"', '"'])
        return json.dumps("".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(12))))

    def value(self, depth: int) -> str:
        """A random JSON text (well formed unless a scalar is not), nested up to ``depth``."""
        rng = self.rng
        if depth <= 0 or rng.random() < 0.3:
            return self.scalar()
        if rng.random() < 0.5:
            return "[" + ", ".join(self.value(depth - 1) for _ in range(rng.randrange(4))) + "]"
        items = (f"{json.dumps(self.key())} : {self.value(depth - 1)}" for _ in range(rng.randrange(4)))
        return "{" + ", ".join(items) + "}"

    def key(self) -> str:
        return self.rng.choice(["v", "kind", "table_name", "method", "new_data", "old_data", "k", ""])

    def deep(self) -> str:
        """Nesting of random depth up to 10,000 (cut to the size limit, so often unclosed)."""
        rng = self.rng
        opens: list[str] = []
        closes: list[str] = []
        for _ in range(rng.randrange(1, 4)):  # a few runs of one kind of container each
            depth = rng.randrange(1, 10_001)
            unit, close = rng.choice([("[", "]"), ('{"a":', "}"), ("[1,", "]"), ('{"new_data" : [', "]}")])
            opens.append(unit * depth)
            closes.append(close * depth)
        return "".join(opens) + self.scalar() + "".join(reversed(closes))

    def latin1(self) -> str:
        data = self.rng.randbytes(self.rng.randrange(1, 4000))
        return data.replace(b"\x00", b"\x01").decode("latin-1")

    def huge(self) -> str:
        rng = self.rng
        filler = rng.choice(["x", "[", "{", '"', "\\", "é", " "])
        return rng.choice(["", ROW_PREFIX, "[", '"']) + filler * rng.randrange(4000, 8000)

    def prefixed(self) -> str:
        rng = self.rng
        makers: list[Callable[[], str]] = [self.latin1, self.deep, lambda: self.value(3), lambda: ""]
        junk = rng.choice(makers)()
        return ROW_PREFIX + rng.choice(["", ", ", ' , "table_name" : ', "}"]) + junk

    def wrong_fields(self) -> str:
        rng = self.rng
        fields: dict[str, str] = {}
        for name in ("table_schema", "table_name", "method", "old_data", "new_data", "session_user", "query"):
            if rng.random() < 0.3:
                fields[name] = self.value(rng.randrange(4))
        for name in ("truncated", "id", "txid", "lsn"):
            if rng.random() < 0.15:
                fields[name] = self.value(1)
        if rng.random() < 0.2:
            fields["method"] = json.dumps(rng.choice(["HACK", "insert", "", "INSERT "]))
        return row_text("fuzzed", rng.randrange(1000), **fields)

    def payload(self) -> str:
        makers: list[Callable[[], str]] = [self.deep, lambda: self.value(8), self.latin1, self.huge]
        make = self.rng.choice([*makers, self.prefixed])
        if self.rng.random() < 0.3:
            make = self.wrong_fields
        return _fit(make())


def fuzz_plan(seed: int, table: str) -> tuple[list[str], int]:
    """The payloads to send (random ones with numbered valid rows between) and how many valid."""
    fuzzer = PayloadFuzzer(random.Random(seed))
    payloads: list[str] = []
    valid = 0
    for i in range(FUZZ_PAYLOADS):
        if i % VALID_EVERY == 0:
            payloads.append(row_text(table, valid))
            valid += 1
        payloads.append(fuzzer.payload())
    payloads.append(row_text(table, valid))  # the last event: when it arrives, all did
    return payloads, valid + 1


@pytest.fixture(autouse=True)
def fresh_set_aside_log() -> None:
    """The set-aside log's burst starts unspent (it is per process)."""
    from trio_pgevents import _payload

    _payload.SET_ASIDE.reset()


async def test_fuzzed_payloads_never_stop_the_stream(
    pg_engine: Engine, query: Query, unique: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    table = unique("fuzz_valid")
    payloads, valid = fuzz_plan(SEED, table)
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    numbers: list[int] = []
    received = notifications = 0
    with trio.fail_after(60):  # a generous bound: it takes ~3 s here
        async with open_event_stream(pg_engine, [CHANNEL]) as stream:

            async def send() -> None:
                for start in range(0, len(payloads), PER_STATEMENT):
                    chunk = payloads[start : start + PER_STATEMENT]
                    await query("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, chunk))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                async for batch in stream.batches():
                    for event in batch:
                        received += 1
                        assert_typed(event)
                        if type(event) is RowChange and event.table_name == table:
                            assert event.new_data is not None
                            numbers.append(event.new_data["n"])
                        elif type(event) is Notification:
                            notifications += 1
                    if numbers and numbers[-1] == valid - 1:
                        break
    assert numbers == list(range(valid))
    # Everything arrived: the server folds identical payloads sent in one transaction.
    chunks = [payloads[start : start + PER_STATEMENT] for start in range(0, len(payloads), PER_STATEMENT)]
    assert received == sum(len(set(chunk)) for chunk in chunks)
    assert notifications > FUZZ_PAYLOADS * 0.5
    # Thousands set aside, a handful of log lines.
    records = [r for r in caplog.records if r.name == "trio_pgevents.decode"]
    assert 0 < len(records) <= 40
    assert all(len(r.getMessage()) < 600 for r in records)


async def test_fuzzed_outbox_rows_never_stop_a_durable_stream(
    pg_url: str, query: Query, unique: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    # The same kinds of payloads as outbox rows (written by hand: only what jsonb accepts).
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    installer = Installer(pg_url, schema=unique("fuzzdur"), channel=unique("fuzzdurch"))
    installer.install(durable=True)
    table = unique("fuzz_dur_valid")
    payloads, valid = fuzz_plan(SEED + 1, table)
    events_table = f'"{installer.schema}".events'
    try:
        stored: list[str] = []
        for payload in payloads:
            try:
                json.loads(payload)
            except (ValueError, RecursionError):
                continue  # not JSON at all: jsonb refuses it, nobody can write it
            stored.append(payload)
        for start in range(0, len(stored), PER_STATEMENT):
            chunk = stored[start : start + PER_STATEMENT]
            try:
                await query(
                    f"INSERT INTO {events_table} (channel, payload) "
                    "SELECT %s, p::jsonb FROM unnest(%s::text[]) p",
                    (installer.channel, chunk),
                )
            except psycopg2.Error:  # one value jsonb refuses (too deep): row by row
                for payload in chunk:
                    with contextlib.suppress(psycopg2.Error):
                        await query(
                            f"INSERT INTO {events_table} (channel, payload) VALUES (%s, %s::jsonb)",
                            (installer.channel, payload),
                        )
        numbers: list[int] = []
        set_aside = 0
        with trio.fail_after(60):
            async with open_durable_stream(
                pg_url, "fuzz", schema=installer.schema, channel=installer.channel, auto_ack=False
            ) as events:
                async for batch in events.batches():
                    for event in batch:
                        assert_typed(event)
                        if type(event) is RowChange and event.table_name == table:
                            assert event.new_data is not None
                            numbers.append(event.new_data["n"])
                        elif isinstance(event, OutboxNotification):
                            set_aside += 1
                        await events.ack(event, flush=False)
                    if numbers and numbers[-1] == valid - 1:
                        break
        assert numbers == list(range(valid))
        assert set_aside > 1000
        records = [r for r in caplog.records if r.name == "trio_pgevents.decode"]
        assert len(records) <= 40
    finally:
        installer.uninstall()
