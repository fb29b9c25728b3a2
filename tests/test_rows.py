"""The fast paths of a trigger row event agree with the full ones (issue 16.2).

``_payload.row_envelope`` checks a payload in C (msgspec) instead of
parsing it and running ``kind_of``; ``_rows.row_decoder`` types a row from
its JSON text in C instead of parsing it and converting each value
(``_columns``). Both are only allowed to be faster: seeded random inputs --
the server's forms of each type and hostile ones -- must give the same
outcome, the same values and the same Python types on both paths.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, time
from decimal import Decimal
from typing import Any

import msgspec
from psycopg2.extensions import Notify

from trio_pgevents import Notification, RowChange, SchemaChange, decode_trigger_payload
from trio_pgevents._columns import ColumnCatalog, _row_converter, attach_types
from trio_pgevents._consumer import NotifyBatch
from trio_pgevents._payload import ROW, ROW_KEYS, kind_of, parse_json, row_envelope
from trio_pgevents._rows import row_decoder
from trio_pgevents._values import (
    BOOL,
    BPCHAR,
    BYTEA,
    DATE,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    JSON,
    JSONB,
    NAME,
    NUMERIC,
    OID,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UUID_OID,
    VARCHAR,
)

SEED = 16_2

#: JSON texts a value of each type may arrive as: the server's forms first, then others.
SAMPLES: dict[int, list[str]] = {
    INT2: ["0", "-32768", "32767"],
    INT4: ["7", "-2147483648"],
    INT8: ["9007199254740993", "-9223372036854775808", "18446744073709551616", "123456789012345678901234"],
    OID: ["4000000000", '"4000000000"', '"x"'],
    NUMERIC: [
        "12345678901234567.89",
        "1.50",
        "-0.0001",
        "0",
        '"NaN"',
        '"Infinity"',
        '"-Infinity"',
        "1e5",
        "1E-7",
        '"1.5"',
        '"abc"',
        '" 1 "',
        '"1_000"',
        '"sNaN"',
        "123456789012345678901234567890.123456789",
    ],
    FLOAT4: ["1.5", "3.4028235e+38", "1e-45", '"NaN"'],
    FLOAT8: [
        "0.1",
        "1e+300",
        "-2.2250738585072014e-308",
        "5e-324",
        "1.7976931348623157e+308",
        "2.4703282292062328e-324",
        "9007199254740993",
        "1e400",
        "-0",
        "123456789012345678901234567890",
        '"Infinity"',
        '"-Infinity"',
        '"NaN"',
        '"nan"',
    ],
    BOOL: ["true", "false", "1", '"t"'],
    TEXT: ['"héllo \\"w\\""', '"\\u00e9\\ud83d\\ude00"', '""', "5", "1.5"],
    VARCHAR: ['"var"'],
    BPCHAR: ['"ab   "'],
    NAME: ['"nm"'],
    JSON: ['{"x": 1.5, "y": [1, 2, {"z": 1e400}]}', "[]", '"s"', "12345678901234567890123", "0.1"],
    JSONB: ['{"x": 1.25, "z": null}', "1e-400"],
    TIMESTAMPTZ: [
        '"2026-11-30T10:11:12.123456+02:00"',
        '"2026-11-30T08:11:12+00:00"',
        '"2026-11-30T08:11:12.5-09:30"',
        '"1900-01-01T00:00:00+00:19:32"',
        '"infinity"',
        '"-infinity"',
        '"0044-03-15T00:00:00+00:00 BC"',
        '"2026-11-30T08:11:12Z"',
        '"2026-11-30T08:11:12"',
        '"2026-11-30 08:11:12+00:00"',
        '"2026-11-30T08:11:12.1234567+00:00"',
        '"2026-11-30t08:11:12+00:00"',
        '"20261130T081112+0000"',
        '"9999-12-31T23:59:59.999999-01:00"',
        '"0001-01-01T00:00:00+01:00"',
        '"2026-11-30T24:00:00+00:00"',
        '"2026-11-30T23:59:60+00:00"',
        "5",
    ],
    TIMESTAMP: [
        '"2026-11-30T10:11:12.5"',
        '"2026-11-30T10:11:12"',
        '"-infinity"',
        '"2026-11-30T10:11:12+05:00"',
        '"10000-01-01T00:00:00"',
        '"2026-11-30T10:11:12.1234567"',
    ],
    DATE: ['"2026-11-30"', '"0044-03-15 BC"', '"infinity"', '"20261130"', '"2026-W48-1"', '"2026-02-30"'],
    TIME: ['"23:59:58.25"', '"24:00:00"', '"00:00:00"', '"10:11"', '"10:11:12+02:00"', '"10:11:12.1234567"'],
    UUID_OID: [
        '"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"',
        '"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"',
        '"a0eebc999c0b4ef8bb6d6bb9bd380a11"',
        '"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"',
        '"urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"',
        '"nope"',
    ],
    BYTEA: ['"\\\\x00ff10"', '"\\\\x"', '"\\\\xzz"', '"abc"'],
    1007: ["[1, null, 3]", "[[1, 2], [3, 4]]", "[]", "[1.5]"],  # int4[]
    1231: ["[1.10, 2, null]", '["NaN"]'],  # numeric[]
    2951: ['["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", null]'],  # uuid[]
    1185: ['["2026-11-30T10:11:12+02:00", "infinity"]'],  # timestamptz[]
    1001: ['["\\\\x00ff"]'],  # bytea[]
    1790: ['"(1,x)"', '{"a": 1.5}'],  # another type (refcursor): as parsed
}
#: Array type -> its element type (as the catalog query gives it).
ELEMENTS = {1007: INT4, 1231: NUMERIC, 2951: UUID_OID, 1185: TIMESTAMPTZ, 1001: BYTEA}
#: Values of any JSON type, for columns whose type does not expect them.
STRAY = ["null", "true", "1", "-1.5", '"s"', "[1]", '{"a": 1}', "1e400"]


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 == 1.0 == Decimal(1) is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return bool(b != b)
    if isinstance(a, Decimal) and a.is_nan():
        return bool(b.is_nan()) and str(a) == str(b)
    if isinstance(a, (datetime, time)) and a.microsecond != b.microsecond:
        # The one known difference, on text PostgreSQL never sends: more than 6 fractional
        # digits are rounded by msgspec, truncated by fromisoformat.
        close = abs(a.microsecond - b.microsecond) == 1
        return close and bool(a.replace(microsecond=0) == b.replace(microsecond=0))
    return bool(a == b) and (not hasattr(a, "tzinfo") or a.tzinfo == b.tzinfo)


def slow(columns: list[tuple[str, int, int]], text: str) -> dict[str, Any]:
    """The reference: the row parsed as a whole, then converted value by value."""
    _, convert, _ = _row_converter(columns, lambda: None)
    row = parse_json(text)
    return convert(row) if convert is not None else row


def test_every_sample_types_the_same_on_both_paths() -> None:
    taken = 0
    for type_oid, texts in SAMPLES.items():
        columns = [("c", type_oid, ELEMENTS.get(type_oid, 0))]
        decode = row_decoder(columns)
        for text in texts + STRAY:
            row = f'{{"c": {text}}}'
            fast = decode(row)
            if fast is not None:
                taken += 1
                assert same(fast, slow(columns, row)), (type_oid, text, fast, slow(columns, row))
    assert taken > 100  # the fast path takes the server's forms


def test_the_servers_forms_take_the_fast_path() -> None:
    for type_oid, text in [
        (INT8, "9007199254740993"),
        (NUMERIC, "12345678901234567.89"),
        (FLOAT8, "0.1"),
        (BOOL, "true"),
        (TEXT, '"x"'),
        (TIMESTAMPTZ, '"2026-11-30T10:11:12.123456+02:00"'),
        (TIMESTAMP, '"2026-11-30T10:11:12.5"'),
        (DATE, '"2026-11-30"'),
        (TIME, '"23:59:58.25"'),
        (UUID_OID, '"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"'),
        (JSONB, '{"x": 1.25}'),
        (BYTEA, '"\\\\x00ff"'),
    ]:
        assert row_decoder([("c", type_oid, 0)])(f'{{"c": {text}}}') is not None, (type_oid, text)


def test_random_rows_type_the_same_on_both_paths() -> None:
    rng = random.Random(SEED)
    types = list(SAMPLES)
    for _ in range(300):
        columns = [
            (f"c{i}", t, ELEMENTS.get(t, 0)) for i, t in enumerate(rng.sample(types, rng.randrange(1, 8)))
        ]
        decode = row_decoder(columns)
        for _ in range(20):
            parts = []
            for name, type_oid, _ in columns:
                if rng.random() < 0.1:
                    continue  # left out (keys only, cut to fit NOTIFY)
                pool = SAMPLES[type_oid] if rng.random() < 0.9 else STRAY
                parts.append(f"{json.dumps(name)}: {rng.choice(pool)}")
            if rng.random() < 0.05:
                parts.append('"added": 1')  # a column the table did not have
            rng.shuffle(parts)
            row = "{" + ", ".join(parts) + "}"
            fast = decode(row)
            if fast is not None:
                assert same(fast, slow(columns, row)), (columns, row)


def test_a_row_the_decoder_does_not_take() -> None:
    decode = row_decoder([("id", INT4, 0), ("at", TIMESTAMPTZ, 0)])
    assert decode('{"id": 1, "at": "2026-11-30T10:00:00+02:00"}') == {
        "id": 1,
        "at": slow([("at", TIMESTAMPTZ, 0)], '{"at": "2026-11-30T10:00:00+02:00"}')["at"],
    }
    assert decode('{"id": 1}') == {"id": 1}  # keys only
    assert decode('{"id": 1, "new": 2}') is None  # a column added since: the full path finds it
    assert decode('{"id": "1"}') is None  # another JSON type
    assert decode('{"id": 1, "at": "infinity"}') is None  # stays text: the full path says so
    assert decode("[1]") is None
    assert decode(b"{}") == {}


def test_the_tables_column_order() -> None:
    columns = [("b", INT4, 0), ("a", TEXT, 0), ("c", NUMERIC, 0)]
    assert list(row_decoder(columns)('{"b": 1, "a": "x", "c": 1.5}') or ()) == ["b", "a", "c"]


def test_any_column_name() -> None:
    names = ["order id", "class", "", "é", "; import os #", "f0", "__init__", "names", "decode", "U", "v1"]
    columns = [(name, INT4, 0) for name in names]
    row = json.dumps({name: i for i, name in enumerate(names)})
    assert row_decoder(columns)(row) == {name: i for i, name in enumerate(names)}
    # Names msgspec cannot match: the generic path types the rows.
    odd = [("a\\b", INT4, 0), ('q"uote', INT4, 0), ("tab\t", INT4, 0)]
    assert row_decoder(odd)(json.dumps({name: 1 for name, _, _ in odd})) is None


# ---- the envelope -----------------------------------------------------------------------------------

#: Values of each JSON type (as text) for the envelope's keys.
ENVELOPE_VALUES = [
    '"text"',
    "7",
    "-1",
    "1.5",
    "true",
    "false",
    "null",
    '{"a": 1}',
    "{}",
    "[1]",
    '"INSERT"',
    '"DELETE"',
    '"insert"',
    "123456789012345678901234567890",
    "1e400",
]


#: Values of the types a row event's keys may hold (and one that is not, now and then).
VALID: dict[str, list[str]] = {
    "table_schema": ['"public"', "null"],
    "table_name": ['"t"', '"t"', "null"],
    "session_user": ['"u"', "null"],
    "method": ['"INSERT"', '"UPDATE"', '"DELETE"', '"TRUNCATE"', '"READ"'],
    "old_data": ['{"a": 1.5}', "null", "{}", '"s"'],
    "new_data": ['{"a": {"b": [1]}}', "null"],
    "query": ['"INSERT ..."', "null"],
    "truncated": ["true", "false", "null"],
    "keys_only": ["true", "null"],
    "error": ['"e"', "null"],
    "id": ["7", "null", "99999999999999999999999"],
    "txid": ["8", "null", "-1"],
    "lsn": ['"0/1"', "null"],
}


def full_path(text: str) -> str:
    """What the full path makes of ``text``: ``row``, ``ddl``, or ``set aside``."""
    try:
        return kind_of(parse_json(text))
    except Exception:
        return "set aside"


def test_the_envelope_accepts_what_the_full_path_accepts() -> None:
    rng = random.Random(SEED)
    names = [key.name for key in ROW_KEYS] + ["kind", "v", "other"]
    accepted = 0
    for _ in range(20_000):
        parts = {name: rng.choice(VALID.get(name, ENVELOPE_VALUES)) for name in names if rng.random() < 0.7}
        if rng.random() < 0.95:
            parts["kind"] = '"row"'
        for name in rng.sample(names, 2):  # some keys of any type
            parts[name] = rng.choice(ENVELOPE_VALUES)
        text = "{" + ", ".join(f'"{k}": {v}' for k, v in parts.items()) + "}"
        envelope = row_envelope(text)
        if envelope is None:
            continue
        accepted += 1
        assert full_path(text) == ROW, text
        data = parse_json(text)
        assert data.get("kind") == ROW
        for key in ROW_KEYS:
            value = getattr(envelope, key.name)
            if isinstance(value, msgspec.Raw):
                assert same(parse_json(value) if value != msgspec.Raw(b"null") else None, data.get(key.name))
            else:
                assert same(value, data.get(key.name)), (key.name, text)
    assert accepted > 300


def test_payloads_the_envelope_leaves_to_the_full_path() -> None:
    for text in [
        '{"kind": "row", "table_name": "t", "method": "INSERT", "new_data": [1]}',  # a row must be an object
        '{"kind": "row", "table_name": "t", "method": "INSERT", "old_data": "x"}',
        '{"kind": "row", "table_name": "t", "method": "HACK"}',
        '{"kind": "row", "table_name": "t", "method": "INSERT", "id": true}',
        '{"kind": "row", "table_name": "t", "method": "INSERT", "id": 1.0}',
        '{"kind": "row", "method": "INSERT"}',
        '{"kind": "ddl", "command_tag": "CREATE TABLE"}',
        '{"table_name": "t", "method": "INSERT"}',  # pg_events' format: the full path
        '{"kind": "row", "table_name": "t", "method": "INSERT", "new_data": {"a": "\\ud800"}}',
        '{"kind": "row", "table_name": "t", "method": "INSERT"',
        '[{"kind": "row"}]',
        '{"kind": "row", "table_name": "t", "method": "INSERT", "new_data": {"n": ' + "7" * 5000 + "}}",
    ]:
        assert row_envelope(text) is None, text


def test_decoded_events_are_the_full_paths_events() -> None:
    rng = random.Random(SEED)
    for _ in range(3000):
        parts = {
            "kind": rng.choice(['"row"', '"ddl"', "null", "1"]),
            "table_name": rng.choice(['"t"', "1", "null"]),
            "method": rng.choice(['"UPDATE"', '"x"', "[]"]),
            "new_data": rng.choice(['{"a": 1.5}', "null", "[]", "2"]),
            "old_data": rng.choice(['{"a": 2}', "null"]),
            "txid": rng.choice(["5", '"5"', "null", "99999999999999999999999"]),
            "command_tag": rng.choice(['"CREATE TABLE"', "3"]),
        }
        text = "{" + ", ".join(f'"{k}": {v}' for k, v in parts.items() if rng.random() < 0.85) + "}"
        event = decode_trigger_payload("c", text, 1, "db")
        expected = {ROW: RowChange, "ddl": SchemaChange}.get(full_path(text), Notification)
        assert type(event) is expected, text
        assert event.payload == text
        if isinstance(event, RowChange):
            data = parse_json(text)
            assert event.method == data["method"]
            assert event.txid == data.get("txid")
            assert same(event.new_data, data.get("new_data"))
            assert same(event.old_data, data.get("old_data"))
            assert event.data == data


def test_rows_typed_on_delivery_and_when_read() -> None:
    catalog = ColumnCatalog()
    columns = [("id", INT4, 0), ("n", NUMERIC, 0)]
    catalog._tables[("public", "t")] = _row_converter(columns, lambda: None)

    def payload(method: str, new: str, old: str = "null") -> str:
        return (
            f'{{"v": 1, "kind": "row", "table_schema": "public", "table_name": "t", "method": "{method}", '
            f'"old_data": {old}, "new_data": {new}}}'
        )

    notes = [
        payload("INSERT", '{"id": 1, "n": 1.10}'),
        payload("UPDATE", '{"id": 1, "n": 2}', '{"id": 1, "n": 1.10}'),
        payload("DELETE", "null", '{"id": 1, "n": "NaN"}'),
        payload("TRUNCATE", "null"),
        payload("INSERT", '{"id": 2, "n": 3, "added": "x"}'),
    ]
    events = NotifyBatch(
        [Notify(1, "c", text) for text in notes], "db", {"c": decode_trigger_payload}
    ).events()
    assert attach_types(events, catalog) == [("public", "t")]  # the row with a new column
    insert, update, delete, truncate, added = events
    assert isinstance(insert, RowChange)
    assert insert.new_data == {"id": 1, "n": Decimal("1.10")}
    assert str(insert.new_data["n"]) == "1.10"
    assert insert.old_data is None
    assert isinstance(update, RowChange)
    assert update.old_data == {"id": 1, "n": Decimal("1.10")}
    assert type(update.new_data["n"]) is Decimal  # type: ignore[index]
    assert isinstance(delete, RowChange)
    assert delete.new_data is None
    assert delete.old_data is not None
    assert delete.old_data["n"].is_nan()
    assert isinstance(truncate, RowChange)
    assert (truncate.new_data, truncate.old_data) == (None, None)
    assert isinstance(added, RowChange)
    assert added.new_data == {"id": 2, "n": 3, "added": "x"}  # not typed: types are read again first


def test_data_is_parsed_when_read() -> None:
    text = '{"kind": "row", "table_name": "t", "method": "INSERT", "new_data": {"a": 1}}'
    event = decode_trigger_payload("c", text, 1, "db")
    assert isinstance(event, RowChange)
    assert "data" not in event.__dict__
    assert event.table_name == "t"
    assert event.data == {"kind": "row", "table_name": "t", "method": "INSERT", "new_data": {"a": 1}}
    assert (event.table_schema, event.session_user, event.query, event.truncated) == ("", None, None, False)


def test_the_query_is_read_from_its_json_text() -> None:
    query = "INSERT INTO \"t\" VALUES ('é\\n', 1)  -- \U0001f600"
    text = json.dumps({"kind": "row", "table_name": "t", "method": "INSERT", "query": query})
    event = decode_trigger_payload("c", text, 1, "db")
    assert isinstance(event, RowChange)
    assert event.query == query
    assert event.query == event.data["query"]
    for wrong in ("5", "[]", "{}", "true"):
        bad = f'{{"kind": "row", "table_name": "t", "method": "INSERT", "query": {wrong}}}'
        assert row_envelope(bad) is None
        assert type(decode_trigger_payload("c", bad, 1, "db")) is Notification
