"""Row values typed by their column's type: the same values on every path.

A trigger's row arrives as JSON (``row_to_json``), a change stream's as the
server's text form; both become the same Python values, chosen by the
column's type (a domain counts as its base type):

==========================================  ============================================
``int2``, ``int4``, ``int8``, ``oid``          ``int``
``numeric``                                    ``decimal.Decimal``, every digit (``NaN`` too)
``float4``, ``float8``                         ``float``
``bool``                                       ``bool``
``text``, ``varchar``, ``bpchar``, ``name``    ``str``
``json``, ``jsonb``                            parsed JSON (its numbers as ``int``/``float``)
``timestamptz``                                aware ``datetime`` in UTC
``timestamp``                                  naive ``datetime``
``date`` / ``time``                            ``datetime.date`` / ``datetime.time``
``uuid``                                       ``uuid.UUID``
``bytea``                                      ``bytes``
arrays of these                                ``list`` (nested for more dimensions)
anything else                                  the server's text form (a ``str``)
==========================================  ============================================

NULL is ``None``; a value Python cannot hold (``infinity``, a BC date, a year
past 9999) stays text. The trigger path learns each table's column types
from the catalog (:mod:`trio_pgevents._columns`); the change stream gets them
in its Relation messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

__all__ = [
    "ARRAY_ELEMENTS",
    "JsonConverter",
    "ServerText",
    "json_converter",
    "parse_array",
    "text_converter",
]

#: A value as parsed from the row's JSON (numbers that are not integers as ``Decimal``) -> Python.
JsonConverter = Callable[[Any], Any]

BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT, OID, JSON = 16, 17, 19, 20, 21, 23, 25, 26, 114
FLOAT4, FLOAT8, BPCHAR, VARCHAR, DATE, TIME, TIMESTAMP = 700, 701, 1042, 1043, 1082, 1083, 1114
TIMESTAMPTZ, NUMERIC, UUID_OID, JSONB = 1184, 1700, 2950, 3802


class ServerText(str):
    """A column value left in the server's text form because it could not be converted.

    Row values are converted by column type (see :class:`RowChange`); a value
    that cannot be -- a jsonb nested deeper than Python parses, bytes that are
    not valid in the database's encoding -- is delivered as this ``str``
    subclass instead of stopping the stream. Undecodable bytes are kept as
    ``\\xNN`` escapes. :attr:`reason` says what went wrong.
    """

    reason: str

    def __new__(cls, text: str, reason: str) -> ServerText:
        value = super().__new__(cls, text)
        value.reason = reason
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        return (ServerText, (str(self), self.reason))


# ---- from the JSON form (row_to_json) ------------------------------------------------------


def _numeric(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str):  # "NaN" (and "Infinity" on PostgreSQL 14+): JSON has no number for it
        try:
            return Decimal(value)
        except ArithmeticError:
            return value
    return value


def _float(value: Any) -> Any:
    if isinstance(value, (Decimal, int)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # NaN, Infinity, -Infinity
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _plain_json(value: Any) -> Any:
    """A json/jsonb value as ``json.loads`` gives it: its non-integer numbers as floats."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return value


def _from_text(parse: Callable[[str], Any]) -> JsonConverter:
    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse(value)
        except ValueError:
            return value  # infinity, BC, year > 9999, ...

    return convert


def _timestamptz(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _int(value: Any) -> Any:
    # oid (and int8 past JavaScript's range, by some servers' settings) can arrive as a string.
    return int(value) if isinstance(value, str) else value


def _bytea(text: str) -> bytes:
    if not text.startswith("\\x"):
        raise ValueError("not hex bytea")
    return bytes.fromhex(text[2:])


_JSON_CONVERTERS: dict[int, JsonConverter] = {
    OID: _int,
    NUMERIC: _numeric,
    FLOAT4: _float,
    FLOAT8: _float,
    JSON: _plain_json,
    JSONB: _plain_json,
    TIMESTAMPTZ: _from_text(_timestamptz),
    TIMESTAMP: _from_text(datetime.fromisoformat),
    DATE: _from_text(date.fromisoformat),
    TIME: _from_text(time.fromisoformat),
    UUID_OID: _from_text(UUID),
    BYTEA: _from_text(_bytea),
}


def _array_of(element: JsonConverter) -> JsonConverter:
    def convert(value: Any) -> Any:
        if isinstance(value, list):
            return [None if v is None else convert(v) if isinstance(v, list) else element(v) for v in value]
        return value

    return convert


def json_converter(type_oid: int, element_oid: int = 0) -> JsonConverter | None:
    """How a value of this type, from ``row_to_json``, becomes Python (None: as it is)."""
    if element_oid:
        element = _JSON_CONVERTERS.get(element_oid)
        return _array_of(element) if element is not None else None
    return _JSON_CONVERTERS.get(type_oid)


# ---- from the text form (pgoutput, arrays) ------------------------------------------------------


def parse_array(text: str, element: Callable[[str], Any] | None) -> Any:
    """A one- or more-dimensional array literal (``{1,2,"a b",NULL}``) as nested lists.

    Raises:
        ValueError: not an array literal.
    """
    if text.startswith("["):  # explicit bounds: "[0:1]={1,2}"
        text = text[text.index("=") + 1 :]
    value, end = _parse_array_at(text, 0, element)
    if end != len(text):
        raise ValueError("text after the array")
    return value


def _parse_array_at(text: str, pos: int, element: Callable[[str], Any] | None) -> tuple[list[Any], int]:
    if text[pos] != "{":
        raise ValueError("not an array")
    pos += 1
    items: list[Any] = []
    if text[pos] == "}":
        return items, pos + 1
    while True:
        if text[pos] == "{":
            item, pos = _parse_array_at(text, pos, element)
            items.append(item)
        elif text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                chars.append(text[pos])
                pos += 1
            pos += 1
            raw = "".join(chars)
            items.append(element(raw) if element is not None else raw)
        else:
            end = pos
            while text[end] not in ",}":
                end += 1
            raw = text[pos:end].strip()
            pos = end
            items.append(None if raw == "NULL" else element(raw) if element is not None else raw)
        if text[pos] == ",":
            pos += 1
            continue
        if text[pos] == "}":
            return items, pos + 1
        raise ValueError("bad array literal")


def _text_bool(text: str) -> bool:
    return text == "t"


def _text_json(text: str) -> Any:
    return json.loads(text)


def _or_text(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            return text  # infinity, BC, year > 9999, 24:00:00

    return convert


_TEXT_CONVERTERS: dict[int, Callable[[str], Any]] = {
    BOOL: _text_bool,
    INT8: int,
    INT2: int,
    INT4: int,
    OID: int,
    FLOAT4: float,
    FLOAT8: float,
    NUMERIC: Decimal,
    JSON: _text_json,
    JSONB: _text_json,
    TIMESTAMP: _or_text(datetime.fromisoformat),
    TIMESTAMPTZ: _or_text(_timestamptz),
    DATE: _or_text(date.fromisoformat),
    TIME: _or_text(time.fromisoformat),
    UUID_OID: UUID,
    BYTEA: _bytea,
}

#: Array type OID -> element type OID, for the types above (pgoutput sends the array's OID).
ARRAY_ELEMENTS: dict[int, int] = {
    1000: BOOL,
    1001: BYTEA,
    1016: INT8,
    1005: INT2,
    1007: INT4,
    1028: OID,
    1021: FLOAT4,
    1022: FLOAT8,
    1231: NUMERIC,
    199: JSON,
    3807: JSONB,
    1115: TIMESTAMP,
    1185: TIMESTAMPTZ,
    1182: DATE,
    1183: TIME,
    2951: UUID_OID,
    1009: TEXT,
    1015: VARCHAR,
    1014: BPCHAR,
    1003: NAME,
}


def text_converter(type_oid: int) -> Callable[[str], Any] | None:
    """How the text form of a value of this type becomes Python (None: it stays text)."""
    element_oid = ARRAY_ELEMENTS.get(type_oid)
    if element_oid is not None:
        element = _TEXT_CONVERTERS.get(element_oid)

        def array(text: str) -> Any:
            return parse_array(text, element)

        return array
    return _TEXT_CONVERTERS.get(type_oid)
