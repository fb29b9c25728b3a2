"""Column values of pgoutput rows: text to Python by type, and the row parsers.

Column values arrive as text and are converted by the column's type OID:

==========================================  =======================================
``int2``, ``int4``, ``int8``, ``oid``          ``int``
``numeric``                                    ``decimal.Decimal`` (exact; ``NaN`` too)
``float4``, ``float8``                         ``float``
``bool``                                       ``bool``
``text``, ``varchar``, ``bpchar``, ``name``    ``str``
``json``, ``jsonb``                            parsed JSON (``dict``, ``list``, ...)
``timestamptz``                                aware ``datetime`` (UTC: the stream sets TimeZone)
``timestamp``                                  naive ``datetime``
``date`` / ``time``                            ``datetime.date`` / ``datetime.time``
anything else (uuid, bytea, arrays, ...)       the server's text form, a ``str``
==========================================  =======================================

Dates and timestamps Python cannot represent (``infinity``, BC, year > 9999)
stay text. NULL is ``None``. A value that cannot be converted at all -- a
``jsonb`` nested deeper than Python's parser goes, bytes that are not valid in
the database's encoding (a ``SQL_ASCII`` database holds any bytes) -- arrives
as a :class:`~trio_pgevents.ServerText` (a ``str`` with a ``reason``;
undecodable bytes as ``\\xNN`` escapes) instead of stopping the stream: the
slot would replay the same change after every restart. Names in Relation
messages (schema, table, column) that do not decode are treated the same way.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from .._errors import ReplicationError
from .._events import ServerText

__all__ = ["Converter", "RowParser", "careful_row_parser", "compile_row_parser", "converter_for_type"]

#: Text form of a value -> the Python value.
Converter = Callable[[str], Any]

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")


def _bool(text: str) -> bool:
    return text == "t"


def _json(text: str) -> Any:
    return json.loads(text)


def _timestamp(text: str) -> Any:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text  # infinity, BC, year > 9999


def _date(text: str) -> Any:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return text


def _time(text: str) -> Any:
    try:
        return time.fromisoformat(text)
    except ValueError:
        return text  # 24:00:00


def _decimal(text: str) -> Decimal:
    return Decimal(text)


#: Type OID -> converter; types not listed stay text.
_CONVERTERS: dict[int, Converter] = {
    16: _bool,
    20: int,
    21: int,
    23: int,
    26: int,
    700: float,
    701: float,
    1700: _decimal,
    114: _json,
    3802: _json,
    1114: _timestamp,
    1184: _timestamp,
    1082: _date,
    1083: _time,
}


def converter_for_type(type_oid: int) -> Converter | None:
    """The converter used for a column of this type OID (``None``: kept as text)."""
    return _CONVERTERS.get(type_oid)


#: Converters that accept the raw bytes of the text form (no decode needed).
_BYTES_OK: frozenset[Converter] = frozenset({int, float})

RowParser = Callable[[bytes, int, "dict[str, Any] | None"], "tuple[dict[str, Any], int]"]


def _other_kind(payload: bytes, pos: int, row: dict[str, Any], name: str, old: dict[str, Any] | None) -> int:
    """A TupleData column that is not a text value: NULL, unchanged TOAST, binary."""
    kind = payload[pos]
    if kind == 110:  # 'n': NULL
        row[name] = None
        return pos + 1
    if kind == 117:  # 'u': unchanged TOASTed value, not sent: known only from the old row
        if old is not None and name in old:
            row[name] = old[name]
        return pos + 1
    if kind == 98:  # 'b': binary (only if asked for; we never ask)
        start = pos + 5
        length: int = _INT32.unpack_from(payload, pos + 1)[0]
        row[name] = bytes(payload[start : start + length])
        return start + length
    raise ReplicationError(f"unexpected pgoutput tuple column kind {chr(kind)!r}")


def compile_row_parser(
    schema: str, table: str, columns: list[tuple[str, Converter | None]], encoding: str
) -> RowParser:
    """A TupleData parser specialised for one relation's columns.

    The per-row work is the hot path of a change stream; unrolling the column
    loop (no per-column tuple unpacking, branch on the converter at compile
    time, ints and floats parsed from bytes without decoding) makes it about a
    third cheaper. Column names and converters are passed in the namespace,
    never formatted into the source.
    """
    namespace: dict[str, Any] = {
        "unpack": _INT32.unpack_from,
        "unpack16": _INT16.unpack_from,
        "other": _other_kind,
        "enc": encoding,
        "count": len(columns),
        "Error": ReplicationError,
        "mismatch": f"pgoutput row of {schema}.{table} does not match its Relation message",
    }
    lines = [
        "def parse(payload, pos, old):",
        "    if unpack16(payload, pos)[0] != count:",
        "        raise Error(mismatch)",
        "    pos += 2",
        "    row = {}",
    ]
    for index, (name, convert) in enumerate(columns):
        namespace[f"n{index}"] = name
        namespace[f"c{index}"] = convert
        if convert is None:
            value = "payload[start:pos].decode(enc)"
        elif convert in _BYTES_OK:
            value = f"c{index}(payload[start:pos])"
        else:
            value = f"c{index}(payload[start:pos].decode(enc))"
        lines += [
            "    if payload[pos] == 116:",
            "        start = pos + 5",
            "        pos = start + unpack(payload, pos + 1)[0]",
            f"        row[n{index}] = {value}",
            "    else:",
            f"        pos = other(payload, pos, row, n{index}, old)",
        ]
    lines.append("    return row, pos")
    exec(compile("\n".join(lines), f"<pgoutput row parser for {schema}.{table}>", "exec"), namespace)
    parser: RowParser = namespace["parse"]
    return parser


def _careful_value(raw: bytes, convert: Converter | None, encoding: str, name: str) -> Any:
    """One column value, never raising: what cannot be converted stays server text."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        return ServerText(
            raw.decode(encoding, "backslashreplace"),
            f"column {name!r}: bytes not valid in the database encoding ({encoding}): {exc.reason} "
            f"at byte {exc.start}",
        )
    if convert is None:
        return text
    try:
        return convert(text)
    except Exception as exc:  # RecursionError (deep json), ValueError, ...
        return ServerText(
            text,
            f"column {name!r}: could not convert with {getattr(convert, '__name__', convert)!s}: "
            f"{type(exc).__name__}: {exc}",
        )


def careful_row_parser(
    schema: str, table: str, columns: list[tuple[str, Converter | None]], encoding: str
) -> RowParser:
    """The slow, per-column TupleData parser used when the compiled one raised.

    Same wire handling, but each value goes through :func:`_careful_value`, so
    one bad value costs only itself. Protocol errors (a row that does not
    match its Relation message) still raise.
    """
    count = len(columns)
    mismatch = f"pgoutput row of {schema}.{table} does not match its Relation message"
    unpack = _INT32.unpack_from

    def parse(payload: bytes, pos: int, old: dict[str, Any] | None) -> tuple[dict[str, Any], int]:
        if _INT16.unpack_from(payload, pos)[0] != count:
            raise ReplicationError(mismatch)
        pos += 2
        row: dict[str, Any] = {}
        for name, convert in columns:
            if payload[pos] == 116:  # 't': text value
                start = pos + 5
                pos = start + unpack(payload, pos + 1)[0]
                row[name] = _careful_value(payload[start:pos], convert, encoding, name)
            else:
                pos = _other_kind(payload, pos, row, name, old)
        return row, pos

    return parse
