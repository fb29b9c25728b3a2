"""No NOTIFY payload, from any role, can stop a consumer.

Any role that can connect can NOTIFY any channel with any payload. On a
decoded channel (the installer's ``pgevents``) a payload that is not a valid
event must arrive as a plain :class:`Notification` -- with a warning on the
``trio_pgevents`` logger, never the whole payload -- and the events after it
must arrive as usual; an event typed :class:`RowChange` or
:class:`SchemaChange` has every typed field of its documented type. The
same holds for ``compat.poll`` (bad payloads skipped with a warning) and for
``trio-pgevents listen`` / ``worker``.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import psycopg2
import pytest
import trio
from psycopg2.extensions import Notify
from sqlalchemy.engine import Engine

from trio_pgevents import (
    Event,
    EventStream,
    Notification,
    RowChange,
    SchemaChange,
    compat,
    decode_trigger_payload,
    open_event_stream,
)
from trio_pgevents._cli.pgevents_shape import pg_events_payload
from trio_pgevents._consumer import NotifyBatch, _events
from trio_pgevents._payload import SetAsideLog

from .conftest import Query
from .test_cli import SETTINGS, StartCli, _env, start_cli

# start_cli is test_cli's fixture (importing it makes it available here); the rest is
# shared with the fuzz test.
__all__ = ["assert_typed", "bad_payloads", "row_text", "start_cli"]

CHANNEL = "pgevents"
ROW_PREFIX = '{"v" : 1, "kind" : "row"'
DDL_PREFIX = '{"v" : 1, "kind" : "ddl"'
#: NOTIFY payloads must be shorter than 8000 bytes.
MAX_PAYLOAD = 7999
METHODS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def row_text(table: str, n: int, **fields: str) -> str:
    """A row payload as the installer's trigger writes it; ``fields`` replace values (raw JSON)."""
    values = {
        "table_schema": '"public"',
        "table_name": json.dumps(table),
        "session_user": '"postgres"',
        "method": '"INSERT"',
        "old_data": "null",
        "new_data": json.dumps({"n": n}),
        "query": '"INSERT ..."',
        "truncated": "false",
    }
    values.update(fields)
    return ROW_PREFIX + "".join(f', "{key}" : {value}' for key, value in values.items()) + "}"


def ddl_text(**fields: str) -> str:
    """A DDL payload as the installer's event trigger writes it; ``fields`` replace values."""
    values = {
        "classid": "1259",
        "objid": "1",
        "objsubid": "0",
        "command_tag": '"ALTER TABLE"',
        "object_type": '"table"',
        "object_name": "null",
        "object_identity": '"public.t"',
        "schema_name": '"public"',
    }
    values.update(fields)
    return DDL_PREFIX + "".join(f', "{key}" : {value}' for key, value in values.items()) + "}"


def _garbage(size: int) -> str:
    # Deterministic printable junk of exactly ``size`` bytes (ASCII), no NUL.
    return "".join(chr(33 + (i * 7919) % 94) for i in range(size))


def bad_payloads() -> dict[str, str]:
    """One payload per category of 'not an event', by name."""
    table = "victim"
    cases = {
        # Nesting deeper than any parser's recursion allows.
        "nested-arrays": "[" * 3999 + "]" * 3999,
        "nested-objects": '{"a":' * 1333 + "1" + "}" * 1333,
        "nested-inside-a-row": row_text(table, 1, new_data='{"a" : ' + "[" * 3000 + "]" * 3000 + "}"),
        "nested-unclosed-with-prefix": ROW_PREFIX + ', "new_data" : ' + "[" * 3900,
        # Not JSON, or not only JSON.
        "invalid-json": "{not json",
        "prefix-then-garbage": ROW_PREFIX + ", garbage!!",
        "prefix-cut-short": row_text(table, 1)[:-12],
        "trailing-garbage": row_text(table, 1) + " trailing",
        "nan-literal": row_text(table, 1, new_data='{"a" : NaN}'),
        "empty": "",
        # JSON, but not an object.
        "json-list": "[1, 2, 3]",
        "json-string": '"pgevents"',
        "json-number": "5",
        "json-null": "null",
        "json-true": "true",
        # An object of the wrong shape.
        "kind-unknown": '{"v" : 1, "kind" : "rows", "table_name" : "t", "method" : "INSERT"}',
        "kind-list": '{"v" : 1, "kind" : ["row"], "table_name" : "t", "method" : "INSERT"}',
        "no-table-name": row_text(table, 1).replace(f'"table_name" : "{table}", ', ""),
        "table_name-int": row_text(table, 1, table_name="5"),
        "table_name-null": row_text(table, 1, table_name="null"),
        "table_schema-list": row_text(table, 1, table_schema="[]"),
        "method-unknown": row_text(table, 1, method='"HACK"'),
        "method-list": row_text(table, 1, method='["INSERT"]'),
        "method-object": row_text(table, 1, method='{"a" : 1}'),
        "old_data-string": row_text(table, 1, old_data='"x"'),
        "new_data-int": row_text(table, 1, new_data="5"),
        "new_data-string": row_text(table, 1, new_data='"{}"'),
        "new_data-list": row_text(table, 1, new_data='[{"n" : 1}]'),
        "session_user-object": row_text(table, 1, session_user="{}"),
        "query-number": row_text(table, 1, query="1"),
        "truncated-string": row_text(table, 1, truncated='"yes"'),
        "id-string": row_text(table, 1, id='"1"'),
        "id-bool": row_text(table, 1, id="true"),
        "txid-float": row_text(table, 1, txid="1.5"),
        "lsn-number": row_text(table, 1, lsn="5"),
        "legacy-row-table_name-int": json.dumps({"table_name": 5, "method": "INSERT"}),
        "legacy-row-new_data-string": json.dumps({"table_name": "t", "method": "UPDATE", "new_data": "x"}),
        "ddl-command_tag-int": ddl_text(command_tag="5"),
        "ddl-object_identity-list": ddl_text(object_identity="[]"),
        "ddl-schema_name-object": ddl_text(schema_name='{"a" : 1}'),
        "legacy-ddl-command_tag-null": json.dumps({"command_tag": None}),
        # As big as a payload gets.
        "garbage-7999": _garbage(MAX_PAYLOAD),
        "prefix-then-garbage-7999": ROW_PREFIX + _garbage(MAX_PAYLOAD - len(ROW_PREFIX)),
        # Escapes no valid text has: lone surrogates.
        "lone-high-surrogate": row_text(table, 1, new_data='{"a" : "\\ud800"}'),
        "lone-low-surrogate-table": row_text(table, 1, table_name='"\\udc00"'),
        "surrogate-key": row_text(table, 1, new_data='{"\\udbff" : 1}'),
        "surrogate-string": '"\\ud800"',
    }
    for name, payload in cases.items():
        assert len(payload.encode()) <= MAX_PAYLOAD, name
    return cases


BAD = bad_payloads()


def assert_typed(event: Event) -> None:
    """Every typed field of ``event`` has its documented type (reading one never raises)."""
    assert type(event.channel) is str
    assert type(event.payload) is str
    assert type(event.pid) is int
    assert type(event.source) is str
    if isinstance(event, RowChange):
        assert type(event.data) is dict
        assert isinstance(event.table_schema, str)
        assert isinstance(event.table_name, str)
        assert event.method in METHODS
        assert event.old_data is None or type(event.old_data) is dict
        assert event.new_data is None or type(event.new_data) is dict
        assert event.session_user is None or isinstance(event.session_user, str)
        assert event.query is None or isinstance(event.query, str)
        assert type(event.truncated) is bool
        assert event.id is None or type(event.id) is int
        assert event.txid is None or type(event.txid) is int
        assert event.lsn is None or isinstance(event.lsn, str)
    elif isinstance(event, SchemaChange):
        assert type(event.data) is dict
        assert isinstance(event.command_tag, str)
        assert isinstance(event.object_type, str)
        assert isinstance(event.object_identity, str)
        assert event.schema_name is None or isinstance(event.schema_name, str)
        assert event.object_name is None or isinstance(event.object_name, str)


@pytest.fixture(autouse=True)
def fresh_set_aside_log() -> None:
    """Each test starts with the set-aside log's burst unspent (it is per process)."""
    from trio_pgevents import _payload

    _payload.SET_ASIDE.reset()
    compat._SKIPPED.reset()


def set_aside_records(
    caplog: pytest.LogCaptureFixture, logger: str = "trio_pgevents.decode"
) -> list[logging.LogRecord]:
    """The warnings ``logger`` emitted (the decoders' set-aside lines by default)."""
    return [r for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


async def collect(stream: EventStream, count: int, timeout: float = 20) -> list[Event]:
    events: list[Event] = []
    with trio.fail_after(timeout):
        async for event in stream:
            events.append(event)
            if len(events) == count:
                break
    return events


# ---- the LISTEN stream ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD))
async def test_bad_payload_is_a_notification_and_the_stream_goes_on(
    name: str, pg_engine: Engine, query: Query, unique: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    bad = BAD[name]
    table = unique("after")
    good = row_text(table, 7)
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    async with open_event_stream(pg_engine, [CHANNEL]) as stream:
        # Two transactions: the bad one is delivered (and taken) on its own.
        await query("SELECT pg_notify(%s, %s)", (CHANNEL, bad))
        await query("SELECT pg_notify(%s, %s)", (CHANNEL, good))
        first, second = await collect(stream, 2)
    assert type(first) is Notification
    assert (first.channel, first.payload) == (CHANNEL, bad)
    assert type(second) is RowChange
    assert_typed(second)
    assert (second.table_schema, second.table_name, second.method) == ("public", table, "INSERT")
    assert (second.old_data, second.new_data) == (None, {"n": 7})
    assert (second.session_user, second.query, second.truncated) == ("postgres", "INSERT ...", False)
    # A warning says it was set aside, with the start of the payload only.
    [record] = set_aside_records(caplog)
    message = record.getMessage()
    assert "pgevents" in message
    assert "Notification" in message
    assert len(message) < 600


async def test_bad_payloads_in_the_same_batch_as_good_ones(
    pg_engine: Engine, query: Query, unique: Callable[[str], str]
) -> None:
    # One transaction, one batch: every bad payload between numbered good rows.
    table = unique("mixed")
    payloads: list[str] = []
    for n, bad in enumerate(BAD.values()):
        payloads += [row_text(table, n), bad]
    async with open_event_stream(pg_engine, [CHANNEL]) as stream:
        await query("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, payloads))
        events = await collect(stream, len(payloads))
    for event in events:
        assert_typed(event)
    rows = [e for e in events if type(e) is RowChange]
    assert [(e.table_name, e.new_data) for e in rows] == [(table, {"n": n}) for n in range(len(BAD))]
    assert [e.payload for e in events if type(e) is Notification] == list(BAD.values())


def test_valid_payloads_decode_typed() -> None:
    # The installer's formats and pg_events' own (no "kind"), with every optional field.
    row = row_text("t", 1, id="5", txid="6", lsn='"0/1"', truncated="true")
    legacy_row = json.dumps({"table_name": "t", "method": "DELETE", "old_data": {"id": 1}})
    legacy_ddl = json.dumps({"command_tag": "DROP TABLE", "object_identity": None})
    events = [decode_trigger_payload(CHANNEL, p, 1, "db") for p in (row, legacy_row, ddl_text(), legacy_ddl)]
    assert [type(e) for e in events] == [RowChange, RowChange, SchemaChange, SchemaChange]
    for event in events:
        assert_typed(event)
    first, second, third, fourth = events
    assert isinstance(first, RowChange)
    assert (first.id, first.txid, first.lsn, first.truncated) == (5, 6, "0/1", True)
    assert isinstance(second, RowChange)
    assert (second.table_schema, second.old_data, second.new_data) == ("", {"id": 1}, None)
    assert isinstance(third, SchemaChange)
    assert (third.command_tag, third.object_identity, third.object_name) == ("ALTER TABLE", "public.t", None)
    assert isinstance(fourth, SchemaChange)
    assert fourth.object_identity == ""  # null: the documented type is str


def test_big_numbers_keep_their_value() -> None:
    # numeric columns: integers past 64 bits stay exact; other numbers keep every digit (Decimal)
    # when the column types are not known (a float column's values are converted by its type).
    big = "123456789012345678901234567890"
    event = decode_trigger_payload(
        CHANNEL,
        row_text("t", 1, new_data=f'{{"n" : {big}, "x" : 1e400, "y" : 12345678901234567.89}}'),
        1,
        "db",
    )
    assert type(event) is RowChange
    assert event.new_data == {"n": int(big), "x": Decimal("1e400"), "y": Decimal("12345678901234567.89")}
    assert str(event.new_data["y"]) == "12345678901234567.89"


@pytest.mark.parametrize("name", list(BAD))
def test_lazily_built_events_never_raise_on_a_field(name: str) -> None:
    # Events built without the decoder (a custom decoder, a pickle, RowChange(...)) parse on
    # first access: a bad payload gives fields of their documented type, never an exception.
    for cls in (RowChange, SchemaChange):
        event = cls(CHANNEL, BAD[name], 1, "db")
        assert_typed_fields_only(event)


def assert_typed_fields_only(event: RowChange | SchemaChange) -> None:
    # assert_typed, minus the method check: a lazily built event may have no valid method.
    fields: dict[str, type | tuple[type, ...]]
    if isinstance(event, RowChange):
        assert event.method in ("", *METHODS)
        fields = {
            "table_schema": str,
            "table_name": str,
            "old_data": (dict, type(None)),
            "new_data": (dict, type(None)),
            "session_user": (str, type(None)),
            "query": (str, type(None)),
            "truncated": bool,
            "id": (int, type(None)),
            "txid": (int, type(None)),
            "lsn": (str, type(None)),
        }
    else:
        fields = {
            "command_tag": str,
            "object_type": str,
            "object_identity": str,
            "schema_name": (str, type(None)),
            "object_name": (str, type(None)),
        }
    assert type(event.data) is dict
    for field, types in fields.items():
        value = getattr(event, field)
        assert isinstance(value, types), (field, value)
        assert type(value) is not bool or types is bool, (field, value)


def test_events_built_from_data_have_typed_fields() -> None:
    wrong = {
        "table_schema": ["x"],
        "table_name": 5,
        "method": "HACK",
        "old_data": "x",
        "new_data": 5,
        "session_user": {},
        "query": 1,
        "truncated": "yes",
        "id": True,
        "txid": 1.5,
        "lsn": 5,
        "command_tag": 5,
        "object_type": None,
        "object_identity": [],
        "schema_name": 1,
        "object_name": {},
    }
    assert_typed_fields_only(RowChange.from_data("c", wrong, 1, "db"))
    assert_typed_fields_only(SchemaChange.from_data("c", wrong, 1, "db"))


# ---- decoders that fail, and batches that must not be lost ---------------------------------------


def _flaky_decoder(channel: str, payload: str, pid: int, source: str) -> Event:
    if payload == "raise":
        raise RuntimeError("decoder bug")
    if payload == "recurse":
        raise RecursionError("too deep")
    if payload == "none":
        return None  # type: ignore[return-value]
    return decode_trigger_payload(channel, payload, pid, source)


def test_a_failing_decoder_gives_a_notification_and_keeps_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    notes = [Notify(1, "c", p) for p in ("raise", row_text("t", 1), "recurse", "none", row_text("t", 2))]
    events = NotifyBatch(notes, "db", {"c": _flaky_decoder}).events()
    assert [type(e) for e in events] == [Notification, RowChange, Notification, Notification, RowChange]
    assert [e.payload for e in events] == [n.payload for n in notes]
    assert len(set_aside_records(caplog)) == 3


class _BrokenDecoders(Mapping[str, Any]):
    """A decoder mapping whose lookups fail: conversion itself raises."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("broken mapping")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("broken mapping")


def test_a_conversion_failure_never_loses_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    notes = [Notify(1, "c", "a"), Notify(2, "c", "b")]
    events = _events(NotifyBatch(notes, "db", _BrokenDecoders()))
    assert events == [Notification("c", "a", 1, "db"), Notification("c", "b", 2, "db")]
    assert set_aside_records(caplog)


async def test_a_failing_decoder_does_not_end_the_stream(
    pg_engine: Engine, query: Query, unique: Callable[[str], str]
) -> None:
    channel = unique("flaky")
    payloads = ["raise", row_text("t", 1), "recurse", "none", row_text("t", 2)]
    async with open_event_stream(pg_engine, [channel], decoders={channel: _flaky_decoder}) as stream:
        await query("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (channel, payloads))
        events = await collect(stream, len(payloads))
    assert [type(e) for e in events] == [Notification, RowChange, Notification, Notification, RowChange]


# ---- the log does not flood ----------------------------------------------------------------------


def test_set_aside_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    log = SetAsideLog(
        logging.getLogger("trio_pgevents.test"), "set aside", burst=3, interval=5.0, clock=lambda: now[0]
    )
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    for i in range(10_000):
        log.note("pgevents", "x" * 8000 + str(i), "not JSON")
    messages = [r.getMessage() for r in set_aside_records(caplog, "trio_pgevents.test")]
    assert len(messages) == 3  # the burst; the rest are counted
    assert all(len(m) < 600 for m in messages)  # never the whole payload
    now[0] += 5.0
    log.note("pgevents", "late", "not JSON")
    messages = [r.getMessage() for r in set_aside_records(caplog, "trio_pgevents.test")]
    assert len(messages) == 5  # one summary, then the new window's first line
    assert "9,997" in messages[3]
    assert log.total == 10_001
    now[0] += 60.0
    log.note("pgevents", "quiet", "not JSON")  # nothing was suppressed meanwhile: no summary
    assert len(set_aside_records(caplog, "trio_pgevents.test")) == 6


# ---- compat.poll ---------------------------------------------------------------------------------

COMPAT_BAD = {
    **{name: BAD[name] for name in ("nested-arrays", "nested-objects", "invalid-json", "json-list")},
    **{name: BAD[name] for name in ("json-string", "garbage-7999", "surrogate-string")},
}


def compat_text(**fields: str) -> str:
    values = {
        "event_id": '"4b5c4fa4-2b5a-4d0e-9a4f-0a0b0c0d0e0f"',
        "event_type": '"INSERT"',
        "schema_name": '"public"',
        "table_name": '"t"',
        "row_id": "1",
    }
    values.update(fields)
    return "{" + ", ".join(f'"{key}" : {value}' for key, value in values.items()) + "}"


COMPAT_BAD.update(
    {
        "nested-row_id": compat_text(row_id="[" * 3500 + "]" * 3500),
        "event_id-int": compat_text(event_id="5"),
        "event_id-not-a-uuid": compat_text(event_id='"nope"'),
        "event_id-missing": compat_text().replace(
            '"event_id" : "4b5c4fa4-2b5a-4d0e-9a4f-0a0b0c0d0e0f", ', ""
        ),
        "event_type-list": compat_text(event_type='["INSERT"]'),
        "event_type-unknown": compat_text(event_type='"HACK"'),
        "schema_name-int": compat_text(schema_name="1"),
        "table_name-null": compat_text(table_name="null"),
        "table_name-surrogate": compat_text(table_name='"\\ud800"'),
    }
)


@pytest.fixture
def compat_listener(pg_dsn: str) -> Iterator[Any]:
    connection = psycopg2.connect(pg_dsn)
    connection.autocommit = True
    compat.register_event_channel(connection)
    try:
        yield connection
    finally:
        connection.close()


@pytest.mark.parametrize("name", list(COMPAT_BAD))
def test_compat_poll_skips_a_bad_payload_with_a_warning(
    name: str, compat_listener: Any, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_pgevents")
    good = compat_text(row_id='{"a" : [1, "x"]}')
    with psycopg2.connect(pg_dsn) as sender, sender.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", (compat.CHANNEL, COMPAT_BAD[name]))
        cursor.execute("SELECT pg_notify(%s, %s)", (compat.CHANNEL, good))
    sender.close()
    events: list[compat.Event] = []
    deadline = time.monotonic() + 20
    while not events:
        assert time.monotonic() < deadline
        events.extend(compat.poll(compat_listener, timeout=1.0))
    [event] = events
    assert (event.type, event.schema_name, event.table_name, event.row_id) == (
        "INSERT",
        "public",
        "t",
        {"a": [1, "x"]},
    )
    assert str(event.id) == "4b5c4fa4-2b5a-4d0e-9a4f-0a0b0c0d0e0f"
    [record] = set_aside_records(caplog, "trio_pgevents.compat")
    assert len(record.getMessage()) < 600


def test_compat_fromjson_raises_a_value_error() -> None:
    from trio_pgevents import TrioPgEventsError

    for name, payload in COMPAT_BAD.items():
        with pytest.raises(TrioPgEventsError) as info:
            compat.Event.fromjson(payload)
        assert isinstance(info.value, ValueError), name


# ---- the command line ----------------------------------------------------------------------------


CLI_BAD = [
    BAD[name]
    for name in (
        "nested-arrays",
        "nested-inside-a-row",
        "prefix-then-garbage",
        "json-list",
        "table_name-int",
        "method-unknown",
        "new_data-string",
        "garbage-7999",
        "lone-high-surrogate",
    )
]


async def test_listen_prints_bad_payloads_as_notifications_and_goes_on(
    start_cli: StartCli, pg_url: str, query: Query, unique: Callable[[str], str]
) -> None:
    table = unique("listen_after")
    count = len(CLI_BAD) + 1
    proc = await start_cli(["listen", CHANNEL, "--count", str(count), "--database-url", pg_url])
    await proc.wait_for("listening on", where="err")
    for bad in CLI_BAD:  # one transaction each: several reads, several batches
        await query("SELECT pg_notify(%s, %s)", (CHANNEL, bad))
    await query("SELECT pg_notify(%s, %s)", (CHANNEL, row_text(table, 3)))
    assert await proc.wait() == 0, proc.transcript()
    assert "Traceback" not in proc.transcript()
    lines = [json.loads(line) for line in proc.out]
    assert [(line["type"], line["payload"]) for line in lines[:-1]] == [("Notification", p) for p in CLI_BAD]
    assert lines[-1]["type"] == "RowChange"
    assert lines[-1]["data"]["table_name"] == table
    assert lines[-1]["data"]["new_data"] == {"n": 3}
    assert any("set aside" in line for line in proc.err)
    assert all(len(line) < 1000 for line in proc.err)  # the log never holds a whole payload


async def test_worker_is_not_stopped_by_bad_payloads(
    start_cli: StartCli, pg_url: str, query: Query, unique: Callable[[str], str]
) -> None:
    table = unique("worker_after")
    for arg in ("json", "json-full", "event"):
        proc = await start_cli(
            ["worker", "--settings", SETTINGS, "--database-url", pg_url, "--callback-arg", arg], env=_env()
        )
        await proc.wait_for("worker listening", where="err")
        await query("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, CLI_BAD))
        for bad in CLI_BAD:
            await query("SELECT pg_notify(%s, %s)", (CHANNEL, bad))
        good = row_text(table, 4)
        await query("SELECT pg_notify(%s, %s)", (CHANNEL, good))
        [line] = await proc.wait_for(f'"table_name" : "{table}"')
        expected_type = "RowChange" if arg == "event" else "str"
        # json: pg_events' shape of the same payload; json-full and event: the payload as sent.
        decoded = decode_trigger_payload(CHANNEL, good, 0, "db")
        assert isinstance(decoded, RowChange)
        shown = pg_events_payload(decoded) if arg == "json" else good
        assert line == f"DATA thread=worker type={expected_type} {shown}"
        assert proc.process.returncode is None
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == 0, proc.transcript()
        assert "Traceback" not in proc.transcript()
        assert not [line for line in proc.out if line.startswith("DATA") and table not in line]
        assert all(len(line) < 1000 for line in proc.err)
