"""A trigger row typed straight from its JSON text, in C: one msgspec decoder per table.

A trigger's row arrives as the text of a JSON object (``row_to_json``; the
payload's envelope leaves it unparsed, see ``_payload.row_envelope``). Once
a table's column types are known (``_columns``), :func:`row_decoder` builds
a msgspec decoder for its rows: a column whose type msgspec parses itself
(integers, ``numeric`` as ``Decimal`` with every digit, floats, bools,
text, timestamps, dates, times, uuids) is parsed and checked in C; any
other column is parsed as the generic path parses it (non-integer numbers
as ``Decimal``) and converted in Python by the same converter
(``_values.json_converter``).

The values are those of the generic path -- parse the row, then convert
each value (``_columns``) -- which stays the reference: a row the decoder
does not take as it is (a value of another JSON type, a column the table
did not have when its types were read, ``infinity``, a BC date, an offset
with seconds...) returns None, and the caller takes that path.
``tests/test_rows.py`` checks that both paths agree on every row the
decoder takes, with one known difference on text PostgreSQL never sends: a
time with more than 6 fractional digits is rounded to the microsecond here,
truncated by ``fromisoformat``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

from ._payload import NULL_ROW, UNPARSED, parse_json, why
from ._values import (
    BOOL,
    BPCHAR,
    DATE,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    NAME,
    NUMERIC,
    OID,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UUID_OID,
    VARCHAR,
    JsonConverter,
    json_converter,
)

__all__ = ["RowDecoder", "envelope_row", "row_decoder"]

#: A row's JSON text (``msgspec.Raw``, bytes or str) -> the row typed, or None: take the generic path.
RowDecoder = Callable[[Any], "dict[str, Any] | None"]

#: Column types msgspec parses to the value the generic path gives. Not ``numeric``:
#: msgspec's ``Decimal`` costs ~0.4 us a value, its ``float_hook`` (the generic path's) ~0.15 us.
_NATIVE: dict[int, type] = {
    INT2: int,
    INT4: int,
    INT8: int,
    OID: int,
    FLOAT4: float,
    FLOAT8: float,
    BOOL: bool,
    TEXT: str,
    VARCHAR: str,
    BPCHAR: str,
    NAME: str,
    TIMESTAMPTZ: datetime,
    TIMESTAMP: datetime,
    DATE: date,
    TIME: time,
    UUID_OID: UUID,
}

_UNSET = msgspec.UNSET


def _partial(names: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    """A row with only some columns (keys only, cut to fit NOTIFY): the ones present."""
    return {name: value for name, value in zip(names, values, strict=True) if value is not _UNSET}


def _untaken(raw: Any) -> None:
    """The decoder of a table whose rows always take the generic path."""
    return None


def row_decoder(columns: Iterable[tuple[str, int, int]]) -> RowDecoder:
    """The decoder of a table's rows, from its columns (name, type OID, array element OID or 0).

    Generated (as ``namedtuple`` generates its methods) so each row costs one
    C parse and one unrolled function; the column names are constants of the
    generated code's namespace, never part of its source.
    """
    fields: list[tuple[str, Any, Any]] = []
    rename: dict[str, str] = {}
    names: list[str] = []
    namespace: dict[str, Any] = {"D": Decimal, "U": _UNSET, "UTC": UTC, "partial": _partial}
    fixes: list[str] = []
    for i, (name, type_oid, element_oid) in enumerate(columns):
        native = None if element_oid else _NATIVE.get(type_oid)
        field = f"f{i}"
        if native is not None:
            fields.append((field, native | None | msgspec.UnsetType, _UNSET))
        else:  # parsed as the generic path parses it (float_hook below), then converted
            fields.append((field, Any, _UNSET))
            convert: JsonConverter | None = json_converter(type_oid, element_oid)
            if convert is not None:
                namespace[f"c{i}"] = convert
                # A numeric's usual value is a Decimal already (the hook): no call for it.
                done = "type(v{i}) is not D and " if type_oid == NUMERIC and not element_oid else ""
                fixes.append(f"        if {done}v{i} is not None and v{i} is not U:\n".format(i=i))
                fixes.append(f"            v{i} = c{i}(v{i})\n")
        if type_oid == TIMESTAMPTZ and not element_oid:  # in UTC, as the generic path gives it
            fixes.append(
                f"        if v{i} is not None and v{i} is not U and v{i}.tzinfo is not UTC:\n"
                f"            v{i} = v{i}.astimezone(UTC)\n"
            )
        rename[field] = name
        names.append(name)
        namespace[f"n{i}"] = name
    try:
        struct = msgspec.defstruct(
            "Row", fields, rename=rename, forbid_unknown_fields=True, gc=False, kw_only=True, module=__name__
        )
    except ValueError:  # a column name msgspec cannot match (a quote, a backslash, a control character)
        return _untaken
    namespace["decode"] = msgspec.json.Decoder(struct, float_hook=Decimal).decode
    namespace["names"] = tuple(names)
    count = len(names)
    values = ", ".join(f"v{i}" for i in range(count))
    source = [
        "def decode_row(raw):\n",
        "    try:\n",
        "        s = decode(raw)\n",
        *(f"        v{i} = s.f{i}\n" for i in range(count)),
        *fixes,
        "    except Exception:\n",
        "        return None\n",
    ]
    if count:
        source.append(f"    if {' or '.join(f'v{i} is U' for i in range(count))}:\n")
        source.append(f"        return partial(names, ({values},))\n")
    source.append(f"    return {{{', '.join(f'n{i}: v{i}' for i in range(count))}}}\n")
    exec("".join(source), namespace)
    decode_row: RowDecoder = namespace["decode_row"]
    return decode_row


def envelope_row(event: Any, raw: Any) -> dict[str, Any] | None:
    """A row of a LISTEN stream's event, from its JSON text: typed by its table's decoder, if known.

    Rows the decoder does not take, and rows of tables whose types are not
    known, are parsed as a whole and converted value by value (``_columns``).
    """
    if raw == NULL_ROW:
        return None
    event_dict = event.__dict__
    table = event_dict.get("_table")  # (names, converter, decoder), set by _columns.attach_types
    if table is not None:
        typed: dict[str, Any] | None = table[2](raw)
        if typed is not None:
            return typed
    try:
        row: dict[str, Any] = parse_json(raw)
    except Exception as exc:  # RecursionError: a row nested deeper than this caller's stack allows
        UNPARSED.note(event[0], str(event[1]), why(exc))
        return {}
    return table[1](row) if table is not None and table[1] is not None else row
